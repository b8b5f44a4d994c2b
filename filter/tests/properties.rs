//! Property tests over the public API: canonicalisation never panics and is idempotent; the
//! IPv6 text handling agrees with std; our JSON reader agrees with serde_json; and the indexed
//! policy decides exactly like a deliberately naive reference model that scans every rule —
//! in particular, nothing a deny rule or the address policy covers is ever allowed.

mod reference;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dfp_filter::config::{FilterConfig, Mode};
use dfp_filter::destination::{self, Target};
use dfp_filter::net;
use dfp_filter::policy::{DenyReason, MethodSource, Outcome, Policy};
use proptest::prelude::*;
use reference::*;

// ---------------------------------------------------------------------------------------------
// Canonicalisation

fn authority_chars() -> impl Strategy<Value = String> {
    // Mostly characters that matter to the parser, with some of everything else.
    proptest::collection::vec(
        prop_oneof![
            8 => proptest::sample::select(
                "abcXYZ019-.:[]@%_*/ \t\u{0}\u{7f}xf".chars().collect::<Vec<_>>()
            ),
            1 => any::<char>(),
        ],
        0..64,
    )
    .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn canonicalisation_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = destination::parse(bytes);
    }

    #[test]
    fn canonicalisation_is_idempotent(input in prop_oneof![authority_chars(), destination_text()]) {
        if let Ok(d) = destination::parse(input.clone().into_bytes()) {
            let again = destination::parse(d.authority().as_bytes().to_vec())
                .expect("a canonical destination parses");
            prop_assert_eq!(again.authority(), d.authority());
            prop_assert!(!again.is_rewritten(), "{} was rewritten again", d.authority());
            prop_assert_eq!(again.target(), d.target());
            prop_assert_eq!(again.port(), d.port());
            // Canonical text is lower case, and has no trailing dot before the port.
            prop_assert!(!d.authority().bytes().any(|b| b.is_ascii_uppercase()));
            prop_assert!(!d.host().ends_with('.'));
            prop_assert_eq!(d.is_rewritten(), d.authority() != input);
        }
    }

    #[test]
    fn ipv6_parsing_agrees_with_std(
        text in proptest::collection::vec(
            proptest::sample::select("0123456789abcdefABCDEF:.:::%".chars().collect::<Vec<_>>()),
            0..46,
        ).prop_map(|v| v.into_iter().collect::<String>())
    ) {
        prop_assert_eq!(net::parse_ipv6(&text), text.parse::<Ipv6Addr>().ok(), "{}", text);
    }

    #[test]
    fn ipv6_text_round_trips_like_std(bits in any::<u128>(), zeros in any::<u8>(), mapped in any::<bool>()) {
        // Clear some groups to exercise zero-run compression, sometimes make it IPv4-mapped.
        let mut segments = Ipv6Addr::from(bits).segments();
        for (i, s) in segments.iter_mut().enumerate() {
            if zeros & (1 << i) != 0 {
                *s = 0;
            }
        }
        if mapped {
            segments[..5].fill(0);
            segments[5] = 0xffff;
        }
        let addr = Ipv6Addr::from(segments);
        let mut ours = String::new();
        net::push_ipv6(&mut ours, addr);
        prop_assert_eq!(&ours, &addr.to_string());
        prop_assert_eq!(net::parse_ipv6(&ours), Some(addr));
    }
}

