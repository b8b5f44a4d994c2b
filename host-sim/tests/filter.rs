//! The allowlist filter (`dfp-filter`, built from `filter/`) run through the harness: its
//! decision table, downstream and upstream stages, on the same host the proxy uses.

mod common;

use host_sim::harness::{Harness, HarnessBuilder, Outcome, Request, Stage};
use host_sim::Action;
use serde_json::Value;

use common::{guest, runtime, WASM32};

const CONFIG: &str = r#"{
  "stage": "downstream",
  "allow": [
    { "host": "api.example.test", "ports": [8081], "tls": false },
    { "host": "*.example.org", "tls": true, "methods": ["GET", "HEAD"] },
    { "host": "203.0.113.0/24", "ports": [80] }
  ],
  "deny": [ { "host": "admin.example.org" } ],
  "cluster_header": "x-dfp-cluster",
  "clusters": { "plain": "dfp_plain", "tls": "dfp_tls" },
  "addresses": { "allow": ["203.0.113.0/28"] }
}"#;

fn filter(config: &str) -> HarnessBuilder {
    Harness::builder(&guest("dfp-filter", WASM32))
        .runtime(runtime())
        .name("dfp")
        .plugin_config(config)
}

enum Expect {
    Allow {
        authority: &'static str,
        cluster: &'static str,
    },
    Deny {
        reason: &'static str,
    },
    Invalid,
}

fn request(method: &str, authority: &str) -> Request {
    Request::new(method, "http://placeholder/")
        .set_header(":authority", authority)
        .set_header(":path", "/resource")
}

fn check(name: &str, out: &Outcome, expect: &Expect) {
    match expect {
        Expect::Allow { authority, cluster } => {
            assert_eq!(
                out.action("proxy_on_request_headers"),
                Some(Action::Continue),
                "{name}"
            );
            assert!(out.reached_upstream, "{name}: must reach the upstream");
            let sent = &out.upstream_request.as_ref().expect("forwarded").headers;
            assert_eq!(sent.get_str(":authority"), Some(*authority), "{name}");
            assert_eq!(
                sent.get_all("x-dfp-cluster"),
                vec![cluster.as_bytes()],
                "{name}"
            );
            assert_eq!(
                out.effects.clear_route_cache, 1,
                "{name}: route must be re-picked"
            );
            assert!(out.local_reply.is_none(), "{name}");
        }
        Expect::Deny { reason } => {
            assert!(
                !out.reached_upstream,
                "{name}: denied requests never reach the upstream"
            );
            assert_eq!(out.status(), 403, "{name}");
            let reply = out.local_reply.as_ref().expect("local reply");
            assert_eq!(
                reply.headers.get_str("x-dfp-denied"),
                Some(*reason),
                "{name}"
            );
            assert_eq!(
                reply.headers.get_str("content-type"),
                Some("application/json"),
                "{name}"
            );
            let body: Value = serde_json::from_slice(&reply.body).expect("JSON body");
            assert_eq!(body["error"], "destination_denied", "{name}");
            assert_eq!(body["reason"], *reason, "{name}");
            assert!(
                reply.details.contains(reason),
                "{name}: details {}",
                reply.details
            );
            assert!(
                !reply.details.contains(' '),
                "details use Envoy's access-log form"
            );
        }
        Expect::Invalid => {
            assert!(!out.reached_upstream, "{name}");
            assert_eq!(out.status(), 400, "{name}");
        }
    }
}

