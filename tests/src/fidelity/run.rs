//! The runner: for each variant, one Envoy and one host-sim from the same rendered bootstrap;
//! every case of the variant sent to both (concurrently, but for cases with counter deltas);
//! each observation checked against the case's expectations, and the two compared with each
//! other after normalisation. A difference passes only if the documented list accepts it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tempfile::TempDir;

use super::compare::{self, FieldDiff};
use super::differences::{self, Documented};
use super::expect;
use super::fixtures::Fixtures;
use super::model::{self, FidelityCase, FidelityVariant};
use super::normalise::{Normaliser, TAG_MASK};
use super::observe::{self, Endpoint, Observation};
use super::patch;
use crate::cases::Case;
use crate::proxy::Proxy;
use crate::suite::{self, ProxyKind};
use crate::template::{self, Vars};
use crate::world::tests_dir;

/// Cases in flight at once against one proxy.
pub const PARALLEL: usize = 16;
/// Variants (each an Envoy and a host-sim) running at once.
pub const PARALLEL_VARIANTS: usize = 3;

/// The two proxies and the tag each one's case ids carry.
pub const SIDES: [(ProxyKind, &str); 2] = [(ProxyKind::Envoy, "~E"), (ProxyKind::HostSim, "~H")];

/// Variants, cases and documented differences, loaded and checked.
pub struct Table {
    pub variants: BTreeMap<String, FidelityVariant>,
    pub cases: Vec<FidelityCase>,
    pub differences: Vec<Documented>,
}

/// Where the table lives.
pub fn fidelity_dir() -> PathBuf {
    tests_dir().join("fidelity")
}

impl Table {
    /// Loads the e2e table (`tests/cases`) and the fidelity table (`tests/fidelity`).
    pub fn load(vars: &Vars) -> anyhow::Result<Table> {
        let cases_dir = tests_dir().join("cases");
        let mut variants = model::load_variants(
            &[
                cases_dir.join("variants.yaml"),
                fidelity_dir().join("variants.yaml"),
            ],
            vars,
        )?;
        for (name, variant) in &mut variants {
            // In the case files `resolved` is an address policy; the bootstrap wants RBAC rules.
            if let Some(spec) = &variant.resolved {
                let rules = crate::rbac::rules(spec)
                    .map_err(|e| anyhow::anyhow!("variant {name}: resolved: {e:#}"))?;
                variant.resolved = Some(rules);
            }
        }
        let shipped = suite::shipped_variant()?;
        variants.insert(
            suite::SHIPPED.to_string(),
            FidelityVariant {
                description: shipped.description,
                downstream: shipped.downstream,
                upstream: shipped.upstream,
                template: None,
                patch: Vec::new(),
                resolved: shipped.resolved,
                module: None,
            },
        );
        let cases = model::load_cases(
            &[cases_dir.join("requests"), fidelity_dir().join("cases")],
            vars,
        )?;
        for case in &cases {
            anyhow::ensure!(
                variants.contains_key(&case.variant),
                "case {} names unknown variant {:?}",
                case.id(),
                case.variant
            );
        }
        for name in variants.keys() {
            anyhow::ensure!(
                cases.iter().any(|c| &c.variant == name),
                "variant {name:?} has no cases"
            );
        }
        // The ABI fuzzer's and the configuration corpus's entries are theirs (the fuzzer counts their use in
        // docs/abi-coverage.md).
        let differences = differences::load(&fidelity_dir().join("differences.yaml"))?
            .into_iter()
            .filter(|d| {
                !d.cases.iter().all(|c| {
                    c.starts_with(differences::ABI_FUZZ_CASES)
                        || c.starts_with(crate::config_parity::CASE_ID)
                })
            })
            .collect();
        Ok(Table {
            variants,
            cases,
            differences,
        })
    }
}

/// One case's result on both proxies.
#[derive(Debug)]
pub struct CaseOutcome {
    pub case: FidelityCase,
    pub envoy: Observation,
    pub host_sim: Observation,
    pub envoy_failures: Vec<String>,
    pub host_sim_failures: Vec<String>,
    /// Whether host-sim's expectation failures follow from documented differences alone
    /// (every difference from Envoy is documented), and so do not fail the case.
    pub host_sim_excused: bool,
    /// Every field that differs, with the id of the documented difference accepting it.
    pub diffs: Vec<(FieldDiff, Option<String>)>,
}

impl CaseOutcome {
    /// Differences no documented entry accepts.
    pub fn unexplained(&self) -> impl Iterator<Item = &FieldDiff> {
        self.diffs
            .iter()
            .filter(|(_, doc)| doc.is_none())
            .map(|(d, _)| d)
    }