#[test]
fn ipv6_parsing_agrees_with_std_on_edge_cases() {
    for text in [
        "::",
        "::1",
        "1::",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7::8",
        "1:2:3:4:5:6:7:8::",
        ":1::",
        "1::2:",
        ":::",
        "::ffff:1.2.3.4",
        "::1.2.3.4",
        "1:2:3:4:5:6:1.2.3.4",
        "1:2:3:4:5:6:7:1.2.3.4",
        "::ffff:01.2.3.4",
        "00001::",
        "0001::",
        "1::2::3",
        "::ffff:1.2.3.4:5",
        "1:2:3:4:5::1.2.3.4",
        "::1.2.3",
        "ABCD::",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8:9",
        "::1.2.3.4.5",
        "fe80::1%eth0",
        "1.2.3.4",
        "",
        ":",
        "::%",
        "1:2",
        "::ffff:255.255.255.255",
        "::ffff:256.1.1.1",
        "a:b:c:d:e:f:1.2.3.4",
    ] {
        assert_eq!(
            net::parse_ipv6(text),
            text.parse::<Ipv6Addr>().ok(),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        // Quarters are exact in binary, so serde_json's own float reading cannot blur them.
        (-4_000_000i64..4_000_000).prop_map(|n| serde_json::Value::from(n as f64 / 4.0)),
        any::<String>().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn json_reader_agrees_with_serde_json(value in json_value(), pretty in any::<bool>()) {
        let text = if pretty {
            serde_json::to_string_pretty(&value).expect("serialise")
        } else {
            serde_json::to_string(&value).expect("serialise")
        };
        let ours = dfp_filter::json::parse(&text).expect("serde_json output is JSON");
        let back: serde_json::Value =
            serde_json::from_str(&ours.to_string()).expect("our output is JSON");
        prop_assert_eq!(back, value);
    }

    #[test]
    fn json_reader_never_panics(text in "[\\[\\]{}\",:0-9a-z\\\\. \\-eE+]{0,64}") {
        let ours = dfp_filter::json::parse(&text);
        let theirs = serde_json::from_str::<serde_json::Value>(&text);
        // Both accept the same documents, except that we refuse duplicate keys.
        if ours.is_ok() {
            prop_assert!(theirs.is_ok(), "{}", text);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policy against a naive reference model

const NAMES: &[&str] = &[
    "example.org",
    "www.example.org",
    "a.b.example.org",
    "evil-example.org",
    "example.org.evil",
    "admin.example.org",
    "x.admin.example.org",
    "api.example.test",
    "x.api.example.test",
    "localhost",
    "org",
    "nip.io",
    "127.0.0.1.nip.io",
];

const V4: &[&str] = &[
    "127.0.0.1",
    "10.1.2.3",
    "169.254.169.254",
    "8.8.8.8",
    "8.8.4.4",
    "203.0.113.5",
    "192.168.1.1",
    "100.64.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "93.184.215.14",
];

const V6: &[&str] = &[
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:8.8.8.8",
    "::ffff:10.1.2.3",
    "64:ff9b::a00:1",
    "64:ff9b::808:808",
    "2002:a00:1::1",
    "2002:808:808::1",
    "2001:db8::1",
    "2606:4700::1111",
    "fe80::1",
    "fd00::1",
];

const PATTERNS: &[&str] = &[
    "example.org",
    "*.example.org",
    "admin.example.org",
    "*.admin.example.org",
    "api.example.test",
    "*.api.example.test",
    "*.org",
    "localhost",
    "nip.io",
    "*.nip.io",
    "10.0.0.0/8",
    "127.0.0.1",
    "127.0.0.0/8",
    "8.8.8.0/24",
    "8.8.8.8",
    "0.0.0.0/0",
    "::/0",
    "2606:4700::/32",
    "::ffff:10.0.0.0/104",
    "64:ff9b::/96",
    "169.254.169.254",
    "203.0.113.0/24",
    "::1",
    "fd00::/8",
];

const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "127.0.0.0/8",
    "8.8.8.0/24",
    "0.0.0.0/0",
    "::/0",
    "::1",
    "::ffff:0:0/96",
    "::ffff:127.0.0.0/104",
    "64:ff9b::/96",
    "2002::/16",
    "169.254.0.0/16",
    "fd00::/8",
    "203.0.113.0/24",
];

const PORTS: &[u16] = &[80, 443, 8080, 53, 22];
const METHODS: &[&str] = &["GET", "POST", "CONNECT", "DELETE"];

fn mixed_case(s: String, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask & (1 << (i % 64)) != 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fn host_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (proptest::sample::select(NAMES), any::<u64>(), any::<bool>()).prop_map(
            |(n, mask, dot)| {
                let s = mixed_case(n.to_string(), mask);
                if dot { format!("{s}.") } else { s }
            }
        ),
        2 => proptest::sample::select(V4).prop_map(str::to_string),
        1 => any::<u32>().prop_map(|b| Ipv4Addr::from(b).to_string()),
        2 => (proptest::sample::select(V6), any::<u64>())
            .prop_map(|(a, mask)| format!("[{}]", mixed_case(a.to_string(), mask))),
        1 => any::<u128>().prop_map(|b| format!("[{}]", Ipv6Addr::from(b))),
    ]
}

fn destination_text() -> impl Strategy<Value = String> {
    (
        host_text(),
        prop_oneof![
            2 => Just(None),
            4 => proptest::sample::select(PORTS).prop_map(Some),
            1 => (1u16..=65535).prop_map(Some),
        ],
    )
        .prop_map(|(h, p)| match p {
            Some(p) => format!("{h}:{p}"),
            None => h,
        })
}

fn subset<T: Clone + std::fmt::Debug + 'static>(
    items: &'static [T],
) -> impl Strategy<Value = Option<Vec<T>>> {
    prop_oneof![
        Just(None),
        proptest::sample::subsequence(items, 1..=items.len()).prop_map(Some),
    ]
}

fn list_json<T: std::fmt::Display>(items: &[T], quote: bool) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|x| {
            if quote {
                format!("\"{x}\"")
            } else {
                x.to_string()
            }
        })
        .collect();
    format!("[{}]", parts.join(","))
}

