//! The validator on a small CRD of its own: each rule it checks, and each it refuses to load.

use super::*;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.test
spec:
  group: example.test
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          apiVersion: {type: string}
          kind: {type: string}
          metadata: {type: object}
          spec:
            type: object
            required: [mode]
            properties:
              mode: {type: string, enum: [Fast, Slow]}
              name: {type: string, pattern: '^[a-z]+$', maxLength: 5}
              port: {type: integer, format: int32, minimum: 1, maximum: 65535}
              count: {type: integer, format: int32}
              target:
                x-kubernetes-int-or-string: true
                anyOf: [{type: integer}, {type: string}]
              tags:
                type: array
                maxItems: 2
                x-kubernetes-list-type: set
                items: {type: string}
              entries:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  properties:
                    name: {type: string}
                    kind: {type: string, default: Service}
                  x-kubernetes-validations:
                  - rule: self.name != 'x'
                    message: no x
                  - rule: self.kind == 'Service' || self.name.startsWith('ext')
                    message: only ext entries name another kind
                  - rule: self == oldSelf
                    message: immutable
              labels:
                type: object
                additionalProperties: {type: string}
              free:
                x-kubernetes-preserve-unknown-fields: true
              address:
                type: string
                oneOf: [{format: ipv4}, {format: ipv6}]
              blob: {type: string, format: byte}
"#;

fn set() -> CrdSet {
    let mut set = CrdSet::default();
    assert_eq!(set.add_yaml("inline", CRD).expect("test CRD loads"), 1);
    set
}

fn check(doc: &str) -> Vec<(String, ViolationKind)> {
    let docs = parse_documents("doc", doc).expect("test doc parses");
    set()
        .validate(&docs[0])
        .violations
        .into_iter()
        .map(|v| (v.path, v.kind))
        .collect()
}

const GOOD: &str =
    "apiVersion: example.test/v1\nkind: Widget\nmetadata: {name: w}\nspec: {mode: Fast}\n";

#[test]
fn a_minimal_valid_document_passes() {
    assert_eq!(check(GOOD), vec![]);
}

#[test]
fn each_keyword_reports_its_path() {
    let cases: &[(&str, &str, ViolationKind)] = &[
        ("spec: {}", "spec.mode", ViolationKind::Required),
        ("spec: {mode: Medium}", "spec.mode", ViolationKind::Enum),
        (
            "spec: {mode: Fast, name: Abc}",
            "spec.name",
            ViolationKind::Pattern,
        ),
        (
            "spec: {mode: Fast, name: abcdef}",
            "spec.name",
            ViolationKind::Length,
        ),
        (
            "spec: {mode: Fast, port: 0}",
            "spec.port",
            ViolationKind::Range,
        ),
        (
            "spec: {mode: Fast, port: '80'}",
            "spec.port",
            ViolationKind::Type,
        ),
        (
            "spec: {mode: Fast, count: 4294967296}",
            "spec.count",
            ViolationKind::Format,
        ),
        (
            "spec: {mode: Fast, target: true}",
            "spec.target",
            ViolationKind::Type,
        ),
        (
            "spec: {mode: Fast, tags: [a, a]}",
            "spec.tags[1]",
            ViolationKind::Duplicate,
        ),
        (
            "spec: {mode: Fast, tags: [a, b, c]}",
            "spec.tags",
            ViolationKind::Count,
        ),
        (
            "spec: {mode: Fast, entries: [{name: a}, {name: a}]}",
            "spec.entries[1]",
            ViolationKind::Duplicate,
        ),
        (
            "spec: {mode: Fast, entries: [{name: a, extra: 1}]}",
            "spec.entries[0].extra",
            ViolationKind::UnknownField,
        ),
        (
            "spec: {mode: Fast, labels: {a: 1}}",
            "spec.labels[a]",
            ViolationKind::Type,
        ),
        (
            "spec: {mode: Fast, address: nope}",
            "spec.address",
            ViolationKind::Combinator,
        ),
        (
            "spec: {mode: Fast, blob: '%%%'}",
            "spec.blob",
            ViolationKind::Format,
        ),
        (
            "spec: {mode: Fast, typo: 1}",
            "spec.typo",
            ViolationKind::UnknownField,
        ),
        (
            "spec: {mode: Fast, name: }",
            "spec.name",
            ViolationKind::Null,
        ),
    ];
    for (spec, path, kind) in cases {
        let doc =
            format!("apiVersion: example.test/v1\nkind: Widget\nmetadata: {{name: w}}\n{spec}\n");
        assert_eq!(check(&doc), vec![(path.to_string(), *kind)], "case {spec}");
    }
}

#[test]
fn accepted_values_pass() {
    let doc = "apiVersion: example.test/v1\nkind: Widget\nmetadata: {name: w, labels: {app.kubernetes.io/name: w}}\n\
               spec: {mode: Slow, name: abc, port: 65535, target: http, tags: [a, b], entries: [{name: a}, {name: b}],\n\
               labels: {x: y}, free: {anything: [1, {deep: true}]}, address: '2001:db8::1', blob: aGk=}\n";
    assert_eq!(check(doc), vec![]);
}

