use super::*;
use crate::destination;
use DenyReason::*;
use Outcome::{Allow, Deny, ReportOnly};

/// A method source that counts how often the decision asked for the method.
struct Counting<'a> {
    method: &'a [u8],
    calls: usize,
}

impl MethodSource for Counting<'_> {
    fn method(&mut self) -> &[u8] {
        self.calls += 1;
        self.method
    }
}

fn policy(json: &str) -> Policy {
    Policy::compile(&FilterConfig::from_json(json).expect("valid config"))
}

/// (outcome, route, canonical authority, method fetches)
fn run(
    p: &Policy,
    authority: &str,
    method: &str,
) -> Result<(Outcome, Option<Route>, String, usize), InvalidReason> {
    let mut dest = destination::parse(authority.as_bytes().to_vec())?;
    let mut m = Counting {
        method: method.as_bytes(),
        calls: 0,
    };
    let d = p.decide(&mut dest, &mut m, None)?;
    Ok((d.outcome, d.route, dest.authority().to_owned(), m.calls))
}

fn outcome(p: &Policy, authority: &str, method: &str) -> Outcome {
    run(p, authority, method)
        .unwrap_or_else(|e| panic!("{authority}: invalid {e}"))
        .0
}

const DESIGN: &str = r#"{
  "allow": [
    { "host": "api.example.test", "ports": [8081], "tls": false },
    { "host": "*.example.org", "tls": true, "methods": ["GET", "HEAD"] },
    { "host": "203.0.113.0/24", "ports": [80] }
  ],
  "deny": [ { "host": "admin.example.org" } ],
  "cluster_header": "x-dfp-cluster",
  "clusters": { "plain": "dfp_plain", "tls": "dfp_tls" },
  "addresses": { "allow": ["127.0.0.0/8"] }
}"#;

#[test]
fn design_example_table() {
    let p = policy(DESIGN);
    let cases: &[(&str, &str, Outcome, Option<Route>, &str)] = &[
        (
            "api.example.test:8081",
            "GET",
            Allow,
            Some(Route::Plain),
            "api.example.test:8081",
        ),
        (
            "API.Example.Test.:8081",
            "POST",
            Allow,
            Some(Route::Plain),
            "api.example.test:8081",
        ),
        (
            "api.example.test:8082",
            "GET",
            Deny(PortNotAllowed),
            None,
            "api.example.test:8082",
        ),
        (
            "api.example.test",
            "GET",
            Deny(PortNotAllowed),
            None,
            "api.example.test:80",
        ),
        (
            "www.example.org",
            "GET",
            Allow,
            Some(Route::Tls),
            "www.example.org:443",
        ),
        (
            "www.example.org:443",
            "HEAD",
            Allow,
            Some(Route::Tls),
            "www.example.org:443",
        ),
        (
            "www.example.org:443",
            "POST",
            Deny(MethodNotAllowed),
            None,
            "www.example.org:443",
        ),
        (
            "www.example.org:80",
            "GET",
            Deny(PortNotAllowed),
            None,
            "www.example.org:80",
        ),
        (
            "a.b.example.org:443",
            "GET",
            Allow,
            Some(Route::Tls),
            "a.b.example.org:443",
        ),
        // Wildcard traps.
        (
            "example.org:443",
            "GET",
            Deny(HostNotAllowed),
            None,
            "example.org:443",
        ),
        (
            "evil-example.org:443",
            "GET",
            Deny(HostNotAllowed),
            None,
            "evil-example.org:443",
        ),
        (
            "example.org.evil.test:443",
            "GET",
            Deny(HostNotAllowed),
            None,
            "example.org.evil.test:443",
        ),
        (
            "wwwexample.org:443",
            "GET",
            Deny(HostNotAllowed),
            None,
            "wwwexample.org:443",
        ),
        // deny wins over the wildcard allow, whatever the case or trailing dot.
        (
            "admin.example.org:443",
            "GET",
            Deny(HostDenied),
            None,
            "admin.example.org:443",
        ),
        (
            "ADMIN.example.org.:443",
            "GET",
            Deny(HostDenied),
            None,
            "admin.example.org:443",
        ),
        (
            "admin.example.org",
            "GET",
            Deny(HostDenied),
            None,
            "admin.example.org:443",
        ),
        (
            "x.admin.example.org:443",
            "GET",
            Allow,
            Some(Route::Tls),
            "x.admin.example.org:443",
        ),
        // IP literals: the CIDR allows, the address policy still applies (203.0.113/24 is
        // documentation space, denied by default).
        (
            "203.0.113.5:80",
            "GET",
            Deny(AddressDenied),
            None,
            "203.0.113.5:80",
        ),
        (
            "203.0.113.5:81",
            "GET",
            Deny(PortNotAllowed),
            None,
            "203.0.113.5:81",
        ),
        (
            "203.0.114.5:80",
            "GET",
            Deny(HostNotAllowed),
            None,
            "203.0.114.5:80",
        ),
        (
            "[::ffff:203.0.113.5]:80",
            "GET",
            Deny(AddressDenied),
            None,
            "[::ffff:203.0.113.5]:80",
        ),
        (
            "127.0.0.1:80",
            "GET",
            Deny(HostNotAllowed),
            None,
            "127.0.0.1:80",
        ),
        (
            "unknown.test:80",
            "GET",
            Deny(HostNotAllowed),
            None,
            "unknown.test:80",
        ),
    ];
    for (authority, method, want, route, canonical) in cases {
        let (got, got_route, got_canonical, _) =
            run(&p, authority, method).unwrap_or_else(|e| panic!("{authority}: {e}"));
        assert_eq!(got, *want, "{authority} {method}");
        assert_eq!(got_route, *route, "{authority} {method} route");
        assert_eq!(got_canonical, *canonical, "{authority}");
    }
}