    /// The unexplained differences worth showing: when the number of upstream requests differs,
    /// the per-field upstream differences that follow from it are left out.
    pub fn shown_unexplained(&self) -> Vec<&FieldDiff> {
        let count_differs = self.diffs.iter().any(|(d, _)| d.field == "upstream.count");
        self.unexplained()
            .filter(|d| {
                !(count_differs && d.field.starts_with("upstream") && d.field != "upstream.count")
            })
            .collect()
    }

    /// Whether the case passed: expectations hold on both, every difference is documented.
    pub fn passed(&self) -> bool {
        self.envoy_failures.is_empty()
            && (self.host_sim_failures.is_empty() || self.host_sim_excused)
            && self.unexplained().next().is_none()
    }
}

/// The whole run.
pub struct RunResult {
    pub outcomes: Vec<CaseOutcome>,
    pub differences: Vec<Documented>,
    /// Variants that could not run at all (a proxy refused the config ...).
    pub variant_errors: Vec<String>,
    /// Whether every variant ran (only then is an unused documented difference an error).
    pub complete: bool,
    /// Port numbers to placeholder names, to keep reports free of run-to-run values.
    pub ports: Vec<(String, String)>,
}

impl RunResult {
    /// Documented differences no case needed.
    pub fn unused_differences(&self) -> Vec<&Documented> {
        self.differences
            .iter()
            .filter(|d| {
                !self
                    .outcomes
                    .iter()
                    .any(|o| o.diffs.iter().any(|(_, id)| id.as_deref() == Some(&d.id)))
            })
            .collect()
    }

    /// Every reason the run fails, as messages.
    pub fn failures(&self) -> Vec<String> {
        let mut out = self.variant_errors.clone();
        for o in &self.outcomes {
            let id = o.case.id();
            for f in &o.envoy_failures {
                out.push(format!(
                    "{id}: envoy: {}",
                    compare::short(&self.unport(f), 600)
                ));
            }
            if !o.host_sim_excused {
                for f in &o.host_sim_failures {
                    out.push(format!(
                        "{id}: host-sim: {}",
                        compare::short(&self.unport(f), 600)
                    ));
                }
            }
            let shown = o.shown_unexplained();
            for d in shown.iter().take(8) {
                match compare::json_paths(d.envoy_text(), d.host_sim_text(), 12) {
                    Some(paths) if d.field == "body" => out.push(format!(
                        "{id}: undocumented difference in {} (JSON):\n    {}",
                        d.field,
                        self.unport(&paths.join("\n    "))
                    )),
                    _ => out.push(format!(
                        "{id}: undocumented difference in {}: envoy {:?}, host-sim {:?}",
                        d.field,
                        compare::short(&self.unport(d.envoy_text()), 300),
                        compare::short(&self.unport(d.host_sim_text()), 300)
                    )),
                }
            }
            if shown.len() > 8 {
                let rest: Vec<&str> = shown[8..].iter().map(|d| d.field.as_str()).collect();
                out.push(format!(
                    "{id}: {} more undocumented differences: {}",
                    rest.len(),
                    compare::short(&rest.join(", "), 400)
                ));
            }
        }
        if self.complete {
            for d in self.unused_differences() {
                out.push(format!(
                    "documented difference {} matches no case any more: remove it",
                    d.id
                ));
            }
        }
        out
    }

    /// `text` with fixture port numbers replaced by their placeholder names.
    pub fn unport(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (port, name) in &self.ports {
            out = out.replace(port.as_str(), name);
        }
        out
    }
}

