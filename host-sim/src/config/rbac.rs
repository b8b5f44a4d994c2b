//! The RBAC filter configuration (`envoy.extensions.filters.http.rbac.v3.RBAC`) as a cluster's upstream HTTP
//! filter (Envoy's `envoy.filters.http.upstream_rbac`), in the subset that judges the address a name resolved to:
//! policies whose permissions combine `any`, `and_rules`, `or_rules`, `not_rule` and the
//! `envoy.rbac.matchers.upstream_ip_port` matcher, with `any` principals. Everything else an RBAC filter can match
//! on is an error naming its YAML path.

use std::net::IpAddr;

use super::node::At;
use super::{typed_config, ConfigError};

const UPSTREAM_IP_PORT: &str = "envoy.rbac.matchers.upstream_ip_port";
const UPSTREAM_IP_PORT_TYPE: &str =
    "envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher";

/// The filter's configuration. `rules: None` is Envoy's "no engine": every request passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacConfig {
    pub rules: Option<RbacRules>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    /// Pass only requests some policy matches.
    Allow,
    /// Deny requests some policy matches.
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacRules {
    pub action: RbacAction,
    /// Sorted by name: Envoy keeps policies in an ordered map and reports the first that matches.
    pub policies: Vec<(String, RbacPolicy)>,
}

/// A policy matches when any permission and any principal match (principals are all `any: true` here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacPolicy {
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    /// The selected upstream host's address (filter state `envoy.stream.upstream_address`); without one it never
    /// matches.
    UpstreamIpPort {
        ip: Option<CidrRange>,
        /// Inclusive at both ends, as Envoy's matcher compares.
        ports: Option<(i64, i64)>,
    },
}

/// `config.core.v3.CidrRange`: host bits below the prefix are ignored, as in Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRange {
    pub prefix: IpAddr,
    pub len: u8,
}

impl CidrRange {
    /// Envoy's `CidrRange::isInRange`: the IP version must match (an IPv4 range never holds `::ffff:a.b.c.d`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.prefix, ip) {
            (IpAddr::V4(range), IpAddr::V4(ip)) => {
                let shift = 32 - u32::from(self.len);
                shift == 32 || u32::from(range) >> shift == u32::from(ip) >> shift
            }
            (IpAddr::V6(range), IpAddr::V6(ip)) => {
                let shift = 128 - u32::from(self.len);
                shift == 128 || u128::from(range) >> shift == u128::from(ip) >> shift
            }
            _ => false,
        }
    }
}

pub(crate) fn parse_rbac(mut config: super::node::Fields<'_>) -> Result<RbacConfig, ConfigError> {
    let rules = config.opt("rules").map(|r| parse_rules(&r)).transpose()?;
    // Anything else (shadow rules, the matcher API, stat prefixes, per-rule stats) is refused by finish().
    config.finish()?;
    Ok(RbacConfig { rules })
}

fn parse_rules(at: &At<'_>) -> Result<RbacRules, ConfigError> {
    let mut fields = at.map()?;
    let action = match fields.opt("action") {
        None => RbacAction::Allow,
        Some(a) => match a.enum_name(&["ALLOW", "DENY", "LOG"])?.as_str() {
            "ALLOW" => RbacAction::Allow,
            "DENY" => RbacAction::Deny,
            _ => return Err(a.error("action LOG is not supported by host-sim")),
        },
    };
    let mut policies = Vec::new();
    if let Some(map) = fields.opt("policies") {
        let mut by_name = map.map()?;
        let serde_yaml_ng::Value::Mapping(entries) = map.value else {
            return Err(map.error("expected a mapping"));
        };
        for key in entries.keys() {
            let Some(name) = key.as_str() else {
                return Err(map.error(format!("policy names are strings, found {key:?}")));
            };
            let policy = by_name.req(name)?;
            policies.push((name.to_string(), parse_policy(&policy)?));
        }
        by_name.finish()?;
    }
    fields.finish()?;
    policies.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(RbacRules { action, policies })
}

fn parse_policy(at: &At<'_>) -> Result<RbacPolicy, ConfigError> {
    let mut fields = at.map()?;
    let permissions_at = fields.req("permissions")?;
    let principals_at = fields.req("principals")?;
    fields.finish()?;
    let permissions = non_empty(&permissions_at)?
        .iter()
        .map(parse_permission)
        .collect::<Result<Vec<_>, _>>()?;
    for principal in non_empty(&principals_at)? {
        let mut p = principal.map()?;
        let any = p.opt("any");
        p.finish()?;
        let Some(any) = any else {
            return Err(principal.error("host-sim supports only `any: true` principals"));
        };
        if !any.bool()? {
            return Err(any.error("must be true"));
        }
    }
    Ok(RbacPolicy { permissions })
}