#[test]
fn ip_literal_needs_rule_and_address_carve_out() {
    let p = policy(
        r#"{"allow":[{"host":"127.0.0.1","ports":[8080]},{"host":"10.0.0.0/8"},
            {"host":"::1","ports":[8080]},{"host":"8.8.8.8"}],
            "addresses":{"allow":["127.0.0.0/8","::1"]}}"#,
    );
    let cases: &[(&str, Outcome)] = &[
        ("127.0.0.1:8080", Allow),
        ("[::ffff:127.0.0.1]:8080", Allow),
        ("[::ffff:7f00:1]:8080", Allow),
        ("127.0.0.2:8080", Deny(HostNotAllowed)),
        ("10.1.2.3:80", Deny(AddressDenied)),
        ("[::1]:8080", Allow),
        ("8.8.8.8:80", Allow),
        ("8.8.8.8", Allow),
        ("[::ffff:8.8.8.8]:80", Allow),
        ("[64:ff9b::808:808]:80", Deny(HostNotAllowed)),
    ];
    for (authority, want) in cases {
        assert_eq!(outcome(&p, authority, "GET"), *want, "{authority}");
    }
}

#[test]
fn empty_allow_denies_everything() {
    let p = policy("{}");
    for authority in [
        "example.org",
        "8.8.8.8:80",
        "[2606:4700::1111]:443",
        "localhost:1",
    ] {
        assert_eq!(
            outcome(&p, authority, "GET"),
            Deny(HostNotAllowed),
            "{authority}"
        );
    }
}

#[test]
fn deny_rules_by_pattern_port_and_method() {
    let p = policy(
        r#"{"allow":[{"host":"*.example.org","ports":[80,443,8080]},{"host":"8.8.0.0/16","ports":[53,80]}],
            "deny":[{"host":"*.internal.example.org"},{"host":"pay.example.org","ports":[8080]},
                    {"host":"api.example.org","methods":["DELETE"]},{"host":"8.8.8.0/24","ports":[53]}]}"#,
    );
    let cases: &[(&str, &str, Outcome)] = &[
        ("a.internal.example.org:80", "GET", Deny(HostDenied)),
        ("internal.example.org:80", "GET", Allow),
        ("pay.example.org:8080", "GET", Deny(HostDenied)),
        ("pay.example.org:443", "GET", Allow),
        ("api.example.org:80", "DELETE", Deny(HostDenied)),
        ("api.example.org:80", "delete", Allow),
        ("api.example.org:80", "GET", Allow),
        ("8.8.8.8:53", "GET", Deny(HostDenied)),
        ("8.8.4.4:53", "GET", Allow),
        ("8.8.8.8:80", "GET", Allow),
        ("[::ffff:8.8.8.8]:53", "GET", Deny(HostDenied)),
    ];
    for (authority, method, want) in cases {
        assert_eq!(
            outcome(&p, authority, method),
            *want,
            "{authority} {method}"
        );
    }
}

