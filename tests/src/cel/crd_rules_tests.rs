//! Runs the module against the real CRDs: every rule must compile, and a
//! sample of rules, copied from the CRDs, must give the verdict Kubernetes
//! gives on a value that satisfies it and on one that breaks it.

use super::Rule;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// `../shared/crds` beside the repository (`DFP_CRD_DIR` overrides it), as the manifest tests find it.
fn crd_dir() -> PathBuf {
    match std::env::var_os("DFP_CRD_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/crds"),
    }
}

fn crd_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [crd_dir(), crd_dir().join("gateway-extensions")] {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|x| x == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every rule of every CRD version's schema, one entry per occurrence, with
/// the schema node that carries it.
struct Rules {
    files: usize,
    crds: usize,
    occurrences: Vec<(String, Value)>,
}

static RULES: LazyLock<Rules> = LazyLock::new(|| {
    let files = crd_files();
    let mut rules = Rules {
        files: files.len(),
        crds: 0,
        occurrences: Vec::new(),
    };
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("bad YAML in {}: {e}", file.display()));
            if doc["kind"] != "CustomResourceDefinition" {
                continue;
            }
            rules.crds += 1;
            for version in doc["spec"]["versions"].as_array().into_iter().flatten() {
                collect(
                    &version["schema"]["openAPIV3Schema"],
                    &mut rules.occurrences,
                );
            }
        }
    }
    rules
});

