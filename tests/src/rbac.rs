//! The resolved-address stage of the bootstraps: Envoy's upstream RBAC filter on the DFP
//! clusters, whose `upstream_ip_port` matchers judge the address of the host the router picked
//! (what DNS gave) before any connection. Envoy 1.40 shows that address to Wasm only once the
//! connection exists, so this stage cannot be the wasm filter; it mirrors the filter's address
//! policy instead.
//!
//! [`rules`] turns an address policy written as the filter writes it (`{"addresses": {...}}`)
//! into the RBAC `rules`; [`read_rules`] reads such rules back (from `envoy-config/envoy.yaml`
//! too), refusing any other shape, so tests can compare them with the filter's own policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dfp_filter::config::FilterConfig;
use dfp_filter::net::Cidr;
use serde_json::{json, Value};

/// The policy matched when an address is denied.
pub const DENIED_POLICY: &str = "denied_address";
/// The policy matched when no address was saved (the stage fails closed).
pub const UNKNOWN_POLICY: &str = "resolved_address_unknown";
/// Envoy's response code details for a denial by `policy`.
pub fn details(policy: &str) -> String {
    format!("rbac_access_denied_matched_policy[{policy}]")
}

const MATCHER: &str = "envoy.rbac.matchers.upstream_ip_port";
const MATCHER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher";

/// RBAC rules that deny nothing: the stage is present, and inert.
pub fn neutral_rules() -> Value {
    json!({ "action": "DENY", "policies": {} })
}

/// An IP block as the RBAC matcher takes it.
pub type Block = (IpAddr, u8);

/// The blocks an RBAC stage denies and the carve-outs inside them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressLists {
    pub deny: Vec<Block>,
    pub allow: Vec<Block>,
}

impl AddressLists {
    /// The filter's address policy for `spec` (`{"addresses": {"deny": [...], "allow": [...]}}`,
    /// absent lists taking the filter's defaults), in blocks the RBAC matcher can test.
    pub fn from_filter(spec: &Value) -> anyhow::Result<AddressLists> {
        let mut config = serde_json::Map::new();
        config.insert("stage".into(), json!("upstream"));
        if let Some(addresses) = spec.get("addresses") {
            config.insert("addresses".into(), addresses.clone());
        }
        let extra: Vec<&String> = spec
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "addresses").collect())
            .unwrap_or_default();
        anyhow::ensure!(
            spec.is_object() && extra.is_empty(),
            "a resolved stage is {{\"addresses\": ...}}, got {spec}"
        );
        let parsed = FilterConfig::from_json(&Value::Object(config).to_string())
            .map_err(|e| anyhow::anyhow!("resolved stage: {e}"))?;
        Ok(AddressLists {
            deny: expand(&parsed.address_deny),
            allow: expand(&parsed.address_allow),
        })
    }

    /// Whether these lists deny `ip`, as Envoy's matchers evaluate them.
    pub fn denies(&self, ip: IpAddr) -> bool {
        let within = |list: &[Block]| list.iter().any(|&(prefix, len)| in_block(prefix, len, ip));
        within(&self.deny) && !within(&self.allow)
    }

    /// Sorted and deduplicated, to compare lists written in different orders.
    pub fn normalized(mut self) -> AddressLists {
        for list in [&mut self.deny, &mut self.allow] {
            list.sort();
            list.dedup();
        }
        self
    }
}

/// The filter judges an IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) address by
/// the IPv4 address it carries; Envoy's matcher compares IPv6 as IPv6. So every IPv4 block is
/// listed in those two IPv6 forms as well.
pub fn expand(cidrs: &[Cidr]) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut v4 = Vec::new();
    for cidr in cidrs {
        match *cidr {
            Cidr::V4 { addr, len } => {
                blocks.push((IpAddr::V4(Ipv4Addr::from(addr)), len));
                v4.push((addr, len));
            }
            Cidr::V6 { addr, len } => blocks.push((IpAddr::V6(Ipv6Addr::from(addr)), len)),
        }
    }
    for prefix in [0xffff_u128 << 32, 0x64_ff9b_u128 << 96] {
        for &(addr, len) in &v4 {
            blocks.push((
                IpAddr::V6(Ipv6Addr::from(prefix | u128::from(addr))),
                96 + len,
            ));
        }
    }
    blocks
}

