//! The configuration's parsing and refusals, each refusal naming its key.

use super::*;

const EXAMPLE: &str = r#"{
  "stage": "downstream",
  "mode": "enforce",
  "allow": [
    { "host": "api.example.test", "ports": [8081], "tls": false },
    { "host": "*.example.org", "tls": true, "methods": ["GET", "HEAD"] },
    { "host": "203.0.113.0/24", "ports": [80] }
  ],
  "deny": [ { "host": "admin.example.org" } ],
  "cluster_header": "x-dfp-cluster",
  "clusters": { "plain": "dfp_plain", "tls": "dfp_tls" },
  "destination_header": "x-dfp-destination",
  "addresses": { "allow": ["127.0.0.0/8"] }
}"#;

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).expect("cidr")
}

#[test]
fn design_example_parses_with_defaults() {
    let c = FilterConfig::from_json(EXAMPLE).expect("valid");
    assert_eq!(c.stage, Stage::Downstream);
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(
        c.allow,
        vec![
            AllowRule {
                host: HostPattern::Exact("api.example.test".into()),
                ports: vec![8081],
                tls: Some(false),
                methods: None,
                max_hosts: None,
            },
            AllowRule {
                host: HostPattern::Wildcard("example.org".into()),
                ports: vec![443],
                tls: Some(true),
                methods: Some(vec!["GET".into(), "HEAD".into()]),
                max_hosts: Some(DEFAULT_MAX_HOSTS),
            },
            AllowRule {
                host: HostPattern::Cidr(cidr("203.0.113.0/24")),
                ports: vec![80],
                tls: None,
                methods: None,
                max_hosts: Some(DEFAULT_MAX_HOSTS),
            },
        ]
    );
    assert_eq!(
        c.deny,
        vec![DenyRule {
            host: HostPattern::Exact("admin.example.org".into()),
            ports: None,
            methods: None,
        }]
    );
    assert_eq!(
        c.cluster_routing,
        Some(ClusterRouting {
            header: "x-dfp-cluster".into(),
            plain: "dfp_plain".into(),
            tls: "dfp_tls".into(),
            default: None,
        })
    );
    assert_eq!(c.destination_header.as_deref(), Some("x-dfp-destination"));
    assert_eq!(c.address_deny, net::special_purpose());
    assert_eq!(c.address_allow, vec![cidr("127.0.0.0/8")]);
}

