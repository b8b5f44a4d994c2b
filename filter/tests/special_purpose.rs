//! The security default, checked against the IANA registries rather than against the filter's own
//! table: with an allowlist that admits every IP, the default `addresses.deny` must still deny
//! every entry of the IANA IPv4 and IPv6 Special-Purpose Address Registries that is not globally
//! reachable (and multicast, class E, deprecated site-local), at the first, last and a middle
//! address of each block, in every spelling an IPv6 client can use for an IPv4 address. Entries the
//! registry marks globally reachable are listed with what the filter does about them, so any change
//! there is a deliberate one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dfp_filter::config::FilterConfig;
use dfp_filter::destination;
use dfp_filter::policy::{DenyReason, MethodSource, Outcome, Policy};

/// (block, globally reachable per IANA). Source: IANA IPv4 Special-Purpose Address Registry, plus
/// the multicast space (IPv4 Multicast Address Space Registry).
const IANA_V4: &[(&str, bool)] = &[
    ("0.0.0.0/8", false),
    ("0.0.0.0/32", false),
    ("10.0.0.0/8", false),
    ("100.64.0.0/10", false),
    ("127.0.0.0/8", false),
    ("169.254.0.0/16", false),
    ("172.16.0.0/12", false),
    ("192.0.0.0/24", false),
    ("192.0.0.0/29", false),
    ("192.0.0.8/32", false),
    ("192.0.0.9/32", true),
    ("192.0.0.10/32", true),
    ("192.0.0.170/32", false),
    ("192.0.0.171/32", false),
    ("192.0.2.0/24", false),
    ("192.31.196.0/24", true),
    ("192.52.193.0/24", true),
    ("192.88.99.0/24", false), // deprecated 6to4 relay anycast (RFC 7526)
    ("192.168.0.0/16", false),
    ("192.175.48.0/24", true),
    ("198.18.0.0/15", false),
    ("198.51.100.0/24", false),
    ("203.0.113.0/24", false),
    ("224.0.0.0/4", false),
    ("240.0.0.0/4", false),
    ("255.255.255.255/32", false),
];

/// Source: IANA IPv6 Special-Purpose Address Registry, plus multicast and the deprecated
/// site-local block (RFC 3879). `::ffff:0:0/96` is tested through the IPv4 table (a mapped
/// address is the IPv4 address it carries).
const IANA_V6: &[(&str, bool)] = &[
    ("::1/128", false),
    ("::/128", false),
    ("64:ff9b::/96", true),
    ("64:ff9b:1::/48", false),
    ("100::/64", false),
    ("100:0:0:1::/64", false),
    ("2001::/23", false),
    ("2001::/32", false), // Teredo: carries an IPv4 address the proxy cannot check
    ("2001:1::1/128", true),
    ("2001:1::2/128", true),
    ("2001:1::3/128", true),
    ("2001:2::/48", false),
    ("2001:3::/32", true),
    ("2001:4:112::/48", true),
    ("2001:10::/28", false), // deprecated ORCHID
    ("2001:20::/28", true),
    ("2001:30::/28", true),
    ("2001:db8::/32", false),
    ("2002::/16", false), // 6to4: carries an IPv4 address
    ("2620:4f:8000::/48", true),
    ("3fff::/20", false),
    ("5f00::/16", false),
    ("fc00::/7", false),
    ("fe80::/10", false),
    ("fec0::/10", false),
    ("ff00::/8", false),
];

/// Globally reachable entries the default denies all the same, because they sit inside a larger
/// block that is not (`2001::/23`, IETF protocol assignments; `192.0.0.0/24`). Everything else
/// globally reachable must be allowed: the default is not a blocklist of the public internet.
const REACHABLE_BUT_INSIDE_A_DENIED_BLOCK: &[&str] = &[
    "192.0.0.9/32",
    "192.0.0.10/32",
    "2001:1::1/128",
    "2001:1::2/128",
    "2001:1::3/128",
    "2001:3::/32",
    "2001:4:112::/48",
    "2001:20::/28",
    "2001:30::/28",
];

fn split(cidr: &str) -> (&str, u32) {
    let (addr, len) = cidr.split_once('/').expect("a CIDR");
    (addr, len.parse().expect("a prefix length"))
}

fn v4_samples(cidr: &str) -> Vec<Ipv4Addr> {
    let (addr, len) = split(cidr);
    let base = u32::from(addr.parse::<Ipv4Addr>().expect("IPv4"));
    let host = if len == 32 { 0 } else { u32::MAX >> len };
    [base, base | host, base | (host / 2 + 1).min(host)]
        .into_iter()
        .map(Ipv4Addr::from)
        .collect()
}

fn v6_samples(cidr: &str) -> Vec<Ipv6Addr> {
    let (addr, len) = split(cidr);
    let base = u128::from(addr.parse::<Ipv6Addr>().expect("IPv6"));
    let host = if len == 128 { 0 } else { u128::MAX >> len };
    [base, base | host, base | (host / 2 + 1).min(host)]
        .into_iter()
        .map(Ipv6Addr::from)
        .collect()
}

