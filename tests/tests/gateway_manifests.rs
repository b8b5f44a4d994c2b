//! The Envoy Gateway manifests in `envoy-config/gateway/`: every document validated against the
//! CRD schemas in `../shared/crds/`, every embedded filter configuration run through the filter's
//! own validator, and the references between the manifests checked. Broken copies of the real
//! manifests show that each check fails, naming the file, the object and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dfp_filter::config::{FilterConfig, Stage};
use serde_json::{json, Value};
use tests::crd_schema::{self, CrdSet, Document, Report, Violation, ViolationKind};

const EEP: (&str, &str) = ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy");

/// Kinds used by the manifests that have no CRD in `../shared/crds/` (and its `gateway-extensions/`): Kubernetes'
/// built-in kinds. They are checked for metadata here and field by field in the cross-reference tests below; the
/// API server validates them on apply.
const WITHOUT_CRD: &[(&str, &str, &str)] = &[
    ("v1", "ConfigMap", "built-in Kubernetes kind"),
    ("v1", "Service", "built-in Kubernetes kind"),
    ("apps/v1", "Deployment", "built-in Kubernetes kind"),
];

fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is <repo>/tests.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the repository")
        .to_path_buf()
}

fn gateway_dir() -> PathBuf {
    repo_root().join("envoy-config").join("gateway")
}

/// `DFP_CRD_DIR`, else `../shared/crds` next to the repository. Missing CRDs fail the tests: a
/// manifest check that silently skips is no check.
fn crd_dir() -> PathBuf {
    match std::env::var_os("DFP_CRD_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("..").join("shared").join("crds"),
    }
}

fn crds() -> &'static CrdSet {
    static CRDS: OnceLock<CrdSet> = OnceLock::new();
    CRDS.get_or_init(|| {
        let dir = crd_dir();
        assert!(
            dir.is_dir(),
            "CRD schemas not found at {} (expected ../shared/crds beside the repository, or set \
             DFP_CRD_DIR); the gateway manifests cannot be validated without them",
            dir.display()
        );
        // Gateway API and Envoy Gateway's policy CRDs, then Envoy Gateway's EnvoyProxy, EnvoyPatchPolicy and
        // ClientTrafficPolicy.
        let dirs = [dir.clone(), dir.join("gateway-extensions")];
        CrdSet::load_dirs(&dirs)
            .unwrap_or_else(|e| panic!("loading CRDs from {}: {e}", dir.display()))
    })
}

/// Every document of every manifest file, in file order.
fn manifests() -> Vec<Document> {
    let dir = gateway_dir();
    let files = crd_schema::manifest_files(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(!files.is_empty(), "no manifests under {}", dir.display());
    let root = repo_root();
    let mut docs = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let parsed = crd_schema::parse_documents(&name, &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!parsed.is_empty(), "{name} holds no document");
        docs.extend(parsed);
    }
    docs
}

fn docs_in(folder: &str) -> Vec<Document> {
    let prefix = format!("envoy-config/gateway/{folder}/");
    manifests()
        .into_iter()
        .filter(|d| d.source.starts_with(&prefix))
        .collect()
}

fn find<'a>(docs: &'a [Document], kind: &str, name: &str) -> &'a Document {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} among the manifests"))
}

fn str_at<'a>(doc: &'a Document, pointer: &str) -> &'a str {
    doc.value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{doc}: no string at {pointer}"))
}

/// Schema-checks one document; kinds listed in [`WITHOUT_CRD`] get the metadata check only.
fn check(doc: &Document) -> Result<Report, Vec<Violation>> {
    if crds().knows(doc.api_version(), doc.kind()) {
        let report = crds().validate(doc);
        return if report.is_valid() {
            Ok(report)
        } else {
            Err(report.violations)
        };
    }
    let listed = WITHOUT_CRD
        .iter()
        .any(|(api, kind, _)| *api == doc.api_version() && *kind == doc.kind());
    if !listed {
        return Err(vec![Violation {
            path: "kind".into(),
            kind: ViolationKind::UnknownResource,
            detail: format!(
                "no CRD for {} {} in {} and not a known kind without one",
                doc.api_version(),
                doc.kind(),
                crd_dir().display()
            ),
        }]);
    }
    let violations = crd_schema::validate_metadata(doc, true);
    if violations.is_empty() {
        Ok(Report {
            violations,
            ..Report::default()
        })
    } else {
        Err(violations)
    }
}

