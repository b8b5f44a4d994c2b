//! Wasm failure policies against real Envoy 1.40 and host-sim, same bootstrap, same guest (the WAT fault guest of
//! `host-sim/tests/faults_guest.wat`, assembled to binary): a trap fails its stream with 503 and `failure_policy`
//! decides the rest — `FAIL_CLOSED` (default) keeps failing, `FAIL_RELOAD` reloads after its backoff and counts
//! `wasm.<plugin>.vm_reload_*`, `FAIL_OPEN` leaves the filter out. Each proxy runs two workers with a VM each, so
//! every sequence runs on one keep-alive connection (one worker, one VM). The looping and memory-hungry guests are
//! host-sim only (`host-sim/tests/faults_wasm.rs`): in Envoy a looping guest holds its worker forever.

#[path = "../../host-sim/tests/faults_support/mod.rs"]
mod faults_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use faults_support::{
    bootstrap, wasm_filter, Behaviour, Conn, Proxy, Reply, TempDir, Upstream, FAULT_GUEST,
};
use host_sim::proxy::ProxyOptions;
use tests::envoy::Envoy;
use tests::rt::block_on;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Envoy,
    HostSim,
}

struct Subject {
    kind: Kind,
    listener: SocketAddr,
    admin: SocketAddr,
    upstream: Upstream,
    _envoy: Option<Envoy>,
    _host_sim: Option<Proxy>,
    _dir: TempDir,
}

impl Subject {
    fn start(kind: Kind, policy_lines: &str) -> Subject {
        let dir = TempDir::new("faults-wasm-e2e");
        let binary = wat::parse_str(FAULT_GUEST).expect("the fault guest assembles");
        let code = dir.write("guest.wasm", &binary);
        let upstream = Upstream::start(Behaviour::Echo);
        let yaml = bootstrap(
            upstream.addr,
            &[wasm_filter("faulty", &code, policy_lines)],
            "",
        );
        match kind {
            Kind::Envoy => {
                let envoy = block_on(Envoy::start(&yaml)).expect("envoy starts");
                Subject {
                    kind,
                    listener: tests::proxy::Proxy::listener(&envoy),
                    admin: tests::proxy::Proxy::admin(&envoy),
                    upstream,
                    _envoy: Some(envoy),
                    _host_sim: None,
                    _dir: dir,
                }
            }
            Kind::HostSim => {
                let proxy = Proxy::start(
                    &yaml,
                    &ProxyOptions {
                        concurrency: 2,
                        ..ProxyOptions::default()
                    },
                );
                Subject {
                    kind,
                    listener: proxy.listener,
                    admin: proxy.admin,
                    upstream,
                    _envoy: None,
                    _host_sim: Some(proxy),
                    _dir: dir,
                }
            }
        }
    }

    fn stats(&self) -> HashMap<String, u64> {
        block_on(tests::proxy::stats(self.admin)).expect("admin /stats")
    }

    fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }
}

/// One keep-alive connection: every request meets the same worker and VM.
struct Session<'a> {
    subject: &'a Subject,
    conn: Conn,
}

impl Session<'_> {
    fn new(subject: &Subject) -> Session<'_> {
        Session {
            subject,
            conn: Conn::open(subject.listener),
        }
    }

    fn send(&mut self, fault: Option<&str>) -> Reply {
        let fault = fault.map_or(String::new(), |f| format!("x-fault: {f}\r\n"));
        let raw = format!("GET / HTTP/1.1\r\nhost: a\r\n{fault}\r\n");
        let reply = self
            .conn
            .request(raw.as_bytes())
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.subject.kind));
        assert_ne!(
            reply.header("connection"),
            Some("close"),
            "{:?}: the sequence needs the connection kept",
            self.subject.kind
        );
        reply
    }

    fn plain(&mut self) -> Reply {
        self.send(None)
    }

    fn fault(&mut self, kind: &str) -> Reply {
        self.send(Some(kind))
    }
}

fn assert_failed(reply: &Reply, kind: Kind, what: &str) {
    assert_eq!(reply.status, 503, "{kind:?} {what}: {reply:?}");
}

fn assert_ran(reply: &Reply, kind: Kind, what: &str) {
    assert_eq!(reply.status, 200, "{kind:?} {what}: {reply:?}");
    assert!(
        reply.text().contains("x-guest-saw: 1"),
        "{kind:?} {what}: the filter did not run"
    );
}

