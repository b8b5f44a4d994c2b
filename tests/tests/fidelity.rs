//! Envoy fidelity: the scenario table (`tests/cases/requests`, `tests/fidelity/cases`) against
//! real Envoy 1.40 and host-sim from the same YAML, the same wasm and the same requests. Each
//! answer must meet the case's expectations, and the two answers must agree after
//! normalisation unless `tests/fidelity/differences.yaml` documents the difference. Writes
//! `docs/fidelity.md` when the whole table ran.
//!
//! `DFP_FIDELITY_VARIANTS=a,b` runs only those variants (and writes no report).

use tests::fidelity::{self, report};
use tests::rt::block_on;
use tests::wasm::workspace_root;

/// The floor for the size of the table.
const MIN_CASES: usize = 150;

#[test]
fn envoy_and_host_sim_agree_on_the_table() {
    let only: Option<Vec<String>> = std::env::var("DFP_FIDELITY_VARIANTS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let result = block_on(fidelity::run(only.as_deref())).expect("the fidelity table runs");
    if result.complete {
        let path = workspace_root().join("docs").join("fidelity.md");
        std::fs::write(&path, report::markdown(&result))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        assert!(
            result.outcomes.len() >= MIN_CASES,
            "the table has {} cases, fewer than {MIN_CASES}",
            result.outcomes.len()
        );
    }
    let failures = result.failures();
    assert!(
        failures.is_empty(),
        "{} fidelity failure(s):\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| result.unport(f))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
