//! Lookup structures compiled once from rule hosts, so that matching a destination costs a fixed
//! number of hash probes (one per label, one per distinct prefix length) instead of a scan over
//! the rules.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::ops::ControlFlow;

use crate::config::HostPattern;
use crate::destination::Target;
use crate::net::{mask4, mask6, Cidr};

/// Position of a rule in its list (configuration order).
pub(crate) type RuleId = u32;

/// Rules whose hosts can match a destination, visited from the most specific match to the least:
/// exact name, then wildcards from the longest suffix to the shortest; for addresses, from the
/// longest prefix to the shortest. Rules of equal specificity keep configuration order.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    exact: FastMap<Box<str>, Vec<RuleId>>,
    /// Keyed by the suffix after `*.`.
    wildcard: FastMap<Box<str>, Vec<RuleId>>,
    /// One table per prefix length present, longest first.
    v4: Vec<(u8, FastMap<u32, Vec<RuleId>>)>,
    v6: Vec<(u8, FastMap<u128, Vec<RuleId>>)>,
}

impl HostIndex {
    pub(crate) fn insert(&mut self, pattern: &HostPattern, id: RuleId) {
        match pattern {
            HostPattern::Exact(name) => {
                self.exact.entry(name.as_str().into()).or_default().push(id)
            }
            HostPattern::Wildcard(suffix) => self
                .wildcard
                .entry(suffix.as_str().into())
                .or_default()
                .push(id),
            // Mapped destinations arrive as IPv4, so blocks inside ::ffff:0:0/96 are stored so.
            HostPattern::Cidr(cidr) => match cidr.split_mapped() {
                Cidr::V4 { addr, len } => {
                    table(&mut self.v4, len).entry(addr).or_default().push(id)
                }
                Cidr::V6 { addr, len } => {
                    table(&mut self.v6, len).entry(addr).or_default().push(id)
                }
            },
        }
    }

    /// Calls `f` for every rule whose host matches `target`, most specific first, until `f`
    /// breaks. `target` must already be normalised (see [`crate::net::normalize`]).
    pub(crate) fn visit(
        &self,
        target: Target<'_>,
        mut f: impl FnMut(RuleId) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        match target {
            Target::Name(name) => {
                if !self.exact.is_empty() {
                    if let Some(ids) = self.exact.get(name) {
                        ids.iter().try_for_each(|&id| f(id))?;
                    }
                }
                if !self.wildcard.is_empty() {
                    // Each proper suffix that starts after a dot, longest first: label-aware, and
                    // the name itself is never a candidate (`*.example.org` excludes the apex).
                    for (i, b) in name.bytes().enumerate() {
                        if b == b'.' {
                            if let Some(ids) = self.wildcard.get(&name[i + 1..]) {
                                ids.iter().try_for_each(|&id| f(id))?;
                            }
                        }
                    }
                }
                ControlFlow::Continue(())
            }
            Target::Ip(IpAddr::V4(v4)) => {
                let bits = u32::from(v4);
                for (len, map) in &self.v4 {
                    if let Some(ids) = map.get(&(bits & mask4(*len))) {
                        ids.iter().try_for_each(|&id| f(id))?;
                    }
                }
                ControlFlow::Continue(())
            }
            Target::Ip(IpAddr::V6(v6)) => {
                let bits = u128::from(v6);
                for (len, map) in &self.v6 {
                    if let Some(ids) = map.get(&(bits & mask6(*len))) {
                        ids.iter().try_for_each(|&id| f(id))?;
                    }
                }
                ControlFlow::Continue(())
            }
        }
    }
}