/// Decides `authority` (GET) with a config that allows every IP on port 80.
fn decide(policy: &Policy, authority: &str) -> Outcome {
    let mut dest = destination::parse(authority.as_bytes().to_vec())
        .unwrap_or_else(|e| panic!("{authority} should parse: {}", e.as_str()));
    let mut method: &[u8] = b"GET";
    policy
        .decide(&mut dest, &mut method as &mut dyn MethodSource, None)
        .unwrap_or_else(|e| panic!("{authority}: {}", e.as_str()))
        .outcome
}

fn allow_every_ip() -> Policy {
    let config = FilterConfig::from_json(
        r#"{"allow":[{"host":"0.0.0.0/0","ports":[80]},{"host":"::/0","ports":[80]}]}"#,
    )
    .expect("valid config");
    Policy::compile(&config)
}

fn expectation(cidr: &str, reachable: bool) -> Outcome {
    if !reachable || REACHABLE_BUT_INSIDE_A_DENIED_BLOCK.contains(&cidr) {
        Outcome::Deny(DenyReason::AddressDenied)
    } else {
        Outcome::Allow
    }
}

#[test]
fn every_ipv4_special_purpose_block_is_denied_by_default_in_every_spelling() {
    let policy = allow_every_ip();
    let mut failures = Vec::new();
    for &(cidr, reachable) in IANA_V4 {
        let want = expectation(cidr, reachable);
        for ip in v4_samples(cidr) {
            let [a, b, c, d] = ip.octets();
            let hex = format!(
                "{:x}:{:x}",
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d])
            );
            // The address itself, IPv4-mapped (two spellings), and NAT64-embedded: all one address
            // to the policy.
            let spellings = [
                format!("{ip}:80"),
                format!("[::ffff:{ip}]:80"),
                format!("[::ffff:{hex}]:80"),
                format!("[64:ff9b::{hex}]:80"),
            ];
            for authority in spellings {
                let got = decide(&policy, &authority);
                if got != want {
                    failures.push(format!("{authority} ({cidr}): {got:?}, want {want:?}"));
                }
            }
            // 6to4 carries it too; 2002::/16 is denied whatever it carries.
            let six_to_four = format!("[2002:{hex}::1]:80");
            if decide(&policy, &six_to_four) != Outcome::Deny(DenyReason::AddressDenied) {
                failures.push(format!("{six_to_four} allowed"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_ipv6_special_purpose_block_is_denied_by_default() {
    let policy = allow_every_ip();
    let mut failures = Vec::new();
    for &(cidr, reachable) in IANA_V6 {
        let want = expectation(cidr, reachable);
        for ip in v6_samples(cidr) {
            // A NAT64 address is judged by the IPv4 address it embeds (tested above); here the
            // globally reachable prefix itself must not deny a public embedded address.
            let authority = format!("[{ip}]:80");
            let got = decide(&policy, &authority);
            let want = if cidr == "64:ff9b::/96" {
                let embedded = Ipv4Addr::from(u128::from(ip) as u32);
                if IANA_V4.iter().any(|(c, r)| !r && v4_contains(c, embedded)) {
                    Outcome::Deny(DenyReason::AddressDenied)
                } else {
                    Outcome::Allow
                }
            } else {
                want
            };
            if got != want {
                failures.push(format!("{authority} ({cidr}): {got:?}, want {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn v4_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let (addr, len) = split(cidr);
    let base = u32::from(addr.parse::<Ipv4Addr>().expect("IPv4"));
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == base & mask
}

#[test]
fn public_addresses_stay_reachable() {
    // The default must not turn into "deny everything": ordinary public addresses pass, in every
    // spelling.
    let policy = allow_every_ip();
    for ip in ["8.8.8.8", "1.1.1.1", "93.184.215.14", "151.101.1.69"] {
        for authority in [format!("{ip}:80"), format!("[::ffff:{ip}]:80")] {
            assert_eq!(decide(&policy, &authority), Outcome::Allow, "{authority}");
        }
    }
    for ip in ["2606:4700:4700::1111", "2a00:1450:4001:80b::200e"] {
        let authority = format!("[{ip}]:80");
        assert_eq!(decide(&policy, &authority), Outcome::Allow, "{authority}");
    }
    let addr: IpAddr = "2606:4700::1".parse().expect("ip");
    assert!(!policy.address_denied(addr));
}

#[test]
fn an_empty_allowlist_denies_everything() {
    let policy = Policy::compile(&FilterConfig::from_json(r#"{"allow":[]}"#).expect("valid"));
    for authority in [
        "example.org:80",
        "example.org:443",
        "8.8.8.8:80",
        "[2606:4700::1]:443",
        "localhost:80",
        "a.b.c.d.e.f:8080",
    ] {
        assert!(
            matches!(decide(&policy, authority), Outcome::Deny(_)),
            "{authority}"
        );
    }
    // And with no allow key at all.
    let policy = Policy::compile(&FilterConfig::from_json("{}").expect("valid"));
    assert!(matches!(
        decide(&policy, "example.org:80"),
        Outcome::Deny(DenyReason::HostNotAllowed)
    ));
}
