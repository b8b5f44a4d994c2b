//! IP address helpers: strict literal parsing, CIDR blocks, sorted range sets, the special-purpose
//! address registry, and the IPv6 forms that embed an IPv4 address.
//!
//! One rule runs through the whole filter: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) *is* the
//! IPv4 address `a.b.c.d` — a dual-stack socket connects to it over IPv4 — so it is [`normalize`]d
//! before any rule or address set sees it, and CIDRs written inside `::ffff:0:0/96` are turned into
//! their IPv4 equivalents (see [`Cidr::split_mapped`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::sort::heap_sort;

/// Parses the only IPv4 spelling we accept: four decimal octets, no leading zeros, each 0..=255.
///
/// Resolvers also accept `127.1`, `0177.0.0.1`, `0x7f.0.0.1` and `2130706433`; such spellings are
/// how allowlists get bypassed, so they are not addresses here (the caller rejects them).
pub fn parse_ipv4_strict(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        let bytes = part.as_bytes();
        if bytes.is_empty() || bytes.len() > 3 || (bytes.len() > 1 && bytes[0] == b'0') {
            return None;
        }
        let mut value: u16 = 0;
        for &b in bytes {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u16::from(b - b'0');
        }
        *octet = u8::try_from(value).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Parses an IPv6 literal without brackets and without a zone (`%eth0` is refused): up to eight
/// groups of one to four hex digits, at most one `::` standing for one or more zero groups, and
/// optionally a strict dotted-quad IPv4 address as the last 32 bits. Same language as std's
/// parser (a property test checks that), in a fraction of the code.
pub fn parse_ipv6(text: &str) -> Option<Ipv6Addr> {
    let b = text.as_bytes();
    if b.is_empty() || b.len() > 45 {
        return None;
    }
    let mut head = [0u16; 8];
    let mut tail = [0u16; 8];
    let (mut nh, mut nt) = (0usize, 0usize);
    let mut gap = false;
    let mut i = 0;
    if b.starts_with(b"::") {
        gap = true;
        i = 2;
    } else if b[0] == b':' {
        return None;
    }
    while i < b.len() {
        let start = i;
        let mut value: u32 = 0;
        while i < b.len() && i - start < 5 {
            match char::from(b[i]).to_digit(16) {
                Some(d) => value = value * 16 + d,
                None => break,
            }
            i += 1;
        }
        let mut groups = [0u16; 2];
        let n = if b.get(i) == Some(&b'.') {
            // An embedded IPv4 address ends the text.
            let v4 = u32::from(parse_ipv4_strict(text.get(start..)?)?);
            groups = [(v4 >> 16) as u16, v4 as u16];
            i = b.len();
            2
        } else if i == start || i - start > 4 {
            return None;
        } else {
            groups[0] = value as u16;
            1
        };
        for &g in &groups[..n] {
            if nh + nt == 8 {
                return None;
            }
            if gap {
                tail[nt] = g;
                nt += 1;
            } else {
                head[nh] = g;
                nh += 1;
            }
        }
        if i == b.len() {
            break;
        }
        if b[i] != b':' {
            return None;
        }
        i += 1;
        if b.get(i) == Some(&b':') {
            if gap {
                return None;
            }
            gap = true;
            i += 1;
        } else if i == b.len() {
            return None; // a trailing single ':'
        }
    }
    if (gap && nh + nt > 7) || (!gap && nh != 8) {
        return None;
    }
    let mut segments = [0u16; 8];
    segments[..nh].copy_from_slice(&head[..nh]);
    segments[8 - nt..].copy_from_slice(&tail[..nt]);
    Some(Ipv6Addr::from(segments))
}

/// Appends the RFC 5952 text of `addr`: lower-case hex without leading zeros, the longest run of
/// two or more zero groups (the first, on a tie) as `::`, IPv4-mapped addresses as
/// `::ffff:a.b.c.d`. Same output as std's `Display`.
pub fn push_ipv6(out: &mut String, addr: Ipv6Addr) {
    if let Some(v4) = addr.to_ipv4_mapped() {
        out.push_str("::ffff:");
        push_ipv4(out, v4);
        return;
    }
    let s = addr.segments();
    let (mut run_start, mut run_len) = (8, 0);
    let mut i = 0;
    while i < 8 {
        let start = i;
        while i < 8 && s[i] == 0 {
            i += 1;
        }
        if i - start > run_len && i - start >= 2 {
            (run_start, run_len) = (start, i - start);
        }
        i += 1;
    }
    let push_groups = |out: &mut String, groups: &[u16]| {
        for (k, &g) in groups.iter().enumerate() {
            if k > 0 {
                out.push(':');
            }
            push_hex(out, g);
        }
    };
    if run_len == 0 {
        push_groups(out, &s);
    } else {
        push_groups(out, &s[..run_start]);
        out.push_str("::");
        push_groups(out, &s[run_start + run_len..]);
    }
}

fn push_hex(out: &mut String, g: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut started = false;
    for shift in [12, 8, 4, 0] {
        let d = usize::from((g >> shift) & 0xf);
        if d != 0 || started || shift == 0 {
            started = true;
            out.push(char::from(HEX[d]));
        }
    }
}

/// Appends `a.b.c.d`.
pub fn push_ipv4(out: &mut String, addr: Ipv4Addr) {
    for (k, octet) in addr.octets().into_iter().enumerate() {
        if k > 0 {
            out.push('.');
        }
        push_decimal(out, u32::from(octet));
    }
}

/// Appends a number in decimal.
pub fn push_decimal(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Appends `ip:port`, with IPv6 in brackets.
pub fn push_socket_address(out: &mut String, ip: IpAddr, port: u16) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(out, v4),
        IpAddr::V6(v6) => {
            out.push('[');
            push_ipv6(out, v6);
            out.push(']');
        }
    }
    out.push(':');
    push_decimal(out, u32::from(port));
}

