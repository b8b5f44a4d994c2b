//! Soak: host-sim (in this process, the real filter wasm, the test DNS server and upstreams) takes a long mix of
//! requests from concurrent clients — allowed, denied, invalid, and ones whose upstream or DNS fails — then must
//! hold no live wasm contexts, no leaked file descriptors, and bounded RSS growth.
//!
//! `SOAK_REQUESTS` sets the count (default 12,000 so CI stays well under a minute; the full run is
//! `SOAK_REQUESTS=200000`), `SOAK_CLIENTS` the concurrency (default 16). The numbers are printed at the end.

#[path = "../../host-sim/tests/faults_support/mod.rs"]
mod faults_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faults_support::{eventually, Behaviour, Conn, Proxy, Upstream};
use host_sim::proxy::ProxyOptions;
use serde_json::json;
use tests::rt::block_on;
use tests::suite;
use tests::upstream::RefusedPort;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Open descriptors that are not kept-alive connections between host-sim's upstream pools and the echo server on
/// `upstream_port` (both ends live in this process). Those are bounded by the pool, not leaked.
fn fds_outside_the_pool(upstream_port: u16) -> (usize, usize) {
    let port = format!(":{upstream_port:04X} ");
    let pooled = describe_fds()
        .iter()
        .filter(|d| d.contains(&port) || d.ends_with(&format!(":{upstream_port:04X} state 01")))
        .count();
    (open_fds().saturating_sub(pooled), pooled)
}

/// What each open descriptor is (for a report when some leaked): sockets with their TCP endpoints.
fn describe_fds() -> Vec<String> {
    let tcp: Vec<String> = ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let detail = target
            .strip_prefix("socket:[")
            .and_then(|inode| inode.strip_suffix(']'))
            .and_then(|inode| {
                tcp.iter()
                    .find(|l| l.split_whitespace().nth(9) == Some(inode))
                    .map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        format!("tcp {} -> {} state {}", f[1], f[2], f[3])
                    })
            })
            .unwrap_or_default();
        out.push(format!(
            "{} {target} {detail}",
            entry.file_name().to_string_lossy()
        ));
    }
    out.sort();
    out
}

/// The request kinds of the mix, with the status each must get.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Allowed,
    Denied,
    Invalid,
    UpstreamRefused,
    DnsFailure,
    BadMethod,
}

const MIX: [Kind; 10] = [
    Kind::Allowed,
    Kind::Allowed,
    Kind::Allowed,
    Kind::Allowed,
    Kind::Denied,
    Kind::Denied,
    Kind::Invalid,
    Kind::UpstreamRefused,
    Kind::DnsFailure,
    Kind::BadMethod,
];