#[test]
fn downstream_decision_table() {
    use Expect::*;
    let cases: &[(&str, &str, &str, Expect)] = &[
        (
            "exact host and port",
            "GET",
            "api.example.test:8081",
            Allow {
                authority: "api.example.test:8081",
                cluster: "dfp_plain",
            },
        ),
        (
            "canonicalised case and trailing dot",
            "GET",
            "API.Example.Test.:8081",
            Allow {
                authority: "api.example.test:8081",
                cluster: "dfp_plain",
            },
        ),
        (
            "tls wildcard default port",
            "GET",
            "a.example.org",
            Allow {
                authority: "a.example.org:443",
                cluster: "dfp_tls",
            },
        ),
        (
            "tls wildcard several labels",
            "HEAD",
            "x.y.example.org:443",
            Allow {
                authority: "x.y.example.org:443",
                cluster: "dfp_tls",
            },
        ),
        (
            "cidr literal",
            "GET",
            "203.0.113.7:80",
            Allow {
                authority: "203.0.113.7:80",
                cluster: "dfp_plain",
            },
        ),
        (
            "documentation range outside the carve-out",
            "GET",
            "203.0.113.100:80",
            Deny {
                reason: "address_denied",
            },
        ),
        (
            "wrong port",
            "GET",
            "api.example.test:8082",
            Deny {
                reason: "port_not_allowed",
            },
        ),
        (
            "method not allowed",
            "POST",
            "a.example.org",
            Deny {
                reason: "method_not_allowed",
            },
        ),
        (
            "deny wins",
            "GET",
            "admin.example.org",
            Deny {
                reason: "host_denied",
            },
        ),
        (
            "wildcard excludes its suffix",
            "GET",
            "example.org",
            Deny {
                reason: "host_not_allowed",
            },
        ),
        (
            "unknown host",
            "GET",
            "evil.test",
            Deny {
                reason: "host_not_allowed",
            },
        ),
        (
            "loopback literal",
            "GET",
            "127.0.0.1:80",
            Deny {
                reason: "host_not_allowed",
            },
        ),
        ("short ipv4", "GET", "127.1", Invalid),
        ("octal ipv4", "GET", "0177.0.0.1", Invalid),
        ("userinfo", "GET", "a@api.example.test:8081", Invalid),
        (
            "port out of range",
            "GET",
            "api.example.test:70000",
            Invalid,
        ),
        ("empty", "GET", "", Invalid),
        ("non-ascii", "GET", "bücher.example.org", Invalid),
    ];
    let mut h = filter(CONFIG).build().expect("filter loads");
    for (name, method, authority, expect) in cases {
        let out = h
            .run(request(method, authority).header("x-dfp-cluster", "smuggled"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.stage, Stage::Finished, "{name}");
        check(name, &out, expect);
    }
    assert_eq!(h.metric("dfp.downstream.allowed"), Some(5));
    assert_eq!(h.metric("dfp.downstream.denied.host_not_allowed"), Some(3));
    assert_eq!(h.metric("dfp.downstream.denied.port_not_allowed"), Some(1));
}

#[test]
fn upstream_stage_denies_special_addresses_after_dns() {
    let mut h = filter(r#"{ "stage": "upstream" }"#)
        .build()
        .expect("filter loads");
    let out = h
        .run(Request::get("http://a.example.org/").property("upstream.address", "127.0.0.1:80"))
        .expect("runs");
    assert!(!out.reached_upstream);
    assert_eq!(out.status(), 403);
    assert_eq!(
        out.local_reply
            .as_ref()
            .and_then(|r| r.headers.get_str("x-dfp-denied")),
        Some("address_denied")
    );
    for addr in [
        "10.0.0.8:443",
        "169.254.169.254:80",
        "[::1]:80",
        "[::ffff:127.0.0.1]:80",
    ] {
        let out = h
            .run(Request::get("http://a.example.org/").property("upstream.address", addr))
            .expect("runs");
        assert_eq!(out.status(), 403, "{addr}");
    }
    let out = h
        .run(
            Request::get("http://a.example.org/").property("upstream.address", "93.184.216.34:443"),
        )
        .expect("runs");
    assert!(out.reached_upstream);
    assert_eq!(
        out.action("proxy_on_request_headers"),
        Some(Action::Continue)
    );
    assert_eq!(h.metric("dfp.upstream.allowed"), Some(1));
}

#[test]
fn report_mode_forwards_and_logs() {
    let config = CONFIG.replace(
        "\"stage\": \"downstream\",",
        "\"stage\": \"downstream\", \"mode\": \"report\",",
    );
    let mut h = filter(&config).build().expect("filter loads");
    let out = h.run(request("GET", "evil.test")).expect("runs");
    assert!(out.reached_upstream, "report mode forwards");
    assert!(out.local_reply.is_none());
    assert!(
        h.logs().iter().any(|r| r.message.contains("evil.test")),
        "{:?}",
        h.logs()
    );
    assert_eq!(
        h.metric("dfp.downstream.report_only.host_not_allowed"),
        Some(1)
    );
}

#[test]
fn invalid_configuration_is_refused_with_the_key_named() {
    let err = filter(r#"{ "allow": [], "colour": "blue" }"#)
        .build()
        .expect_err("unknown keys must fail on_configure")
        .to_string();
    assert!(err.contains("refused its configuration"), "{err}");
    assert!(err.contains("colour"), "the refusal names the key: {err}");
    assert!(
        filter(r#"{ "allow": [] }"#).build().is_ok(),
        "an empty allowlist is a valid (deny-all) configuration"
    );
}
