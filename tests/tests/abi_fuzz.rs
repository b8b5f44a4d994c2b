//! Differential ABI fuzzing against real Envoy 1.40 (tests/src/abi_fuzz): generated programs of
//! raw hostcalls in every phase, through both proxies; any difference differences.yaml does not
//! document fails, with the seed and the shrunk program. Writes docs/abi-coverage.md when it ran
//! with the default seed and size.
//!
//! `DFP_ABI_FUZZ_PROGRAMS=N` and `DFP_ABI_FUZZ_SEED=S` change the run (`just fuzz-fidelity N S`);
//! `DFP_ABI_FUZZ_REPLAY='...'` runs the one program a divergence report printed; `DFP_ABI_FUZZ_FROM=I` starts
//! at the epoch holding program index I (the same sequence, the earlier epochs generated but not run), and
//! `DFP_ABI_FUZZ_TRACE=1` prints every documented difference as it is accepted.

use tests::abi_fuzz::{self, report, Config};
use tests::rt::block_on;
use tests::wasm::workspace_root;

/// The floor for one CI run.
const CI_PROGRAMS: usize = 2000;
const CI_SEED: u64 = 12;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn envoy_and_host_sim_agree_on_generated_hostcall_programs() {
    let programs = env_number("DFP_ABI_FUZZ_PROGRAMS", CI_PROGRAMS as u64) as usize;
    let seed = env_number("DFP_ABI_FUZZ_SEED", CI_SEED);
    let config = Config {
        programs,
        seed,
        epochs: (programs / 500).max(1),
        replay: std::env::var("DFP_ABI_FUZZ_REPLAY").ok(),
        from: env_number("DFP_ABI_FUZZ_FROM", 0) as usize,
        trace: std::env::var_os("DFP_ABI_FUZZ_TRACE").is_some(),
    };
    let result = block_on(abi_fuzz::run(&config)).expect("the fuzzer runs");
    println!(
        "abi fuzz: seed {seed}, {} programs, {} divergent ({} shrunk), {} restarts, {} resyncs, {:.1}s",
        result.programs,
        result.divergences.len() + result.more_divergent,
        result.divergences.len(),
        result.restarts,
        result.resyncs,
        result.elapsed.as_secs_f64()
    );
    // The CI run's table, never a replay's.
    if config.replay.is_none()
        && (seed == CI_SEED && programs == CI_PROGRAMS
            || std::env::var_os("DFP_ABI_FUZZ_WRITE").is_some())
    {
        let path = workspace_root().join("docs").join("abi-coverage.md");
        std::fs::write(&path, report::markdown(&result))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    // A replay runs its one program.
    let expected = if config.replay.is_some() { 1 } else { programs };
    assert!(
        result.programs >= expected,
        "ran {} of {expected} programs",
        result.programs
    );
    assert!(
        result.divergences.is_empty(),
        "{} program(s) diverged (seed {seed}); the first {} shrunk:\n{}",
        result.divergences.len() + result.more_divergent,
        result.divergences.len(),
        result
            .divergences
            .iter()
            .map(report::describe_divergence)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
