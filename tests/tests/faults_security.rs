//! Security defaults, tested end to end against real Envoy 1.40 and host-sim (same bootstrap, same filter): an
//! empty allowlist denies everything; with every IP allowed, the default `addresses.deny` still denies an address
//! of every special-purpose range, in IPv4 and IPv4-in-IPv6 spellings; a client cannot pick the cluster;
//! `Proxy-Authorization` and hop-by-hop headers do not reach the upstream. And host-sim never proxies to its own
//! listener or admin address, even with no filter in front. (The full IANA table is checked against the policy in
//! `filter/tests/special_purpose.rs`.)

#[path = "../../host-sim/tests/faults_support/mod.rs"]
mod faults_support;

use std::net::SocketAddr;

use faults_support::bootstrap::BootstrapBuilder;
use faults_support::{request, Behaviour, Proxy, Upstream};
use host_sim::proxy::ProxyOptions;
use serde_json::{json, Value};
use tests::rt::block_on;
use tests::suite::{self, ProxyKind};
use tests::world::World;

const KINDS: [ProxyKind; 2] = [ProxyKind::Envoy, ProxyKind::HostSim];

fn routing(mut config: Value) -> Value {
    config["cluster_header"] = json!("x-dfp-cluster");
    config["clusters"] = json!({ "plain": "dfp_plain", "tls": "dfp_tls" });
    config
}

fn carve_out() -> Value {
    json!({ "stage": "upstream", "addresses": { "allow": ["127.0.0.0/8"] } })
}

/// Starts `kind` with the test bootstrap and these filter configs, runs `check` with its listener.
fn with_proxy(
    kind: ProxyKind,
    downstream: &Value,
    upstream: &Value,
    check: impl FnOnce(&World, SocketAddr),
) {
    let world = block_on(suite::shared_world()).expect("fixtures");
    let running =
        block_on(suite::start_proxy(kind, &world, downstream, upstream)).expect("proxy starts");
    check(&world, running.proxy.listener());
}

fn get(listener: SocketAddr, host: &str, extra: &[(&str, &str)]) -> faults_support::Reply {
    request(listener, &faults_support::get(host, extra)).unwrap_or_else(|e| panic!("{host}: {e}"))
}

/// How many requests tagged `case` reached any upstream (the tests in this file run at once on shared fixtures,
/// so each counts only its own).
fn reached(world: &World, case: &str) -> usize {
    world
        .echoes()
        .iter()
        .map(|e| e.seen_for_case(case).len())
        .sum()
}

#[test]
fn an_empty_allowlist_denies_everything() {
    let downstream = routing(json!({ "stage": "downstream", "allow": [] }));
    for kind in KINDS {
        with_proxy(kind, &downstream, &carve_out(), |world, listener| {
            let case = format!("empty-allowlist-{kind:?}");
            let plain = world.plain.port();
            for host in [
                format!("api.dfp.test:{plain}"),
                format!("127.0.0.1:{plain}"),
                format!("[::1]:{plain}"),
                "example.org".to_string(),
                "localhost".to_string(),
            ] {
                let reply = get(listener, &host, &[("x-case-id", &case)]);
                assert_eq!(reply.status, 403, "{kind:?} {host}: {reply:?}");
            }
            let tunnel = request(
                listener,
                format!(
                    "CONNECT tunnel.dfp.test:{0} HTTP/1.1\r\nhost: tunnel.dfp.test:{0}\r\n\r\n",
                    world.tcp.port()
                )
                .as_bytes(),
            )
            .expect("an answer");
            assert_eq!(tunnel.status, 403, "{kind:?} CONNECT: {tunnel:?}");
            assert_eq!(
                reached(world, &case),
                0,
                "{kind:?}: something reached an upstream"
            );
        });
    }
}

