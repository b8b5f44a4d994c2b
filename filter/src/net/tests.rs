use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn strict_ipv4() {
    let cases: &[(&str, Option<[u8; 4]>)] = &[
        ("127.0.0.1", Some([127, 0, 0, 1])),
        ("0.0.0.0", Some([0, 0, 0, 0])),
        ("255.255.255.255", Some([255, 255, 255, 255])),
        ("256.0.0.1", None),
        ("127.1", None),
        ("127.0.1", None),
        ("0177.0.0.1", None),
        ("0x7f.0.0.1", None),
        ("2130706433", None),
        ("1.2.3.4.5", None),
        ("01.2.3.4", None),
        ("1.2.3.", None),
        (".1.2.3", None),
        ("1..2.3", None),
        ("+1.2.3.4", None),
        ("1.2.3.4 ", None),
        ("1000.2.3.4", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_ipv4_strict(text), want.map(Ipv4Addr::from), "{text}");
    }
}

#[test]
fn ipv6_refuses_zones_and_junk() {
    assert_eq!(parse_ipv6("::1"), Some(Ipv6Addr::LOCALHOST));
    assert_eq!(parse_ipv6("fe80::1%eth0"), None);
    assert_eq!(parse_ipv6("fe80::1%2"), None);
    assert_eq!(parse_ipv6("::ffff:127.0.0.01"), None);
    assert_eq!(parse_ipv6("[::1]"), None);
    assert_eq!(parse_ipv6("1:2:3:4:5:6:7:8:9"), None);
    assert!(parse_ipv6("::FFFF:7F00:1").is_some());
}

#[test]
fn normalize_maps_only_mapped() {
    assert_eq!(normalize(ip("::ffff:127.0.0.1")), ip("127.0.0.1"));
    assert_eq!(normalize(ip("::ffff:7f00:1")), ip("127.0.0.1"));
    assert_eq!(normalize(ip("::127.0.0.1")), ip("::127.0.0.1"));
    assert_eq!(normalize(ip("2001:db8::1")), ip("2001:db8::1"));
    assert_eq!(normalize(ip("10.0.0.1")), ip("10.0.0.1"));
}

#[test]
fn embedded_forms() {
    let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("v6");
    assert_eq!(
        embedded_ipv4(v6("64:ff9b::7f00:1")),
        Some(Ipv4Addr::new(127, 0, 0, 1))
    );
    assert_eq!(
        embedded_ipv4(v6("64:ff9b::10.1.2.3")),
        Some(Ipv4Addr::new(10, 1, 2, 3))
    );
    assert_eq!(
        embedded_ipv4(v6("2002:a9fe:a9fe::1")),
        Some(Ipv4Addr::new(169, 254, 169, 254))
    );
    assert_eq!(embedded_ipv4(v6("64:ff9b:1::1")), None);
    assert_eq!(embedded_ipv4(v6("2001:db8::1")), None);
}