/// The one-line-per-problem text a failing run prints.
fn describe(doc: &Document, violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{doc}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one schema violation of a broken copy; a CEL rule the same change also breaks (the API server reports both)
/// is left to `broken_copies_break_cel_rules`.
fn only_violation(doc: &Document) -> Violation {
    match check(doc) {
        Ok(_) => panic!("{doc}: the broken copy passed validation"),
        Err(mut violations) => {
            violations.retain(|v| v.kind != ViolationKind::Rule);
            assert_eq!(violations.len(), 1, "{}", describe(doc, &violations));
            violations.remove(0)
        }
    }
}

/// The filter configurations embedded in a document: an EnvoyExtensionPolicy's `wasm[].config`
/// (Envoy Gateway serialises it to the JSON string the filter receives), or the `StringValue`
/// plugin configurations of wasm filters inside an EnvoyPatchPolicy.
fn filter_configs(doc: &Document) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if (doc.api_version(), doc.kind()) == EEP {
        let wasm = doc.value.pointer("/spec/wasm").and_then(Value::as_array);
        for (i, entry) in wasm.into_iter().flatten().enumerate() {
            let config = entry.get("config").cloned().unwrap_or(Value::Null);
            out.push((format!("spec.wasm[{i}].config"), config.to_string()));
        }
    }
    if doc.kind() == "EnvoyPatchPolicy" {
        collect_plugin_configurations(&doc.value, String::new(), &mut out);
    }
    out
}