/// Digits only, no sign, value at most `max`; leading zeros are the caller's concern.
pub(crate) fn parse_decimal(text: &str, max: u64) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for b in text.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (value <= max).then_some(value)
}

/// Maps an IPv4-mapped IPv6 address to its IPv4 address; every other address is returned as is.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The IPv4 address that a translation or tunnelling form of IPv6 carries to the network:
/// NAT64 `64:ff9b::/96` (RFC 6052, the last 32 bits) and 6to4 `2002::/16` (RFC 3056, bits 16..48).
/// A denial of the embedded address denies the IPv6 address too.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// An address block. `len` is the prefix length; the host bits of `addr` are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cidr {
    V4 { addr: u32, len: u8 },
    V6 { addr: u128, len: u8 },
}

/// Why a CIDR or IP literal in the configuration is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("not an IP address (IPv4 must be four decimal octets without leading zeros)")]
    BadAddress,
    #[error("prefix length must be a decimal number 0..={0}")]
    BadLength(u8),
    #[error("host bits are set below the /{0} prefix")]
    HostBits(u8),
}

pub(crate) fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

pub(crate) fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl Cidr {
    /// Parses `a.b.c.d/len`, `v6/len`, or a single address (`/32`, `/128`); IPv6 may be bracketed.
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr_text = addr_text
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr_text);
        let ip = if let Some(v4) = parse_ipv4_strict(addr_text) {
            IpAddr::V4(v4)
        } else if let Some(v6) = parse_ipv6(addr_text) {
            IpAddr::V6(v6)
        } else {
            return Err(CidrError::BadAddress);
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(l) => {
                let canonical = l.len() == 1 || !l.starts_with('0');
                match parse_decimal(l, u64::from(max)) {
                    Some(n) if canonical => n as u8,
                    _ => return Err(CidrError::BadLength(max)),
                }
            }
        };
        let cidr = match ip {
            IpAddr::V4(v4) => Cidr::V4 {
                addr: u32::from(v4),
                len,
            },
            IpAddr::V6(v6) => Cidr::V6 {
                addr: u128::from(v6),
                len,
            },
        };
        if cidr.masked() != cidr {
            return Err(CidrError::HostBits(len));
        }
        Ok(cidr)
    }

    /// A block holding exactly one address.
    pub fn host(ip: IpAddr) -> Cidr {
        match ip {
            IpAddr::V4(v4) => Cidr::V4 {
                addr: u32::from(v4),
                len: 32,
            },
            IpAddr::V6(v6) => Cidr::V6 {
                addr: u128::from(v6),
                len: 128,
            },
        }
    }

    fn masked(self) -> Cidr {
        match self {
            Cidr::V4 { addr, len } => Cidr::V4 {
                addr: addr & mask4(len),
                len,
            },
            Cidr::V6 { addr, len } => Cidr::V6 {
                addr: addr & mask6(len),
                len,
            },
        }
    }

    pub fn prefix_len(self) -> u8 {
        match self {
            Cidr::V4 { len, .. } | Cidr::V6 { len, .. } => len,
        }
    }

    /// True when the block holds exactly one address.
    pub fn is_host(self) -> bool {
        match self {
            Cidr::V4 { len, .. } => len == 32,
            Cidr::V6 { len, .. } => len == 128,
        }
    }

    /// Whether `ip` (taken literally, not normalised) lies in this block.
    pub fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Cidr::V4 { addr, len }, IpAddr::V4(v4)) => u32::from(v4) & mask4(len) == addr,
            (Cidr::V6 { addr, len }, IpAddr::V6(v6)) => u128::from(v6) & mask6(len) == addr,
            _ => false,
        }
    }

    /// Rewrites a block inside `::ffff:0:0/96` as the IPv4 block it denotes, because mapped
    /// destinations are normalised to IPv4 before matching. Every other block is returned as is.
    /// (`::ffff:0:0/96` itself therefore means `0.0.0.0/0`.)
    pub fn split_mapped(self) -> Cidr {
        match self {
            Cidr::V6 { addr, len } if len >= 96 && addr >> 32 == 0xffff => Cidr::V4 {
                addr: addr as u32,
                len: len - 96,
            },
            other => other,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(43);
        let len = match *self {
            Cidr::V4 { addr, len } => {
                push_ipv4(&mut out, Ipv4Addr::from(addr));
                len
            }
            Cidr::V6 { addr, len } => {
                push_ipv6(&mut out, Ipv6Addr::from(addr));
                len
            }
        };
        out.push('/');
        push_decimal(&mut out, u32::from(len));
        f.write_str(&out)
    }
}