#[test]
fn most_specific_rule_decides_tls_and_default_port() {
    let p = policy(
        r#"{"allow":[{"host":"*.example.org","tls":true},{"host":"plain.example.org","tls":false},
            {"host":"both.example.org","ports":[80,443]}],
            "cluster_header":"x-c","clusters":{"plain":"p","tls":"t"}}"#,
    );
    let cases: &[(&str, Outcome, Option<Route>, &str)] = &[
        (
            "www.example.org",
            Allow,
            Some(Route::Tls),
            "www.example.org:443",
        ),
        (
            "plain.example.org",
            Allow,
            Some(Route::Plain),
            "plain.example.org:80",
        ),
        (
            "both.example.org",
            Allow,
            Some(Route::Plain),
            "both.example.org:80",
        ),
        (
            "both.example.org:443",
            Allow,
            Some(Route::Tls),
            "both.example.org:443",
        ),
        // The exact rule does not allow 443, the wildcard does, with its own tls.
        (
            "plain.example.org:443",
            Allow,
            Some(Route::Tls),
            "plain.example.org:443",
        ),
    ];
    for (authority, want, route, canonical) in cases {
        let (got, got_route, got_canonical, _) = run(&p, authority, "GET").expect("valid");
        assert_eq!((got, got_route), (*want, *route), "{authority}");
        assert_eq!(got_canonical, *canonical);
    }
}

#[test]
fn connect_requires_port_and_goes_plain() {
    let p = policy(
        r#"{"allow":[{"host":"*.example.org","tls":true,"methods":["CONNECT","GET"]},
            {"host":"get-only.example.net","ports":[443],"methods":["GET"]}],
            "cluster_header":"x-c","clusters":{"plain":"p","tls":"t"}}"#,
    );
    assert_eq!(
        run(&p, "www.example.org", "CONNECT"),
        Err(InvalidReason::MissingPort)
    );
    let (o, r, a, _) = run(&p, "www.example.org:443", "CONNECT").expect("valid");
    assert_eq!(
        (o, r, a.as_str()),
        (Allow, Some(Route::Plain), "www.example.org:443")
    );
    let (o, r, _, _) = run(&p, "www.example.org:443", "GET").expect("valid");
    assert_eq!((o, r), (Allow, Some(Route::Tls)));
    assert_eq!(
        outcome(&p, "get-only.example.net:443", "CONNECT"),
        Deny(MethodNotAllowed)
    );
}

#[test]
fn method_is_fetched_only_when_needed() {
    // No routing, no method rules, port given: the method is never needed.
    let p = policy(r#"{"allow":[{"host":"a.test"}],"deny":[{"host":"b.test"}]}"#);
    assert_eq!(run(&p, "a.test:80", "GET").expect("valid").3, 0);
    assert_eq!(run(&p, "b.test:80", "GET").expect("valid").3, 0);
    assert_eq!(run(&p, "c.test:80", "GET").expect("valid").3, 0);
    // No port: once, to rule out CONNECT.
    assert_eq!(run(&p, "a.test", "GET").expect("valid").3, 1);

    // Routing to a plain cluster needs no method; to TLS it does (CONNECT goes plain).
    let p = policy(
        r#"{"allow":[{"host":"a.test","ports":[80,443]}],"cluster_header":"x-c",
            "clusters":{"plain":"p","tls":"t"}}"#,
    );
    assert_eq!(run(&p, "a.test:80", "GET").expect("valid").3, 0);
    assert_eq!(run(&p, "a.test:443", "GET").expect("valid").3, 1);
    // Cached: a portless destination routed to TLS still asks once.
    let p = policy(
        r#"{"allow":[{"host":"a.test","tls":true}],"cluster_header":"x-c",
            "clusters":{"plain":"p","tls":"t"}}"#,
    );
    assert_eq!(run(&p, "a.test", "GET").expect("valid").3, 1);

    // Method rules: asked only when host and port match a rule with methods.
    let p = policy(r#"{"allow":[{"host":"a.test","methods":["GET"]},{"host":"b.test"}]}"#);
    assert_eq!(run(&p, "a.test:80", "GET").expect("valid").3, 1);
    assert_eq!(run(&p, "a.test:81", "GET").expect("valid").3, 0);
    assert_eq!(run(&p, "b.test:80", "GET").expect("valid").3, 0);
}

