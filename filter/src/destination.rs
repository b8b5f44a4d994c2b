//! Parsing and canonicalisation of a destination authority (`host[:port]`): the value of
//! `:authority` (which Envoy fills from `Host` and from absolute-form request URIs), of a CONNECT
//! target, or of the configured destination header.
//!
//! Canonical form: lower case, no trailing dot, IPv6 in brackets in RFC 5952 text, port in
//! canonical decimal. Anything that is not a valid DNS name (letters, digits, hyphens; labels of
//! 1..=63 octets without a leading or trailing hyphen; at most 253 octets) or IP literal is
//! refused with an [`InvalidReason`] — it is never forwarded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::net;

named_enum! {
    /// Why a destination is not acceptable (answered with 400). The strings are stable: they appear
    /// in response bodies, the `x-dfp-denied` header, response details and metric names.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum InvalidReason {
        /// No destination header and no `:authority`.
        MissingDestination => "missing_destination",
        /// The host part is empty (`""`, `":80"`, `"."`).
        EmptyHost => "empty_host",
        /// `user@host`: userinfo has no place in a proxy destination.
        Userinfo => "userinfo",
        /// A byte that cannot appear in a host name or IP literal (space, control, `_`, `%`, `/` ...).
        InvalidCharacter => "invalid_character",
        /// A byte above 0x7f: internationalised names must arrive as punycode.
        NonAscii => "non_ascii",
        /// Port empty, zero, above 65535, with leading zeros or not decimal.
        InvalidPort => "invalid_port",
        /// A CONNECT target without a port.
        MissingPort => "missing_port",
        /// A host that resolvers would read as IPv4 but is not four canonical decimal octets.
        NonCanonicalIpv4 => "non_canonical_ipv4",
        /// A malformed bracketed literal, an IPv6 zone, or an unbracketed IPv6 address.
        InvalidIpv6 => "invalid_ipv6",
        /// A DNS label longer than 63 octets.
        LabelTooLong => "label_too_long",
        /// A DNS name longer than 253 octets.
        NameTooLong => "name_too_long",
        /// An empty label (`a..b`) or one that starts or ends with a hyphen.
        InvalidLabel => "invalid_label",
    }
}

/// What kind of host a destination names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Name,
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// The host as the policy matches it: a DNS name, or an address with IPv4-mapped IPv6 already
/// normalised to IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

/// A validated, canonical destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Canonical `host` or `host:port`.
    text: String,
    host_len: usize,
    port: Option<u16>,
    host: Host,
    /// Whether `text` differs from the bytes it was parsed from.
    rewritten: bool,
}

impl Destination {
    /// The canonical host: a lower-case name, dotted-quad IPv4, or bracketed IPv6.
    pub fn host(&self) -> &str {
        self.text.get(..self.host_len).unwrap_or_default()
    }

    pub fn kind(&self) -> Host {
        self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The canonical authority: `host:port` once a port is known, else `host`.
    pub fn authority(&self) -> &str {
        &self.text
    }

    /// Whether [`authority`](Self::authority) differs from the input, i.e. the header needs
    /// rewriting.
    pub fn is_rewritten(&self) -> bool {
        self.rewritten
    }

    pub fn target(&self) -> Target<'_> {
        match self.host {
            Host::Name => Target::Name(self.host()),
            Host::V4(v4) => Target::Ip(IpAddr::V4(v4)),
            Host::V6(v6) => Target::Ip(net::normalize(IpAddr::V6(v6))),
        }
    }

    /// Supplies the port of a destination that had none; this makes the authority rewritten.
    pub fn set_default_port(&mut self, port: u16) {
        if self.port.is_some() {
            return;
        }
        self.text.push(':');
        net::push_decimal(&mut self.text, u32::from(port));
        self.port = Some(port);
        self.rewritten = true;
    }
}

/// Longest DNS name in text form without the trailing dot (RFC 1035: 255 octets on the wire).
pub const MAX_NAME_LEN: usize = 253;
/// Longest DNS label.
pub const MAX_LABEL_LEN: usize = 63;