#[test]
fn resource_identity_and_metadata_are_checked() {
    let wrong_version = GOOD.replace("example.test/v1", "example.test/v2");
    assert_eq!(
        check(&wrong_version),
        vec![("apiVersion".into(), ViolationKind::UnknownResource)]
    );
    let wrong_kind = GOOD.replace("Widget", "Gadget");
    assert_eq!(
        check(&wrong_kind),
        vec![("kind".into(), ViolationKind::UnknownResource)]
    );
    let bad_name = GOOD.replace("name: w", "name: W_1");
    assert_eq!(
        check(&bad_name),
        vec![("metadata.name".into(), ViolationKind::Metadata)]
    );
    let bad_meta = GOOD.replace("name: w", "name: w, nmespace: x");
    assert_eq!(
        check(&bad_meta),
        vec![("metadata.nmespace".into(), ViolationKind::UnknownField)]
    );
}

#[test]
fn cel_rules_run_on_present_nodes_after_defaulting() {
    let report = |spec: &str| {
        let doc = format!(
            "apiVersion: example.test/v1\nkind: Widget\nmetadata: {{name: w}}\nspec: {spec}\n"
        );
        set().validate(&parse_documents("doc", &doc).expect("parses")[0])
    };
    // Two entries, two rules each; the third rule reads `oldSelf` and is skipped on create.
    let held = report("{mode: Fast, entries: [{name: a}, {name: ext, kind: Other}]}");
    assert!(held.is_valid(), "{:?}", held.violations);
    assert_eq!(
        (held.rules_evaluated, held.transition_rules_skipped),
        (4, 2)
    );
    // `kind` is absent: its default (Service) is what the rule sees.
    let broken = report("{mode: Fast, entries: [{name: x}, {name: b, kind: Other}]}");
    assert_eq!(
        broken.violations,
        vec![
            Violation {
                path: "spec.entries[0]".into(),
                kind: ViolationKind::Rule,
                detail: "no x".into(),
            },
            Violation {
                path: "spec.entries[1]".into(),
                kind: ViolationKind::Rule,
                detail: "only ext entries name another kind".into(),
            },
        ]
    );
    // No such node, no rule.
    assert_eq!(report("{mode: Fast}").rules_evaluated, 0);
    // A blocking schema error (here: required `mode` missing) stops every rule, as in the API server.
    let blocked = report("{entries: [{name: x}]}");
    assert_eq!(
        blocked
            .violations
            .iter()
            .map(|v| v.kind)
            .collect::<Vec<_>>(),
        vec![ViolationKind::Required]
    );
    assert!(blocked.rules_blocked);
    assert_eq!(blocked.rules_evaluated, 0);
}

#[test]
fn a_rule_that_does_not_compile_fails_loading() {
    let broken = CRD.replace("rule: self.name != 'x'", "rule: self.name !=");
    let err = CrdSet::default()
        .add_yaml("inline", &broken)
        .expect_err("the rule is not CEL");
    assert!(
        err.to_string().contains("x-kubernetes-validations"),
        "{err}"
    );
}

#[test]
fn unknown_schema_keywords_fail_loading() {
    let broken = CRD.replace(
        "maxItems: 2",
        "maxItems: 2\n                contains: {type: string}",
    );
    let err = CrdSet::default()
        .add_yaml("inline", &broken)
        .expect_err("unknown keyword");
    assert!(
        err.to_string().contains("properties[tags].contains"),
        "{err}"
    );
}

#[test]
fn go_re2_classes_are_ascii() {
    let mut cache = CompileCache::default();
    let regex = cache.compile(r"^\d+$").expect("compiles");
    assert!(regex.is_match(b"123"));
    assert!(
        !regex.is_match("١٢٣".as_bytes()),
        "Arabic-Indic digits are not \\d in RE2"
    );
}

#[test]
fn yaml11_booleans_are_found_outside_block_scalars() {
    let text =
        "a: on\nb: 'on'\nc: yes # comment\nlist:\n  - off\nd: |\n  on\n  no\ne: No\nf: online\n";
    assert_eq!(
        yaml11_ambiguities(text),
        vec![
            (1, "on".into()),
            (3, "yes".into()),
            (5, "off".into()),
            (9, "No".into())
        ]
    );
}

#[test]
fn formats() {
    assert!(is_rfc3339("2024-01-02T03:04:05Z"));
    assert!(is_rfc3339("2024-01-02T03:04:05.123+02:00"));
    assert!(!is_rfc3339("2024-01-02 03:04:05Z"));
    assert!(is_base64("aGVsbG8="));
    assert!(!is_base64("aGVsbG8"));
    assert!(is_qualified_name("app.kubernetes.io/name"));
    assert!(!is_qualified_name("/name"));
}