/// A set of addresses stored as sorted, merged, disjoint ranges: membership is one binary search,
/// whatever the number of blocks that built it. (IPv4 ranges are kept as u128 too, so one set of
/// generic code serves both families.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl RangeSet {
    /// Builds the set from blocks, after [`Cidr::split_mapped`].
    pub fn from_cidrs<I: IntoIterator<Item = Cidr>>(cidrs: I) -> RangeSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for cidr in cidrs {
            match cidr.split_mapped() {
                Cidr::V4 { addr, len } => {
                    v4.push((u128::from(addr), u128::from(addr | !mask4(len))))
                }
                Cidr::V6 { addr, len } => v6.push((addr, addr | !mask6(len))),
            }
        }
        RangeSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Membership of `ip` as given (callers normalise first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (ranges, x) = match ip {
            IpAddr::V4(v4) => (&self.v4, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => (&self.v6, u128::from(v6)),
        };
        let idx = ranges.partition_point(|r| r.0 <= x);
        idx > 0 && ranges[idx - 1].1 >= x
    }
}

fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    heap_sort(&mut ranges, |a, b| a < b);
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        if let Some(last) = out.last_mut() {
            // Overlapping or adjacent: extend the previous range.
            if lo <= last.1 || last.1.checked_add(1) == Some(lo) {
                if hi > last.1 {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

/// IPv4 blocks of the IANA IPv4 Special-Purpose Address Registry that are not globally reachable,
/// plus multicast and the reserved class E space. These are `addresses.deny` by default.
pub const SPECIAL_PURPOSE_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network" (RFC 791)
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private (RFC 1918)
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space, CGNAT (RFC 6598)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, including 169.254.169.254 metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private (RFC 1918)
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments (RFC 6890)
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // deprecated 6to4 relay anycast (RFC 7526)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private (RFC 1918)
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking (RFC 2544)
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved (RFC 1112), includes 255.255.255.255
];

/// IPv6 blocks that are `addresses.deny` by default: the IANA IPv6 Special-Purpose Address
/// Registry entries that are not globally reachable, plus deprecated site-local and multicast.
/// `::ffff:0:0/96` is absent on purpose: mapped addresses are checked as the IPv4 they denote.
/// `64:ff9b::/96` (NAT64) is globally reachable, so it is absent too; its embedded IPv4 address
/// is checked instead (see [`embedded_ipv4`]), as is 6to4's.
pub const SPECIAL_PURPOSE_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128), // unspecified
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128), // loopback
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96),  // deprecated IPv4-compatible (RFC 4291)
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use IPv4/IPv6 translation
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only (RFC 6666)
    (Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0), 64), // dummy prefix (RFC 9780)
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments, Teredo ...
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation (RFC 9637)
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16), // SRv6 SIDs (RFC 9602)
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local, deprecated (RFC 3879)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// The default `addresses.deny` list as blocks.
pub fn special_purpose() -> Vec<Cidr> {
    let v4 = SPECIAL_PURPOSE_V4.iter().map(|&(a, len)| Cidr::V4 {
        addr: u32::from(a),
        len,
    });
    let v6 = SPECIAL_PURPOSE_V6.iter().map(|&(a, len)| Cidr::V6 {
        addr: u128::from(a),
        len,
    });
    v4.chain(v6).collect()
}