/// Parses and canonicalises an authority. Takes the header bytes by value so that an input that
/// is already canonical becomes the result without copying.
pub fn parse(input: Vec<u8>) -> Result<Destination, InvalidReason> {
    if input.is_empty() {
        return Err(InvalidReason::EmptyHost);
    }
    let mut has_upper = false;
    for &b in &input {
        match b {
            0x80..=0xff => return Err(InvalidReason::NonAscii),
            b'@' => return Err(InvalidReason::Userinfo),
            0..=0x20 | 0x7f => return Err(InvalidReason::InvalidCharacter),
            b'A'..=b'Z' => has_upper = true,
            _ => {}
        }
    }
    if input[0] == b'[' {
        return parse_bracketed(input);
    }
    let (host_end, port) = split_port(&input)?;
    let host_bytes = &input[..host_end];
    let trailing_dot = host_bytes.ends_with(b".");
    let name = if trailing_dot {
        &host_bytes[..host_bytes.len() - 1]
    } else {
        host_bytes
    };
    let host = classify_name(name)?;
    if !has_upper && !trailing_dot {
        // Already canonical: reuse the buffer. The bytes were checked to be ASCII above.
        let text = String::from_utf8(input).map_err(|_| InvalidReason::NonAscii)?;
        return Ok(Destination {
            text,
            host_len: host_end,
            port,
            host,
            rewritten: false,
        });
    }
    let mut text = String::with_capacity(input.len());
    for &b in name {
        text.push(char::from(b.to_ascii_lowercase()));
    }
    let host_len = text.len();
    if let Some(p) = port {
        text.push(':');
        net::push_decimal(&mut text, u32::from(p));
    }
    Ok(Destination {
        text,
        host_len,
        port,
        host,
        rewritten: true,
    })
}

/// Convenience for callers holding text: the canonical authority, or why it is invalid.
pub fn canonicalize(input: &str) -> Result<String, InvalidReason> {
    parse(input.as_bytes().to_vec()).map(|d| d.text)
}

/// Splits `host[:port]` (not bracketed) at its only colon.
fn split_port(input: &[u8]) -> Result<(usize, Option<u16>), InvalidReason> {
    let mut colons = input.iter().enumerate().filter(|(_, &b)| b == b':');
    let Some((first, _)) = colons.next() else {
        return Ok((input.len(), None));
    };
    if colons.next().is_some() {
        // More than one colon: an IPv6 address without brackets, which an authority cannot be.
        return Err(InvalidReason::InvalidIpv6);
    }
    let port = port_from(&input[first + 1..])?;
    Ok((first, Some(port)))
}

fn port_from(bytes: &[u8]) -> Result<u16, InvalidReason> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(net::parse_port)
        .ok_or(InvalidReason::InvalidPort)
}

fn parse_bracketed(input: Vec<u8>) -> Result<Destination, InvalidReason> {
    let close = input
        .iter()
        .position(|&b| b == b']')
        .ok_or(InvalidReason::InvalidIpv6)?;
    let inner = std::str::from_utf8(&input[1..close]).map_err(|_| InvalidReason::NonAscii)?;
    let addr = net::parse_ipv6(inner).ok_or(InvalidReason::InvalidIpv6)?;
    let rest = &input[close + 1..];
    let port = match rest.split_first() {
        None => None,
        Some((b':', digits)) => Some(port_from(digits)?),
        Some(_) => return Err(InvalidReason::InvalidIpv6),
    };
    let mut text = String::with_capacity(input.len());
    text.push('[');
    net::push_ipv6(&mut text, addr);
    text.push(']');
    let host_len = text.len();
    if let Some(p) = port {
        text.push(':');
        net::push_decimal(&mut text, u32::from(p));
    }
    let rewritten = text.as_bytes() != input.as_slice();
    Ok(Destination {
        text,
        host_len,
        port,
        host: Host::V6(addr),
        rewritten,
    })
}

/// Validates a host that is not bracketed (trailing dot already removed): a DNS name, or — when
/// the last label looks numeric, as resolvers would then parse it as IPv4 — a canonical IPv4.
fn classify_name(name: &[u8]) -> Result<Host, InvalidReason> {
    if name.is_empty() {
        return Err(InvalidReason::EmptyHost);
    }
    if !name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(InvalidReason::InvalidCharacter);
    }
    let last = name.rsplit(|&b| b == b'.').next().unwrap_or(name);
    if looks_numeric(last) {
        let text = std::str::from_utf8(name).map_err(|_| InvalidReason::NonAscii)?;
        return net::parse_ipv4_strict(text)
            .map(Host::V4)
            .ok_or(InvalidReason::NonCanonicalIpv4);
    }
    validate_dns_name(name)?;
    Ok(Host::Name)
}