fn collect_plugin_configurations(value: &Value, path: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let is_wasm = map.get("@type").and_then(Value::as_str)
                == Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm");
            if is_wasm {
                let configuration = map
                    .get("config")
                    .and_then(|c| c.get("configuration"))
                    .and_then(|c| c.get("value"))
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| {
                        panic!("{path}: wasm filter without a string configuration")
                    });
                out.push((
                    format!("{path}.config.configuration.value"),
                    configuration.to_string(),
                ));
            }
            for (key, item) in map {
                collect_plugin_configurations(item, format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_plugin_configurations(item, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The manifests as shipped

#[test]
fn crds_cover_the_kinds_the_manifests_use() {
    let kinds = crds().kinds();
    for (group, kind) in [
        ("gateway.networking.k8s.io", "GatewayClass"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "HTTPRoute"),
        ("gateway.envoyproxy.io", "Backend"),
        ("gateway.envoyproxy.io", "EnvoyExtensionPolicy"),
    ] {
        assert!(
            kinds.contains(&(group.to_string(), kind.to_string())),
            "{kind} ({group}) missing from {}",
            crd_dir().display()
        );
    }
}

#[test]
fn every_manifest_validates() {
    let docs = manifests();
    let mut failures = Vec::new();
    let mut schema_checked = BTreeMap::<String, usize>::new();
    let mut rules_evaluated = 0;
    for doc in &docs {
        match check(doc) {
            Ok(report) => {
                if crds().knows(doc.api_version(), doc.kind()) {
                    *schema_checked.entry(doc.kind().to_string()).or_default() += 1;
                }
                rules_evaluated += report.rules_evaluated;
            }
            Err(violations) => failures.push(describe(doc, &violations)),
        }
    }
    assert!(
        failures.is_empty(),
        "invalid manifests:\n{}",
        failures.join("\n")
    );
    // The CRD-backed kinds of the deployment must all have been schema-checked.
    for kind in [
        "GatewayClass",
        "Gateway",
        "HTTPRoute",
        "Backend",
        "EnvoyExtensionPolicy",
    ] {
        assert!(
            schema_checked.contains_key(kind),
            "no {kind} was schema-checked: {schema_checked:?}"
        );
    }
    eprintln!(
        "{} documents; schema-checked: {schema_checked:?}; {rules_evaluated} CEL rule evaluations",
        docs.len()
    );
}

#[test]
fn no_value_reads_differently_in_kubernetes() {
    // Kubernetes reads YAML 1.1, where an unquoted `on` or `no` is a boolean; this validator
    // reads YAML 1.2, where it is a string. Such values must be quoted.
    let root = repo_root();
    for file in crd_schema::manifest_files(&gateway_dir()).unwrap_or_else(|e| panic!("{e}")) {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let found = crd_schema::yaml11_ambiguities(&text);
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        assert!(found.is_empty(), "{name}: quote these values: {found:?}");
    }
}

#[test]
fn every_embedded_filter_config_passes_the_filter_validator() {
    let mut seen = 0;
    for doc in manifests() {
        for (path, json) in filter_configs(&doc) {
            seen += 1;
            if let Err(e) = FilterConfig::from_json(&json) {
                panic!("{doc}: {path}: the filter refuses its configuration: {e}\n{json}");
            }
        }
    }
    // Two policies (HTTP and ConfigMap variants) and one upstream-stage patch.
    assert_eq!(seen, 3, "expected three embedded filter configurations");
}

#[test]
fn extension_policies_run_the_downstream_stage_without_cluster_selection() {
    let docs = manifests();
    let policies: Vec<&Document> = docs
        .iter()
        .filter(|d| (d.api_version(), d.kind()) == EEP)
        .collect();
    assert_eq!(policies.len(), 2, "one policy per code source");
    let configs: Vec<&Value> = policies
        .iter()
        .map(|p| {
            p.value
                .pointer("/spec/wasm/0/config")
                .unwrap_or_else(|| panic!("{p}: no config"))
        })
        .collect();
    for (policy, config) in policies.iter().zip(&configs) {
        assert_eq!(config.get("stage"), Some(&json!("downstream")), "{policy}");
        // The DynamicResolver backend is the route's only cluster; there is nothing to pick.
        for key in ["cluster_header", "clusters"] {
            assert!(
                config.get(key).is_none(),
                "{policy}: `{key}` has no meaning in Envoy Gateway"
            );
        }
        assert_eq!(
            policy.value.pointer("/spec/wasm/0/failOpen"),
            Some(&json!(false)),
            "{policy}"
        );
    }
    assert_eq!(
        configs[0], configs[1],
        "the two code sources must carry the same policy"
    );
}

#[test]
fn extension_policies_pin_their_code() {
    for doc in manifests()
        .iter()
        .filter(|d| (d.api_version(), d.kind()) == EEP)
    {
        assert_eq!(str_at(doc, "/spec/wasm/0/code/type"), "HTTP", "{doc}");
        // The CRD documents this pattern but does not enforce it; Envoy compares hex digests.
        let digest = str_at(doc, "/spec/wasm/0/code/http/sha256");
        assert!(
            digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{doc}: sha256 {digest:?} is not 64 lowercase hex digits"
        );
        let url = str_at(doc, "/spec/wasm/0/code/http/url");
        assert!(url.ends_with("/dfp_filter.wasm"), "{doc}: {url}");
    }
}

#[test]
fn policy_and_route_reference_each_other() {
    let base = docs_in("base");
    let route = find(&base, "HTTPRoute", "dynamic-forward-proxy");
    let gateway = find(&base, "Gateway", "eg");
    let class = find(&base, "GatewayClass", "eg");
    assert_eq!(str_at(route, "/spec/parentRefs/0/name"), gateway.name());
    assert_eq!(str_at(gateway, "/spec/gatewayClassName"), class.name());
    assert_eq!(
        str_at(class, "/spec/controllerName"),
        "gateway.envoyproxy.io/gatewayclass-controller"
    );
    let backend_ref = route
        .value
        .pointer("/spec/rules/0/backendRefs/0")
        .expect("backendRef");
    let backend = find(
        &base,
        "Backend",
        str_at(route, "/spec/rules/0/backendRefs/0/name"),
    );
    assert_eq!(
        backend_ref.get("group"),
        Some(&json!("gateway.envoyproxy.io"))
    );
    assert_eq!(backend_ref.get("kind"), Some(&json!("Backend")));
    assert_eq!(str_at(backend, "/spec/type"), "DynamicResolver");
    assert_eq!(
        str_at(backend, "/spec/tls/wellKnownCACertificates"),
        "System"
    );
    for doc in manifests()
        .iter()
        .filter(|d| (d.api_version(), d.kind()) == EEP)
    {
        let target = doc.value.pointer("/spec/targetRefs/0").expect("targetRef");
        assert_eq!(
            target.get("group"),
            Some(&json!("gateway.networking.k8s.io")),
            "{doc}"
        );
        assert_eq!(target.get("kind"), Some(&json!("HTTPRoute")), "{doc}");
        assert_eq!(
            target.get("name").and_then(Value::as_str),
            Some(route.name()),
            "{doc}"
        );
        assert_eq!(
            doc.namespace(),
            route.namespace(),
            "{doc}: policy and route share a namespace"
        );
    }
}

/// The client's credential for the proxy never reaches a destination: the route's only rule
/// removes it, as envoy.yaml's virtual host does.
#[test]
fn route_removes_proxy_authorization() {
    let base = docs_in("base");
    let route = find(&base, "HTTPRoute", "dynamic-forward-proxy");
    let rules = route
        .value
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .expect("rules");
    for (i, rule) in rules.iter().enumerate() {
        let removes = rule
            .pointer("/filters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|f| f.get("type") == Some(&json!("RequestHeaderModifier")))
            .filter_map(|f| f.pointer("/requestHeaderModifier/remove"))
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(Value::as_str)
            .any(|name| name.eq_ignore_ascii_case("proxy-authorization"));
        assert!(
            removes,
            "rule {i} of {route} does not remove Proxy-Authorization"
        );
    }
}

#[test]
fn configmap_variant_points_at_its_in_cluster_server() {
    let docs = docs_in("wasm-configmap");
    let deployment = find(&docs, "Deployment", "dfp-filter-wasm");
    let service = find(&docs, "Service", "dfp-filter-wasm");
    let policy = find(&docs, "EnvoyExtensionPolicy", "dfp-filter");

    // Service -> pods: selector matches the pod labels, targetPort names the container port.
    let selector = service.value.pointer("/spec/selector").expect("selector");
    let labels = deployment
        .value
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .expect("pod labels");
    for (key, value) in selector.as_object().expect("selector map") {
        assert_eq!(
            labels.get(key),
            Some(value),
            "selector {key} does not match the pods"
        );
    }
    assert_eq!(
        deployment.value.pointer("/spec/selector/matchLabels"),
        deployment.value.pointer("/spec/template/metadata/labels")
    );
    let container = deployment
        .value
        .pointer("/spec/template/spec/containers/0")
        .expect("container");
    let target_port = str_at(service, "/spec/ports/0/targetPort");
    let container_port = container
        .get("ports")
        .and_then(Value::as_array)
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.get("name") == Some(&json!(target_port)))
        })
        .and_then(|p| p.get("containerPort"))
        .and_then(Value::as_u64)
        .expect("the Service's targetPort names a container port");
    let command: Vec<&str> = container
        .get("command")
        .and_then(Value::as_array)
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let arg = |flag: &str| {
        command
            .iter()
            .position(|a| *a == flag)
            .and_then(|i| command.get(i + 1))
            .copied()
            .unwrap_or_else(|| panic!("httpd without {flag}"))
    };
    assert_eq!(
        arg("-p"),
        container_port.to_string(),
        "httpd listens on the container port"
    );

    // The document root is the ConfigMap mount, so the URL path is the ConfigMap key.
    let mount = container.pointer("/volumeMounts/0").expect("volume mount");
    assert_eq!(
        mount.get("mountPath").and_then(Value::as_str),
        Some(arg("-h"))
    );
    let volume = deployment
        .value
        .pointer("/spec/template/spec/volumes/0")
        .expect("volume");
    assert_eq!(volume.get("name"), mount.get("name"));
    assert_eq!(
        volume.pointer("/configMap/name"),
        Some(&json!("dfp-filter-wasm"))
    );

    let service_port = service
        .value
        .pointer("/spec/ports/0/port")
        .and_then(Value::as_u64);
    let host = format!(
        "{}.{}.svc",
        service.name(),
        service.namespace().expect("namespace")
    );
    let expected = match service_port {
        Some(80) => format!("http://{host}/dfp_filter.wasm"),
        Some(port) => format!("http://{host}:{port}/dfp_filter.wasm"),
        None => panic!("Service without a port"),
    };
    assert_eq!(str_at(policy, "/spec/wasm/0/code/http/url"), expected);
    assert_eq!(deployment.namespace(), service.namespace());
    assert_eq!(
        deployment.namespace(),
        Some("envoy-gateway-system"),
        "where Envoy Gateway runs"
    );
}

#[test]
fn envoy_gateway_config_enables_what_the_manifests_need() {
    let install = docs_in("install");
    let config_map = find(&install, "ConfigMap", "envoy-gateway-config");
    assert_eq!(config_map.namespace(), Some("envoy-gateway-system"));
    let text = str_at(config_map, "/data/envoy-gateway.yaml");
    let inner =
        crd_schema::parse_documents("envoy-gateway.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inner.len(), 1);
    let config = &inner[0];
    assert_eq!(
        (config.api_version(), config.kind()),
        ("gateway.envoyproxy.io/v1alpha1", "EnvoyGateway")
    );
    // Backend (the seed's DynamicResolver) and EnvoyPatchPolicy (the upstream stage) are off by
    // default in Envoy Gateway.
    assert_eq!(
        config.value.pointer("/extensionApis/enableBackend"),
        Some(&json!(true))
    );
    assert_eq!(
        config
            .value
            .pointer("/extensionApis/enableEnvoyPatchPolicy"),
        Some(&json!(true))
    );
    let base = docs_in("base");
    let class = find(&base, "GatewayClass", "eg");
    assert_eq!(
        str_at(config, "/gateway/controllerName"),
        str_at(class, "/spec/controllerName"),
        "the GatewayClass must name the controller Envoy Gateway runs as"
    );
}

#[test]
fn upstream_stage_patch_lands_on_the_route_cluster_and_loads_the_mounted_file() {
    let base = docs_in("base");
    let docs = docs_in("upstream-stage");
    let route = find(&base, "HTTPRoute", "dynamic-forward-proxy");
    let proxy = find(&docs, "EnvoyProxy", "dfp-upstream-check");
    let patch = find(&docs, "EnvoyPatchPolicy", "dfp-upstream-check");

    // Same Gateway as base, plus only the reference to the EnvoyProxy.
    let base_gateway = find(&base, "Gateway", "eg");
    let gateway = find(&docs, "Gateway", "eg");
    let mut stripped = gateway.value.clone();
    let infrastructure = stripped
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .and_then(|spec| spec.remove("infrastructure"))
        .expect("upstream-stage Gateway sets spec.infrastructure");
    assert_eq!(
        stripped, base_gateway.value,
        "the Gateways differ beyond spec.infrastructure"
    );
    assert_eq!(
        infrastructure.get("parametersRef"),
        Some(
            &json!({"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": proxy.name()})
        )
    );

    // The patch targets the Gateway and names the cluster Envoy Gateway generates for the route:
    // httproute/<namespace>/<name>/rule/<index>.
    assert_eq!(
        patch.value.pointer("/spec/targetRef"),
        Some(&json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"}))
    );
    assert_eq!(str_at(patch, "/spec/type"), "JSONPatch");
    let namespace = route.namespace().unwrap_or("default");
    assert_eq!(
        str_at(patch, "/spec/jsonPatches/0/name"),
        format!("httproute/{namespace}/{}/rule/0", route.name())
    );
    assert_eq!(
        str_at(patch, "/spec/jsonPatches/0/type"),
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(
        str_at(patch, "/spec/jsonPatches/0/operation/path"),
        "/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/http_filters"
    );
    let filters = patch
        .value
        .pointer("/spec/jsonPatches/0/operation/value")
        .and_then(Value::as_array)
        .expect("a list of upstream filters");
    let names: Vec<&str> = filters
        .iter()
        .filter_map(|f| f.get("name")?.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.wasm",
            "envoy.filters.http.upstream_codec"
        ],
        "the upstream codec must be the last upstream filter"
    );

    // The wasm file is the ConfigMap key under the EnvoyProxy's mount path.
    let filename = filters[0]
        .pointer("/typed_config/config/vm_config/code/local/filename")
        .and_then(Value::as_str)
        .expect("code from a local file");
    let mount = proxy
        .value
        .pointer("/spec/provider/kubernetes/envoyDeployment/container/volumeMounts/0")
        .expect("volume mount");
    let volume = proxy
        .value
        .pointer("/spec/provider/kubernetes/envoyDeployment/pod/volumes/0")
        .expect("volume");
    assert_eq!(mount.get("name"), volume.get("name"));
    assert_eq!(
        volume.pointer("/configMap/name"),
        Some(&json!("dfp-filter-wasm"))
    );
    let mount_path = mount
        .get("mountPath")
        .and_then(Value::as_str)
        .expect("mountPath");
    assert_eq!(filename, format!("{mount_path}/dfp_filter.wasm"));

    let configs = filter_configs(patch);
    assert_eq!(configs.len(), 1);
    let config: Value =
        serde_json::from_str(&configs[0].1).expect("the plugin configuration is JSON");
    assert_eq!(config.get("stage"), Some(&json!("upstream")));
}

#[test]
fn gateway_policy_matches_envoy_yaml() {
    // envoy-config/envoy.yaml holds the policy real Envoy runs; Envoy Gateway must run the same
    // one, minus the cluster selection that only makes sense with envoy.yaml's two clusters.
    // Compared as the filter reads them, so spelling out a default is not a difference.
    let path = repo_root().join("envoy-config").join("envoy.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = crd_schema::parse_documents("envoy-config/envoy.yaml", &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut found = Vec::new();
    for doc in &docs {
        collect_string_configurations(&doc.value, &mut found);
    }
    let parsed: Vec<FilterConfig> = found
        .iter()
        .map(|json| {
            FilterConfig::from_json(json).unwrap_or_else(|e| panic!("envoy.yaml: {e}\n{json}"))
        })
        .collect();
    let of_stage = |stage: Stage| -> Vec<FilterConfig> {
        parsed
            .iter()
            .filter(|c| c.stage == stage)
            .cloned()
            .collect()
    };
    let mut downstream = of_stage(Stage::Downstream);
    assert_eq!(
        downstream.len(),
        1,
        "envoy.yaml: expected one downstream filter"
    );
    downstream[0].cluster_routing = None;
    // The proxy's own addresses belong to each deployment (envoy.yaml names its own listener and admin).
    downstream[0].own_endpoints.clear();
    let mut upstream = of_stage(Stage::Upstream);
    for config in &mut upstream {
        config.own_endpoints.clear();
    }
    assert!(!upstream.is_empty(), "envoy.yaml: no upstream-stage filter");

    for doc in manifests() {
        for (at, json) in filter_configs(&doc) {
            let config =
                FilterConfig::from_json(&json).unwrap_or_else(|e| panic!("{doc}: {at}: {e}"));
            let expected = match config.stage {
                Stage::Downstream => &downstream,
                Stage::Upstream => &upstream,
            };
            for other in expected {
                assert_eq!(&config, other, "{doc}: {at} differs from envoy.yaml");
            }
        }
    }
}

/// Strings under any `configuration` with `@type: ...StringValue` (the wasm plugin config).
fn collect_string_configurations(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(config) = map.get("configuration") {
                let is_string = config.get("@type").and_then(Value::as_str)
                    == Some("type.googleapis.com/google.protobuf.StringValue");
                if let (true, Some(text)) = (is_string, config.get("value").and_then(Value::as_str))
                {
                    out.push(text.to_string());
                }
            }
            map.values()
                .for_each(|v| collect_string_configurations(v, out));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_string_configurations(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// CEL rules (`x-kubernetes-validations`): evaluated by the validator (tests/src/cel) on every node present, after
// defaulting, as the API server does on create.

#[test]
fn cel_rules_hold_on_the_shipped_manifests() {
    let mut failures = Vec::new();
    let (mut evaluated, mut transition) = (0, 0);
    for doc in manifests() {
        if !crds().knows(doc.api_version(), doc.kind()) {
            continue;
        }
        let report = crds().validate(&doc);
        evaluated += report.rules_evaluated;
        transition += report.transition_rules_skipped;
        failures.extend(
            report
                .violations
                .iter()
                .filter(|v| matches!(v.kind, ViolationKind::Rule | ViolationKind::RuleError))
                .map(|v| format!("{doc}: {v}")),
        );
    }
    assert!(failures.is_empty(), "CEL rules:\n{}", failures.join("\n"));
    assert!(evaluated > 0, "the manifests meet CEL rules; none ran");
    eprintln!("CEL rules evaluated on the shipped manifests: {evaluated} (transition rules skipped on create: {transition})");
}

#[test]
fn broken_copies_break_cel_rules() {
    let cases: [(Document, &str); 8] = [
        (
            broken(
                shipped("base", "HTTPRoute", "dynamic-forward-proxy"),
                "/spec/rules/0/filters",
                |filters| {
                    let copy = filters[0].clone();
                    filters.as_array_mut().expect("filters").push(copy);
                },
            ),
            "spec.rules[0].filters: invalid value: RequestHeaderModifier filter cannot be repeated",
        ),
        (
            broken(
                shipped("base", "HTTPRoute", "dynamic-forward-proxy"),
                "/spec/rules/0/filters/0",
                |filter| {
                    filter["type"] = json!("ResponseHeaderModifier");
                },
            ),
            "spec.rules[0].filters[0]: invalid value: filter.requestHeaderModifier must be nil if the filter.type is not RequestHeaderModifier",
        ),
        // Envoy Gateway's own CRDs: an EnvoyProxy may deploy Envoy one way only.
        (
            broken(
                shipped("upstream-stage", "EnvoyProxy", "dfp-upstream-check"),
                "/spec/provider/kubernetes",
                |kubernetes| {
                    kubernetes["envoyDaemonSet"] = json!({});
                },
            ),
            "spec.provider.kubernetes: invalid value: only one of envoyDeployment or envoyDaemonSet can be specified",
        ),
        (
            broken(shipped("base", "Gateway", "eg"), "/spec", |spec| {
                spec["infrastructure"] = json!({"annotations": {"example.com/-team": "edge"}});
            }),
            "spec.infrastructure.annotations: invalid value: Annotation keys must be in the form",
        ),
        (
            broken(
                shipped("wasm-http", "EnvoyExtensionPolicy", "dfp-filter"),
                "/spec/wasm/0/code",
                |code| {
                    code["image"] = json!({"url": "registry.example/dfp:1"});
                },
            ),
            "spec.wasm[0].code: invalid value: If type is Image, image field needs to be set.",
        ),
        (
            broken(
                shipped("base", "Backend", "backend-dynamic-resolver"),
                "/spec",
                |spec| {
                    spec["endpoints"] = json!([{"fqdn": {"hostname": "example.com", "port": 443}}]);
                },
            ),
            "spec: invalid value: DynamicResolver type cannot have endpoints specified",
        ),
        (
            broken(
                shipped("base", "Gateway", "eg"),
                "/spec/listeners",
                |listeners| {
                    let mut copy = listeners[0].clone();
                copy["name"] = json!("http-again");
                    listeners.as_array_mut().expect("listeners").push(copy);
                },
            ),
            "spec.listeners: invalid value: Combination of port, protocol and hostname must be unique for each listener",
        ),
        (
            broken(
                shipped("wasm-http", "EnvoyExtensionPolicy", "dfp-filter"),
                "/spec",
                |spec| {
                    spec["targetRef"] = spec["targetRefs"][0].clone();
                },
            ),
            "spec: invalid value: either targetRef or targetRefs must be used",
        ),
    ];
    for (doc, expected) in cases {
        let report = crds().validate(&doc);
        let failures: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
        assert!(
            failures.iter().any(|f| f.starts_with(expected)),
            "{doc}: expected {expected:?}, got {failures:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Broken copies: the checks above can fail, and say where

/// A shipped document, to break.
fn shipped(folder: &str, kind: &str, name: &str) -> Document {
    find(&docs_in(folder), kind, name).clone()
}

fn broken(mut doc: Document, pointer: &str, change: impl FnOnce(&mut Value)) -> Document {
    let target = doc
        .value
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("the shipped manifest has no {pointer}"));
    change(target);
    doc
}

fn set(pointer: &str, value: Value) -> impl FnOnce(&mut Document) {
    let pointer = pointer.to_string();
    move |doc: &mut Document| {
        let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
        let parent = doc
            .value
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("no object at {parent}"));
        parent.insert(key.to_string(), value);
    }
}

#[test]
fn broken_manifests_fail_at_the_field_at_fault() {
    struct Case {
        doc: (&'static str, &'static str, &'static str),
        pointer: &'static str,
        value: Value,
        path: &'static str,
        kind: ViolationKind,
    }
    let cases = [
        // The seed's warning says "ConfigMap" is not a Wasm code source; the CRD agrees.
        Case {
            doc: ("wasm-configmap", "EnvoyExtensionPolicy", "dfp-filter"),
            pointer: "/spec/wasm/0/code/type",
            value: json!("ConfigMap"),
            path: "spec.wasm[0].code.type",
            kind: ViolationKind::Enum,
        },
        Case {
            doc: ("wasm-http", "EnvoyExtensionPolicy", "dfp-filter"),
            pointer: "/spec/wasm/0/code/http/sha265",
            value: json!("typo"),
            path: "spec.wasm[0].code.http.sha265",
            kind: ViolationKind::UnknownField,
        },
        Case {
            doc: ("wasm-http", "EnvoyExtensionPolicy", "dfp-filter"),
            pointer: "/spec/wasm/0/failOpen",
            value: json!("false"),
            path: "spec.wasm[0].failOpen",
            kind: ViolationKind::Type,
        },
        Case {
            doc: ("wasm-http", "EnvoyExtensionPolicy", "dfp-filter"),
            pointer: "/spec/targetRefs/0/kind",
            value: json!("HTTP Route"),
            path: "spec.targetRefs[0].kind",
            kind: ViolationKind::Pattern,
        },
        Case {
            doc: ("wasm-http", "EnvoyExtensionPolicy", "dfp-filter"),
            pointer: "/spec/targetRefs/0/name",
            value: json!(""),
            path: "spec.targetRefs[0].name",
            kind: ViolationKind::Length,
        },
        Case {
            doc: ("base", "Backend", "backend-dynamic-resolver"),
            pointer: "/spec/type",
            value: json!("Dynamic"),
            path: "spec.type",
            kind: ViolationKind::Enum,
        },
        Case {
            doc: ("base", "Backend", "backend-dynamic-resolver"),
            pointer: "/spec/tls/wellKnownCACertificates",
            value: json!("Mozilla"),
            path: "spec.tls.wellKnownCACertificates",
            kind: ViolationKind::Pattern,
        },
        Case {
            doc: ("base", "HTTPRoute", "dynamic-forward-proxy"),
            pointer: "/spec/rules/0/backendRefs/0/group",
            value: json!("Gateway.EnvoyProxy.io"),
            path: "spec.rules[0].backendRefs[0].group",
            kind: ViolationKind::Pattern,
        },
        Case {
            doc: ("base", "Gateway", "eg"),
            pointer: "/spec/listeners/0/port",
            value: json!(0),
            path: "spec.listeners[0].port",
            kind: ViolationKind::Range,
        },
        Case {
            doc: ("base", "Gateway", "eg"),
            pointer: "/spec/listeners/0/port",
            value: json!("80"),
            path: "spec.listeners[0].port",
            kind: ViolationKind::Type,
        },
        Case {
            doc: ("base", "GatewayClass", "eg"),
            pointer: "/metadata/name",
            value: json!("EG_class"),
            path: "metadata.name",
            kind: ViolationKind::Metadata,
        },
        Case {
            doc: ("base", "GatewayClass", "eg"),
            pointer: "/apiVersion",
            value: json!("gateway.networking.k8s.io/v2"),
            path: "apiVersion",
            kind: ViolationKind::UnknownResource,
        },
    ];
    for case in cases {
        let (folder, kind, name) = case.doc;
        let mut doc = shipped(folder, kind, name);
        set(case.pointer, case.value.clone())(&mut doc);
        let violation = only_violation(&doc);
        assert_eq!(
            (violation.path.as_str(), violation.kind),
            (case.path, case.kind),
            "{doc} with {} = {}: got {violation}",
            case.pointer,
            case.value
        );
    }
}

#[test]
fn missing_required_fields_are_named() {
    let policy = shipped("wasm-http", "EnvoyExtensionPolicy", "dfp-filter");
    let doc = broken(policy, "/spec/wasm/0", |wasm| {
        wasm.as_object_mut().expect("wasm entry").remove("code");
    });
    let violation = only_violation(&doc);
    assert_eq!(
        (violation.path.as_str(), violation.kind),
        ("spec.wasm[0].code", ViolationKind::Required)
    );

    let gateway = shipped("base", "Gateway", "eg");
    let doc = broken(gateway, "/spec/listeners/0", |listener| {
        listener
            .as_object_mut()
            .expect("listener")
            .remove("protocol");
    });
    let violation = only_violation(&doc);
    assert_eq!(
        (violation.path.as_str(), violation.kind),
        ("spec.listeners[0].protocol", ViolationKind::Required)
    );
}

#[test]
fn a_broken_file_is_reported_with_file_object_and_path() {
    // Same route as the check above uses, from text: a misspelt key as a person would type it.
    let path = gateway_dir()
        .join("base")
        .join("dynamic-forward-proxy.yaml");
    let text = std::fs::read_to_string(&path).expect("readable");
    let broken_text = text.replace(
        "wellKnownCACertificates: System",
        "wellKnownCACertificate: System",
    );
    assert_ne!(text, broken_text, "the mutation must apply");
    let docs = crd_schema::parse_documents(
        "envoy-config/gateway/base/dynamic-forward-proxy.yaml",
        &broken_text,
    )
    .expect("still YAML");
    let failures: Vec<String> = docs
        .iter()
        .filter_map(|doc| check(doc).err().map(|v| describe(doc, &v)))
        .collect();
    assert_eq!(
        failures,
        ["envoy-config/gateway/base/dynamic-forward-proxy.yaml document 2 (Backend/backend-dynamic-resolver): \
          spec.tls.wellKnownCACertificate: unknown field: field not declared in schema"]
    );
}

#[test]
fn unknown_kinds_are_not_waved_through() {
    let docs = crd_schema::parse_documents(
        "inline",
        "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicies\nmetadata: {name: x}\nspec: {}\n",
    )
    .expect("parses");
    let violations = check(&docs[0]).expect_err("an unknown kind must fail");
    assert_eq!(violations[0].kind, ViolationKind::UnknownResource);
}

#[test]
fn a_broken_filter_config_is_refused_naming_the_key() {
    let policy = shipped("wasm-http", "EnvoyExtensionPolicy", "dfp-filter");
    let doc = broken(policy, "/spec/wasm/0/config", |config| {
        config
            .as_object_mut()
            .expect("config object")
            .insert("allow_list".into(), json!([]));
    });
    // Still a valid manifest: `config` is free-form for the CRD...
    assert!(
        check(&doc).is_ok(),
        "config is x-kubernetes-preserve-unknown-fields"
    );
    // ...which is why the filter's own validator has to run on it.
    let (_, json) = filter_configs(&doc).remove(0);
    let err = FilterConfig::from_json(&json).expect_err("unknown key");
    assert!(
        err.to_string().contains("allow_list"),
        "the error names the key: {err}"
    );
}