/// Runs the table (or only `only` variants) against both proxies.
pub async fn run(only: Option<&[String]>) -> anyhow::Result<RunResult> {
    let fixtures = Fixtures::shared().await?;
    let vars = fixtures.vars();
    let table = Table::load(&vars)?;
    for name in only.unwrap_or_default() {
        anyhow::ensure!(
            table.variants.contains_key(name),
            "no variant {name:?} (DFP_FIDELITY_VARIANTS)"
        );
    }
    // Variants run a few at a time: most of a variant's time is its proxies starting (host-sim
    // compiling the wasm), which overlaps well with another variant's requests.
    let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL_VARIANTS));
    let differences = Arc::new(table.differences);
    let vars = Arc::new(vars);
    let mut tasks = tokio::task::JoinSet::new();
    for (name, variant) in table.variants {
        if only.is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        let cases: Vec<FidelityCase> = table
            .cases
            .iter()
            .filter(|c| c.variant == name)
            .cloned()
            .collect();
        let (fixtures, vars, differences, permits) = (
            fixtures.clone(),
            vars.clone(),
            differences.clone(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let started = std::time::Instant::now();
            let count = cases.len();
            let result = run_variant(&fixtures, &vars, &variant, cases, &differences).await;
            eprintln!(
                "fidelity: variant {name}: {count} cases in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            (name, result)
        });
    }
    let mut outcomes = Vec::new();
    let mut variant_errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(mut done))) => outcomes.append(&mut done),
            Ok((name, Err(e))) => variant_errors.push(format!("variant {name}: {e:#}")),
            Err(e) => variant_errors.push(format!("a variant task failed: {e}")),
        }
    }
    // Reports list cases in table order, whatever order the variants finished in.
    let order: BTreeMap<String, usize> = table
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id(), i))
        .collect();
    outcomes.sort_by_key(|o| order.get(&o.case.id()).copied().unwrap_or(usize::MAX));
    variant_errors.sort();
    // Every task has finished: the list is ours alone again.
    let differences = Arc::unwrap_or_clone(differences);
    let ports = vars
        .iter()
        .filter(|(k, v)| k.ends_with("_PORT") && v.len() >= 4)
        .map(|(k, v)| (v.clone(), format!("{{{{{k}}}}}")))
        .collect();
    Ok(RunResult {
        outcomes,
        differences,
        variant_errors,
        complete: only.is_none(),
        ports,
    })
}

/// A proxy started for one variant, with its access log's directory.
struct Started {
    proxy: Box<dyn Proxy>,
    endpoint: Endpoint,
    _dir: TempDir,
}

async fn start(
    kind: ProxyKind,
    template_text: &str,
    vars: &Vars,
    variant: &FidelityVariant,
) -> anyhow::Result<Started> {
    let dir = tempfile::Builder::new().prefix("dfp-fidelity-").tempdir()?;
    let access_log = dir.path().join("access.log");
    let yaml = render(template_text, vars, variant, &access_log)?;
    let proxy = crate::suite::start_bootstrap(kind, yaml).await?;
    let endpoint = Endpoint {
        listener: proxy.listener(),
        admin: proxy.admin(),
        access_log,
    };
    Ok(Started {
        proxy,
        endpoint,
        _dir: dir,
    })
}

fn render(
    template_text: &str,
    vars: &Vars,
    variant: &FidelityVariant,
    access_log: &std::path::Path,
) -> anyhow::Result<String> {
    let mut vars = vars.clone();
    let config = |v: &Value| serde_json::to_string(&v.to_string());
    vars.insert("DOWNSTREAM_CONFIG".into(), config(&variant.downstream)?);
    vars.insert("UPSTREAM_CONFIG".into(), config(&variant.upstream)?);
    vars.insert(
        "ACCESS_LOG".into(),
        access_log.to_string_lossy().into_owned(),
    );
    vars.insert("LISTENER_PORT".into(), "0".into());
    vars.insert("ADMIN_PORT".into(), "0".into());
    if let Some(rules) = &variant.resolved {
        vars.insert("RESOLVED_RULES".into(), rules.to_string());
    }
    if let Some(module) = &variant.module {
        let wasm = super::modules::module_wasm(&module.wasm)?;
        vars.insert("MODULE_WASM".into(), wasm.to_string_lossy().into_owned());
        vars.insert("MODULE_ROOT_ID".into(), module.root_id.clone());
    }
    let yaml = template::render(template_text, &vars)?;
    Ok(patch::apply(&yaml, &variant.patch)?)
}

