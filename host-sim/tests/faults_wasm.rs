//! Wasm faults in the proxy: a trap (or a guest that loops, or grows memory past the limit) fails its stream with
//! 503 `wasm_fail_stream`, and the plugin's `failure_policy` decides what later streams get, as in Envoy 1.40 —
//! per plugin, per worker (these proxies run one worker so every request meets the same VM).

mod faults_support;

use std::time::{Duration, Instant};

use faults_support::*;
use host_sim::harness::{Harness, Request, Stage};
use host_sim::proxy::ProxyOptions;
use host_sim::vm::{CallbackError, LoadError};

struct Setup {
    proxy: Proxy,
    upstream: Upstream,
    _dir: TempDir,
}

fn start(policy_lines: &str, deadline: Duration, memory_limit: usize) -> Setup {
    let dir = TempDir::new("faults-wasm");
    let code = dir.write("guest.wat", FAULT_GUEST.as_bytes());
    let upstream = Upstream::start(Behaviour::Echo);
    let yaml = bootstrap(
        upstream.addr,
        &[wasm_filter("faulty", &code, policy_lines)],
        "",
    );
    let options = ProxyOptions {
        concurrency: 1,
        wasm_call_deadline: Some(deadline),
        wasm_memory_limit: Some(memory_limit),
        ..ProxyOptions::default()
    };
    Setup {
        proxy: Proxy::start(&yaml, &options),
        upstream,
        _dir: dir,
    }
}

fn start_default(policy_lines: &str) -> Setup {
    start(policy_lines, Duration::from_secs(1), 16 << 20)
}

fn fault(s: &Setup, kind: &str) -> Reply {
    request(s.proxy.listener, &get("a.test", &[("x-fault", kind)])).expect("a response")
}

fn plain(s: &Setup) -> Reply {
    request(s.proxy.listener, &get("a.test", &[])).expect("a response")
}

fn assert_wasm_503(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 503, "{what}: {reply:?}");
    assert!(
        reply.body.is_empty(),
        "{what}: Envoy's wasm 503 has no body: {reply:?}"
    );
}

#[test]
fn healthy_guest_runs_on_every_request() {
    let s = start_default("");
    for _ in 0..3 {
        let reply = plain(&s);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.text().contains("x-guest-saw: 1"), "{}", reply.text());
    }
    assert_eq!(s.upstream.count(), 3);
    assert!(eventually(Duration::from_secs(2), || s
        .proxy
        .live_streams()
        == 0));
}

#[test]
fn fail_closed_is_the_default_and_the_plugin_stays_failed() {
    let s = start_default("");
    assert_eq!(plain(&s).status, 200);
    assert_wasm_503(&fault(&s, "trap"), "the trapping request");
    // Every later request fails too, however long we wait: no reload.
    for i in 0..3 {
        assert_wasm_503(&plain(&s), &format!("request {i} after the trap"));
    }
    std::thread::sleep(Duration::from_millis(1600));
    assert_wasm_503(&plain(&s), "after more than the reload backoff");
    assert_eq!(
        s.upstream.count(),
        1,
        "nothing reaches the upstream once failed"
    );
    assert_eq!(s.proxy.stat("wasm.faulty.vm_reload_success"), 0);
    assert_eq!(s.proxy.stat("wasm.faulty.vm_reload_backoff"), 0);
    assert!(s
        .proxy
        .stats()
        .contains_key("wasm.faulty.vm_reload_failure"));
    assert_eq!(s.proxy.stat("http.main.downstream_rq_5xx"), 5);
    assert!(eventually(Duration::from_secs(2), || s
        .proxy
        .live_streams()
        == 0));
}

#[test]
fn explicit_fail_closed_and_fail_open_false_mean_the_same() {
    for lines in ["failure_policy: FAIL_CLOSED", "fail_open: false"] {
        let s = start_default(lines);
        assert_wasm_503(&fault(&s, "trap"), lines);
        assert_wasm_503(&plain(&s), lines);
    }
}

