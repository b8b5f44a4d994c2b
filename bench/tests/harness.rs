//! The harness measures what it claims: the generator's counts agree with the upstream's own, and
//! a smoke run of the binary writes results that describe a real measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bench::load::{self, Generator};
use bench::upstream;

#[test]
fn generator_counts_agree_with_the_upstream() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let served = Arc::new(AtomicU64::new(0));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    runtime.spawn(upstream::serve(listener, served.clone()));

    let requests = load::requests_for_hosts(5, addr.port());
    let mut generator =
        Generator::start(runtime.handle(), addr, requests, 4).expect("generator starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !generator.swept() {
        assert!(std::time::Instant::now() < deadline, "sweep never finished");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = served.load(Ordering::SeqCst);
    generator.begin_measure();
    std::thread::sleep(Duration::from_millis(500));
    generator.end_measure();
    let result = runtime.block_on(generator.finish()).expect("results");
    let after = served.load(Ordering::SeqCst);

    assert!(result.requests > 20, "only {} requests", result.requests);
    assert_eq!(result.errors, 0, "{:?}", result.first_failure);
    assert_eq!(result.non_2xx, 0, "{:?}", result.first_failure);
    // Each connection swept at least its share of the 5 hosts before the window.
    assert!(result.warmup_requests >= 5);
    assert_eq!(result.latency_us.len(), result.requests);
    // Every measured response came from the upstream. Requests in flight at either edge of the
    // window (at most one per connection and edge) reach the upstream but are not counted.
    let upstream_saw = after - before;
    assert!(
        upstream_saw >= result.requests && upstream_saw <= result.requests + 2 * 4,
        "upstream {upstream_saw} vs generator {}",
        result.requests
    );
    let rps = result.requests_per_second();
    let expected = result.requests as f64 / result.elapsed.as_secs_f64();
    assert!((rps - expected).abs() < 1e-6 && rps > 0.0);
    assert!(result.latency_ms(0.5) > 0.0 && result.latency_ms(0.5) <= result.latency_ms(0.99));
}

#[test]
fn a_refused_target_counts_errors_not_requests() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // A port that was free a moment ago: connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let requests = load::requests_for_hosts(1, addr.port());
    let mut generator =
        Generator::start(runtime.handle(), addr, requests, 2).expect("generator starts");
    runtime.block_on(async {
        generator.begin_measure();
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    generator.end_measure();
    let result = runtime.block_on(generator.finish()).expect("results");
    assert_eq!(result.requests, 0);
    assert!(result.errors > 0);
    assert!(result
        .first_failure
        .as_deref()
        .is_some_and(|f| f.contains("connect")));
}

#[test]
fn smoke_run_of_the_upstream_row_writes_results() {
    let out = tempfile::tempdir().expect("temp dir");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["run", "--smoke", "--setups", "upstream", "--out"])
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running bench");
    assert!(status.success(), "bench run --smoke failed: {status}");

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("results.json")).expect("results.json"),
    )
    .expect("valid JSON");
    let row = &json["rows"][0];
    assert_eq!(row["row"]["setup"], "upstream");
    assert_eq!(row["clean_rounds"], 1, "{row}");
    assert!(
        row["requests_per_s"].as_f64().unwrap_or(0.0) > 100.0,
        "{row}"
    );
    assert!(row["cpu_s_per_10k"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
    assert!(row["peak_rss_mib"].as_f64().unwrap_or(0.0) > 1.0, "{row}");
    let sample = &json["samples"][0];
    let requests = sample["requests"].as_u64().unwrap_or(0);
    assert!(sample["upstream_served"].as_u64().unwrap_or(0) + 8 >= requests);

    let md = std::fs::read_to_string(out.path().join("results.md")).expect("results.md");
    assert!(md.contains("| upstream alone | – |"), "{md}");
    let png = std::fs::read(out.path().join("chart.png")).expect("chart.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
}