async fn run_variant(
    fixtures: &Arc<Fixtures>,
    vars: &Vars,
    variant: &FidelityVariant,
    cases: Vec<FidelityCase>,
    documented: &[Documented],
) -> anyhow::Result<Vec<CaseOutcome>> {
    for case in &cases {
        for (name, spec) in &case.dns {
            fixtures.world.dns.set(name, spec.answer()?);
        }
        for (_, tag) in SIDES {
            fixtures
                .scripted
                .script(&case.tagged(tag).id(), case.behaviour.clone());
        }
    }
    let template_path = tests_dir().join(
        variant
            .template
            .clone()
            .unwrap_or_else(|| PathBuf::from("config/envoy.template.yaml")),
    );
    let template_text = std::fs::read_to_string(&template_path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", template_path.display()))?;
    if let Some(module) = &variant.module {
        // Built (cargo, npm) once per process, off the runtime's threads; rendering then finds it.
        let name = module.wasm.clone();
        tokio::task::spawn_blocking(move || super::modules::module_wasm(&name)).await??;
    }
    let (envoy, host_sim) = tokio::join!(
        start(ProxyKind::Envoy, &template_text, vars, variant),
        start(ProxyKind::HostSim, &template_text, vars, variant)
    );
    let (envoy, host_sim) = match (envoy, host_sim) {
        (Ok(e), Ok(h)) => (e, h),
        (e, h) => {
            let mut why = Vec::new();
            if let Err(e) = &e {
                why.push(format!("envoy did not start: {e:#}"));
            }
            if let Err(e) = &h {
                why.push(format!("host-sim did not start: {e:#}"));
            }
            drop_in_background(h.ok());
            anyhow::bail!(why.join("\n"));
        }
    };

    let envoy_cases: Arc<Vec<Case>> =
        Arc::new(cases.iter().map(|c| c.tagged(SIDES[0].1)).collect());
    let host_cases: Arc<Vec<Case>> = Arc::new(cases.iter().map(|c| c.tagged(SIDES[1].1)).collect());
    let (envoy_obs, host_obs) = tokio::join!(
        run_side(fixtures.clone(), envoy.endpoint.clone(), envoy_cases),
        run_side(fixtures.clone(), host_sim.endpoint.clone(), host_cases),
    );
    let outcomes: Vec<CaseOutcome> = cases
        .iter()
        .zip(envoy_obs)
        .zip(host_obs)
        .map(|((case, e), h)| outcome(case, e, h, documented))
        .collect();
    if std::env::var_os("DFP_KEEP_LOGS").is_some() && outcomes.iter().any(|o| !o.passed()) {
        eprintln!(
            "--- envoy log ---\n{}",
            suite::tail(&envoy.proxy.log(), 300)
        );
    }
    drop(envoy);
    drop_in_background(Some(host_sim));
    Ok(outcomes)
}

/// host-sim's shutdown joins its threads and drops a runtime: not on an async worker.
fn drop_in_background(started: Option<Started>) {
    if let Some(started) = started {
        tokio::task::spawn_blocking(move || drop(started));
    }
}

/// Observes every case against one proxy: cases without counters `PARALLEL` at a time, then
/// the ones with counters one by one (their deltas must be theirs alone).
async fn run_side(
    fixtures: Arc<Fixtures>,
    endpoint: Endpoint,
    cases: Arc<Vec<Case>>,
) -> Vec<Observation> {
    let mut results: Vec<Option<Observation>> = vec![None; cases.len()];
    let semaphore = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, case) in cases.iter().enumerate() {
        if !case.expect.counters.is_empty() {
            continue;
        }
        let (fixtures, endpoint, cases, semaphore) = (
            fixtures.clone(),
            endpoint.clone(),
            cases.clone(),
            semaphore.clone(),
        );
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            (i, observe::observe(&endpoint, &fixtures, &cases[i]).await)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, obs)) => results[i] = Some(obs),
            Err(e) => eprintln!("a fidelity case task failed: {e}"),
        }
    }
    for (i, case) in cases.iter().enumerate() {
        if !case.expect.counters.is_empty() {
            results[i] = Some(observe::observe(&endpoint, &fixtures, case).await);
        }
    }
    results
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Observation {
                error: Some("the case's task panicked".into()),
                ..Observation::default()
            })
        })
        .collect()
}

/// Checks both observations and compares them.
fn outcome(
    case: &FidelityCase,
    envoy: Observation,
    host_sim: Observation,
    documented: &[Documented],
) -> CaseOutcome {
    let id = case.id();
    let masked_id = format!("{id}{TAG_MASK}");
    let fields = |tag: &str, obs: &Observation| {
        let tagged = case.tagged(tag).id();
        Normaliser {
            tagged_id: &tagged,
            masked_id: &masked_id,
            mask: &case.mask,
            mask_text: &case.mask_text,
            sort: &case.sort,
            json_body: case.json_body,
        }
        .fields(obs)
    };
    let e_fields = fields(SIDES[0].1, &envoy);
    let h_fields = fields(SIDES[1].1, &host_sim);
    let diffs: Vec<(FieldDiff, Option<String>)> = compare::diff(&e_fields, &h_fields)
        .into_iter()
        .map(|d| {
            let doc = documented
                .iter()
                .find(|doc| doc.accepts(&id, &d))
                .map(|doc| doc.id.clone());
            (d, doc)
        })
        .collect();
    let host_sim_failures = expect::check(case, &case.tagged(SIDES[1].1), &host_sim);
    // Envoy is the reference: where host-sim differs only as documented, its failing the
    // expectations Envoy meets is that documented difference, not another one.
    let host_sim_excused = !diffs.is_empty() && diffs.iter().all(|(_, doc)| doc.is_some());
    CaseOutcome {
        envoy_failures: expect::check(case, &case.tagged(SIDES[0].1), &envoy),
        host_sim_failures,
        host_sim_excused,
        case: case.clone(),
        envoy,
        host_sim,
        diffs,
    }
}