fn non_empty<'a>(at: &At<'a>) -> Result<Vec<At<'a>>, ConfigError> {
    let items = at.list()?;
    if items.is_empty() {
        return Err(at.error("needs at least one entry"));
    }
    Ok(items)
}

fn parse_permission(at: &At<'_>) -> Result<Permission, ConfigError> {
    let mut fields = at.map()?;
    let mut found = Vec::new();
    if let Some(any) = fields.opt("any") {
        if !any.bool()? {
            return Err(any.error("must be true"));
        }
        found.push(Permission::Any);
    }
    for (key, make) in [
        (
            "and_rules",
            Permission::And as fn(Vec<Permission>) -> Permission,
        ),
        ("or_rules", Permission::Or),
    ] {
        if let Some(set) = fields.opt(key) {
            let mut set_fields = set.map()?;
            let rules = non_empty(&set_fields.req("rules")?)?
                .iter()
                .map(parse_permission)
                .collect::<Result<Vec<_>, _>>()?;
            set_fields.finish()?;
            found.push(make(rules));
        }
    }
    if let Some(not) = fields.opt("not_rule") {
        found.push(Permission::Not(Box::new(parse_permission(&not)?)));
    }
    if let Some(matcher) = fields.opt("matcher") {
        found.push(parse_matcher(&matcher)?);
    }
    fields.finish()?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(at.error(
            "a permission needs one of any, and_rules, or_rules, not_rule, matcher (the ones host-sim supports)",
        )),
        _ => Err(at.error("a permission takes exactly one rule")),
    }
}

/// `matcher: { name: envoy.rbac.matchers.upstream_ip_port, typed_config: UpstreamIpPortMatcher }`.
fn parse_matcher(at: &At<'_>) -> Result<Permission, ConfigError> {
    let mut fields = at.map()?;
    let name = fields.req("name")?;
    if name.string()? != UPSTREAM_IP_PORT {
        return Err(name.error(format!(
            "host-sim supports only the {UPSTREAM_IP_PORT} matcher"
        )));
    }
    let (_, mut matcher) = typed_config(&fields.req("typed_config")?, &[UPSTREAM_IP_PORT_TYPE])?;
    fields.finish()?;
    let ip = matcher
        .opt("upstream_ip")
        .map(|c| parse_cidr(&c))
        .transpose()?;
    let ports = match matcher.opt("upstream_port_range") {
        None => None,
        Some(range) => {
            let mut r = range.map()?;
            let start = r.opt("start").map(|s| int64(&s)).transpose()?.unwrap_or(0);
            let end = r.opt("end").map(|e| int64(&e)).transpose()?.unwrap_or(0);
            r.finish()?;
            Some((start, end))
        }
    };
    if ip.is_none() && ports.is_none() {
        return Err(matcher.error(
            "Invalid UpstreamIpPortMatcher configuration - missing `upstream_ip` and/or `upstream_port_range`",
        ));
    }
    matcher.finish()?;
    Ok(Permission::UpstreamIpPort { ip, ports })
}

/// `{ address_prefix, prefix_len }`; an absent length is 0.
pub(crate) fn parse_cidr(at: &At<'_>) -> Result<CidrRange, ConfigError> {
    let mut fields = at.map()?;
    let prefix = fields.req("address_prefix")?.ip()?;
    let len_at = fields.opt("prefix_len");
    let len = len_at.as_ref().map(At::u32).transpose()?.unwrap_or(0);
    fields.finish()?;
    let max = if prefix.is_ipv4() { 32 } else { 128 };
    if let (Some(at), true) = (&len_at, len > max) {
        return Err(at.error(format!("prefix_len {len} is longer than {max}")));
    }
    Ok(CidrRange {
        prefix,
        len: len as u8,
    })
}