fn collect(schema: &Value, out: &mut Vec<(String, Value)>) {
    match schema {
        Value::Object(map) => {
            let validations = map
                .get("x-kubernetes-validations")
                .and_then(Value::as_array);
            for v in validations.into_iter().flatten() {
                let rule = v["rule"].as_str().expect("a validation without a rule");
                out.push((rule.to_owned(), schema.clone()));
            }
            map.iter()
                .filter(|(k, _)| *k != "x-kubernetes-validations")
                .for_each(|(_, v)| collect(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        _ => {}
    }
}

fn distinct() -> BTreeSet<&'static str> {
    RULES.occurrences.iter().map(|(r, _)| r.as_str()).collect()
}

#[test]
fn every_crd_rule_compiles() {
    let distinct = distinct();
    println!(
        "{} files, {} CRDs, {} rule occurrences, {} distinct rules",
        RULES.files,
        RULES.crds,
        RULES.occurrences.len(),
        distinct.len()
    );
    let failures: Vec<String> = distinct
        .iter()
        .filter_map(|text| Rule::compile(text).err().map(|e| e.to_string()))
        .collect();
    let transition = distinct
        .iter()
        .filter(|t| Rule::compile(t).is_ok_and(|r| r.is_transition()))
        .count();
    println!(
        "{transition} transition rules, {} failed to compile",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The bundle as copied: a change of the CRDs should be a conscious one.
    assert_eq!(RULES.occurrences.len(), 807);
    assert_eq!(distinct.len(), 226);
    assert_eq!(transition, 1);
}

/// Compiles `text`, which must be a rule of the CRDs, so that a rule copied
/// here cannot drift from the CRDs unnoticed.
fn crd_rule(text: &str) -> Rule {
    assert!(distinct().contains(text), "not a CRD rule: {text}");
    Rule::compile(text).unwrap_or_else(|e| panic!("{e}"))
}

fn verdict(rule: &Rule, value: Value) -> bool {
    rule.evaluate(&value).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn envoy_proxy_deployment_or_daemonset() {
    // EnvoyProxy spec.provider.kubernetes: "only one of envoyDeployment or
    // envoyDaemonSet can be specified"
    let rule = crd_rule(
        "((has(self.envoyDeployment) && !has(self.envoyDaemonSet)) || (!has(self.envoyDeployment) \
         && has(self.envoyDaemonSet))) || (!has(self.envoyDeployment) && !has(self.envoyDaemonSet))",
    );
    assert!(verdict(&rule, json!({"envoyDeployment": {"replicas": 2}})));
    assert!(verdict(&rule, json!({"envoyDaemonSet": {}})));
    assert!(verdict(&rule, json!({})));
    assert!(!verdict(
        &rule,
        json!({"envoyDeployment": {"replicas": 2}, "envoyDaemonSet": {}})
    ));
}

#[test]
fn httproute_filter_has_rules() {
    // HTTPRoute rules[].filters[]: the field must match the type
    let rule =
        crd_rule("!(has(self.requestHeaderModifier) && self.type != 'RequestHeaderModifier')");
    let modifier = json!({"set": [{"name": "x", "value": "y"}]});
    assert!(verdict(
        &rule,
        json!({"type": "RequestHeaderModifier", "requestHeaderModifier": modifier})
    ));
    assert!(!verdict(
        &rule,
        json!({"type": "URLRewrite", "requestHeaderModifier": modifier})
    ));

    // HTTPRoute rules[]: no redirect filter on a rule with backends
    let rule = crd_rule(
        "(has(self.backendRefs) && size(self.backendRefs) > 0) ? (!has(self.filters) || \
         self.filters.all(f, !has(f.requestRedirect))): true",
    );
    let backends = json!([{"name": "svc", "port": 80}]);
    assert!(verdict(
        &rule,
        json!({"backendRefs": backends, "filters": [{"type": "URLRewrite", "urlRewrite": {}}]})
    ));
    assert!(!verdict(
        &rule,
        json!({"backendRefs": backends,
               "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}]})
    ));
}

#[test]
fn gateway_listener_names_exists_one() {
    let rule = crd_rule("self.all(l1, self.exists_one(l2, l1.name == l2.name))");
    let a = json!({"name": "http", "port": 80, "protocol": "HTTP"});
    let b = json!({"name": "https", "port": 443, "protocol": "HTTPS"});
    assert!(verdict(&rule, json!([a, b])));
    assert!(!verdict(&rule, json!([a, b, a])));
}

#[test]
fn httproute_timeouts_duration() {
    let rule = crd_rule(
        "!(has(self.request) && has(self.backendRequest) && duration(self.request) != \
         duration('0s') && duration(self.backendRequest) > duration(self.request))",
    );
    assert!(verdict(
        &rule,
        json!({"request": "1h30m", "backendRequest": "90m"})
    ));
    assert!(verdict(
        &rule,
        json!({"request": "0s", "backendRequest": "10s"})
    ));
    assert!(!verdict(
        &rule,
        json!({"request": "100ms", "backendRequest": "1s"})
    ));
}

#[test]
fn hostnames_not_ip() {
    let rule = crd_rule("self.all(h, !isIP(h))");
    assert!(verdict(&rule, json!(["example.com", "*.example.com"])));
    assert!(!verdict(&rule, json!(["example.com", "192.168.0.1"])));
    assert!(!verdict(&rule, json!(["2001:db8::1"])));
}

#[test]
fn xbackend_port_name_dns1123_label() {
    // XBackend spec.ports[].name. Kubernetes' validate() returns an optional,
    // which cel-go never finds equal to null: as on a real API server, this
    // rule holds only for the empty name, and rejects even a valid label.
    let rule = crd_rule("size(self) == 0 || format.dns1123Label().validate(self) == null");
    assert!(verdict(&rule, json!("")));
    assert!(!verdict(&rule, json!("Not_A_Label")));
    assert!(!verdict(&rule, json!("http")));
}

#[test]
fn parent_refs_escaped_namespace() {
    // Gateway API parentRefs: `namespace` is reached as `__namespace__`
    let rule = crd_rule(
        "self.all(p1, self.exists_one(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name \
         == p2.name && (((!has(p1.__namespace__) || p1.__namespace__ == '') && \
         (!has(p2.__namespace__) || p2.__namespace__ == '')) || (has(p1.__namespace__) && \
         has(p2.__namespace__) && p1.__namespace__ == p2.__namespace__ )) && \
         (((!has(p1.sectionName) || p1.sectionName == '') && (!has(p2.sectionName) || \
         p2.sectionName == '')) || ( has(p1.sectionName) && has(p2.sectionName) && \
         p1.sectionName == p2.sectionName)) && (((!has(p1.port) || p1.port == 0) && \
         (!has(p2.port) || p2.port == 0)) || (has(p1.port) && has(p2.port) && p1.port == \
         p2.port))))",
    );
    let gw = |ns: &str| json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg", "namespace": ns});
    assert!(verdict(&rule, json!([gw("a"), gw("b")])));
    assert!(!verdict(&rule, json!([gw("a"), gw("a")])));
}

#[test]
fn label_map_keys_and_lookup_tables() {
    // A map (additionalProperties): comprehensions iterate its keys.
    let rule = crd_rule("self.all(key, key.split(\"/\")[0].size() < 253)");
    assert!(verdict(
        &rule,
        json!({"app.kubernetes.io/name": "x", "tier": "y"})
    ));
    assert!(!verdict(
        &rule,
        json!({format!("{}/name", "a".repeat(253)): "x"})
    ));

    // BackendTLS versions: map literals indexed by a field
    let rule = crd_rule(
        "has(self.minVersion) && has(self.maxVersion) ? \
         {\"Auto\":0,\"1.0\":1,\"1.1\":2,\"1.2\":3,\"1.3\":4}[self.minVersion] <= \
         {\"1.0\":1,\"1.1\":2,\"1.2\":3,\"1.3\":4,\"Auto\":5}[self.maxVersion] : \
         !has(self.minVersion) && has(self.maxVersion) ? 3 <= \
         {\"1.0\":1,\"1.1\":2,\"1.2\":3,\"1.3\":4,\"Auto\":5}[self.maxVersion] : true",
    );
    assert!(verdict(
        &rule,
        json!({"minVersion": "1.2", "maxVersion": "1.3"})
    ));
    assert!(!verdict(
        &rule,
        json!({"minVersion": "1.3", "maxVersion": "1.2"})
    ));
    assert!(!verdict(&rule, json!({"maxVersion": "1.1"})));

    let rule = crd_rule("!('*' in self && self.size() > 1)");
    assert!(verdict(&rule, json!(["*"])));
    assert!(!verdict(&rule, json!(["*", "GET"])));
}

#[test]
fn the_transition_rule_is_skipped_on_create() {
    let rule = crd_rule("self == oldSelf");
    assert!(rule.is_transition());
    assert!(rule.evaluate(&json!("x")).is_err());
}

/// The smallest value the schema admits, roughly: required and defaulted
/// properties (the API server applies defaults before validating), the first
/// enum value, the minimum, else an empty value of the type.
fn minimal(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    if let Some(default) = schema.get("default") {
        return default.clone();
    }
    match schema["type"].as_str() {
        Some("object") => {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let props = schema["properties"].as_object().into_iter().flatten();
            Value::Object(
                props
                    .filter(|(name, p)| {
                        required.contains(&name.as_str()) || p.get("default").is_some()
                    })
                    .map(|(name, p)| (name.clone(), minimal(p)))
                    .collect(),
            )
        }
        Some("array") => json!([]),
        Some("string") => json!(""),
        Some("integer") => json!(schema["minimum"].as_i64().unwrap_or(0)),
        Some("number") => json!(0.0),
        Some("boolean") => json!(false),
        _ => json!({}),
    }
}

/// Every rule also runs: on a minimal object of its schema, each gives a
/// verdict or fails only for want of data (a field the object lacks, an empty
/// duration), never for a function or overload the module lacks.
#[test]
fn every_crd_rule_runs_on_a_minimal_object() {
    let mut seen = BTreeSet::new();
    let (mut holds, mut fails, mut no_data, mut transition) = (0, 0, 0, 0);
    for (text, schema) in RULES.occurrences.iter() {
        if !seen.insert(text.as_str()) {
            continue;
        }
        let rule = Rule::compile(text).unwrap_or_else(|e| panic!("{e}"));
        if rule.is_transition() {
            transition += 1;
            continue;
        }
        let value = minimal(schema);
        match rule.evaluate(&value) {
            Ok(true) => holds += 1,
            Ok(false) => fails += 1,
            Err(crate::cel::CelError::Evaluation { message, .. })
                if message.starts_with("No such key")
                    || message.contains("time: invalid duration \"\"") =>
            {
                no_data += 1
            }
            Err(e) => panic!("{e}\n  on {value}"),
        }
    }
    println!("on minimal objects: {holds} hold, {fails} fail, {no_data} lack data, {transition} transition");
    assert_eq!((holds, fails, no_data, transition), (174, 43, 8, 1));
}
