//! A deliberately naive reference model of the filter's policy: it scans every rule and applies
//! the README's rules literally, so the indexed [`Policy`] can be checked against it. Shared by
//! the property tests (`tests/properties.rs`) and the cargo-fuzz targets (`fuzz/`).

#![allow(dead_code)]

use std::net::IpAddr;

use dfp_filter::config::{FilterConfig, HostPattern, Mode};
use dfp_filter::destination::{self, InvalidReason, Target};
use dfp_filter::net::{self, Cidr};
use dfp_filter::policy::{DenyReason, MethodSource, Outcome, Policy, Route};

/// Whether a rule host covers a target, by definition rather than by index.
pub fn pattern_matches(pattern: &HostPattern, target: Target<'_>) -> bool {
    match (pattern, target) {
        (HostPattern::Exact(n), Target::Name(h)) => n == h,
        (HostPattern::Wildcard(s), Target::Name(h)) => h.ends_with(&format!(".{s}")),
        (HostPattern::Cidr(c), Target::Ip(ip)) => c.split_mapped().contains(ip),
        _ => false,
    }
}

/// More specific sorts first: exact, then longer wildcard suffixes, then longer prefixes (a
/// mapped-IPv6 CIDR counts as the IPv4 CIDR it denotes).
pub fn specificity(pattern: &HostPattern) -> (u8, i64) {
    match pattern {
        HostPattern::Exact(_) => (0, 0),
        HostPattern::Wildcard(s) => (1, -(s.len() as i64)),
        HostPattern::Cidr(c) => (2, -i64::from(c.split_mapped().prefix_len())),
    }
}

pub fn in_list(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.split_mapped().contains(ip))
}

pub fn embedded(target: Target<'_>) -> Option<Target<'static>> {
    match target {
        Target::Ip(IpAddr::V6(v6)) => net::embedded_ipv4(v6).map(|v4| Target::Ip(IpAddr::V4(v4))),
        _ => None,
    }
}

pub fn naive_address_denied(c: &FilterConfig, ip: IpAddr) -> bool {
    let denied = |ip| in_list(&c.address_deny, ip) && !in_list(&c.address_allow, ip);
    let ip = net::normalize(ip);
    denied(ip)
        || matches!(ip, IpAddr::V6(v6) if net::embedded_ipv4(v6).is_some_and(|v4| denied(IpAddr::V4(v4))))
}

pub fn naive_deny_rule_covers(
    c: &FilterConfig,
    target: Target<'_>,
    port: u16,
    method: &str,
) -> bool {
    c.deny.iter().any(|r| {
        (pattern_matches(&r.host, target)
            || embedded(target).is_some_and(|t| pattern_matches(&r.host, t)))
            && r.ports.as_ref().is_none_or(|p| p.contains(&port))
            && r.methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|x| x == method))
    })
}

pub type Naive = Result<(Outcome, Option<Route>, String), InvalidReason>;

pub fn naive_decide(c: &FilterConfig, authority: &str, method: &str) -> Naive {
    let dest = destination::parse(authority.as_bytes().to_vec())?;
    let target = dest.target();
    let mut matching: Vec<(usize, &dfp_filter::config::AllowRule)> = c
        .allow
        .iter()
        .enumerate()
        .filter(|(_, r)| pattern_matches(&r.host, target))
        .collect();
    matching.sort_by_key(|(i, r)| (specificity(&r.host), *i));
    let connect = method == "CONNECT";
    let port = match dest.port() {
        Some(p) => p,
        None if connect => return Err(InvalidReason::MissingPort),
        None => match matching.first() {
            Some((_, r)) if r.tls == Some(true) => 443,
            _ => 80,
        },
    };
    let mut authority = dest.host().to_string();
    authority.push_str(&format!(":{port}"));

    let result: Result<Option<bool>, DenyReason> =
        if naive_deny_rule_covers(c, target, port, method) {
            Err(DenyReason::HostDenied)
        } else {
            let mut reason = DenyReason::HostNotAllowed;
            let mut allowed = None;
            for (_, r) in &matching {
                if !r.ports.contains(&port) {
                    if reason == DenyReason::HostNotAllowed {
                        reason = DenyReason::PortNotAllowed;
                    }
                    continue;
                }
                if r.methods
                    .as_ref()
                    .is_some_and(|m| !m.iter().any(|x| x == method))
                {
                    reason = DenyReason::MethodNotAllowed;
                    continue;
                }
                allowed = Some(r.tls);
                break;
            }
            match allowed {
                None => Err(reason),
                Some(tls) => match target {
                    Target::Ip(ip) if naive_address_denied(c, ip) => Err(DenyReason::AddressDenied),
                    _ => Ok(tls),
                },
            }
        };
    let outcome = match (&result, c.mode) {
        (Ok(_), _) => Outcome::Allow,
        (Err(r), Mode::Enforce) => Outcome::Deny(*r),
        (Err(r), Mode::Report) => Outcome::ReportOnly(*r),
    };
    let route = match (c.cluster_routing.is_some(), outcome, result) {
        (false, _, _) | (_, Outcome::Deny(_), _) => None,
        (true, _, r) => {
            let tls = match r {
                Ok(tls) => tls.unwrap_or(port == 443),
                Err(_) => port == 443,
            };
            Some(if tls && !connect {
                Route::Tls
            } else {
                Route::Plain
            })
        }
    };
    Ok((outcome, route, authority))
}

pub fn fast_decide(p: &Policy, authority: &str, method: &str) -> Naive {
    let mut dest = destination::parse(authority.as_bytes().to_vec())?;
    let mut m: &[u8] = method.as_bytes();
    let d = p.decide(&mut dest, &mut m as &mut dyn MethodSource, None)?;
    Ok((d.outcome, d.route, dest.authority().to_string()))
}

/// An `inet_aton`-style reading (1 to 4 parts, each decimal, octal or hex), which some resolvers
/// and libraries apply to names: a name the filter passes must never read as an address here.
pub fn permissive_ipv4(text: &str) -> Option<u32> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::new();
    for part in &parts {
        let lower = part.to_ascii_lowercase();
        let value = if let Some(hex) = lower.strip_prefix("0x") {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if lower.len() > 1 && lower.starts_with('0') {
            u64::from_str_radix(&lower[1..], 8).ok()?
        } else {
            lower.parse::<u64>().ok()?
        };
        values.push(value);
    }
    let (last, head) = values.split_last()?;
    if head.iter().any(|v| *v > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if *last >= (1u64 << room) {
        return None;
    }
    let mut n = 0u64;
    for (i, v) in head.iter().enumerate() {
        n |= v << (24 - 8 * i as u32);
    }
    u32::try_from(n | last).ok()
}