/// WHATWG URL's "ends in a number": all digits, or `0x` followed by hex digits.
fn looks_numeric(label: &[u8]) -> bool {
    if label.is_empty() {
        return false;
    }
    if label.iter().all(u8::is_ascii_digit) {
        return true;
    }
    match label {
        [b'0', b'x' | b'X', hex @ ..] => hex.iter().all(u8::is_ascii_hexdigit),
        _ => false,
    }
}

/// Checks length limits and label syntax of a name made of letters, digits, hyphens and dots.
pub(crate) fn validate_dns_name(name: &[u8]) -> Result<(), InvalidReason> {
    if name.len() > MAX_NAME_LEN {
        return Err(InvalidReason::NameTooLong);
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() || label[0] == b'-' || label[label.len() - 1] == b'-' {
            return Err(InvalidReason::InvalidLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(InvalidReason::LabelTooLong);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str) -> Result<String, InvalidReason> {
        canonicalize(input)
    }

    #[test]
    fn accepts_and_canonicalises() {
        let table: &[(&str, &str, bool)] = &[
            // input, canonical, rewritten
            ("example.org", "example.org", false),
            ("example.org:8080", "example.org:8080", false),
            ("Example.ORG:443", "example.org:443", true),
            ("example.org.", "example.org", true),
            ("example.org.:80", "example.org:80", true),
            ("EXAMPLE.org.:80", "example.org:80", true),
            ("a", "a", false),
            ("localhost", "localhost", false),
            ("xn--bcher-kva.example", "xn--bcher-kva.example", false),
            ("a-b.c-d.example", "a-b.c-d.example", false),
            ("123.example", "123.example", false),
            ("0x.example", "0x.example", false),
            ("127.0.0.1", "127.0.0.1", false),
            ("127.0.0.1:80", "127.0.0.1:80", false),
            ("127.0.0.1.", "127.0.0.1", true),
            ("0.0.0.0:1", "0.0.0.0:1", false),
            ("255.255.255.255:65535", "255.255.255.255:65535", false),
            ("[::1]", "[::1]", false),
            ("[::1]:443", "[::1]:443", false),
            ("[0:0:0:0:0:0:0:1]:443", "[::1]:443", true),
            ("[2001:DB8::1]:80", "[2001:db8::1]:80", true),
            ("[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.1]:80", false),
            ("[::FFFF:7F00:1]:80", "[::ffff:127.0.0.1]:80", true),
            ("[fe80::1]", "[fe80::1]", false),
        ];
        for (input, want, rewritten) in table {
            let d = parse(input.as_bytes().to_vec()).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(d.authority(), *want, "{input}");
            assert_eq!(d.is_rewritten(), *rewritten, "{input}");
        }
    }

    #[test]
    fn rejects_hostile_spellings() {
        use InvalidReason::*;
        let long_label = format!("{}.example", "a".repeat(64));
        let ok_label = format!("{}.example", "a".repeat(63));
        let long_name = format!("{}.example", ["abcdefghi"; 25].join("."));
        let table: Vec<(&str, InvalidReason)> = vec![
            ("", EmptyHost),
            (":80", EmptyHost),
            (".", EmptyHost),
            (".:80", EmptyHost),
            ("user@example.org", Userinfo),
            ("user:pass@example.org", Userinfo),
            ("example.org@evil.example", Userinfo),
            ("@", Userinfo),
            ("exa mple.org", InvalidCharacter),
            (" example.org", InvalidCharacter),
            ("example.org\t", InvalidCharacter),
            ("example.org\r\nx-injected: 1", InvalidCharacter),
            ("example.org\0", InvalidCharacter),
            ("example.org\x7f", InvalidCharacter),
            ("exam_ple.org", InvalidCharacter),
            ("example.org/path", InvalidCharacter),
            ("example.org?q", InvalidCharacter),
            ("example.org#f", InvalidCharacter),
            ("*.example.org", InvalidCharacter),
            ("ex%61mple.org", InvalidCharacter),
            ("example.org]", InvalidCharacter),
            ("exämple.org", NonAscii),
            ("bücher.example", NonAscii),
            ("example.org:", InvalidPort),
            ("example.org:0", InvalidPort),
            ("example.org:65536", InvalidPort),
            ("example.org:99999", InvalidPort),
            ("example.org:080", InvalidPort),
            ("example.org:+80", InvalidPort),
            ("example.org:-1", InvalidPort),
            ("example.org:8o", InvalidPort),
            ("example.org:http", InvalidPort),
            ("example.org:1:2", InvalidIpv6),
            ("127.1", NonCanonicalIpv4),
            ("127.0.1", NonCanonicalIpv4),
            ("0177.0.0.1", NonCanonicalIpv4),
            ("0x7f.0.0.1", NonCanonicalIpv4),
            ("0X7F.0.0.1", NonCanonicalIpv4),
            ("0x7f000001", NonCanonicalIpv4),
            ("2130706433", NonCanonicalIpv4),
            ("2130706433:80", NonCanonicalIpv4),
            ("017700000001", NonCanonicalIpv4),
            ("127.0.0.01", NonCanonicalIpv4),
            ("256.0.0.1", NonCanonicalIpv4),
            ("1.2.3.4.5", NonCanonicalIpv4),
            ("example.123", NonCanonicalIpv4),
            ("::1", InvalidIpv6),
            ("::1:80", InvalidIpv6),
            ("fe80::1%eth0", InvalidIpv6),
            ("[fe80::1%eth0]", InvalidIpv6),
            ("[fe80::1%25eth0]:80", InvalidIpv6),
            ("[::1", InvalidIpv6),
            ("[::1]x", InvalidIpv6),
            ("[::1]:", InvalidPort),
            ("[::1]:0", InvalidPort),
            ("[127.0.0.1]", InvalidIpv6),
            ("[example.org]", InvalidIpv6),
            ("[]", InvalidIpv6),
            ("[v1.fe]", InvalidIpv6),
            ("]::1[", InvalidIpv6),
            (&long_label, LabelTooLong),
            (&long_name, NameTooLong),
            ("a..b", InvalidLabel),
            ("..", InvalidLabel),
            (".example.org", InvalidLabel),
            ("example.org..", InvalidLabel),
            ("-example.org", InvalidLabel),
            ("example-.org", InvalidLabel),
            ("www.-example.org", InvalidLabel),
        ];
        for (input, want) in table {
            assert_eq!(check(input), Err(want), "{input:?}");
        }
        assert_eq!(check(&ok_label).as_deref(), Ok(ok_label.as_str()));
        assert_eq!(check("169.254.169.254.").as_deref(), Ok("169.254.169.254"));
    }

    #[test]
    fn name_length_boundaries() {
        // 253 octets without the trailing dot is the maximum; 254 is too long.
        let label = "a".repeat(63);
        let name253 = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(name253.len(), 253);
        assert_eq!(check(&name253).as_deref(), Ok(name253.as_str()));
        assert_eq!(
            check(&format!("{name253}.")).as_deref(),
            Ok(name253.as_str())
        );
        let name254 = format!("{name253}b");
        assert_eq!(check(&name254), Err(InvalidReason::NameTooLong));
    }

    #[test]
    fn targets_and_hosts() {
        let d = parse(b"[::ffff:10.0.0.1]:80".to_vec()).expect("valid");
        assert_eq!(d.host(), "[::ffff:10.0.0.1]");
        assert_eq!(d.target(), Target::Ip("10.0.0.1".parse().expect("ip")));
        assert_eq!(d.kind(), Host::V6("::ffff:10.0.0.1".parse().expect("ip")));
        let d = parse(b"Api.Example.Test:8081".to_vec()).expect("valid");
        assert_eq!(d.host(), "api.example.test");
        assert_eq!(d.port(), Some(8081));
        assert_eq!(d.target(), Target::Name("api.example.test"));
        let d = parse(b"10.1.2.3".to_vec()).expect("valid");
        assert_eq!(d.target(), Target::Ip("10.1.2.3".parse().expect("ip")));
        assert_eq!(d.port(), None);
    }

    #[test]
    fn default_port_is_appended_once() {
        let mut d = parse(b"example.org".to_vec()).expect("valid");
        assert!(!d.is_rewritten());
        d.set_default_port(443);
        assert_eq!(d.authority(), "example.org:443");
        assert_eq!(d.host(), "example.org");
        assert!(d.is_rewritten());
        d.set_default_port(80);
        assert_eq!(d.authority(), "example.org:443");
        let mut d = parse(b"[::1]".to_vec()).expect("valid");
        d.set_default_port(1);
        assert_eq!(d.authority(), "[::1]:1");
        let mut d = parse(b"h".to_vec()).expect("valid");
        d.set_default_port(65535);
        assert_eq!(d.authority(), "h:65535");
    }

    #[test]
    fn reason_strings_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in InvalidReason::ALL {
            let s = r.as_str();
            assert!(seen.insert(s), "duplicate {s}");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{s}"
            );
        }
    }
}