/// The address policy: `addresses.deny` minus `addresses.allow`.
///
/// `addresses.allow` wins over `addresses.deny` wherever they overlap, whatever the prefix lengths:
/// it is the operator's explicit carve-out. To deny again inside a carve-out, use a `deny` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPolicy {
    deny: RangeSet,
    allow: RangeSet,
}

impl AddressPolicy {
    pub fn new(deny: &[Cidr], allow: &[Cidr]) -> AddressPolicy {
        AddressPolicy {
            deny: RangeSet::from_cidrs(deny.iter().copied()),
            allow: RangeSet::from_cidrs(allow.iter().copied()),
        }
    }

    fn denies_exact(&self, ip: IpAddr) -> bool {
        self.deny.contains(ip) && !self.allow.contains(ip)
    }

    /// Whether the policy denies `ip`: after normalising a mapped address, the address itself or
    /// the IPv4 address it embeds (NAT64, 6to4) is in `deny` and not carved out by `allow`.
    pub fn denies(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        if self.denies_exact(ip) {
            return true;
        }
        match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).is_some_and(|v4| self.denies_exact(IpAddr::V4(v4))),
            IpAddr::V4(_) => false,
        }
    }
}

/// Parses the `upstream.address` property Envoy reports: `a.b.c.d:port` or `[v6]:port`.
pub fn parse_socket_address(bytes: &[u8]) -> Option<(IpAddr, u16)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (host, port) = text.rsplit_once(':')?;
    let port = parse_port(port)?;
    let ip = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // Envoy may append a scope id to link-local addresses; the address is what matters.
        let inner = inner.split_once('%').map_or(inner, |(a, _)| a);
        IpAddr::V6(parse_ipv6(inner)?)
    } else {
        IpAddr::V4(parse_ipv4_strict(host)?)
    };
    Some((ip, port))
}

/// A port in canonical decimal: 1..=65535, no sign, no leading zeros.
pub fn parse_port(text: &str) -> Option<u16> {
    if text.starts_with('0') {
        return None;
    }
    parse_decimal(text, 65535)
        .map(|p| p as u16)
        .filter(|&p| p != 0)
}

#[cfg(test)]
mod tests;