#[test]
fn cidr_parse_table() {
    let ok: &[(&str, &str)] = &[
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("203.0.113.7", "203.0.113.7/32"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("[2001:db8::1]", "2001:db8::1/128"),
        ("::/0", "::/0"),
        ("::ffff:0:0/96", "::ffff:0.0.0.0/96"),
    ];
    for (text, want) in ok {
        assert_eq!(
            Cidr::parse(text).map(|c| c.to_string()).as_deref(),
            Ok(*want),
            "{text}"
        );
    }
    let bad: &[(&str, CidrError)] = &[
        ("10.0.0.1/8", CidrError::HostBits(8)),
        ("10.0.0.0/33", CidrError::BadLength(32)),
        ("10.0.0.0/", CidrError::BadLength(32)),
        ("10.0.0.0/08", CidrError::BadLength(32)),
        ("10.0.0.0/-1", CidrError::BadLength(32)),
        ("2001:db8::/129", CidrError::BadLength(128)),
        ("010.0.0.0/8", CidrError::BadAddress),
        ("10.0/8", CidrError::BadAddress),
        ("fe80::%eth0/64", CidrError::BadAddress),
        ("example.org/8", CidrError::BadAddress),
        ("", CidrError::BadAddress),
    ];
    for (text, want) in bad {
        assert_eq!(Cidr::parse(text).as_ref(), Err(want), "{text}");
    }
}

#[test]
fn split_mapped_rewrites_only_inside_the_mapped_block() {
    let c = |s: &str| Cidr::parse(s).expect("cidr");
    assert_eq!(c("::ffff:10.0.0.0/104").split_mapped(), c("10.0.0.0/8"));
    assert_eq!(c("::ffff:0:0/96").split_mapped(), c("0.0.0.0/0"));
    assert_eq!(c("::ffff:127.0.0.1").split_mapped(), c("127.0.0.1/32"));
    assert_eq!(c("::/0").split_mapped(), c("::/0"));
    assert_eq!(c("2001:db8::/32").split_mapped(), c("2001:db8::/32"));
}

#[test]
fn range_set_merges_and_finds() {
    let set = RangeSet::from_cidrs(
        [
            "10.0.0.0/9",
            "10.128.0.0/9",
            "192.168.1.0/24",
            "fc00::/7",
            "::ffff:1.2.3.0/120",
        ]
        .iter()
        .map(|s| Cidr::parse(s).expect("cidr")),
    );
    assert_eq!(set.v4.len(), 3, "adjacent /9s merge into one range");
    for (addr, want) in [
        ("10.0.0.0", true),
        ("10.255.255.255", true),
        ("11.0.0.0", false),
        ("9.255.255.255", false),
        ("192.168.1.77", true),
        ("192.168.2.1", false),
        ("1.2.3.4", true),
        ("1.2.4.4", false),
        ("fd00::1", true),
        ("fe00::1", false),
        ("::ffff:1.2.3.4", false), // the set takes addresses literally; callers normalise
    ] {
        assert_eq!(set.contains(ip(addr)), want, "{addr}");
    }
}

#[test]
fn range_set_edges() {
    let set = RangeSet::from_cidrs([Cidr::parse("0.0.0.0/0").expect("cidr")]);
    assert!(set.contains(ip("255.255.255.255")));
    assert!(set.contains(ip("0.0.0.0")));
    assert!(!set.contains(ip("::")));
    let set = RangeSet::from_cidrs([Cidr::parse("::/0").expect("cidr")]);
    assert!(set.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    assert!(RangeSet::from_cidrs([]).is_empty());
}

#[test]
fn default_address_policy_table() {
    let policy = AddressPolicy::new(&special_purpose(), &[]);
    let table: &[(&str, bool)] = &[
        ("127.0.0.1", true),
        ("127.255.255.254", true),
        ("10.1.2.3", true),
        ("172.16.0.1", true),
        ("172.31.255.255", true),
        ("172.32.0.1", false),
        ("192.168.0.1", true),
        ("169.254.169.254", true),
        ("100.64.0.1", true),
        ("100.128.0.1", false),
        ("0.0.0.0", true),
        ("0.1.2.3", true),
        ("192.0.0.9", true),
        ("192.0.2.1", true),
        ("192.88.99.1", true),
        ("198.18.0.1", true),
        ("198.19.255.255", true),
        ("198.20.0.1", false),
        ("198.51.100.1", true),
        ("203.0.113.9", true),
        ("224.0.0.1", true),
        ("239.255.255.250", true),
        ("240.0.0.1", true),
        ("255.255.255.255", true),
        ("8.8.8.8", false),
        ("1.1.1.1", false),
        ("93.184.215.14", false),
        ("::", true),
        ("::1", true),
        ("::127.0.0.1", true),
        ("::ffff:127.0.0.1", true),
        ("::ffff:7f00:1", true),
        ("::ffff:169.254.169.254", true),
        ("::ffff:8.8.8.8", false),
        ("64:ff9b::127.0.0.1", true),
        ("64:ff9b::a9fe:a9fe", true),
        ("64:ff9b::8.8.8.8", false),
        ("64:ff9b:1::1", true),
        ("100::1", true),
        ("2001::1", true),
        ("2001:1ff::1", true),
        ("2001:200::1", false),
        ("2001:db8::1", true),
        ("2002:7f00:1::1", true),
        ("2002:808:808::1", true), // 6to4 is denied as a whole by default
        ("3fff::1", true),
        ("5f00::1", true),
        ("fc00::1", true),
        ("fd12:3456::1", true),
        ("fe80::1", true),
        ("febf::1", true),
        ("fec0::1", true),
        ("ff02::1", true),
        ("2606:4700::1111", false),
        ("2a00:1450:4001::1", false),
    ];
    for (addr, want) in table {
        assert_eq!(policy.denies(ip(addr)), *want, "{addr}");
    }
}

#[test]
fn allow_carves_out_and_embedded_v4_still_checked() {
    let c = |s: &str| Cidr::parse(s).expect("cidr");
    let policy = AddressPolicy::new(
        &special_purpose(),
        &[c("127.0.0.0/8"), c("2002::/16"), c("10.1.0.0/16")],
    );
    assert!(!policy.denies(ip("127.0.0.1")));
    assert!(!policy.denies(ip("::ffff:127.0.0.1")));
    assert!(!policy.denies(ip("10.1.2.3")));
    assert!(policy.denies(ip("10.2.0.1")));
    // 6to4 carved out: the embedded address decides.
    assert!(!policy.denies(ip("2002:808:808::1")));
    assert!(policy.denies(ip("2002:a9fe:a9fe::1")));
    assert!(!policy.denies(ip("2002:7f00:1::1")), "127/8 is carved out");
}

#[test]
fn empty_deny_list_denies_nothing() {
    let policy = AddressPolicy::new(&[], &[]);
    assert!(!policy.denies(ip("127.0.0.1")));
    assert!(!policy.denies(ip("64:ff9b::7f00:1")));
}

#[test]
fn socket_address_table() {
    let cases: &[(&str, Option<(&str, u16)>)] = &[
        ("10.0.0.1:80", Some(("10.0.0.1", 80))),
        ("[::1]:443", Some(("::1", 443))),
        ("[fe80::1%2]:443", Some(("fe80::1", 443))),
        ("[::ffff:127.0.0.1]:8080", Some(("::ffff:127.0.0.1", 8080))),
        ("10.0.0.1", None),
        ("10.0.0.1:0", None),
        ("10.0.0.1:65536", None),
        ("::1:80", None),
        ("example.org:80", None),
        ("", None),
        ("127.1:80", None),
        ("[::1]", None),
    ];
    for (text, want) in cases {
        assert_eq!(
            parse_socket_address(text.as_bytes()),
            want.map(|(a, p)| (ip(a), p)),
            "{text}"
        );
    }
    assert_eq!(parse_socket_address(b"\xff\xfe:80"), None);
}

#[test]
fn port_table() {
    for (text, want) in [
        ("1", Some(1)),
        ("80", Some(80)),
        ("65535", Some(65535)),
        ("0", None),
        ("65536", None),
        ("080", None),
        ("", None),
        ("+80", None),
        ("8o", None),
        ("123456", None),
    ] {
        assert_eq!(parse_port(text), want, "{text}");
    }
}
