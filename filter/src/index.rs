//! Lookup structures compiled once from rule hosts, so that matching a destination costs one
//! binary search per label and per distinct prefix length — logarithmic in the number of rules,
//! never a scan over them.
//!
//! Sorted vectors rather than hash maps: lookups are as fast for the rule counts a proxy sees,
//! and they keep `dfp_filter.wasm` small (no second hash table implementation next to the SDK's,
//! no std sort instantiations; see [`crate::sort::heap_sort`]).

use std::net::IpAddr;
use std::ops::ControlFlow;

use crate::config::HostPattern;
use crate::destination::Target;
use crate::net::{mask6, Cidr};
use crate::sort::heap_sort;

/// Position of a rule in its list (configuration order).
pub(crate) type RuleId = u32;

/// Rules whose hosts can match a destination, visited from the most specific match to the least:
/// exact name, then wildcards from the longest suffix to the shortest; for addresses, from the
/// longest prefix to the shortest. Rules of equal specificity keep configuration order.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    exact: SortedMap<Box<str>>,
    /// Keyed by the suffix after `*.`.
    wildcard: SortedMap<Box<str>>,
    v4: IpTable,
    v6: IpTable,
}

/// Address rules keyed by (prefix length, masked address bits); IPv4 bits are kept as u128 so
/// one table type serves both families.
#[derive(Debug, Default)]
struct IpTable {
    /// The prefix lengths present, longest first: one binary search each.
    lengths: Vec<u8>,
    map: SortedMap<(u8, u128)>,
}

impl IpTable {
    fn new(entries: Vec<((u8, u128), RuleId)>) -> IpTable {
        let mut present = [false; 129];
        for ((len, _), _) in &entries {
            present[usize::from(*len)] = true;
        }
        IpTable {
            lengths: (0..=128u8)
                .rev()
                .filter(|&l| present[usize::from(l)])
                .collect(),
            map: SortedMap::new(entries),
        }
    }
}

/// Builds a [`HostIndex`]; rules must be added in configuration order.
#[derive(Default)]
pub(crate) struct HostIndexBuilder {
    exact: Vec<(Box<str>, RuleId)>,
    wildcard: Vec<(Box<str>, RuleId)>,
    v4: Vec<((u8, u128), RuleId)>,
    v6: Vec<((u8, u128), RuleId)>,
}

impl HostIndexBuilder {
    pub(crate) fn insert(&mut self, pattern: &HostPattern, id: RuleId) {
        match pattern {
            HostPattern::Exact(name) => self.exact.push((name.as_str().into(), id)),
            HostPattern::Wildcard(suffix) => self.wildcard.push((suffix.as_str().into(), id)),
            // Mapped destinations arrive as IPv4, so blocks inside ::ffff:0:0/96 are stored so.
            HostPattern::Cidr(cidr) => match cidr.split_mapped() {
                Cidr::V4 { addr, len } => self.v4.push(((len, u128::from(addr)), id)),
                Cidr::V6 { addr, len } => self.v6.push(((len, addr), id)),
            },
        }
    }

    pub(crate) fn build(self) -> HostIndex {
        HostIndex {
            exact: SortedMap::new(self.exact),
            wildcard: SortedMap::new(self.wildcard),
            v4: IpTable::new(self.v4),
            v6: IpTable::new(self.v6),
        }
    }
}

impl HostIndex {
    /// Calls `f` for every rule whose host matches `target`, most specific first, until `f`
    /// breaks. `target` must already be normalised (see [`crate::net::normalize`]).
    pub(crate) fn visit(
        &self,
        target: Target<'_>,
        mut f: impl FnMut(RuleId) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        match target {
            Target::Name(name) => {
                if let Some(ids) = self.exact.get(name) {
                    ids.iter().try_for_each(|&id| f(id))?;
                }
                if !self.wildcard.is_empty() {
                    // Each proper suffix that starts after a dot, longest first: label-aware, and
                    // the name itself is never a candidate (`*.example.org` excludes the apex).
                    for (i, b) in name.bytes().enumerate() {
                        if b == b'.' {
                            if let Some(ids) = self.wildcard.get(name.get(i + 1..).unwrap_or("")) {
                                ids.iter().try_for_each(|&id| f(id))?;
                            }
                        }
                    }
                }
                ControlFlow::Continue(())
            }
            Target::Ip(ip) => {
                // IPv4 bits go to the top 32 so that one mask function serves both families.
                let (bits, shift, table) = match ip {
                    IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 96, &self.v4),
                    IpAddr::V6(v6) => (u128::from(v6), 0, &self.v6),
                };
                for &len in &table.lengths {
                    if let Some(ids) = table.map.get(&(len, (bits & mask6(len)) >> shift)) {
                        ids.iter().try_for_each(|&id| f(id))?;
                    }
                }
                ControlFlow::Continue(())
            }
        }
    }
}