/// A protobuf int64: a number, or (JSON mapping) a decimal string.
fn int64(at: &At<'_>) -> Result<i64, ConfigError> {
    match at.value {
        serde_yaml_ng::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| at.error(format!("expected an integer, found {n}"))),
        serde_yaml_ng::Value::String(s) => s
            .parse()
            .map_err(|_| at.error(format!("expected an integer, found {s:?}"))),
        _ => Err(at.error("expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RbacConfig, ConfigError> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        let root = At::root(&value);
        let (_, fields) = typed_config(&root, &["envoy.extensions.filters.http.rbac.v3.RBAC"])?;
        parse_rbac(fields)
    }

    const TYPE: &str = "\"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

    fn matcher(prefix: &str, len: u8) -> String {
        format!(
            "{{ matcher: {{ name: envoy.rbac.matchers.upstream_ip_port, typed_config: {{ \"@type\": \
             type.googleapis.com/{UPSTREAM_IP_PORT_TYPE}, upstream_ip: {{ address_prefix: \"{prefix}\", \
             prefix_len: {len} }} }} }} }}"
        )
    }

    #[test]
    fn policies_parse_sorted_by_name() {
        let yaml = format!(
            "{TYPE}\nrules:\n  action: DENY\n  policies:\n    zz: {{ principals: [{{any: true}}], permissions: [{}] }}\n    \
             aa: {{ principals: [{{any: true}}], permissions: [{{ not_rule: {{ or_rules: {{ rules: [{}, {}] }} }} }}] }}\n",
            matcher("10.0.0.0", 8),
            matcher("0.0.0.0", 0),
            matcher("::", 0),
        );
        let config = parse(&yaml).expect("valid");
        let rules = config.rules.expect("rules");
        assert_eq!(rules.action, RbacAction::Deny);
        let names: Vec<&str> = rules.policies.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["aa", "zz"]);
        let Permission::UpstreamIpPort { ip: Some(cidr), .. } = &rules.policies[1].1.permissions[0]
        else {
            panic!("matcher expected: {:?}", rules.policies[1]);
        };
        assert!(cidr.contains("10.9.8.7".parse().expect("ip")));
        assert!(!cidr.contains("11.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn no_rules_is_no_engine() {
        assert_eq!(parse(TYPE).expect("valid"), RbacConfig { rules: None });
    }

    #[test]
    fn unsupported_parts_name_their_path() {
        let cases = [
            (format!("{TYPE}\nshadow_rules: {{}}"), "shadow_rules"),
            (format!("{TYPE}\nrules: {{ action: LOG }}"), "rules.action"),
            (
                format!("{TYPE}\nrules: {{ policies: {{ p: {{ permissions: [{{ header: {{ name: a }} }}], principals: [{{any: true}}] }} }} }}"),
                "rules.policies.p.permissions[0].header",
            ),
            (
                format!("{TYPE}\nrules: {{ policies: {{ p: {{ permissions: [{{ any: true }}], principals: [{{ authenticated: {{}} }}] }} }} }}"),
                "rules.policies.p.principals[0].authenticated",
            ),
            (
                format!("{TYPE}\nrules: {{ policies: {{ p: {{ permissions: [], principals: [{{any: true}}] }} }} }}"),
                "rules.policies.p.permissions",
            ),
            (
                format!("{TYPE}\nrules: {{ policies: {{ p: {{ permissions: [{}], principals: [{{any: true}}] }} }} }}", matcher("10.0.0.0", 33)),
                "rules.policies.p.permissions[0].matcher.typed_config.upstream_ip.prefix_len",
            ),
        ];
        for (yaml, path) in cases {
            match parse(&yaml) {
                Err(ConfigError::Invalid { path: got, .. }) => assert_eq!(got, path, "{yaml}"),
                other => panic!("{yaml}: expected an error at {path}, got {other:?}"),
            }
        }
    }

    #[test]
    fn ranges_follow_envoy() {
        let v4 = CidrRange {
            prefix: "127.0.0.0".parse().expect("ip"),
            len: 8,
        };
        assert!(v4.contains("127.255.0.1".parse().expect("ip")));
        // Envoy compares versions first: a mapped address is not in an IPv4 range.
        assert!(!v4.contains("::ffff:127.0.0.1".parse().expect("ip")));
        let all6 = CidrRange {
            prefix: "::".parse().expect("ip"),
            len: 0,
        };
        assert!(all6.contains("2001:db8::1".parse().expect("ip")));
        assert!(!all6.contains("1.2.3.4".parse().expect("ip")));
        // Host bits below the prefix do not matter.
        let sloppy = CidrRange {
            prefix: "10.1.2.3".parse().expect("ip"),
            len: 8,
        };
        assert!(sloppy.contains("10.200.0.1".parse().expect("ip")));
    }
}