#[test]
fn report_mode_forwards_what_enforce_denies() {
    let json = r#"{"mode":"report","allow":[{"host":"a.test","ports":[80,443]}],"deny":[{"host":"d.test"}],
        "cluster_header":"x-c","clusters":{"plain":"p","tls":"t"}}"#;
    let p = policy(json);
    let cases: &[(&str, &str, Outcome, Option<Route>)] = &[
        ("a.test:443", "GET", Allow, Some(Route::Tls)),
        (
            "b.test:443",
            "GET",
            ReportOnly(HostNotAllowed),
            Some(Route::Tls),
        ),
        (
            "b.test:443",
            "CONNECT",
            ReportOnly(HostNotAllowed),
            Some(Route::Plain),
        ),
        (
            "B.test.",
            "GET",
            ReportOnly(HostNotAllowed),
            Some(Route::Plain),
        ),
        (
            "d.test:80",
            "GET",
            ReportOnly(HostDenied),
            Some(Route::Plain),
        ),
        (
            "a.test:8080",
            "GET",
            ReportOnly(PortNotAllowed),
            Some(Route::Plain),
        ),
        (
            "127.0.0.1:443",
            "GET",
            ReportOnly(HostNotAllowed),
            Some(Route::Tls),
        ),
    ];
    for (authority, method, want, route) in cases {
        let (o, r, _, _) = run(&p, authority, method).expect("valid");
        assert_eq!((o, r), (*want, *route), "{authority} {method}");
    }
    // Invalid destinations stay invalid in report mode.
    assert_eq!(
        run(&p, "b.test", "CONNECT"),
        Err(InvalidReason::MissingPort)
    );
    assert!(destination::parse(b"127.1".to_vec()).is_err());
}

#[test]
fn upstream_stage_table() {
    let p = policy(
        r#"{"stage":"upstream","deny":[{"host":"203.0.113.0/24"},{"host":"8.8.8.8","ports":[53]},
            {"host":"blocked.example"}],
            "addresses":{"allow":["10.42.0.0/16"]}}"#,
    );
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let cases: &[(Option<(&str, u16)>, Outcome)] = &[
        (Some(("93.184.215.14", 443)), Allow),
        (Some(("2606:4700::1111", 443)), Allow),
        (Some(("127.0.0.1", 80)), Deny(AddressDenied)),
        (Some(("10.0.0.1", 80)), Deny(AddressDenied)),
        (Some(("10.42.1.1", 80)), Allow),
        (Some(("169.254.169.254", 80)), Deny(AddressDenied)),
        (Some(("::ffff:127.0.0.1", 80)), Deny(AddressDenied)),
        (Some(("::ffff:10.42.0.1", 80)), Allow),
        (Some(("::1", 80)), Deny(AddressDenied)),
        (Some(("fd00::1", 80)), Deny(AddressDenied)),
        (Some(("64:ff9b::a9fe:a9fe", 80)), Deny(AddressDenied)),
        (Some(("64:ff9b::808:808", 80)), Allow),
        (Some(("64:ff9b::808:808", 53)), Deny(HostDenied)),
        (Some(("203.0.113.9", 80)), Deny(HostDenied)),
        (Some(("8.8.8.8", 53)), Deny(HostDenied)),
        (Some(("8.8.8.8", 443)), Allow),
        (Some(("::ffff:8.8.8.8", 53)), Deny(HostDenied)),
        (None, Deny(UpstreamAddressUnknown)),
    ];
    for (addr, want) in cases {
        let mut m: &[u8] = b"GET";
        let got = p.decide_upstream(addr.map(|(a, port)| (ip(a), port)), &mut m);
        assert_eq!(got, *want, "{addr:?}");
    }
    let report = policy(r#"{"stage":"upstream","mode":"report"}"#);
    let mut m: &[u8] = b"GET";
    assert_eq!(
        report.decide_upstream(Some((ip("127.0.0.1"), 80)), &mut m),
        ReportOnly(AddressDenied)
    );
    assert_eq!(
        report.decide_upstream(None, &mut m),
        ReportOnly(UpstreamAddressUnknown)
    );
}