/// One address per special-purpose block (IANA IPv4 and IPv6 registries, multicast, class E), and how a client
/// might write it.
const SPECIAL: &[&str] = &[
    "0.0.0.0",
    "10.1.2.3",
    "100.64.0.1",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "172.16.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "[::ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:a01:203]",
    "[64:ff9b::a9fe:a9fe]",
    "[2002:a00:1::1]",
    "[::]",
    "[::1]",
    "[::7f00:1]",
    "[64:ff9b:1::1]",
    "[100::1]",
    "[2001::1]",
    "[2001:db8::1]",
    "[3fff::1]",
    "[5f00::1]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[fe80::1]",
    "[fec0::1]",
    "[ff02::1]",
];

#[test]
fn the_default_address_policy_denies_every_special_purpose_range() {
    for kind in KINDS {
        let world = block_on(suite::shared_world()).expect("fixtures");
        let plain = world.plain.port();
        // Every IP allowed by the rules on the echo's port; the default addresses.deny is all that stands.
        let downstream = routing(json!({
            "stage": "downstream",
            "allow": [
                { "host": "0.0.0.0/0", "ports": [plain] },
                { "host": "::/0", "ports": [plain] },
            ],
        }));
        with_proxy(kind, &downstream, &carve_out(), |world, listener| {
            let case = format!("special-{kind:?}");
            for ip in SPECIAL {
                let reply = get(listener, &format!("{ip}:{plain}"), &[("x-case-id", &case)]);
                assert_eq!(reply.status, 403, "{kind:?} {ip}: {reply:?}");
                let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                assert_eq!(
                    body["reason"],
                    "address_denied",
                    "{kind:?} {ip}: {}",
                    reply.text()
                );
            }
            // A public address is not special: it passes the filter (and then fails to connect, bound to loopback).
            let public = get(
                listener,
                &format!("93.184.215.14:{plain}"),
                &[("x-case-id", &case)],
            );
            assert_ne!(public.status, 403, "{kind:?}: {public:?}");
            assert_eq!(reached(world, &case), 0, "{kind:?}");
        });
    }
}

