//! The end-to-end suite as a library: one shared [`World`], the case table, and "run every case
//! of a variant against a proxy started with that variant". The Envoy suite
//! (`tests/tests/envoy_e2e.rs`) uses it; a host-sim suite plugs in its own launcher.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};

use serde_json::Value;
use tempfile::TempDir;

use tokio::sync::OnceCell;

use crate::cases::{self, Case, Target, Variant};
use crate::envoy::Envoy;
use crate::proxy::Proxy;
use crate::world::{tests_dir, World};

/// How many cases run at once against one proxy.
pub const PARALLEL_CASES: usize = 8;

/// The fixtures, started once per test process and shared by every test in it.
pub async fn shared_world() -> anyhow::Result<Arc<World>> {
    static WORLD: OnceCell<Arc<World>> = OnceCell::const_new();
    WORLD
        .get_or_try_init(|| async {
            let world = World::start().await?;
            // A static is never dropped, so its temp files would outlive the process.
            remove_at_exit(world.pki.dir().to_path_buf());
            Ok::<_, anyhow::Error>(world)
        })
        .await
        .cloned()
}

static AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes `dir` when the process exits normally (the test harness returns from `main`).
fn remove_at_exit(dir: PathBuf) {
    static REGISTER: Once = Once::new();
    AT_EXIT.lock().unwrap_or_else(|p| p.into_inner()).push(dir);
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn` that only touches a static; if
        // registration fails the files merely stay behind.
        unsafe {
            libc::atexit(remove_registered_dirs);
        }
    });
}

extern "C" fn remove_registered_dirs() {
    if let Ok(dirs) = AT_EXIT.lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The variants and every case, placeholders filled from `world`.
pub fn load(world: &World) -> anyhow::Result<(BTreeMap<String, Variant>, Vec<Case>)> {
    let dir = tests_dir().join("cases");
    let vars = world.vars();
    let mut variants = cases::load_variants(&dir.join("variants.yaml"), &vars)?;
    for (name, variant) in &mut variants {
        if let Some(spec) = &variant.resolved {
            let rules = crate::rbac::rules(spec)
                .map_err(|e| anyhow::anyhow!("variant {name}: resolved: {e:#}"))?;
            variant.resolved = Some(rules);
        }
    }
    variants.insert(SHIPPED.to_string(), shipped_variant()?);
    let cases = cases::load_case_dir(&dir.join("requests"), &vars)?;
    for case in &cases {
        anyhow::ensure!(
            variants.contains_key(&case.variant),
            "case {} names unknown variant {:?}",
            case.id(),
            case.variant
        );
    }
    Ok((variants, cases))
}

/// The variant whose filter configs are the ones in `envoy-config/envoy.yaml`.
pub const SHIPPED: &str = "shipped";

/// The shipped bootstrap's filter configs, so the cases can check the allowlist users get.
/// Every wasm `configuration` in the file is read; the downstream ones and the upstream ones
/// must each be identical (both clusters run the same upstream policy).
pub fn shipped_variant() -> anyhow::Result<Variant> {
    let path = crate::wasm::workspace_root()
        .join("envoy-config")
        .join("envoy.yaml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let yaml: Value =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut configs = Vec::new();
    collect_wasm_configs(&yaml, &mut configs);
    let mut by_stage: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for text in configs {
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: a wasm configuration: {e}", path.display()))?;
        let stage = config["stage"].as_str().unwrap_or("downstream").to_string();
        by_stage.entry(stage).or_default().push(config);
    }
    let mut pick = |stage: &str| -> anyhow::Result<Value> {
        let found = by_stage.remove(stage).unwrap_or_default();
        let first = found
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{}: no {stage} filter config", path.display()))?;
        anyhow::ensure!(
            found.iter().all(|c| *c == first),
            "{}: the {stage} filter configs differ",
            path.display()
        );
        Ok(first)
    };
    Ok(Variant {
        description: "the filter configs of envoy-config/envoy.yaml".into(),
        downstream: pick("downstream")?,
        upstream: pick("upstream")?,
        resolved: Some(shipped_resolved_rules(&yaml)?),
    })
}

/// The name of the resolved-address stage (RBAC) in `envoy-config/envoy.yaml`.
pub const RESOLVED_FILTER: &str = "dfp.resolved_address_policy";

/// The RBAC `rules` of the shipped bootstrap's resolved-address stage (an upstream filter of
/// each DFP cluster; they must all be the same).
pub fn shipped_resolved_rules(bootstrap: &Value) -> anyhow::Result<Value> {
    let mut found = Vec::new();
    collect_named_filters(bootstrap, RESOLVED_FILTER, &mut found);
    let rules: Vec<&Value> = found.iter().map(|f| &f["typed_config"]["rules"]).collect();
    let first = rules
        .first()
        .ok_or_else(|| anyhow::anyhow!("envoy-config/envoy.yaml: no {RESOLVED_FILTER} filter"))?;
    anyhow::ensure!(
        rules.len() == 2 && rules.iter().all(|r| r == first),
        "envoy-config/envoy.yaml: expected the same {RESOLVED_FILTER} rules on dfp_plain and dfp_tls"
    );
    Ok((*first).clone())
}

/// The `resolved_address_filter` of every DNS cache config in a bootstrap (the DFP filter's and each DFP cluster's),
/// `Value::Null` where one has none.
pub fn dns_cache_address_filters(bootstrap: &Value) -> Vec<Value> {
    fn walk(node: &Value, out: &mut Vec<Value>) {
        match node {
            Value::Object(map) => {
                for (key, value) in map {
                    if key == "dns_cache_config" {
                        out.push(value["resolved_address_filter"].clone());
                    } else {
                        walk(value, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(bootstrap, &mut out);
    out
}

fn collect_named_filters<'a>(node: &'a Value, name: &str, out: &mut Vec<&'a Value>) {
    match node {
        Value::Object(map) => {
            if map.get("name").and_then(Value::as_str) == Some(name) {
                out.push(node);
            }
            map.values()
                .for_each(|v| collect_named_filters(v, name, out));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_named_filters(v, name, out)),
        _ => {}
    }
}

/// Every `configuration: {"@type": ...StringValue, value: ...}` string under `node`.
fn collect_wasm_configs(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(value) = map
                .get("configuration")
                .and_then(|c| c.get("value"))
                .and_then(Value::as_str)
            {
                out.push(value.to_string());
            }
            map.values().for_each(|v| collect_wasm_configs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_wasm_configs(v, out)),
        _ => {}
    }
}

/// The test bootstrap template (`tests/config/envoy.template.yaml`).
pub fn bootstrap_template() -> anyhow::Result<String> {
    let path = tests_dir().join("config").join("envoy.template.yaml");
    std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

/// Which proxy to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Envoy,
    /// host-sim, in this test process (same YAML, same wasm).
    HostSim,
}

/// A started proxy and where its access log goes.
pub struct Running {
    pub proxy: Box<dyn Proxy>,
    pub access_log: PathBuf,
    _dir: TempDir,
}

/// Starts a proxy of `kind` on the test bootstrap with the given filter configs.
pub async fn start_proxy(
    kind: ProxyKind,
    world: &World,
    downstream: &Value,
    upstream: &Value,
) -> anyhow::Result<Running> {
    start_proxy_with(kind, world, downstream, upstream, None).await
}

/// [`start_proxy`] with the resolved-address stage's RBAC rules (`None`: the stage is inert).
pub async fn start_proxy_with(
    kind: ProxyKind,
    world: &World,
    downstream: &Value,
    upstream: &Value,
    resolved_rules: Option<&Value>,
) -> anyhow::Result<Running> {
    let dir = tempfile::Builder::new().prefix("dfp-access-").tempdir()?;
    let access_log = dir.path().join("access.log");
    let bootstrap = world.render_bootstrap_with(
        &bootstrap_template()?,
        downstream,
        upstream,
        resolved_rules,
        (0, 0),
        &access_log,
    )?;
    Ok(Running {
        proxy: start_bootstrap(kind, bootstrap).await?,
        access_log,
        _dir: dir,
    })
}

/// Starts a proxy of `kind` on a rendered bootstrap and waits until it is ready.
pub async fn start_bootstrap(kind: ProxyKind, bootstrap: String) -> anyhow::Result<Box<dyn Proxy>> {
    Ok(match kind {
        ProxyKind::Envoy => Box::new(Envoy::start(&bootstrap).await?),
        // host-sim's start blocks until its workers are up.
        ProxyKind::HostSim => Box::new(
            tokio::task::spawn_blocking(move || crate::host_sim::HostSim::start(&bootstrap))
                .await??,
        ),
    })
}

/// Every variant of `tests/cases/variants.yaml` plus the shipped one: each is a `#[test]` in
/// `envoy_e2e.rs` and `host_sim_e2e.rs` (see [`variant_tests!`](crate::variant_tests)).
pub const VARIANTS: [&str; 7] = [
    "enforce",
    "strict",
    "report",
    "header",
    SHIPPED,
    "resolved",
    "resolved_carve_out",
];

/// Runs `variant_name`'s cases against `kind` and panics listing the failing cases.
pub fn assert_variant(kind: ProxyKind, variant_name: &str) {
    let failures = crate::rt::block_on(run_variant(kind, variant_name))
        .unwrap_or_else(|e| panic!("variant {variant_name} against {kind:?}: {e:#}"));
    assert!(
        failures.is_empty(),
        "variant {variant_name}: failing cases against {kind:?}:\n{}",
        failures.join("\n")
    );
}

/// One `#[test]` per variant of [`VARIANTS`] against the given [`ProxyKind`], so Envoy and host-sim
/// run the same table (a test per variant, so each gets its own proxy and its own report).
#[macro_export]
macro_rules! variant_tests {
    ($kind:expr) => {
        #[test]
        fn enforce_variant_cases() {
            $crate::suite::assert_variant($kind, "enforce");
        }

        #[test]
        fn strict_variant_cases() {
            $crate::suite::assert_variant($kind, "strict");
        }

        #[test]
        fn report_variant_cases() {
            $crate::suite::assert_variant($kind, "report");
        }

        #[test]
        fn header_variant_cases() {
            $crate::suite::assert_variant($kind, "header");
        }

        #[test]
        fn shipped_variant_cases() {
            $crate::suite::assert_variant($kind, $crate::suite::SHIPPED);
        }

        #[test]
        fn resolved_variant_cases() {
            $crate::suite::assert_variant($kind, "resolved");
        }

        #[test]
        fn resolved_carve_out_variant_cases() {
            $crate::suite::assert_variant($kind, "resolved_carve_out");
        }
    };
}

/// Starts a proxy with `variant_name` and runs that variant's cases against it. Returns the
/// failures, each with the proxy's log appended once at the end when there are any.
pub async fn run_variant(kind: ProxyKind, variant_name: &str) -> anyhow::Result<Vec<String>> {
    let world = shared_world().await?;
    let (variants, all_cases) = load(&world)?;
    let variant = variants
        .get(variant_name)
        .ok_or_else(|| anyhow::anyhow!("no variant {variant_name:?}"))?;
    let cases: Vec<Case> = all_cases
        .into_iter()
        .filter(|c| c.variant == variant_name)
        .collect();
    anyhow::ensure!(!cases.is_empty(), "variant {variant_name:?} has no cases");
    let running = start_proxy_with(
        kind,
        &world,
        &variant.downstream,
        &variant.upstream,
        variant.resolved.as_ref(),
    )
    .await?;
    let proxy = &running.proxy;
    let target = Target {
        listener: proxy.listener(),
        admin: proxy.admin(),
        access_log: Some(running.access_log.clone()),
        world: world.clone(),
    };
    let mut failures = cases::run_all(&target, &cases, PARALLEL_CASES).await;
    eprintln!(
        "variant {variant_name}: {} of {} cases passed against {}",
        cases.len() - failures.len(),
        cases.len(),
        proxy.kind()
    );
    if !failures.is_empty() {
        failures.push(format!(
            "--- {} log ({} of {} cases failed) ---\n{}",
            proxy.kind(),
            failures.len(),
            cases.len(),
            tail(&proxy.log(), 200)
        ));
    }
    Ok(failures)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