#[test]
fn upstream_denies_rebinding_names() {
    // The downstream stage allowed a name; whatever it resolved to is judged upstream.
    let p = policy(r#"{"stage":"upstream"}"#);
    for resolved in [
        "127.0.0.1",
        "10.0.0.5",
        "169.254.169.254",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
    ] {
        let mut m: &[u8] = b"GET";
        let got = p.decide_upstream(Some((resolved.parse().expect("ip"), 80)), &mut m);
        assert_eq!(got, Deny(AddressDenied), "{resolved}");
    }
}

#[test]
fn reason_strings_are_stable() {
    let names: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "host_denied",
            "host_not_allowed",
            "port_not_allowed",
            "method_not_allowed",
            "address_denied",
            "upstream_address_unknown",
            "own_endpoint",
            "host_limit"
        ]
    );
}

#[test]
fn many_rules_compile_and_match() {
    // A large policy: every lookup still finds its own rule (and only it, for the exact ones).
    let mut allow = Vec::new();
    for i in 0..2000 {
        allow.push(format!(
            r#"{{"host":"h{i}.example.test","ports":[{}]}}"#,
            1000 + i
        ));
        allow.push(format!(r#"{{"host":"*.w{i}.example.test"}}"#));
        allow.push(format!(r#"{{"host":"198.{}.{}.0/24"}}"#, i / 256, i % 256));
    }
    let p = policy(&format!(
        r#"{{"allow":[{}],"addresses":{{"deny":[]}}}}"#,
        allow.join(",")
    ));
    for i in (0..2000).step_by(97) {
        assert_eq!(
            outcome(&p, &format!("h{i}.example.test:{}", 1000 + i), "GET"),
            Allow
        );
        assert_eq!(
            outcome(&p, &format!("h{i}.example.test:{}", 999 + i), "GET"),
            Deny(PortNotAllowed)
        );
        assert_eq!(
            outcome(&p, &format!("x.w{i}.example.test:80"), "GET"),
            Allow
        );
        assert_eq!(
            outcome(&p, &format!("w{i}.example.test:80"), "GET"),
            Deny(HostNotAllowed)
        );
        assert_eq!(
            outcome(&p, &format!("198.{}.{}.7:80", i / 256, i % 256), "GET"),
            Allow
        );
    }
    assert_eq!(outcome(&p, "198.200.0.7:80", "GET"), Deny(HostNotAllowed));
}

#[test]
fn the_proxy_itself_is_denied_even_in_report_mode() {
    let p = policy(
        r#"{ "mode": "report", "allow": [{ "host": "127.0.0.0/8", "ports": [9901, 10000, 8080] },
              { "host": "*.test", "ports": [9901, 8080] }],
             "addresses": { "allow": ["127.0.0.0/8"] },
             "own_endpoints": ["127.0.0.1:9901"] }"#,
    );
    let decide = |authority: &str, listener: Option<(IpAddr, u16)>| {
        let mut dest = destination::parse(authority.as_bytes().to_vec()).expect("valid");
        let mut m = Counting {
            method: b"GET",
            calls: 0,
        };
        p.decide(&mut dest, &mut m, listener)
            .expect("decided")
            .outcome
    };
    let listener = Some(("127.0.0.1".parse().expect("ip"), 10000));
    // The admin by IP, the admin by a name that may resolve to loopback (carved out here), the listener itself.
    assert_eq!(decide("127.0.0.1:9901", None), Deny(OwnEndpoint));
    assert_eq!(decide("a.test:9901", None), Deny(OwnEndpoint));
    assert_eq!(decide("127.0.0.1:10000", listener), Deny(OwnEndpoint));
    assert_eq!(decide("[::ffff:127.0.0.1]:9901", None), Deny(OwnEndpoint));
    // Elsewhere, report mode reports as before.
    assert_eq!(decide("127.0.0.1:8080", listener), Allow);
    assert_eq!(decide("127.0.0.2:10000", listener), Allow);
    assert_eq!(decide("a.test:8080", None), Allow);
    assert_eq!(decide("b.example:8080", None), ReportOnly(HostNotAllowed));
    // A listener on every address: any IP literal on its port is the proxy.
    let any = Some(("0.0.0.0".parse().expect("ip"), 10000));
    assert_eq!(decide("127.0.0.2:10000", any), Deny(OwnEndpoint));

    // With loopback denied (the default), names on the admin port are left to the resolved-address stages.
    let strict = policy(
        r#"{ "allow": [{ "host": "*.test", "ports": [9901] }], "own_endpoints": ["127.0.0.1:9901"] }"#,
    );
    let mut dest = destination::parse(b"a.test:9901".to_vec()).expect("valid");
    let mut m = Counting {
        method: b"GET",
        calls: 0,
    };
    assert_eq!(
        strict
            .decide(&mut dest, &mut m, None)
            .expect("decided")
            .outcome,
        Allow
    );

    // Upstream: the resolved address is the admin.
    let up = policy(
        r#"{ "stage": "upstream", "addresses": { "allow": ["127.0.0.0/8"] }, "own_endpoints": ["127.0.0.1:9901", "0.0.0.0:10000"] }"#,
    );
    let mut m = Counting {
        method: b"GET",
        calls: 0,
    };
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert_eq!(
        up.decide_upstream(Some((ip("127.0.0.1"), 9901)), &mut m),
        Deny(OwnEndpoint)
    );
    assert_eq!(
        up.decide_upstream(Some((ip("127.0.0.1"), 10000)), &mut m),
        Deny(OwnEndpoint)
    );
    assert_eq!(
        up.decide_upstream(Some((ip("127.0.0.1"), 8080)), &mut m),
        Allow
    );
    assert_eq!(
        up.decide_upstream(Some((ip("198.51.100.7"), 10000)), &mut m),
        Deny(AddressDenied)
    );
}

#[test]
fn wildcard_and_cidr_rules_carry_their_host_limit() {
    let p = policy(
        r#"{ "allow": [{ "host": "*.w.test", "max_hosts": 7 }, { "host": "one.test" },
                       { "host": "198.51.100.0/24" }, { "host": "198.51.100.7", "ports": [81] }],
             "addresses": { "allow": ["198.51.100.0/24"] }, "host_ttl_seconds": 60 }"#,
    );
    let limit = |authority: &str| {
        let mut dest = destination::parse(authority.as_bytes().to_vec()).expect("valid");
        let mut m = Counting {
            method: b"GET",
            calls: 0,
        };
        let d = p.decide(&mut dest, &mut m, None).expect("decided");
        assert_eq!(d.outcome, Allow, "{authority}");
        d.host_limit.map(|l| {
            (
                l.rule,
                l.max,
                l.ttl_seconds,
                p.host_limit_key(l.rule).to_owned(),
            )
        })
    };
    assert_eq!(
        limit("a.w.test"),
        Some((0, 7, 60, "dfp.hosts.*.w.test:80".to_owned()))
    );
    assert_eq!(limit("one.test"), None);
    assert_eq!(
        limit("198.51.100.9"),
        Some((
            2,
            crate::config::DEFAULT_MAX_HOSTS,
            60,
            "dfp.hosts.198.51.100.0/24:80".to_owned()
        ))
    );
    assert_eq!(limit("198.51.100.7:81"), None);
}