#[test]
fn fail_reload_rebuilds_the_vm_after_its_backoff() {
    let s = start_default("failure_policy: FAIL_RELOAD");
    assert_wasm_503(&fault(&s, "trap"), "the trapping request");
    // Whether the first reload waits depends on how long ago the VM was loaded (Envoy measures the backoff from the
    // last load); within 1.5 s (the most the jittered 1 s backoff can be) a request gets a fresh VM.
    let started = Instant::now();
    let mut refused = 0;
    let recovered = loop {
        let reply = plain(&s);
        if reply.status == 200 {
            break reply;
        }
        assert_wasm_503(&reply, "while backing off");
        refused += 1;
        assert!(started.elapsed() < Duration::from_secs(3), "no reload");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        recovered.text().contains("x-guest-saw: 1"),
        "the reloaded filter runs"
    );
    assert_eq!(s.proxy.stat("wasm.faulty.vm_reload_success"), 1);
    assert_eq!(s.proxy.stat("wasm.faulty.vm_reload_backoff"), refused);

    // Just reloaded: a second trap now falls inside the backoff, so the next request is refused for certain.
    assert_wasm_503(&fault(&s, "trap"), "the second trap");
    let t0 = Instant::now();
    assert_wasm_503(&plain(&s), "right after the second trap");
    assert_eq!(s.proxy.stat("wasm.faulty.vm_reload_backoff"), refused + 1);
    // And after at most 1.5 s from that reload, the VM is rebuilt again.
    std::thread::sleep(Duration::from_millis(1550).saturating_sub(t0.elapsed()));
    assert_eq!(plain(&s).status, 200);
    assert_eq!(s.proxy.stat("wasm.faulty.vm_reload_success"), 2);
    assert_eq!(s.proxy.stat("wasm.faulty.vm_reload_failure"), 0);
    assert!(eventually(Duration::from_secs(2), || s
        .proxy
        .live_streams()
        == 0));
}

#[test]
fn reload_backoff_comes_from_reload_config() {
    let s = start_default(
        "failure_policy: FAIL_RELOAD\nreload_config: { backoff: { base_interval: 3s } }",
    );
    assert_wasm_503(&plain_after_reload_trap(&s), "inside a 3 s backoff");
    std::thread::sleep(Duration::from_millis(1700));
    // Past Envoy's default backoff, still inside the configured one.
    assert_wasm_503(&plain(&s), "1.7 s into a 3 s backoff");
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(plain(&s).status, 200);
}

/// Traps right after a (re)load, so the next request is certainly inside the backoff; returns that request's reply.
fn plain_after_reload_trap(s: &Setup) -> Reply {
    // The VM was loaded when the proxy started, moments ago.
    assert_wasm_503(&fault(s, "trap"), "trap");
    plain(s)
}

#[test]
fn fail_open_skips_the_failed_filter() {
    let s = start_default("failure_policy: FAIL_OPEN");
    // The trapping request itself fails, as in Envoy; later ones go on without the filter.
    assert_wasm_503(&fault(&s, "trap"), "the trapping request");
    for _ in 0..2 {
        let reply = plain(&s);
        assert_eq!(reply.status, 200);
        assert!(
            !reply.text().contains("x-guest-saw"),
            "the filter is skipped"
        );
    }
    assert_eq!(s.upstream.count(), 2);
    // The legacy spelling means the same.
    let legacy = start_default("fail_open: true");
    assert_wasm_503(
        &fault(&legacy, "trap"),
        "legacy fail_open, the trapping request",
    );
    assert_eq!(plain(&legacy).status, 200);
}

#[test]
fn a_trap_in_the_response_replaces_the_upstream_response_with_503() {
    let s = start_default("");
    let reply = fault(&s, "response");
    assert_wasm_503(&reply, "trap in proxy_on_response_headers");
    assert_eq!(s.upstream.count(), 1, "the request did reach the upstream");
    assert!(eventually(Duration::from_secs(2), || s
        .proxy
        .live_streams()
        == 0));
}

