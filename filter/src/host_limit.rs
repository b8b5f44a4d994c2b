//! The bound on distinct destinations per allow rule (`max_hosts`), as a value every worker shares.
//!
//! A wildcard or CIDR rule admits names an attacker can mint at will; each one allowed becomes a host in Envoy's DNS
//! cache, and a full cache answers 503 "DNS cache overflow" to every destination. So each such rule keeps the set of
//! destinations it admitted, each with the time it stops counting (its last use plus the host TTL), in one shared
//! data value: one line per destination, `<expiry seconds> <host:port>`. This module is that set's logic, without
//! the host; `wasm.rs` reads and writes it with compare-and-swap.

/// What [`admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// The destination was in the set; its expiry is renewed.
    Known,
    /// A new destination, added.
    Added,
    /// A new destination, and the set is full of live ones.
    Full,
}

/// A rule's admitted destinations and when each stops counting (seconds since the epoch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSet {
    entries: Vec<(u64, String)>,
}

impl HostSet {
    /// Reads the shared value; lines that do not parse (a value written by a future version) are dropped.
    pub fn parse(value: &[u8]) -> HostSet {
        let text = std::str::from_utf8(value).unwrap_or_default();
        let entries = text
            .lines()
            .filter_map(|line| {
                let (expiry, host) = line.split_once(' ')?;
                Some((expiry.parse().ok()?, host.to_owned()))
            })
            .collect();
        HostSet { entries }
    }

    pub fn serialize(&self) -> Vec<u8> {
        let mut out = String::with_capacity(self.entries.len() * 40);
        for (expiry, host) in &self.entries {
            out.push_str(&expiry.to_string());
            out.push(' ');
            out.push_str(host);
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Admits `host` at `now` if it is known or there is room for it among the live entries (expired ones are dropped
    /// first); an admitted host counts until `now + ttl`.
    pub fn admit(&mut self, host: &str, now: u64, ttl: u64, max: u32) -> Admit {
        self.entries.retain(|(expiry, _)| *expiry > now);
        let expiry = now.saturating_add(ttl);
        if let Some(entry) = self.entries.iter_mut().find(|(_, h)| h == host) {
            entry.0 = expiry;
            return Admit::Known;
        }
        if self.entries.len() >= max as usize {
            return Admit::Full;
        }
        self.entries.push((expiry, host.to_owned()));
        Admit::Added
    }

    /// When the first live entry stops counting: a full set cannot admit anyone new before then, whatever any worker
    /// does (entries only leave by expiring; a renewal moves an expiry later).
    pub fn earliest_expiry(&self) -> Option<u64> {
        self.entries.iter().map(|(expiry, _)| *expiry).min()
    }

    /// The live destinations (for a worker's local copy).
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, h)| h.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The shared data key of a rule's set. Keyed by the rule's host pattern and ports, so the downstream configs of one
/// VM that share a pattern share its bound (they fill the same DNS cache).
pub fn key(pattern: &str, ports: &[u16]) -> String {
    let mut key = String::from("dfp.hosts.");
    key.push_str(pattern);
    for port in ports {
        key.push(':');
        key.push_str(&port.to_string());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_set_admits_known_hosts_and_frees_expired_ones() {
        let mut set = HostSet::default();
        assert_eq!(set.admit("a.w.test:80", 100, 10, 2), Admit::Added);
        assert_eq!(set.admit("b.w.test:80", 101, 10, 2), Admit::Added);
        assert_eq!(set.admit("c.w.test:80", 102, 10, 2), Admit::Full);
        assert_eq!(set.admit("a.w.test:80", 105, 10, 2), Admit::Known);
        // b expires at 111, a (renewed) at 115.
        assert_eq!(set.admit("c.w.test:80", 111, 10, 2), Admit::Added);
        assert_eq!(set.admit("d.w.test:80", 112, 10, 2), Admit::Full);
        // a at 115, c at 121: nothing new before 115.
        assert_eq!(set.earliest_expiry(), Some(115));

        let round = HostSet::parse(&set.serialize());
        assert_eq!(round, set);
        let mut hosts: Vec<&str> = round.hosts().collect();
        hosts.sort_unstable();
        assert_eq!(hosts, ["a.w.test:80", "c.w.test:80"]);
        assert_eq!(HostSet::parse(b"junk\n12 x:1\nnan y:2\n").len(), 1);
        assert_eq!(key("*.w.test", &[80, 8080]), "dfp.hosts.*.w.test:80:8080");
    }
}
