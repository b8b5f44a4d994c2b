//! A module built for `wasm32-wasip1` (std with WASI: stdout/stderr, clocks, environment,
//! randomness) loads and runs.

use host_sim::harness::{Harness, Request, Stage};
use host_sim::LogLevel;

use crate::common::{guest, runtime, WASIP1};

#[test]
fn wasip1_module_loads_and_runs() {
    let mut h = Harness::builder(&guest("wasi-probe", WASIP1))
        .runtime(runtime())
        .env("PROBE_GREETING", "hi")
        .build()
        .expect("wasip1 module loads");
    assert_eq!(h.logs_at(LogLevel::Info), vec!["wasi-probe: started"]);
    assert_eq!(h.logs_at(LogLevel::Error), vec!["wasi-probe: stderr works"]);
    let out = h.run(Request::get("http://w.test/")).expect("runs");
    assert_eq!(out.stage, Stage::Finished);
    let up = out.upstream_request.expect("forwarded").headers;
    assert_eq!(up.get_str("x-wasi-env"), Some("hi"));
    assert_eq!(up.get_str("x-wasi-monotonic"), Some("ok"));
    let secs: u64 = up
        .get_str("x-wasi-epoch-secs")
        .and_then(|s| s.parse().ok())
        .expect("epoch");
    assert!(secs > 1_600_000_000);
    assert!(h.logged("wasi-probe: request seen"));
}