#[test]
fn empty_and_minimal_documents() {
    for text in ["", "  \n", "{}"] {
        let c = FilterConfig::from_json(text).expect("valid");
        assert_eq!(c.stage, Stage::Downstream);
        assert_eq!(c.mode, Mode::Enforce);
        assert!(c.allow.is_empty());
        assert!(c.cluster_routing.is_none());
        assert_eq!(c.address_deny, net::special_purpose());
    }
    let c = FilterConfig::from_json(r#"{"stage":"upstream","mode":"report"}"#).expect("valid");
    assert_eq!((c.stage, c.mode), (Stage::Upstream, Mode::Report));
}

#[test]
fn clusters_default_names_the_route_tables_fallback() {
    let routing = |default: &str| {
        FilterConfig::from_json(&format!(
            r#"{{"cluster_header":"x-c","clusters":{{"plain":"p","tls":"t"{default}}}}}"#
        ))
        .expect("valid")
        .cluster_routing
        .expect("routing")
        .default
    };
    assert_eq!(routing(""), None);
    assert_eq!(routing(r#","default":"plain""#).as_deref(), Some("p"));
    assert_eq!(routing(r#","default":"tls""#).as_deref(), Some("t"));
}

#[test]
fn default_ports_follow_tls() {
    let c = FilterConfig::from_json(
        r#"{"allow":[{"host":"a.test"},{"host":"b.test","tls":true},{"host":"c.test","tls":false},
            {"host":"d.test","ports":[80,443]}]}"#,
    )
    .expect("valid");
    let ports: Vec<_> = c.allow.iter().map(|r| r.ports.clone()).collect();
    assert_eq!(ports, vec![vec![80], vec![443], vec![80], vec![80, 443]]);
    assert_eq!(c.allow[3].tls, None);
}

#[test]
fn host_patterns() {
    let ok: &[(&str, HostPattern)] = &[
        ("Example.ORG.", HostPattern::Exact("example.org".into())),
        ("*.Example.org", HostPattern::Wildcard("example.org".into())),
        ("*.com", HostPattern::Wildcard("com".into())),
        ("*.a.b.c", HostPattern::Wildcard("a.b.c".into())),
        ("10.0.0.0/8", HostPattern::Cidr(cidr("10.0.0.0/8"))),
        ("203.0.113.7", HostPattern::Cidr(cidr("203.0.113.7/32"))),
        ("::1", HostPattern::Cidr(cidr("::1/128"))),
        ("[2001:db8::1]", HostPattern::Cidr(cidr("2001:db8::1/128"))),
        ("2001:db8::/32", HostPattern::Cidr(cidr("2001:db8::/32"))),
    ];
    for (text, want) in ok {
        assert_eq!(parse_host_pattern(text).as_ref(), Ok(want), "{text}");
    }
    for bad in [
        "",
        "*",
        "*.",
        "**.example.com",
        "*example.com",
        "api.*.x",
        "*.*.x",
        "a*.example.com",
        "example.*",
        "*.1.2.3.4",
        "*.0.0.1",
        "10.0.0.1/8",
        "10.0.0.0/33",
        "example.org/24",
        "127.1",
        "0x7f.0.0.1",
        "example.org:443",
        "exa mple.org",
        "a..b",
        "-a.example",
        "fe80::1%eth0",
        "bücher.example",
        "user@example.org",
    ] {
        assert!(
            parse_host_pattern(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
}

/// Each case: the document, the error path and a fragment the message must contain.
#[test]
fn errors_name_the_key_and_value() {
    let cases: &[(&str, &str, &str)] = &[
        (r#"{"colour":1}"#, "colour", "unknown key"),
        (
            r#"{"allow":[{"host":"a.test","colour":1}]}"#,
            "allow[0].colour",
            "unknown key",
        ),
        (
            r#"{"deny":[{"host":"a.test","tls":true}]}"#,
            "deny[0].tls",
            "unknown key",
        ),
        (
            r#"{"clusters":{"plain":"p","tls":"t","x":1},"cluster_header":"h"}"#,
            "clusters.x",
            "unknown key",
        ),
        (
            r#"{"addresses":{"denny":[]}}"#,
            "addresses.denny",
            "unknown key",
        ),
        (r#"{"stage":"sideways"}"#, "stage", "\"sideways\""),
        (
            r#"{"stage":1}"#,
            "stage",
            "expected \"downstream\" or \"upstream\"",
        ),
        (r#"{"mode":"audit"}"#, "mode", "\"audit\""),
        (r#"{"allow":{}}"#, "allow", "expected an array"),
        (r#"{"allow":["a.test"]}"#, "allow[0]", "expected an object"),
        (r#"{"allow":[{"ports":[80]}]}"#, "allow[0].host", "missing"),
        (
            r#"{"allow":[{"host":"a.test"},{"host":"a.test"},{"host":"*example.com"}]}"#,
            "allow[2].host",
            "invalid wildcard \"*example.com\"",
        ),
        (
            r#"{"allow":[{"host":"api.*.x"}]}"#,
            "allow[0].host",
            "invalid wildcard \"api.*.x\"",
        ),
        (
            r#"{"allow":[{"host":"*"}]}"#,
            "allow[0].host",
            "invalid wildcard \"*\"",
        ),
        (
            r#"{"deny":[{"host":"10.0.0.300/8"}]}"#,
            "deny[0].host",
            "invalid CIDR \"10.0.0.300/8\"",
        ),
        (
            r#"{"deny":[{"host":"10.0.0.1/8"}]}"#,
            "deny[0].host",
            "host bits",
        ),
        (
            r#"{"allow":[{"host":"127.1"}]}"#,
            "allow[0].host",
            "non_canonical_ipv4",
        ),
        (
            r#"{"allow":[{"host":5}]}"#,
            "allow[0].host",
            "expected a string",
        ),
        (
            r#"{"allow":[{"host":"a.test","ports":[0]}]}"#,
            "allow[0].ports[0]",
            "invalid value 0",
        ),
        (
            r#"{"allow":[{"host":"a.test","ports":[80,65536]}]}"#,
            "allow[0].ports[1]",
            "65536",
        ),
        (
            r#"{"allow":[{"host":"a.test","ports":["80"]}]}"#,
            "allow[0].ports[0]",
            "\"80\"",
        ),
        (
            r#"{"allow":[{"host":"a.test","ports":[80.5]}]}"#,
            "allow[0].ports[0]",
            "80.5",
        ),
        (
            r#"{"allow":[{"host":"a.test","ports":[]}]}"#,
            "allow[0].ports",
            "at least one",
        ),
        (
            r#"{"allow":[{"host":"a.test","tls":"yes"}]}"#,
            "allow[0].tls",
            "\"yes\"",
        ),
        (
            r#"{"allow":[{"host":"a.test","methods":["get"]}]}"#,
            "allow[0].methods[0]",
            "\"get\"",
        ),
        (
            r#"{"allow":[{"host":"a.test","methods":[]}]}"#,
            "allow[0].methods",
            "at least one",
        ),
        (
            r#"{"deny":[{"host":"a.test","ports":[-1]}]}"#,
            "deny[0].ports[0]",
            "-1",
        ),
        (
            r#"{"cluster_header":"x-dfp-cluster"}"#,
            "clusters",
            "missing",
        ),
        (
            r#"{"allow":[{"host":"a.test","max_hosts":5}]}"#,
            "allow[0].max_hosts",
            "only for wildcard",
        ),
        (
            r#"{"allow":[{"host":"*.a.test","max_hosts":0}]}"#,
            "allow[0].max_hosts",
            "1..=1000000",
        ),
        (r#"{"host_ttl_seconds":0}"#, "host_ttl_seconds", "1..=86400"),
        (
            r#"{"own_endpoints":["127.0.0.1"]}"#,
            "own_endpoints[0]",
            "ip:port",
        ),
        (
            r#"{"own_endpoints":["127.1:9901"]}"#,
            "own_endpoints[0]",
            "ip:port",
        ),
        (
            r#"{"proxy_authorization":"drop"}"#,
            "proxy_authorization",
            "drop",
        ),
        (
            r#"{"clusters":{"plain":"p","tls":"t"}}"#,
            "cluster_header",
            "missing",
        ),
        (
            r#"{"cluster_header":"h","clusters":{"plain":"p"}}"#,
            "clusters.tls",
            "missing",
        ),
        (
            r#"{"cluster_header":"h","clusters":{"plain":"p","tls":""}}"#,
            "clusters.tls",
            "cluster name",
        ),
        (
            r#"{"cluster_header":"h","clusters":{"plain":"p","tls":"t","default":"p"}}"#,
            "clusters.default",
            "\"plain\" or \"tls\"",
        ),
        (
            r#"{"cluster_header":"X-Dfp","clusters":{"plain":"p","tls":"t"}}"#,
            "cluster_header",
            "lower-case",
        ),
        (
            r#"{"cluster_header":":authority","clusters":{"plain":"p","tls":"t"}}"#,
            "cluster_header",
            "lower-case",
        ),
        (
            r#"{"destination_header":"host"}"#,
            "destination_header",
            "must not be \"host\"",
        ),
        (
            r#"{"destination_header":"x-a","cluster_header":"x-a","clusters":{"plain":"p","tls":"t"}}"#,
            "destination_header",
            "also the cluster_header",
        ),
        (
            r#"{"stage":"upstream","cluster_header":"h","clusters":{"plain":"p","tls":"t"}}"#,
            "cluster_header",
            "only valid with",
        ),
        (
            r#"{"stage":"upstream","destination_header":"x-d"}"#,
            "destination_header",
            "only valid with",
        ),
        (
            r#"{"addresses":{"deny":["10.0.0.0/8","nope"]}}"#,
            "addresses.deny[1]",
            "\"nope\"",
        ),
        (
            r#"{"addresses":{"allow":["fe80::/129"]}}"#,
            "addresses.allow[0]",
            "prefix length",
        ),
        (r#"{"addresses":[]}"#, "addresses", "expected an object"),
        (
            r#"{"allow":[], "allow":[{"host":"a.test"}]}"#,
            "configuration",
            "duplicate key at line 1 column 14",
        ),
        (
            r#"{"allow":[{"host":"a.test","host":"b.test"}]}"#,
            "configuration",
            "duplicate key at line 1 column 28",
        ),
        (r#"{"allow":["#, "configuration", "invalid JSON"),
        (r#"{} {}"#, "configuration", "invalid JSON"),
        (r#"[]"#, "configuration", "expected an object"),
    ];
    for (text, path, fragment) in cases {
        let err = FilterConfig::from_json(text).expect_err(text);
        assert_eq!(err.path(), *path, "{text} -> {err}");
        assert!(
            err.to_string().contains(fragment),
            "{text} -> {err} (want {fragment:?})"
        );
        assert!(err.to_string().starts_with(&format!("{path}: ")), "{err}");
    }
}

#[test]
fn addresses_lists_replace_and_carve() {
    let c = FilterConfig::from_json(r#"{"addresses":{"deny":["10.0.0.0/8"]}}"#).expect("valid");
    assert_eq!(c.address_deny, vec![cidr("10.0.0.0/8")]);
    let c = FilterConfig::from_json(r#"{"addresses":{"deny":[]}}"#).expect("valid");
    assert!(c.address_deny.is_empty());
    let c = FilterConfig::from_json(r#"{"addresses":{}}"#).expect("valid");
    assert_eq!(c.address_deny, net::special_purpose());
}

#[test]
fn hostile_values_are_quoted_escaped_in_errors() {
    let err = FilterConfig::from_json(r#"{"mode":"a\"b\n\u0000c"}"#).expect_err("bad mode");
    let text = err.to_string();
    assert!(text.contains(r#""a\"b\n\u0000c""#), "{text}");
    assert!(!text.contains('\n') && !text.contains('\0'), "{text:?}");
}