#[test]
fn proxy_authorization_and_hop_by_hop_headers_never_reach_the_upstream() {
    for kind in KINDS {
        let world = block_on(suite::shared_world()).expect("fixtures");
        let plain = world.plain.port();
        let downstream = routing(json!({
            "stage": "downstream",
            "allow": [{ "host": "api.dfp.test", "ports": [plain] }],
        }));
        with_proxy(kind, &downstream, &carve_out(), |world, listener| {
            let case = format!("hop-{kind:?}");
            let reply = get(
                listener,
                &format!("api.dfp.test:{plain}"),
                &[
                    ("x-case-id", &case),
                    ("proxy-authorization", "Basic c2VjcmV0OnBhc3N3b3Jk"),
                    ("proxy-connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("x-dfp-cluster", "forbidden"),
                    ("x-end-to-end", "kept"),
                ],
            );
            assert_eq!(reply.status, 200, "{kind:?}: {reply:?}");
            let seen = world.plain.seen_for_case(&case);
            assert_eq!(seen.len(), 1, "{kind:?}");
            for absent in [
                "proxy-authorization",
                "proxy-connection",
                "keep-alive",
                "connection",
                "x-dfp-cluster",
            ] {
                assert!(
                    seen[0].header(absent).is_none(),
                    "{kind:?}: {absent} reached the upstream: {:?}",
                    seen[0].headers
                );
            }
            assert_eq!(seen[0].header("x-end-to-end"), Some("kept"), "{kind:?}");
            // The client named a cluster; the filter chose: nothing reached the static `forbidden` cluster.
            assert!(world.forbidden.seen_for_case(&case).is_empty(), "{kind:?}");
        });
    }
}

/// With a route that leaves `Proxy-Authorization` alone (as most users' YAML does), the filter removes it itself;
/// `"proxy_authorization": "keep"` forwards it, which shows the proxy alone would.
#[test]
fn the_filter_removes_proxy_authorization_itself() {
    let world = block_on(suite::shared_world()).expect("fixtures");
    let plain = world.plain.port();
    let template = suite::bootstrap_template().expect("template").replace(
        r#"request_headers_to_remove: ["x-dfp-cluster", "proxy-authorization"]"#,
        r#"request_headers_to_remove: ["x-dfp-cluster"]"#,
    );
    assert!(!template.contains(r#""proxy-authorization"]"#));
    for kind in KINDS {
        for (setting, forwarded) in [(None, false), (Some("keep"), true), (Some("remove"), false)] {
            let mut downstream = routing(json!({
                "stage": "downstream",
                "allow": [{ "host": "api.dfp.test", "ports": [plain] }],
            }));
            if let Some(setting) = setting {
                downstream["proxy_authorization"] = json!(setting);
            }
            let (proxy, _dir) =
                start_on(kind, &world, &template, &downstream, &carve_out(), (0, 0));
            let case = format!("proxy-auth-{kind:?}-{setting:?}");
            let reply = get(
                proxy.listener(),
                &format!("api.dfp.test:{plain}"),
                &[
                    ("x-case-id", &case),
                    ("proxy-authorization", "Basic c2VjcmV0OnBhc3N3b3Jk"),
                ],
            );
            assert_eq!(reply.status, 200, "{kind:?} {setting:?}: {reply:?}");
            let seen = world.plain.seen_for_case(&case);
            assert_eq!(seen.len(), 1, "{kind:?} {setting:?}");
            assert_eq!(
                seen[0].header("proxy-authorization").is_some(),
                forwarded,
                "{kind:?} {setting:?}: {:?}",
                seen[0].headers
            );
        }
    }
}

#[test]
fn the_shipped_envoy_yaml_strips_proxy_authorization() {
    let path = tests::wasm::workspace_root().join("envoy-config/envoy.yaml");
    let text = std::fs::read_to_string(&path).expect("envoy.yaml");
    let yaml: Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let removed = &yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["request_headers_to_remove"];
    let removed: Vec<&str> = removed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(removed.contains(&"proxy-authorization"), "{removed:?}");
    assert!(removed.contains(&"x-dfp-cluster"), "{removed:?}");
}

/// Starts `kind` on `template` rendered with these filter configs and (listener, admin) ports (0: any); the temp dir
/// holds the access log for as long as the proxy runs.
fn start_on(
    kind: ProxyKind,
    world: &World,
    template: &str,
    downstream: &Value,
    upstream: &Value,
    ports: (u16, u16),
) -> (Box<dyn tests::proxy::Proxy>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bootstrap = world
        .render_bootstrap(
            template,
            downstream,
            upstream,
            ports,
            &dir.path().join("access.log"),
        )
        .expect("bootstrap");
    let proxy = block_on(suite::start_bootstrap(kind, bootstrap)).expect("proxy");
    (proxy, dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// With loopback carved out and the filter in report mode (it forwards what it would deny), requests to the proxy's
/// own admin and listener — by IP or by a name resolving to loopback — are still denied (`own_endpoints`), the
/// admin never answers through the proxy, `/quitquitquit` does not stop it, and no request loops. Without
/// `own_endpoints`, the listener's own address (`destination.address`) is still refused as an IP literal.
#[test]
fn the_proxy_never_forwards_to_itself() {
    let world = block_on(suite::shared_world()).expect("fixtures");
    let plain = world.plain.port();
    let template = suite::bootstrap_template().expect("template");
    for kind in KINDS {
        let (listen, admin) = (free_port(), free_port());
        let own = json!([format!("127.0.0.1:{listen}"), format!("127.0.0.1:{admin}")]);
        let carve = json!({ "allow": ["127.0.0.0/8"] });
        let downstream = routing(json!({
            "stage": "downstream", "mode": "report", "allow": [], "addresses": carve, "own_endpoints": own,
        }));
        let upstream = json!({ "stage": "upstream", "mode": "report", "addresses": carve, "own_endpoints": own });
        let (proxy, _dir) = start_on(
            kind,
            &world,
            &template,
            &downstream,
            &upstream,
            (listen, admin),
        );
        let listener = proxy.listener();
        assert_eq!(
            (listener.port(), proxy.admin().port()),
            (listen, admin),
            "{kind:?}"
        );
        for (method, path, host) in [
            ("GET", "/server_info", format!("127.0.0.1:{admin}")),
            ("GET", "/server_info", format!("self.dfp.test:{admin}")),
            ("POST", "/quitquitquit", format!("127.0.0.1:{admin}")),
            ("POST", "/quitquitquit", format!("self.dfp.test:{admin}")),
            ("GET", "/", format!("127.0.0.1:{listen}")),
            ("GET", "/", format!("self.dfp.test:{listen}")),
        ] {
            let raw = format!(
                "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let reply = request(listener, raw.as_bytes())
                .unwrap_or_else(|e| panic!("{kind:?} {host}: {e}"));
            let shown: String = reply.text().chars().take(160).collect();
            assert_eq!(reply.status, 403, "{kind:?} {method} {host}{path}: {shown}");
            assert_eq!(
                reply.header("x-dfp-denied"),
                Some("own_endpoint"),
                "{kind:?} {host}"
            );
        }
        // Report mode does forward elsewhere on loopback (the carve-out is real), and the proxy is still up.
        let case = format!("self-control-{kind:?}");
        let reply = get(
            listener,
            &format!("api.dfp.test:{plain}"),
            &[("x-case-id", &case)],
        );
        assert_eq!(reply.status, 200, "{kind:?}: {reply:?}");
        assert_eq!(world.plain.seen_for_case(&case).len(), 1, "{kind:?}");
        let ready = block_on(tests::client::get(proxy.admin(), "/ready")).expect("admin answers");
        assert_eq!(ready.status, 200, "{kind:?}: the proxy must still be up");
        drop(proxy);

        // No own_endpoints: the listener the request came in on is still itself.
        let downstream = routing(json!({
            "stage": "downstream", "allow": [{ "host": "127.0.0.0/8", "ports": [listen] }], "addresses": carve,
        }));
        let (proxy, _dir) = start_on(
            kind,
            &world,
            &template,
            &downstream,
            &carve_out(),
            (listen, 0),
        );
        let reply = get(proxy.listener(), &format!("127.0.0.1:{listen}"), &[]);
        assert_eq!(reply.status, 403, "{kind:?}: {reply:?}");
        assert_eq!(
            reply.header("x-dfp-denied"),
            Some("own_endpoint"),
            "{kind:?}"
        );
    }
}

/// One client minting names under an allowed wildcard: with the rule's `max_hosts` (5 here, in a DNS cache of 8), the
/// sixth distinct name is denied `host_limit` and the cache keeps room, so another destination is still served; a
/// name admitted before is still admitted, and once the host TTL has passed a new one is again. Without the bound,
/// the same flood fills the cache and the other destination gets 503 "DNS cache overflow" (the attack, measured).
#[test]
fn one_wildcard_cannot_fill_the_dns_cache() {
    let world = block_on(suite::shared_world()).expect("fixtures");
    let plain = world.plain.port();
    let template = suite::bootstrap_template()
        .expect("template")
        .replace("max_hosts: 1024", "max_hosts: 8");
    for kind in KINDS {
        for (bounded, tag) in [(true, "bounded"), (false, "open")] {
            let max_hosts = if bounded { 5 } else { 1_000_000 };
            let downstream = routing(json!({
                "stage": "downstream",
                "allow": [
                    { "host": format!("*.{tag}-{kind:?}.flood.dfp.test").to_lowercase(), "ports": [plain], "max_hosts": max_hosts },
                    { "host": "api.dfp.test", "ports": [plain] }
                ],
                "host_ttl_seconds": 2,
            }));
            let (proxy, _dir) =
                start_on(kind, &world, &template, &downstream, &carve_out(), (0, 0));
            let listener = proxy.listener();
            let name =
                |i: usize| format!("n{i}.{tag}-{kind:?}.flood.dfp.test:{plain}").to_lowercase();
            let statuses: Vec<u16> = (0..12)
                .map(|i| get(listener, &name(i), &[]).status)
                .collect();
            let other = get(listener, &format!("api.dfp.test:{plain}"), &[]);
            if bounded {
                assert_eq!(
                    statuses,
                    [200, 200, 200, 200, 200, 403, 403, 403, 403, 403, 403, 403],
                    "{kind:?}"
                );
                let denied = get(listener, &name(7), &[]);
                assert_eq!(
                    denied.header("x-dfp-denied"),
                    Some("host_limit"),
                    "{kind:?}"
                );
                assert_eq!(
                    other.status, 200,
                    "{kind:?}: the other destination must be served"
                );
                assert_eq!(
                    get(listener, &name(2), &[]).status,
                    200,
                    "{kind:?}: admitted before"
                );
                std::thread::sleep(std::time::Duration::from_millis(3_200));
                assert_eq!(
                    get(listener, &name(11), &[]).status,
                    200,
                    "{kind:?}: after the TTL"
                );
            } else {
                assert_eq!(&statuses[..8], [200; 8], "{kind:?}");
                assert!(
                    statuses[8..].iter().all(|s| *s == 503),
                    "{kind:?}: {statuses:?}"
                );
                assert_eq!(
                    other.status, 503,
                    "{kind:?}: the attack fills the cache for everyone"
                );
                assert_eq!(other.text(), "DNS cache overflow", "{kind:?}");
            }
        }
    }
}

/// host-sim alone (no filter at all: any destination goes to the dynamic forward proxy) must still refuse its own
/// listener and admin address, however they are spelled or resolved.
#[test]
fn host_sim_never_proxies_to_its_own_addresses() {
    let world = block_on(suite::shared_world()).expect("fixtures");
    let echo = Upstream::start(Behaviour::Echo);
    let yaml = BootstrapBuilder::to_dynamic_forward_proxy(world.dns.addr()).yaml();
    let proxy = Proxy::start(
        &yaml,
        &ProxyOptions {
            concurrency: 1,
            ..ProxyOptions::default()
        },
    );
    let (listener, admin) = (proxy.listener.port(), proxy.admin.port());
    // The proxy does forward: to the echo, by name.
    let fine = get(
        proxy.listener,
        &format!("api.dfp.test:{}", echo.addr.port()),
        &[],
    );
    assert_eq!(fine.status, 200, "{fine:?}");
    for host in [
        format!("127.0.0.1:{admin}"),
        format!("127.0.0.1:{listener}"),
        format!("0.0.0.0:{admin}"),
        format!("0.0.0.0:{listener}"),
        format!("api.dfp.test:{admin}"),
        format!("api.dfp.test:{listener}"),
    ] {
        let reply = get(proxy.listener, &host, &[]);
        assert_eq!(reply.status, 403, "{host}: {reply:?}");
        assert!(
            reply.text().contains("own addresses"),
            "{host}: {}",
            reply.text()
        );
    }
    // A bracketed IPv6 literal goes to the resolver as a name, as in Envoy, which refuses it: the IPv4-mapped
    // spelling of the admin's address reaches nothing.
    let mapped = format!("[::ffff:127.0.0.1]:{admin}");
    let reply = get(proxy.listener, &mapped, &[]);
    assert_eq!(reply.status, 503, "{mapped}: {reply:?}");
    assert_eq!(reply.text(), "DNS resolution failure", "{mapped}");
    // Nothing looped: the admin served only what the test asked of it.
    assert_eq!(proxy.stat("http.main.downstream_rq_total"), 8);
}
