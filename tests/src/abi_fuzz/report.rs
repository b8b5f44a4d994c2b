//! The fuzzer's results as markdown: the hostcall × phase coverage table and each divergence
//! with its minimal program, so it can be replayed.

use std::fmt::Write;

use abi_fuzz::program::{Call, Phase, Ref};

use super::run::{Divergence, FuzzResult};

/// A step's arguments as a reader wants them: references by name, bytes as text or hex.
pub fn describe_program(d: &Divergence) -> String {
    let mut out = String::new();
    if !d.startup.steps.is_empty() && d.program.id != d.startup.id {
        out.push_str("after the startup program:\n");
        out.push_str(&describe_steps(&d.startup));
    }
    if let Some(shape) = &d.shape {
        let _ = writeln!(
            out,
            "request: {} {} body={} trailers={} response_trailers={}",
            shape.method,
            shape.path,
            shape
                .body
                .as_ref()
                .map_or("none".to_string(), |b| format!("{} bytes", b.len())),
            shape.trailers,
            shape.response_trailers
        );
    }
    out.push_str(&describe_steps(&d.program));
    out
}

fn describe_steps(program: &abi_fuzz::program::Program) -> String {
    let mut out = String::new();
    for (i, step) in program.steps.iter().enumerate() {
        let ints: Vec<String> = step
            .ints
            .iter()
            .map(|v| match Ref::from_arg(*v) {
                Some(r) => format!("{r:?}"),
                None => v.to_string(),
            })
            .collect();
        let bufs: Vec<String> = step
            .bufs
            .iter()
            .map(|b| match std::str::from_utf8(b) {
                Ok(t) if b.len() <= 80 => format!("{t:?}"),
                _ => format!("<{} bytes>", b.len()),
            })
            .collect();
        let bad = if step.bad_pointer == 0 {
            String::new()
        } else {
            format!(" bad_pointer=0x{:x}", step.bad_pointer)
        };
        let _ = writeln!(
            out,
            "  #{i} {}: {}(ints={ints:?}, bufs=[{}]){bad}",
            step.phase,
            step.call,
            bufs.join(", ")
        );
    }
    out
}

pub fn describe_divergence(d: &Divergence) -> String {
    let mut out = format!(
        "program {} (id {}):\n{}",
        d.index,
        d.program.id,
        describe_program(d)
    );
    if let Some(shape) = &d.shape {
        let _ = writeln!(
            out,
            "  replay: DFP_ABI_FUZZ_REPLAY='{}'",
            super::run::replay_text(&d.program, shape)
        );
    }
    for diff in &d.diffs {
        let _ = writeln!(
            out,
            "  {}\n    envoy:    {}\n    host-sim: {}",
            diff.field,
            diff.envoy_text(),
            diff.host_sim_text()
        );
    }
    out
}

/// docs/abi-coverage.md.
pub fn markdown(result: &FuzzResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# ABI fuzzing: coverage\n");
    let _ = writeln!(
        out,
        "Written by `tests/tests/abi_fuzz.rs` (differential ABI fuzzing, see docs/fidelity.md). Seed {}, {} programs, \
         {} proxy restarts, {:.0} s. Each cell: steps Envoy ran / steps generated, then divergences (undocumented) and \
         documented differences when there are any. Root phases run in the root context; `on_http_call_response` in \
         whichever context made the call.\n",
        result.seed,
        result.programs,
        result.restarts,
        result.elapsed.as_secs_f64()
    );
    let phases: Vec<Phase> = Phase::step_phases().collect();
    let _ = write!(out, "| hostcall |");
    for p in &phases {
        let _ = write!(out, " {} |", p.name().trim_start_matches("on_"));
    }
    let _ = write!(out, "\n| --- |");
    for _ in &phases {
        let _ = write!(out, " --- |");
    }
    out.push('\n');
    for call in Call::ALL {
        let _ = write!(out, "| {call} |");
        for phase in &phases {
            let cell = result.coverage.get(&(*call, *phase));
            let text = match cell {
                None => "–".to_string(),
                Some(c) => {
                    let mut t = format!("{}/{}", c.ran, c.generated);
                    if c.divergent > 0 {
                        let _ = write!(t, " **{}✗**", c.divergent);
                    }
                    if c.documented > 0 {
                        let _ = write!(t, " {}d", c.documented);
                    }
                    t
                }
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\n## Documented differences that accepted something\n");
    if result.accepted.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for (id, n) in &result.accepted {
        let _ = writeln!(out, "- `{id}`: {n} field(s)");
    }
    let _ = writeln!(out, "\n## Divergences\n");
    if result.divergences.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for d in &result.divergences {
        let _ = writeln!(out, "```\n{}```\n", describe_divergence(d));
    }
    out
}