fn request(kind: Kind, plain: u16, refused: u16, close: bool) -> (Vec<u8>, u16) {
    let (host, method, status) = match kind {
        Kind::Allowed => (format!("api.dfp.test:{plain}"), "GET", 200),
        Kind::Denied => (format!("evil.dfp.test:{plain}"), "GET", 403),
        Kind::Invalid => ("127.1".to_string(), "GET", 400),
        Kind::UpstreamRefused => (format!("api.dfp.test:{refused}"), "GET", 503),
        Kind::DnsFailure => (format!("nxdomain.dfp.test:{plain}"), "GET", 503),
        Kind::BadMethod => (format!("readonly.dfp.test:{plain}"), "POST", 403),
    };
    let connection = if close { "close" } else { "keep-alive" };
    let body = if method == "POST" { "x" } else { "" };
    let raw = format!(
        "{method} /soak HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    (raw.into_bytes(), status)
}

#[test]
fn soak_mixed_requests_leave_nothing_behind() {
    let total = env_or("SOAK_REQUESTS", 12_000);
    let clients = env_or("SOAK_CLIENTS", 16).max(1);
    let world = block_on(suite::shared_world()).expect("fixtures");
    // An upstream that keeps no record, so the process's memory is host-sim's (the shared echo fixture records
    // every request it sees).
    let echo = Upstream::start_quiet(Behaviour::Echo);
    let plain = echo.addr.port();
    let refused_port = RefusedPort::new().expect("refused port");
    let refused = refused_port.port();
    let downstream = json!({
        "stage": "downstream",
        "allow": [
            { "host": "api.dfp.test", "ports": [plain, refused] },
            { "host": "nxdomain.dfp.test", "ports": [plain] },
            { "host": "readonly.dfp.test", "ports": [plain], "methods": ["GET"] },
        ],
        "cluster_header": "x-dfp-cluster",
        "clusters": { "plain": "dfp_plain", "tls": "dfp_tls" },
    });
    let upstream = json!({ "stage": "upstream", "addresses": { "allow": ["127.0.0.0/8"] } });
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = world
        .render_bootstrap(
            &suite::bootstrap_template().expect("template"),
            &downstream,
            &upstream,
            (0, 0),
            &dir.path().join("access.log"),
        )
        .expect("bootstrap");
    let proxy = Proxy::start(
        &yaml,
        &ProxyOptions {
            concurrency: 2,
            ..ProxyOptions::default()
        },
    );

    // Warm up (plugins, pools, DNS cache, allocator arenas), then take the baseline.
    run(&proxy, 400.min(total), clients, plain, refused);
    std::thread::sleep(Duration::from_millis(300));
    let (rss_before, fds_before) = (rss_kib(), open_fds());
    let (outside_before, _) = fds_outside_the_pool(plain);
    let fds_listed_before = describe_fds();

    let started = Instant::now();
    // RSS every second while it runs: growth should level off, not climb with the request count.
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                samples.push(rss_kib() / 1024);
            }
            samples
        })
    };
    let errors = run(&proxy, total, clients, plain, refused);
    let took = started.elapsed();
    running.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap_or_default();
    assert!(
        errors.is_empty(),
        "{} wrong answers, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    // Connections the clients closed wind down; pooled upstream connections stay (bounded by the pool).
    assert!(
        eventually(Duration::from_secs(10), || proxy.live_streams() == 0),
        "{} wasm contexts still alive",
        proxy.live_streams()
    );
    let fds_settled = eventually(Duration::from_secs(10), || {
        fds_outside_the_pool(plain).0 <= outside_before + 2
    });
    let (rss_after, fds_after) = (rss_kib(), open_fds());
    let (outside_after, pooled) = fds_outside_the_pool(plain);
    eprintln!(
        "soak: {total} requests from {clients} clients in {took:.1?} ({:.0}/s); RSS {} -> {} KiB ({:+} KiB); \
         fds {fds_before} -> {fds_after} ({outside_before} -> {outside_after} outside the upstream pool, \
         {pooled} in it); live wasm contexts 0",
        total as f64 / took.as_secs_f64(),
        rss_before,
        rss_after,
        rss_after as i64 - rss_before as i64,
    );
    if !fds_settled {
        let before: std::collections::BTreeSet<String> = fds_listed_before.into_iter().collect();
        let new: Vec<String> = describe_fds()
            .into_iter()
            .filter(|d| !before.contains(d))
            .collect();
        panic!(
            "file descriptors leaked: {outside_before} -> {outside_after} outside the pool; new:\n{}",
            new.join("\n")
        );
    }
    // Pooled upstream connections (two descriptors each, both ends here) are bounded by the concurrency.
    assert!(
        pooled <= 2 * 2 * clients,
        "{pooled} descriptors of pooled upstream connections for {clients} clients"
    );
    // Growth must not scale with the request count (the full 200,000-request run grows about 2 MiB).
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    eprintln!("soak: RSS MiB each second: {samples:?}");
    let stats = proxy.stats();
    let denied = stats
        .get("wasmcustom.dfp.downstream.denied.host_not_allowed")
        .copied()
        .unwrap_or_default();
    eprintln!("soak: stats denied.host_not_allowed={denied}");
}

/// Sends `total` requests of the mix from `clients` threads; returns the wrong answers.
fn run(proxy: &Proxy, total: usize, clients: usize, plain: u16, refused: u16) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let listener = proxy.listener;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                let mut conn: Option<Conn> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let kind = MIX[i % MIX.len()];
                    // Every 25th request closes its connection: connection churn is part of the soak.
                    let close = i.is_multiple_of(25);
                    let (raw, want) = request(kind, plain, refused, close);
                    let c = conn.get_or_insert_with(|| Conn::open(listener));
                    let mut closes = close;
                    match c.request(&raw) {
                        Ok(reply) => {
                            if reply.status != want {
                                errors.push(format!("{kind:?}: {} {}", reply.status, reply.text()));
                            }
                            closes |= reply
                                .header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                        }
                        Err(e) => {
                            errors.push(format!("{kind:?}: {e}"));
                            closes = true;
                        }
                    }
                    if closes {
                        conn = None;
                    }
                }
                errors
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| {
            h.join()
                .unwrap_or_else(|_| vec!["a client panicked".into()])
        })
        .collect()
}