fn rule_json() -> impl Strategy<Value = (String, String)> {
    (
        proptest::sample::select(PATTERNS),
        subset(PORTS),
        prop_oneof![Just(None), any::<bool>().prop_map(Some)],
        subset(METHODS),
    )
        .prop_map(|(host, ports, tls, methods)| {
            let mut common = format!(r#""host":"{host}""#);
            if let Some(p) = &ports {
                common.push_str(&format!(r#","ports":{}"#, list_json(p, false)));
            }
            if let Some(m) = &methods {
                common.push_str(&format!(r#","methods":{}"#, list_json(m, true)));
            }
            let allow = match tls {
                Some(t) => format!(r#"{{{common},"tls":{t}}}"#),
                None => format!("{{{common}}}"),
            };
            (allow, format!("{{{common}}}"))
        })
}

fn config_json(stage: &'static str) -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(rule_json(), 0..12),
        proptest::collection::vec(rule_json(), 0..3),
        prop_oneof![
            2 => Just(None),
            1 => (subset(CIDRS), subset(CIDRS)).prop_map(Some),
        ],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(allow, deny, addresses, report, routing)| {
            let allow: Vec<String> = allow.into_iter().map(|(a, _)| a).collect();
            let deny: Vec<String> = deny.into_iter().map(|(_, d)| d).collect();
            let mut json = format!(
                r#"{{"stage":"{stage}","mode":"{}","allow":[{}],"deny":[{}]"#,
                if report { "report" } else { "enforce" },
                allow.join(","),
                deny.join(",")
            );
            if routing && stage == "downstream" {
                json.push_str(r#","cluster_header":"x-c","clusters":{"plain":"p","tls":"t"}"#);
            }
            if let Some((d, a)) = addresses {
                let mut parts = Vec::new();
                if let Some(d) = d {
                    parts.push(format!(r#""deny":{}"#, list_json(&d, true)));
                }
                if let Some(a) = a {
                    parts.push(format!(r#""allow":{}"#, list_json(&a, true)));
                }
                json.push_str(&format!(r#","addresses":{{{}}}"#, parts.join(",")));
            }
            json.push('}');
            json
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn indexed_policy_decides_like_the_naive_model(
        json in config_json("downstream"),
        requests in proptest::collection::vec(
            (destination_text(), proptest::sample::select(METHODS)), 1..8),
    ) {
        let config = FilterConfig::from_json(&json).expect("generated configs are valid");
        let policy = Policy::compile(&config);
        for (authority, method) in requests {
            prop_assert_eq!(
                fast_decide(&policy, &authority, method),
                naive_decide(&config, &authority, method),
                "{} {} with {}", method, authority, json
            );
        }
    }

    /// The safety property on its own: whatever a deny rule or the address policy covers is
    /// never allowed, in either mode.
    #[test]
    fn nothing_covered_by_deny_or_addresses_is_allowed(
        json in config_json("downstream"),
        authority in destination_text(),
        method in proptest::sample::select(METHODS),
    ) {
        let config = FilterConfig::from_json(&json).expect("generated configs are valid");
        let policy = Policy::compile(&config);
        let Ok((outcome, _, canonical)) = fast_decide(&policy, &authority, method) else {
            return Ok(());
        };
        let dest = destination::parse(canonical.into_bytes()).expect("canonical parses");
        let port = dest.port().expect("decided destinations have a port");
        let covered = naive_deny_rule_covers(&config, dest.target(), port, method)
            || matches!(dest.target(), Target::Ip(ip) if naive_address_denied(&config, ip));
        if covered {
            prop_assert_ne!(outcome, Outcome::Allow, "{} {} with {}", method, authority, json);
        }
    }

    #[test]
    fn upstream_stage_decides_like_the_naive_model(
        json in config_json("upstream"),
        addresses in proptest::collection::vec(
            (prop_oneof![
                proptest::sample::select(V4).prop_map(|a| a.parse::<IpAddr>().expect("ip")),
                proptest::sample::select(V6).prop_map(|a| a.parse::<IpAddr>().expect("ip")),
                any::<u32>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
                any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            ], proptest::sample::select(PORTS), proptest::sample::select(METHODS)),
            1..8),
    ) {
        let config = FilterConfig::from_json(&json).expect("generated configs are valid");
        let policy = Policy::compile(&config);
        for (ip, port, method) in addresses {
            let mut m: &[u8] = method.as_bytes();
            let got = policy.decide_upstream(Some((ip, port)), &mut m as &mut dyn MethodSource);
            let target = Target::Ip(net::normalize(ip));
            let reason = if naive_deny_rule_covers(&config, target, port, method) {
                Some(DenyReason::HostDenied)
            } else if naive_address_denied(&config, ip) {
                Some(DenyReason::AddressDenied)
            } else {
                None
            };
            let want = match (reason, config.mode) {
                (None, _) => Outcome::Allow,
                (Some(r), Mode::Enforce) => Outcome::Deny(r),
                (Some(r), Mode::Report) => Outcome::ReportOnly(r),
            };
            prop_assert_eq!(got, want, "{} port {} with {}", ip, port, json);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile destinations: the spellings attackers use for internal addresses (alternate IPv4 forms
// that resolvers accept, IPv4 inside IPv6, zone ids, stray dots, case, byte-level damage), run
// through canonicalisation and the policy. Whatever parses must decide exactly like the naive
// model, and nothing that canonicalises to a denied destination may be allowed.

/// An address inside one of the default-denied blocks (or, sometimes, anywhere).
fn base_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => (proptest::sample::select(net::SPECIAL_PURPOSE_V4), any::<u32>()).prop_map(
            |((addr, len), r)| {
                let host = if len == 32 { 0 } else { r & (u32::MAX >> len) };
                IpAddr::V4(Ipv4Addr::from(u32::from(addr) | host))
            }
        ),
        2 => (proptest::sample::select(net::SPECIAL_PURPOSE_V6), any::<u128>()).prop_map(
            |((addr, len), r)| {
                let host = if len == 128 { 0 } else { r & (u128::MAX >> len) };
                IpAddr::V6(Ipv6Addr::from(u128::from(addr) | host))
            }
        ),
        1 => any::<u32>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
    ]
}

fn hex_groups(v4: Ipv4Addr) -> String {
    let [a, b, c, d] = v4.octets();
    format!(
        "{:x}:{:x}",
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d])
    )
}

/// One of many spellings of `ip`: canonical ones, accepted variants, and refused ones.
fn spell(ip: IpAddr, how: u8) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let n = u32::from(v4);
            match how % 17 {
                0 => v4.to_string(),
                1 => format!("{v4}."),
                2 => format!("{a:03}.{b:03}.{c:03}.{d:03}"),
                3 => format!("0{a:o}.{b}.{c}.{d}"),
                4 => format!("0x{a:x}.{b}.{c}.{d}"),
                5 => n.to_string(),
                6 => format!("{a}.{}", n & 0x00ff_ffff),
                7 => format!("[::ffff:{v4}]"),
                8 => format!("[::ffff:{}]", hex_groups(v4)),
                9 => format!("[0:0:0:0:0:FFFF:{}]", hex_groups(v4).to_uppercase()),
                10 => format!("[64:ff9b::{v4}]"),
                11 => format!("[2002:{}::1]", hex_groups(v4)),
                12 => format!("[::{v4}]"),
                13 => v4.to_string().replace('.', "%2e"),
                14 => format!("user@{v4}"),
                15 => format!("[{v4}]"),
                _ => format!("0x{n:08x}"),
            }
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            match how % 7 {
                0 => format!("[{v6}]"),
                1 => format!(
                    "[{}]",
                    segments
                        .iter()
                        .map(|s| format!("{s:04x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                ),
                2 => format!("[{}]", v6.to_string().to_uppercase()),
                3 => format!("[{v6}%25eth0]"),
                4 => v6.to_string(),
                5 => format!("[{v6}]."),
                _ => format!("[{}]", segments.map(|s| format!("{s:x}")).join(":")),
            }
        }
    }
}

fn port_suffix() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        4 => proptest::sample::select(PORTS).prop_map(|p| format!(":{p}")),
        1 => proptest::sample::select(&[":", ":0", ":65536", ":080", ":+80", ": 80", ":80 "][..])
            .prop_map(str::to_string),
    ]
}

/// Small byte-level damage: insertions of the characters parsers trip on, deletions, swaps.
fn damaged(text: String, edits: Vec<(u8, usize, u8)>) -> Vec<u8> {
    const NASTY: &[u8] = b".:[]@%/\\ \t\r\n\x00#?0xX9fF-_*";
    let mut bytes = text.into_bytes();
    for (kind, at, pick) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % (bytes.len() + 1)
        };
        match kind % 3 {
            0 => bytes.insert(at, NASTY[pick as usize % NASTY.len()]),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ if at + 1 < bytes.len() => bytes.swap(at, at + 1),
            _ => {}
        }
    }
    bytes
}

fn hostile_destination() -> impl Strategy<Value = Vec<u8>> {
    (
        base_ip(),
        any::<u8>(),
        port_suffix(),
        any::<u64>(),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
        ],
    )
        .prop_map(|(ip, how, port, mask, edits)| {
            let text = mixed_case(format!("{}{port}", spell(ip, how)), mask);
            damaged(text, edits)
        })
}

/// Allows every IP on the usual ports and a few names; keeps the default `addresses.deny`.
const ALLOW_ALL_IPS: &str = r#"{"allow":[
    {"host":"0.0.0.0/0","ports":[80,443,8080,53,22]},
    {"host":"::/0","ports":[80,443,8080,53,22]},
    {"host":"*.org","ports":[80,443]}
]}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Hostile spellings against the default address policy: refused outright (400), or decided
    /// by the address they denote — and never allowed when that address is special-purpose.
    #[test]
    fn hostile_spellings_of_internal_addresses_are_never_allowed(input in hostile_destination()) {
        let config = FilterConfig::from_json(ALLOW_ALL_IPS).expect("valid");
        let policy = Policy::compile(&config);
        let Ok(dest) = destination::parse(input.clone()) else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&input).into_owned();
        let Ok((outcome, _, canonical)) = fast_decide(&policy, &text, "GET") else {
            return Ok(());
        };
        prop_assert_eq!(
            Ok((outcome, None, canonical.clone())),
            naive_decide(&config, &text, "GET"),
            "{:?}", text
        );
        match dest.target() {
            Target::Ip(ip) => {
                if naive_address_denied(&config, ip) {
                    prop_assert_ne!(outcome, Outcome::Allow, "{:?} -> {}", text, canonical);
                }
            }
            Target::Name(name) => {
                // A name the filter lets through is never an address in disguise.
                prop_assert!(permissive_ipv4(name).is_none(), "{:?} passed as the name {}", text, name);
                prop_assert!(name.parse::<IpAddr>().is_err(), "{:?} passed as the name {}", text, name);
            }
        }
    }

    /// Non-canonical IPv4 spellings are refused, never read as a name or another address.
    #[test]
    fn alternate_ipv4_spellings_are_refused(ip in base_ip(), how in prop_oneof![Just(2u8), Just(3), Just(4), Just(5), Just(6), Just(13), Just(14), Just(15), Just(16)]) {
        let IpAddr::V4(v4) = ip else { return Ok(()) };
        let text = spell(IpAddr::V4(v4), how);
        // Spellings that happen to coincide with the canonical one (e.g. 0.0.0.0 in octal) are fine.
        if text == v4.to_string() {
            return Ok(());
        }
        prop_assert!(destination::parse(text.clone().into_bytes()).is_err(), "{} was accepted", text);
    }

    /// The accepted spellings of one address canonicalise to one text (per family), the policy
    /// sees the same address in each, and the canonical text is stable.
    #[test]
    fn accepted_spellings_of_one_address_agree(ip in base_ip(), a in 0usize..5, b in 0usize..5) {
        // Spellings that denote `ip` itself (NAT64, 6to4 and IPv4-compatible forms denote others).
        let (a, b) = match ip {
            IpAddr::V4(_) => ([0u8, 1, 7, 8, 9][a], [0u8, 1, 7, 8, 9][b]),
            IpAddr::V6(_) => ([0u8, 1, 2, 6, 0][a], [0u8, 1, 2, 6, 0][b]),
        };
        let x = destination::parse(spell(ip, a).into_bytes());
        let y = destination::parse(spell(ip, b).into_bytes());
        let (Ok(x), Ok(y)) = (x, y) else {
            return Err(TestCaseError::fail(format!("{} or {} refused", spell(ip, a), spell(ip, b))));
        };
        let seen = |d: &destination::Destination| match d.target() {
            Target::Ip(ip) => Some(net::normalize(ip)),
            Target::Name(_) => None,
        };
        prop_assert_eq!(seen(&x), Some(net::normalize(ip)), "{}", spell(ip, a));
        prop_assert_eq!(seen(&x), seen(&y));
        if x.kind() == y.kind() {
            prop_assert_eq!(x.authority(), y.authority());
        }
        let again = destination::parse(x.authority().as_bytes().to_vec()).expect("canonical parses");
        prop_assert_eq!(again.authority(), x.authority());
    }
}

#[test]
fn the_permissive_reference_reads_what_resolvers_read() {
    assert_eq!(permissive_ipv4("127.1"), Some(0x7f00_0001));
    assert_eq!(permissive_ipv4("0x7f.1"), Some(0x7f00_0001));
    assert_eq!(permissive_ipv4("0177.0.0.1"), Some(0x7f00_0001));
    assert_eq!(permissive_ipv4("2130706433"), Some(0x7f00_0001));
    assert_eq!(permissive_ipv4("10.1.65535"), Some(0x0a01_ffff));
    assert_eq!(permissive_ipv4("example.org"), None);
    assert_eq!(permissive_ipv4("1.2.3.4.5"), None);
    assert_eq!(permissive_ipv4("256.1.1.1"), None);
}