fn both(policy_lines: &str, check: impl Fn(&Subject)) {
    for kind in [Kind::Envoy, Kind::HostSim] {
        check(&Subject::start(kind, policy_lines));
    }
}

#[test]
fn fail_closed_fails_the_trapping_stream_and_every_later_one() {
    both("", |s| {
        let mut session = Session::new(s);
        assert_ran(&session.plain(), s.kind, "before the trap");
        let trapped = session.fault("trap");
        assert_failed(&trapped, s.kind, "the trapping request");
        for i in 0..3 {
            assert_failed(&session.plain(), s.kind, &format!("request {i} after"));
        }
        std::thread::sleep(Duration::from_millis(1600));
        assert_failed(&session.plain(), s.kind, "past any reload backoff");
        assert_eq!(s.upstream.count(), 1, "{:?}", s.kind);
        // Envoy creates the reload counters with the plugin; FAIL_CLOSED never reloads.
        let stats = s.stats();
        for name in [
            "vm_reload",
            "vm_reload_success",
            "vm_reload_backoff",
            "vm_reload_failure",
        ] {
            let stat = format!("wasm.faulty.{name}");
            assert_eq!(stats.get(&stat), Some(&0), "{:?}: {stat}", s.kind);
        }
    });
}

#[test]
fn fail_reload_reloads_after_the_backoff_and_counts_it() {
    both("failure_policy: FAIL_RELOAD", |s| {
        let mut session = Session::new(s);
        assert_failed(&session.fault("trap"), s.kind, "the trapping request");
        // Envoy measures the backoff (1 s base, jittered up to 1.5 s) from the VM's last load.
        let started = Instant::now();
        let mut refused = 0;
        loop {
            let reply = session.plain();
            if reply.status == 200 {
                assert_ran(&reply, s.kind, "after the reload");
                break;
            }
            assert_failed(&reply, s.kind, "within the backoff");
            refused += 1;
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{:?}: no reload",
                s.kind
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(s.stat("wasm.faulty.vm_reload_success"), 1, "{:?}", s.kind);
        assert_eq!(
            s.stat("wasm.faulty.vm_reload_backoff"),
            refused,
            "{:?}",
            s.kind
        );
        // Right after a reload, a trap leaves the next request inside the backoff.
        assert_failed(&session.fault("trap"), s.kind, "the second trap");
        let t0 = Instant::now();
        assert_failed(&session.plain(), s.kind, "right after the second trap");
        assert_eq!(
            s.stat("wasm.faulty.vm_reload_backoff"),
            refused + 1,
            "{:?}",
            s.kind
        );
        std::thread::sleep(Duration::from_millis(1600).saturating_sub(t0.elapsed()));
        assert_ran(&session.plain(), s.kind, "after the second reload");
        assert_eq!(s.stat("wasm.faulty.vm_reload_success"), 2, "{:?}", s.kind);
        assert_eq!(s.stat("wasm.faulty.vm_reload_failure"), 0, "{:?}", s.kind);
        // Envoy 1.40 declares `vm_reload` but never counts it.
        assert_eq!(
            s.stats().get("wasm.faulty.vm_reload"),
            Some(&0),
            "{:?}",
            s.kind
        );
    });
}

#[test]
fn fail_open_fails_the_trapping_stream_then_leaves_the_filter_out() {
    both("failure_policy: FAIL_OPEN", |s| {
        let mut session = Session::new(s);
        assert_ran(&session.plain(), s.kind, "before the trap");
        // The stream whose callback trapped fails even under FAIL_OPEN (Envoy 1.40 does this too).
        assert_failed(&session.fault("trap"), s.kind, "the trapping request");
        for _ in 0..2 {
            let reply = session.plain();
            assert_eq!(reply.status, 200, "{:?}", s.kind);
            assert!(
                !reply.text().contains("x-guest-saw"),
                "{:?}: the filter is left out",
                s.kind
            );
        }
        assert_eq!(s.upstream.count(), 3, "{:?}", s.kind);
    });
}

#[test]
fn a_trap_in_the_response_path_fails_the_stream() {
    both("", |s| {
        let mut session = Session::new(s);
        let reply = session.fault("response");
        assert_failed(&reply, s.kind, "a trap in proxy_on_response_headers");
        assert_eq!(
            s.upstream.count(),
            1,
            "{:?}: the request went upstream first",
            s.kind
        );
    });
}
