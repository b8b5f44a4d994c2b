//! "Is this upstream address host-sim itself?" Proxying to its own listener would loop, and to its admin address
//! would hand the admin API to any client. An exact match is not enough: IPv4-mapped IPv6 spellings reach the IPv4
//! socket, `0.0.0.0`/`::` as a destination reach the local host, and a listener bound to a wildcard address is
//! reached through every local address (loopback, and the addresses of the host's interfaces).

use std::net::{IpAddr, SocketAddr, UdpSocket};

impl super::Shared {
    /// Whether connecting to `target` would reach host-sim itself (a listener or the admin address).
    pub(crate) fn is_own_address(&self, target: SocketAddr) -> bool {
        is_own(target, &self.own_addresses)
    }
}

/// Whether connecting to `target` would reach one of `own` (the addresses host-sim is bound to).
pub(crate) fn is_own(target: SocketAddr, own: &[SocketAddr]) -> bool {
    let target_ip = canonical(target.ip());
    own.iter().any(|bound| {
        if bound.port() != target.port() {
            return false;
        }
        let bound_ip = canonical(bound.ip());
        target_ip == bound_ip
            // Connecting to the unspecified address connects to the local host.
            || target_ip.is_unspecified() && (bound_ip.is_unspecified() || bound_ip.is_loopback())
            || bound_ip.is_unspecified() && (target_ip.is_loopback() || is_local(target_ip))
    })
}

/// IPv4-mapped IPv6 is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is an address of this host: binding a socket to it succeeds only then.
fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().expect("a socket address")
    }

    #[test]
    fn exact_and_mapped_matches() {
        let own = [a("127.0.0.1:10000"), a("127.0.0.1:9901")];
        assert!(is_own(a("127.0.0.1:9901"), &own));
        assert!(is_own(a("[::ffff:127.0.0.1]:9901"), &own));
        assert!(is_own(a("0.0.0.0:10000"), &own));
        assert!(is_own(a("[::]:10000"), &own));
        // Another loopback address does not reach a socket bound to 127.0.0.1; another port is someone else.
        assert!(!is_own(a("127.0.0.2:9901"), &own));
        assert!(!is_own(a("127.0.0.1:9902"), &own));
        assert!(!is_own(a("93.184.215.14:10000"), &own));
    }

    #[test]
    fn wildcard_binds_are_reached_through_every_local_address() {
        let own = [a("0.0.0.0:10000")];
        assert!(is_own(a("127.0.0.1:10000"), &own));
        assert!(is_own(a("127.3.4.5:10000"), &own));
        assert!(is_own(a("0.0.0.0:10000"), &own));
        assert!(!is_own(a("127.0.0.1:10001"), &own));
        // A documentation address is never assigned here: someone else's.
        assert!(!is_own(a("192.0.2.1:10000"), &own));
        let v6 = [a("[::]:10000")];
        assert!(is_own(a("[::1]:10000"), &v6));
    }
}