/// Keys with the rule ids filed under each, sorted by key for binary search.
#[derive(Debug)]
pub(crate) struct SortedMap<K> {
    keys: Vec<K>,
    /// `ids[starts[i]..starts[i + 1]]` belong to `keys[i]`, in configuration order.
    starts: Vec<u32>,
    ids: Vec<RuleId>,
}

impl<K> Default for SortedMap<K> {
    fn default() -> Self {
        SortedMap {
            keys: Vec::new(),
            starts: vec![0],
            ids: Vec::new(),
        }
    }
}

impl<K: Ord> SortedMap<K> {
    fn new(mut entries: Vec<(K, RuleId)>) -> SortedMap<K> {
        // Sorting by (key, id) keeps configuration order among equal keys.
        heap_sort(&mut entries, |a, b| a.0 < b.0 || (a.0 == b.0 && a.1 < b.1));
        let mut map = SortedMap::default();
        for (key, id) in entries {
            if map.keys.last() != Some(&key) {
                if !map.keys.is_empty() {
                    map.starts.push(map.ids.len() as u32);
                }
                map.keys.push(key);
            }
            map.ids.push(id);
        }
        if !map.keys.is_empty() {
            map.starts.push(map.ids.len() as u32);
        }
        map
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn get<Q>(&self, key: &Q) -> Option<&[RuleId]>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.keys.binary_search_by(|k| k.borrow().cmp(key)).ok()?;
        let from = *self.starts.get(i)? as usize;
        let to = *self.starts.get(i + 1)? as usize;
        self.ids.get(from..to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_host_pattern;

    fn index(patterns: &[&str]) -> HostIndex {
        let mut b = HostIndexBuilder::default();
        for (i, p) in patterns.iter().enumerate() {
            b.insert(&parse_host_pattern(p).expect("pattern"), i as RuleId);
        }
        b.build()
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
            "10.0.0.0/8",             // 8
        ]);
        assert_eq!(matches(&idx, ip("10.1.2.3")), vec![1, 3, 0, 8, 2]);
        assert_eq!(matches(&idx, ip("10.2.0.1")), vec![0, 8, 2]);
        assert_eq!(matches(&idx, ip("8.8.8.8")), vec![2]);
        assert_eq!(matches(&idx, ip("192.168.7.7")), vec![7, 2]);
        assert_eq!(matches(&idx, ip("2001:db8::1")), vec![6, 5, 4]);
        assert_eq!(matches(&idx, ip("2001:db9::1")), vec![4]);
        // IPv4 bits never collide with IPv6 keys of the same value.
        assert_eq!(matches(&idx, ip("::a01:203")), vec![4]);
        // Names never match address rules, nor addresses name rules.
        assert!(matches(&idx, Target::Name("10.example")).is_empty());
        let names = index(&["*.example", "a.example"]);
        assert!(matches(&names, ip("10.0.0.1")).is_empty());
    }

    #[test]
    fn sorted_map_groups_ids_in_order() {
        let map = SortedMap::new(vec![(5u128, 3), (1, 0), (5, 1), (9, 2), (1, 4)]);
        assert_eq!(map.keys, vec![1, 5, 9]);
        assert_eq!(map.get(&1), Some(&[0, 4][..]));
        assert_eq!(map.get(&5), Some(&[1, 3][..]));
        assert_eq!(map.get(&9), Some(&[2][..]));
        assert_eq!(map.get(&2), None);
        assert!(SortedMap::<u128>::new(Vec::new()).get(&0).is_none());
    }
}
