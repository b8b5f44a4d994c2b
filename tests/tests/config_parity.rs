//! The same configurations accepted and refused (tests/src/config_parity.rs): every base bootstrap,
//! a sample of their single mutations and the hand-written variants of
//! `tests/fidelity/config_variants.yaml`, judged by `envoy --mode validate` and by host-sim's
//! validation; a disagreement differences.yaml does not document fails.
//!
//! `DFP_CONFIG_CORPUS=N` validates N mutations (default 400; 0: all of them, `just config-parity`).

use std::sync::Mutex;
use std::time::Instant;

use tests::config_parity::{self as parity, BaseInputs, Variant, Verdict};
use tests::envoy;
use tests::fidelity::{differences, fixtures, modules};
use tests::wasm::workspace_root;

const CI_MUTATIONS: usize = 400;

/// Envoy's verdicts, two validations at a time (one per core).
fn envoy_verdicts(variants: &[Variant]) -> Vec<Verdict> {
    let root = workspace_root();
    let next = Mutex::new(0usize);
    let verdicts = Mutex::new(vec![None; variants.len()]);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = {
                    let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
                    let i = *next;
                    *next += 1;
                    i
                };
                let Some(variant) = variants.get(i) else {
                    return;
                };
                let verdict = match envoy::validate(&variant.yaml, &root) {
                    Ok(v) => parity::envoy_verdict(v.success, &v.log),
                    Err(e) => panic!("running envoy on {}: {e:#}", variant.id),
                };
                verdicts.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(verdict);
            });
        }
    });
    verdicts
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|v| v.expect("every variant was validated"))
        .collect()
}

fn host_sim_verdict(yaml: &str) -> Verdict {
    let result = host_sim::config::Bootstrap::from_yaml(yaml)
        .map_err(anyhow::Error::from)
        .and_then(|b| host_sim::proxy::validate(&b, &host_sim::proxy::ProxyOptions::default()));
    parity::host_sim_verdict(&result)
}

#[test]
fn envoy_and_host_sim_accept_and_refuse_the_same_configurations() {
    let started = Instant::now();
    let root = workspace_root();
    let scratch = tempfile::tempdir().expect("tempdir");
    let inputs = BaseInputs {
        filter_wasm: tests::wasm::filter_wasm().expect("build dfp_filter.wasm"),
        probe_wasm: fixtures::probe_wasm().expect("build the ABI probe"),
        module_wasm: modules::module_wasm("sdk-examples").expect("build sdk-examples"),
        scratch: scratch.path().to_path_buf(),
    };
    let bases = parity::bases(&root, &inputs).expect("the bases render");
    let wanted: usize = match std::env::var("DFP_CONFIG_CORPUS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("DFP_CONFIG_CORPUS={v:?} is not a number")),
        Err(_) => CI_MUTATIONS,
    };
    let mut all = Vec::new();
    for base in &bases {
        all.extend(parity::mutations(base).expect("mutations"));
    }
    let generated = all.len();
    let mut variants: Vec<Variant> = bases
        .iter()
        .map(|b| Variant {
            id: format!("{}/{}/base", parity::CASE_ID, b.name),
            yaml: b.yaml.clone(),
        })
        .collect();
    let written = parity::written(
        &root.join("tests/fidelity/config_variants.yaml"),
        &bases,
        &parity::base_vars(&inputs),
    )
    .expect("the hand-written variants");
    variants.extend(written.iter().map(|(v, _)| v.clone()));
    for mutation in parity::sample(all, wanted) {
        variants.extend(mutation.render().expect("a mutation renders"));
    }

    // host-sim validates in process while Envoy's validations run beside it.
    let (envoy_says, host_sim_says, host_sim_time) = std::thread::scope(|scope| {
        let envoy = scope.spawn(|| envoy_verdicts(&variants));
        let started = Instant::now();
        let host_sim: Vec<Verdict> = variants.iter().map(|v| host_sim_verdict(&v.yaml)).collect();
        let host_sim_time = started.elapsed();
        (
            envoy.join().expect("envoy validations"),
            host_sim,
            host_sim_time,
        )
    });
    let documented = parity::corpus_differences(
        differences::load(&root.join("tests/fidelity/differences.yaml")).expect("differences.yaml"),
    );

    let mut failures = Vec::new();
    let (mut accepted, mut refused, mut unsupported, mut documented_hits) = (0, 0, 0, 0);
    for ((variant, e), h) in variants.iter().zip(&envoy_says).zip(&host_sim_says) {
        if variant.id.ends_with("/base") && (e != &Verdict::Accepted || h != &Verdict::Accepted) {
            failures.push(format!(
                "{}: a base must be accepted by both\n  envoy:    {}\n  host-sim: {}",
                variant.id,
                e.text(),
                h.text()
            ));
            continue;
        }
        match (e, h) {
            (Verdict::Accepted, Verdict::Accepted) => accepted += 1,
            (_, Verdict::Unsupported(_)) => unsupported += 1,
            (Verdict::Refused(_), Verdict::Refused(_)) => refused += 1,
            _ => {}
        }
        if parity::disagree(e, h) {
            if parity::documented(&documented, &variant.id, e, h) {
                documented_hits += 1;
            } else {
                failures.push(format!(
                    "{}\n  envoy:    {}\n  host-sim: {}",
                    variant.id,
                    e.text(),
                    h.text()
                ));
            }
        }
    }
    for ((variant, expected), e) in written.iter().zip(&envoy_says[bases.len()..]) {
        let accepts = e == &Verdict::Accepted;
        if accepts != (*expected == parity::Expected::Accepts) {
            failures.push(format!(
                "{}: the variant says Envoy {:?}, Envoy says {}",
                variant.id,
                expected,
                e.text()
            ));
        }
    }
    println!(
        "config parity: {} configurations ({} bases, {} written, {} of {generated} mutations): {accepted} both \
         accept, {refused} both refuse, {unsupported} unsupported by host-sim, {documented_hits} documented \
         differences, {} undocumented; {:.1}s ({:.1}s of it host-sim's)",
        variants.len(),
        bases.len(),
        written.len(),
        variants.len() - bases.len() - written.len(),
        failures.len(),
        started.elapsed().as_secs_f64(),
        host_sim_time.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} configuration(s) judged differently:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