fn in_block(prefix: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (prefix, ip) {
        (IpAddr::V4(p), IpAddr::V4(a)) => {
            len == 0
                || u32::from(p) >> (32 - u32::from(len)) == u32::from(a) >> (32 - u32::from(len))
        }
        (IpAddr::V6(p), IpAddr::V6(a)) => {
            len == 0
                || u128::from(p) >> (128 - u32::from(len))
                    == u128::from(a) >> (128 - u32::from(len))
        }
        _ => false,
    }
}

fn matcher((prefix, len): Block) -> Value {
    json!({ "matcher": {
        "name": MATCHER,
        "typed_config": {
            "@type": MATCHER_TYPE,
            "upstream_ip": { "address_prefix": prefix.to_string(), "prefix_len": len }
        }
    }})
}

fn or_rules(blocks: &[Block]) -> Value {
    json!({ "or_rules": { "rules": blocks.iter().copied().map(matcher).collect::<Vec<_>>() } })
}

/// The RBAC `rules` of a resolved stage for the filter-style `spec`: deny an address in the deny
/// list and not in the allow list, and deny when no address was saved.
pub fn rules(spec: &Value) -> anyhow::Result<Value> {
    let lists = AddressLists::from_filter(spec)?;
    anyhow::ensure!(
        !lists.deny.is_empty(),
        "RBAC needs at least one denied block"
    );
    let denied = if lists.allow.is_empty() {
        or_rules(&lists.deny)
    } else {
        json!({ "and_rules": { "rules": [
            or_rules(&lists.deny),
            { "not_rule": or_rules(&lists.allow) }
        ] } })
    };
    let any_address = or_rules(&[
        (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    ]);
    Ok(json!({
        "action": "DENY",
        "policies": {
            UNKNOWN_POLICY: {
                "principals": [{ "any": true }],
                "permissions": [{ "not_rule": any_address }]
            },
            DENIED_POLICY: {
                "principals": [{ "any": true }],
                "permissions": [denied]
            }
        }
    }))
}

/// Reads rules of the shape [`rules`] writes back into address lists, checking the fail-closed
/// policy too. Any other shape is an error: a hand-edited stage must stay one these tests read.
pub fn read_rules(rules: &Value) -> anyhow::Result<AddressLists> {
    anyhow::ensure!(
        rules["action"] == "DENY",
        "action must be DENY: {}",
        rules["action"]
    );
    let policies = rules["policies"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("no policies"))?;
    let mut names: Vec<&str> = policies.keys().map(String::as_str).collect();
    names.sort_unstable();
    anyhow::ensure!(
        names == [DENIED_POLICY, UNKNOWN_POLICY],
        "policies must be {DENIED_POLICY} and {UNKNOWN_POLICY}, found {names:?}"
    );
    let permission = |name: &str| -> anyhow::Result<&Value> {
        let policy = &policies[name];
        anyhow::ensure!(
            policy["principals"] == json!([{ "any": true }]),
            "{name}: principals must be [{{any: true}}]"
        );
        match policy["permissions"].as_array().map(Vec::as_slice) {
            Some([one]) => Ok(one),
            _ => anyhow::bail!("{name}: exactly one permission expected"),
        }
    };
    let unknown = blocks(&permission(UNKNOWN_POLICY)?["not_rule"])?;
    anyhow::ensure!(
        unknown.len() == 2
            && unknown.iter().all(|&(_, len)| len == 0)
            && unknown.iter().any(|(p, _)| p.is_ipv4())
            && unknown.iter().any(|(p, _)| p.is_ipv6()),
        "{UNKNOWN_POLICY} must be not_rule of 0.0.0.0/0 and ::/0"
    );
    let denied = permission(DENIED_POLICY)?;
    if let Some([deny, not_allow]) = denied["and_rules"]["rules"].as_array().map(Vec::as_slice) {
        Ok(AddressLists {
            deny: blocks(deny)?,
            allow: blocks(&not_allow["not_rule"])?,
        })
    } else {
        Ok(AddressLists {
            deny: blocks(denied)?,
            allow: Vec::new(),
        })
    }
}

/// `{ or_rules: { rules: [matcher...] } }` → its blocks.
fn blocks(or: &Value) -> anyhow::Result<Vec<Block>> {
    let rules = or["or_rules"]["rules"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("expected or_rules of matchers: {or}"))?;
    rules
        .iter()
        .map(|rule| {
            let m = &rule["matcher"];
            anyhow::ensure!(
                m["name"] == MATCHER && m["typed_config"]["@type"] == MATCHER_TYPE,
                "not an upstream_ip_port matcher: {rule}"
            );
            let ip = &m["typed_config"]["upstream_ip"];
            let prefix: IpAddr = ip["address_prefix"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("bad address_prefix in {rule}"))?;
            let len = ip["prefix_len"]
                .as_u64()
                .and_then(|l| u8::try_from(l).ok())
                .ok_or_else(|| anyhow::anyhow!("bad prefix_len in {rule}"))?;
            anyhow::ensure!(
                m["typed_config"].as_object().map(|o| o.len()) == Some(2),
                "only upstream_ip is expected in {rule}"
            );
            Ok((prefix, len))
        })
        .collect()
}

/// The blocks of `deny` outside every block of `allow`, as CIDR blocks: what a single list of ranges must name to
/// deny exactly what the pair denies (the DNS cache's `resolved_address_filter` has no carve-outs of its own).
pub fn subtract(deny: &[Block], allow: &[Block]) -> Vec<Block> {
    fn overlaps(a: Block, b: Block) -> bool {
        in_block(a.0, a.1, b.0) || in_block(b.0, b.1, a.0)
    }
    fn covers(outer: Block, inner: Block) -> bool {
        outer.1 <= inner.1 && in_block(outer.0, outer.1, inner.0)
    }
    fn halves((prefix, len): Block) -> [Block; 2] {
        match prefix {
            IpAddr::V4(a) => {
                let bit = 1u32 << (31 - u32::from(len));
                let low = u32::from(a);
                [
                    (IpAddr::V4(Ipv4Addr::from(low)), len + 1),
                    (IpAddr::V4(Ipv4Addr::from(low | bit)), len + 1),
                ]
            }
            IpAddr::V6(a) => {
                let bit = 1u128 << (127 - u32::from(len));
                let low = u128::from(a);
                [
                    (IpAddr::V6(Ipv6Addr::from(low)), len + 1),
                    (IpAddr::V6(Ipv6Addr::from(low | bit)), len + 1),
                ]
            }
        }
    }
    fn rest(block: Block, allow: &[Block], out: &mut Vec<Block>) {
        if allow.iter().any(|&a| covers(a, block)) {
            return;
        }
        if !allow.iter().any(|&a| overlaps(a, block)) {
            out.push(block);
            return;
        }
        // Some allowed block lies strictly inside this one, so it is longer than `block`: halving terminates.
        for half in halves(block) {
            rest(half, allow, out);
        }
    }
    let mut out = Vec::new();
    for &block in deny {
        rest(block, allow, &mut out);
    }
    out
}

/// The DNS cache's `resolved_address_filter` (an `AddressMatcher`) for the filter-style `spec`: every address the
/// resolved stage would deny, so the cache drops it from the answer before any host or connection sees it.
pub fn address_filter(spec: &Value) -> anyhow::Result<Value> {
    let lists = AddressLists::from_filter(spec)?;
    let ranges: Vec<Value> = subtract(&lists.deny, &lists.allow)
        .into_iter()
        .map(|(prefix, len)| json!({ "address_prefix": prefix.to_string(), "prefix_len": len }))
        .collect();
    Ok(json!({ "ranges": ranges }))
}

/// The blocks of a `resolved_address_filter` of the shape [`address_filter`] writes (no `invert_match`).
pub fn read_address_filter(filter: &Value) -> anyhow::Result<Vec<Block>> {
    anyhow::ensure!(
        filter.get("invert_match").is_none_or(|v| v == false),
        "an inverted resolved_address_filter is not one these tests read"
    );
    filter["ranges"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("resolved_address_filter without ranges: {filter}"))?
        .iter()
        .map(|range| {
            let prefix: IpAddr = range["address_prefix"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("bad address_prefix in {range}"))?;
            let len = range["prefix_len"]
                .as_u64()
                .and_then(|l| u8::try_from(l).ok())
                .ok_or_else(|| anyhow::anyhow!("bad prefix_len in {range}"))?;
            Ok((prefix, len))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_back_and_carve_out() {
        let spec = json!({ "addresses": { "allow": ["127.0.0.0/8"] } });
        let written = rules(&spec).expect("rules");
        let lists = read_rules(&written).expect("read back");
        assert_eq!(lists, AddressLists::from_filter(&spec).expect("lists"));
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(!lists.denies(ip("127.0.0.1")));
        assert!(!lists.denies(ip("::ffff:127.0.0.1")));
        assert!(!lists.denies(ip("64:ff9b::7f00:1")));
        assert!(lists.denies(ip("10.0.0.1")));
        assert!(lists.denies(ip("::ffff:10.0.0.1")));
        assert!(lists.denies(ip("64:ff9b::a9fe:a9fe")));
        assert!(lists.denies(ip("::1")));
        assert!(!lists.denies(ip("93.184.215.14")));

        let plain = rules(&json!({})).expect("default rules");
        assert!(plain["policies"][DENIED_POLICY]["permissions"][0]["or_rules"].is_object());
        assert!(read_rules(&plain).expect("read").denies(ip("127.0.0.1")));
    }

    #[test]
    fn odd_shapes_are_refused() {
        assert!(rules(&json!({ "stage": "upstream" })).is_err());
        assert!(rules(&json!({ "addresses": { "deny": [] } })).is_err());
        let mut written = rules(&json!({})).expect("rules");
        written["policies"]["extra"] = json!({});
        assert!(read_rules(&written).is_err());
        let mut written = rules(&json!({})).expect("rules");
        written["action"] = json!("ALLOW");
        assert!(read_rules(&written).is_err());
    }

    #[test]
    fn subtraction_leaves_exactly_the_carve_out() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let deny = [(ip("127.0.0.0"), 8), (ip("10.0.0.0"), 8)];
        let allow = [(ip("127.0.0.1"), 32), (ip("192.168.0.0"), 16)];
        let left = subtract(&deny, &allow);
        // 127/8 minus one address is 24 blocks; 10/8 does not meet the carve-outs.
        assert_eq!(left.len(), 25, "{left:?}");
        let denied = |a: IpAddr| left.iter().any(|&(p, l)| in_block(p, l, a));
        assert!(!denied(ip("127.0.0.1")));
        for a in [
            "127.0.0.0",
            "127.0.0.2",
            "127.255.255.255",
            "127.1.0.1",
            "10.1.2.3",
        ] {
            assert!(denied(ip(a)), "{a}");
        }
        assert!(!denied(ip("192.168.1.1")) && !denied(ip("8.8.8.8")));
        assert!(subtract(&deny, &[(ip("0.0.0.0"), 0)]).is_empty());

        let filter =
            address_filter(&json!({ "addresses": { "allow": ["127.0.0.1/32"] } })).expect("filter");
        let ranges = filter["ranges"].as_array().expect("ranges");
        assert!(ranges
            .iter()
            .all(|r| r["address_prefix"] != "127.0.0.1" || r["prefix_len"] != 32));
        assert!(ranges
            .iter()
            .any(|r| r["address_prefix"] == "::1" && r["prefix_len"] == 128));
    }
}