#[test]
fn a_looping_guest_is_interrupted_at_its_deadline_and_the_worker_keeps_serving() {
    let s = start(
        "failure_policy: FAIL_RELOAD",
        Duration::from_millis(300),
        16 << 20,
    );
    let t0 = Instant::now();
    let reply = fault(&s, "loop");
    let took = t0.elapsed();
    assert_wasm_503(&reply, "the looping request");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "interrupted after {took:?}"
    );
    // The only worker is free again: the admin answers, and after the backoff the plugin serves.
    assert!(s
        .proxy
        .stats()
        .contains_key("wasm.faulty.vm_reload_success"));
    assert!(eventually(Duration::from_secs(3), || plain(&s).status == 200));
    // Loops again and again do not wear the worker down.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1600));
        assert_wasm_503(&fault(&s, "loop"), "another loop");
    }
    assert!(eventually(Duration::from_secs(3), || plain(&s).status == 200));
}

#[test]
fn a_guest_growing_memory_past_the_limit_traps_cleanly() {
    let s = start(
        "failure_policy: FAIL_RELOAD",
        Duration::from_secs(2),
        4 << 20,
    );
    assert_wasm_503(&fault(&s, "grow"), "growing past 4 MiB");
    assert!(eventually(Duration::from_secs(3), || plain(&s).status == 200));
    assert!(eventually(Duration::from_secs(2), || s
        .proxy
        .live_streams()
        == 0));
}

// ---- the VM layer on its own, through the harness ------------------------------------------------------------

fn harness(deadline: Option<Duration>, memory: Option<usize>) -> Harness {
    Harness::builder(FAULT_GUEST.as_bytes())
        .call_deadline(deadline)
        .memory_limit(memory)
        .build()
        .expect("the fault guest loads")
}

#[test]
fn a_deadline_interruption_names_the_deadline_and_fails_the_vm() {
    let mut h = harness(Some(Duration::from_millis(50)), None);
    let t0 = Instant::now();
    let out = h
        .run(Request::get("http://a.test/").header("x-fault", "loop"))
        .expect("runs");
    let took = t0.elapsed();
    assert_eq!(out.stage, Stage::Failed);
    assert_eq!(out.status(), 503);
    let trap = out.trap.unwrap_or_default();
    assert!(trap.contains("call deadline of 50ms"), "{trap}");
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(h.instance().failure().is_some());
    // A failed VM creates no more streams by itself; the harness reloads it for the next run.
    let s = h.instance().create_stream(Default::default());
    assert!(matches!(s, Err(CallbackError::VmFailed(_))), "{s:?}");
    assert_eq!(
        h.run(Request::get("http://a.test/")).expect("runs").stage,
        Stage::Finished
    );
}

#[test]
fn without_a_deadline_only_the_guest_decides() {
    // No deadline: a guest that returns at once is unaffected (and nothing ticks it into a trap).
    let mut h = harness(None, None);
    for _ in 0..3 {
        assert_eq!(
            h.run(Request::get("http://a.test/")).expect("runs").stage,
            Stage::Finished
        );
    }
}

#[test]
fn memory_growth_past_the_limit_traps_and_a_module_too_big_to_start_is_refused() {
    let mut h = harness(Some(Duration::from_secs(2)), Some(1 << 20));
    let out = h
        .run(Request::get("http://a.test/").header("x-fault", "grow"))
        .expect("runs");
    assert_eq!(out.stage, Stage::Failed);
    let trap = out.trap.unwrap_or_default();
    assert!(trap.contains("growing memory"), "{trap}");
    assert!(h.instance().memory_size() <= 1 << 20);
    // A module whose initial memory (40 pages, 2.5 MiB) exceeds the limit does not start.
    let big = FAULT_GUEST.replace(
        "(memory (export \"memory\") 2)",
        "(memory (export \"memory\") 40)",
    );
    assert_ne!(big, FAULT_GUEST);
    let refused = Harness::builder(big.as_bytes())
        .memory_limit(Some(1 << 20))
        .build()
        .expect_err("refused");
    assert!(matches!(refused, LoadError::Instantiate(_)), "{refused}");
}