/// The table for prefix length `len`, created in its place (tables stay sorted longest first).
fn table<K>(
    tables: &mut Vec<(u8, FastMap<K, Vec<RuleId>>)>,
    len: u8,
) -> &mut FastMap<K, Vec<RuleId>> {
    let pos = match tables.iter().position(|(l, _)| *l <= len) {
        Some(p) if tables[p].0 == len => p,
        Some(p) => {
            tables.insert(p, (len, FastMap::default()));
            p
        }
        None => {
            tables.push((len, FastMap::default()));
            tables.len() - 1
        }
    };
    &mut tables[pos].1
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The multiply-rotate hash used by rustc ("Fx"): a few cycles per word. Keys are short names
/// and integers from the configuration; flooding is not a concern because lookups never insert.
#[derive(Clone, Copy, Default)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.add(n as u64);
        self.add((n >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_host_pattern;

    fn index(patterns: &[&str]) -> HostIndex {
        let mut idx = HostIndex::default();
        for (i, p) in patterns.iter().enumerate() {
            idx.insert(&parse_host_pattern(p).expect("pattern"), i as RuleId);
        }
        idx
    }

    fn matches(idx: &HostIndex, target: Target<'_>) -> Vec<RuleId> {
        let mut out = Vec::new();
        let _ = idx.visit(target, |id| {
            out.push(id);
            ControlFlow::Continue(())
        });
        out
    }

    fn ip(s: &str) -> Target<'static> {
        Target::Ip(s.parse().expect("ip"))
    }

    #[test]
    fn names_are_visited_most_specific_first() {
        let idx = index(&[
            "*.org",             // 0
            "*.example.org",     // 1
            "www.example.org",   // 2
            "*.www.example.org", // 3
            "example.org",       // 4
            "*.example.org",     // 5 (same suffix as 1: configuration order)
        ]);
        let table: &[(&str, Vec<RuleId>)] = &[
            ("www.example.org", vec![2, 1, 5, 0]),
            ("a.www.example.org", vec![3, 1, 5, 0]),
            ("example.org", vec![4, 0]),
            ("evil-example.org", vec![0]),
            ("example.org.evil", vec![]),
            ("org", vec![]),
            ("xexample.org", vec![0]),
            ("a.b.c.example.org", vec![1, 5, 0]),
        ];
        for (name, want) in table {
            assert_eq!(&matches(&idx, Target::Name(name)), want, "{name}");
        }
    }

    #[test]
    fn visiting_stops_on_break() {
        let idx = index(&["a.test", "*.test", "a.test"]);
        let mut seen = Vec::new();
        let flow = idx.visit(Target::Name("a.test"), |id| {
            seen.push(id);
            if id == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(flow, ControlFlow::Break(()));
        assert_eq!(seen, vec![0, 2]);
    }

    #[test]
    fn addresses_are_visited_longest_prefix_first() {
        let idx = index(&[
            "10.0.0.0/8",             // 0
            "10.1.2.3",               // 1
            "0.0.0.0/0",              // 2
            "10.1.0.0/16",            // 3
            "::/0",                   // 4
            "2001:db8::/32",          // 5
            "2001:db8::1",            // 6
            "::ffff:192.168.0.0/112", // 7: stored as 192.168.0.0/16
        ]);
        assert_eq!(matches(&idx, ip("10.1.2.3")), vec![1, 3, 0, 2]);
        assert_eq!(matches(&idx, ip("10.2.0.1")), vec![0, 2]);
        assert_eq!(matches(&idx, ip("8.8.8.8")), vec![2]);
        assert_eq!(matches(&idx, ip("192.168.7.7")), vec![7, 2]);
        assert_eq!(matches(&idx, ip("2001:db8::1")), vec![6, 5, 4]);
        assert_eq!(matches(&idx, ip("2001:db9::1")), vec![4]);
        // Names never match address rules, nor addresses name rules.
        assert!(matches(&idx, Target::Name("10.example")).is_empty());
        let names = index(&["*.example", "a.example"]);
        assert!(matches(&names, ip("10.0.0.1")).is_empty());
    }

    #[test]
    fn fx_hasher_distinguishes_lengths_and_words() {
        use std::hash::Hash;
        let h = |s: &str| {
            let mut hasher = FxHasher::default();
            s.hash(&mut hasher);
            hasher.finish()
        };
        assert_ne!(h("a"), h("a\0"));
        assert_ne!(h("example.org"), h("example.orh"));
        assert_ne!(h("abcdefgh"), h("abcdefghi"));
    }
}
