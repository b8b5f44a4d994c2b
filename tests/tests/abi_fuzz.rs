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

/// The programs earlier runs found diverging (tests/fidelity/abi_fuzz_regressions.txt), each replayed against
/// both proxies: a fix that regresses fails here, not only in the next long run.
#[test]
fn envoy_and_host_sim_agree_on_the_programs_earlier_runs_found() {
    let path = workspace_root().join("tests/fidelity/abi_fuzz_regressions.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let replays: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert!(!replays.is_empty(), "{} lists no program", path.display());
    let mut diverged = Vec::new();
    for replay in &replays {
        let config = Config {
            programs: 1,
            seed: CI_SEED,
            epochs: 1,
            replay: Some((*replay).to_string()),
            from: 0,
            trace: false,
        };
        let result = block_on(abi_fuzz::run(&config)).expect("the fuzzer runs");
        assert_eq!(result.programs, 1, "replay {replay:?} did not run");
        diverged.extend(result.divergences.iter().map(report::describe_divergence));
    }
    println!(
        "abi fuzz regressions: {} programs replayed, {} diverged",
        replays.len(),
        diverged.len()
    );
    assert!(diverged.is_empty(), "{}", diverged.join("\n"));
}
