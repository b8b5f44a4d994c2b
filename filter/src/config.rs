//! The filter configuration (the wasm plugin `configuration`, a JSON string) and its validation.
//!
//! [`FilterConfig::from_json`] performs every check `on_configure` relies on, so tools (the
//! gateway-manifest tests, for one) can validate a configuration natively. Errors name the key
//! path and the offending value: `allow[2].host: invalid wildcard "*example.com": ...`.
//!
//! The JSON is read strictly: duplicate keys anywhere and unknown keys in any object are errors,
//! because a security policy that silently keeps the last of two `allow` lists, or ignores a
//! misspelt `deny`, is worse than one that refuses to load.

use std::net::IpAddr;

use crate::destination::{self, Host};
use crate::json::json_string;
use crate::json::{self, Json};
use crate::net::{self, Cidr};

named_enum! {
    /// Where the filter runs.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Stage {
        /// An HTTP filter of the connection manager: decides the destination by name.
        Downstream => "downstream",
        /// An upstream HTTP filter of the dynamic-forward-proxy cluster: decides the address Envoy
        /// connects to (`upstream.address`), after DNS.
        Upstream => "upstream",
    }
}

named_enum! {
    /// What a denial does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Mode {
        /// Deny with 403.
        Enforce => "enforce",
        /// Log and count what would be denied, and forward it.
        Report => "report",
    }
}

/// The host of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// An exact DNS name, canonical (lower case, no trailing dot).
    Exact(String),
    /// `*.suffix`: one or more labels under `suffix` (stored without `*.`), never `suffix` itself.
    Wildcard(String),
    /// An IP literal (a one-address block) or a CIDR block.
    Cidr(Cidr),
}

/// An `allow` rule, with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    pub host: HostPattern,
    /// `[443]` when `tls` is true and `[80]` otherwise, unless given.
    pub ports: Vec<u16>,
    /// `None`: TLS when the port is 443.
    pub tls: Option<bool>,
    /// `None`: any method. Matched case-sensitively.
    pub methods: Option<Vec<String>>,
    /// `max_hosts`: how many distinct destinations this rule admits within `host_ttl_seconds` (wildcard and CIDR
    /// rules: [`DEFAULT_MAX_HOSTS`] unless given; an exact name or a single address is one destination: `None`).
    pub max_hosts: Option<u32>,
}

/// The distinct destinations a wildcard or CIDR rule admits by default within the host TTL: far below the DNS
/// cache's `max_hosts` (1024 in `envoy.yaml`), so one rule cannot fill the cache for every other destination.
pub const DEFAULT_MAX_HOSTS: u32 = 256;
/// Envoy's DNS cache default `host_ttl`: how long a destination counts against its rule after its last use.
pub const DEFAULT_HOST_TTL_SECONDS: u32 = 300;

/// A `deny` rule. Without `ports` or `methods` it denies every port or method of its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyRule {
    pub host: HostPattern,
    pub ports: Option<Vec<u16>>,
    pub methods: Option<Vec<String>>,
}

/// `cluster_header` with `clusters`: the header the route reads and the cluster names to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRouting {
    pub header: String,
    pub plain: String,
    pub tls: String,
    /// `clusters.default`, resolved to its cluster name: the cluster the route table picks when the
    /// header is absent. The filter writes the header only to pick another one.
    pub default: Option<String>,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    pub stage: Stage,
    pub mode: Mode,
    pub allow: Vec<AllowRule>,
    pub deny: Vec<DenyRule>,
    pub cluster_routing: Option<ClusterRouting>,
    pub destination_header: Option<String>,
    /// `addresses.deny`, or every special-purpose range when absent.
    pub address_deny: Vec<Cidr>,
    /// `addresses.allow`: carve-outs from `address_deny`.
    pub address_allow: Vec<Cidr>,
    /// `proxy_authorization`: `"remove"` (default) takes the client's `Proxy-Authorization`, its credential for
    /// this proxy, off every request it lets through; `"keep"` forwards it.
    pub remove_proxy_authorization: bool,
    /// `own_endpoints`: the proxy's own listeners and admin (`ip:port`); requests to them are always denied.
    pub own_endpoints: Vec<(IpAddr, u16)>,
    /// `host_ttl_seconds`: how long a destination counts against its rule's `max_hosts` after its last use.
    pub host_ttl_seconds: u32,
}

/// A configuration error: the key path (`allow[2].host`, or `configuration` for the document
/// itself) and what is wrong with the value there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    fn new(path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    /// The key path, e.g. `allow[2].host`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

const TOP_KEYS: &[&str] = &[
    "stage",
    "mode",
    "allow",
    "deny",
    "cluster_header",
    "clusters",
    "destination_header",
    "addresses",
    "proxy_authorization",
    "own_endpoints",
    "host_ttl_seconds",
];
const ALLOW_KEYS: &[&str] = &["host", "ports", "tls", "methods", "max_hosts"];
const DENY_KEYS: &[&str] = &["host", "ports", "methods"];
const CLUSTERS_KEYS: &[&str] = &["plain", "tls", "default"];
const ADDRESSES_KEYS: &[&str] = &["deny", "allow"];

impl FilterConfig {
    /// Parses and validates the plugin configuration. An empty document (or only whitespace)
    /// is the empty object: downstream, enforce, no allow rules — everything denied.
    pub fn from_json(text: &str) -> Result<FilterConfig, ConfigError> {
        let blank = text
            .bytes()
            .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        let value = if blank {
            Json::Object(Vec::new())
        } else {
            json::parse(text)
                .map_err(|e| ConfigError::new("configuration", format!("invalid JSON: {e}")))?
        };
        from_value(&value)
    }
}

fn from_value(value: &Json) -> Result<FilterConfig, ConfigError> {
    let top = object(value, "configuration", TOP_KEYS)?;
    let field = |k: &str| member(top, k);

    let stage = match field("stage").map(|v| either(v, "stage", "downstream", "upstream")) {
        Some(Ok(true)) => Stage::Upstream,
        Some(Err(e)) => return Err(e),
        _ => Stage::Downstream,
    };
    let mode = match field("mode").map(|v| either(v, "mode", "enforce", "report")) {
        Some(Ok(true)) => Mode::Report,
        Some(Err(e)) => return Err(e),
        _ => Mode::Enforce,
    };

    let mut allow = Vec::new();
    if let Some(v) = field("allow") {
        for (i, item) in array(v, "allow")?.iter().enumerate() {
            allow.push(allow_rule(item, &format!("allow[{i}]"))?);
        }
    }
    let mut deny = Vec::new();
    if let Some(v) = field("deny") {
        for (i, item) in array(v, "deny")?.iter().enumerate() {
            deny.push(deny_rule(item, &format!("deny[{i}]"))?);
        }
    }

    let cluster_header = field("cluster_header")
        .map(|v| header_name(v, "cluster_header"))
        .transpose()?;
    let clusters = field("clusters").map(clusters).transpose()?;
    let destination_header = field("destination_header")
        .map(|v| header_name(v, "destination_header"))
        .transpose()?;
    let remove_proxy_authorization = match field("proxy_authorization")
        .map(|v| either(v, "proxy_authorization", "remove", "keep"))
    {
        Some(Ok(keep)) => !keep,
        Some(Err(e)) => return Err(e),
        None => true,
    };
    if stage == Stage::Upstream {
        for key in [
            "cluster_header",
            "clusters",
            "destination_header",
            "proxy_authorization",
        ] {
            if let Some(v) = field(key) {
                return Err(invalid(
                    key,
                    v,
                    "only valid with \"stage\": \"downstream\" (the upstream stage decides the connected address)",
                ));
            }
        }
    }
    let cluster_routing = match (cluster_header, clusters) {
        (Some(header), Some((plain, tls, default))) => Some(ClusterRouting {
            header,
            plain,
            tls,
            default,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "clusters",
                "missing: required when cluster_header is set",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "cluster_header",
                "missing: required when clusters is set",
            ))
        }
    };
    if let (Some(dest), Some(routing)) = (&destination_header, &cluster_routing) {
        if *dest == routing.header {
            return Err(ConfigError::new(
                "destination_header",
                format!("{} is also the cluster_header", quote(dest)),
            ));
        }
    }

    let (address_deny, address_allow) = match field("addresses") {
        None => (net::special_purpose(), Vec::new()),
        Some(v) => {
            let map = object(v, "addresses", ADDRESSES_KEYS)?;
            let deny = match member(map, "deny") {
                None => net::special_purpose(),
                Some(list) => cidr_list(list, "addresses.deny")?,
            };
            let allow = match member(map, "allow") {
                None => Vec::new(),
                Some(list) => cidr_list(list, "addresses.allow")?,
            };
            (deny, allow)
        }
    };

    Ok(FilterConfig {
        stage,
        mode,
        allow,
        deny,
        cluster_routing,
        destination_header,
        address_deny,
        address_allow,
        remove_proxy_authorization,
        own_endpoints: match field("own_endpoints") {
            None => Vec::new(),
            Some(list) => endpoint_list(list, "own_endpoints")?,
        },
        host_ttl_seconds: match field("host_ttl_seconds") {
            None => DEFAULT_HOST_TTL_SECONDS,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=86_400).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| invalid("host_ttl_seconds", v, "expected seconds, 1..=86400"))?,
        },
    })
}

fn allow_rule(value: &Json, path: &str) -> Result<AllowRule, ConfigError> {
    let (host, ports, tls, methods) = rule(value, path, ALLOW_KEYS)?;
    let ports = ports.unwrap_or_else(|| vec![if tls == Some(true) { 443 } else { 80 }]);
    let many = match &host {
        HostPattern::Exact(_) => false,
        HostPattern::Wildcard(_) => true,
        HostPattern::Cidr(cidr) => !cidr.is_host(),
    };
    let map = object(value, path, ALLOW_KEYS)?;
    let max_hosts = match member(map, "max_hosts") {
        None => many.then_some(DEFAULT_MAX_HOSTS),
        Some(v) if !many => {
            return Err(invalid(
                &format!("{path}.max_hosts"),
                v,
                "only for wildcard and CIDR rules (this rule names one destination)",
            ))
        }
        Some(v) => Some(
            v.as_u64()
                .filter(|n| (1..=1_000_000).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| invalid(&format!("{path}.max_hosts"), v, "expected 1..=1000000"))?,
        ),
    };
    Ok(AllowRule {
        host,
        ports,
        tls,
        methods,
        max_hosts,
    })
}

fn deny_rule(value: &Json, path: &str) -> Result<DenyRule, ConfigError> {
    let (host, ports, _, methods) = rule(value, path, DENY_KEYS)?;
    Ok(DenyRule {
        host,
        ports,
        methods,
    })
}

type RuleParts = (
    HostPattern,
    Option<Vec<u16>>,
    Option<bool>,
    Option<Vec<String>>,
);

/// The fields shared by allow and deny rules (`known` says which keys the rule may have).
fn rule(value: &Json, path: &str, known: &[&str]) -> Result<RuleParts, ConfigError> {
    let map = object(value, path, known)?;
    let host = rule_host(map, path)?;
    let tls = match member(map, "tls") {
        None => None,
        Some(v) => Some(
            v.as_bool()
                .ok_or_else(|| invalid(&format!("{path}.tls"), v, "expected true or false"))?,
        ),
    };
    let ports = match member(map, "ports") {
        None => None,
        Some(v) => Some(list_of(
            v,
            &format!("{path}.ports"),
            Some("must list at least one port (omit it for the default)"),
            |item| {
                item.as_u64()
                    .filter(|p| (1..=65535).contains(p))
                    .map(|p| p as u16)
                    .ok_or_else(|| "expected a port number 1..=65535".to_owned())
            },
        )?),
    };
    let methods = match member(map, "methods") {
        None => None,
        Some(v) => Some(list_of(
            v,
            &format!("{path}.methods"),
            Some("must list at least one method (omit it for any method)"),
            |item| {
                item.as_str()
                    .filter(|m| {
                        !m.is_empty()
                            && m.bytes().all(|b| {
                                b.is_ascii_uppercase()
                                    || b.is_ascii_digit()
                                    || b == b'-'
                                    || b == b'_'
                            })
                    })
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        "expected an HTTP method in upper case, e.g. \"GET\" (methods are case-sensitive)"
                            .to_owned()
                    })
            },
        )?),
    };
    Ok((host, ports, tls, methods))
}

/// Validates each item of an array with `item` (the value, or why not); `empty` is the
/// complaint about an empty array, when one is not allowed.
fn list_of<T>(
    value: &Json,
    path: &str,
    empty: Option<&str>,
    item: impl Fn(&Json) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    let items = array(value, path)?;
    if let (true, Some(why)) = (items.is_empty(), empty) {
        return Err(invalid(path, value, why));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        match item(v) {
            Ok(x) => out.push(x),
            Err(why) => return Err(invalid(&format!("{path}[{i}]"), v, &why)),
        }
    }
    Ok(out)
}

fn rule_host(map: &[(String, Json)], path: &str) -> Result<HostPattern, ConfigError> {
    let path = format!("{path}.host");
    let value = member(map, "host")
        .ok_or_else(|| ConfigError::new(&path, "missing: every rule needs a host"))?;
    let text = value
        .as_str()
        .ok_or_else(|| invalid(&path, value, "expected a string"))?;
    parse_host_pattern(text).map_err(|why| ConfigError::new(&path, why))
}

/// Parses a rule host: `*.suffix`, a CIDR, an IP literal (IPv6 with or without brackets) or an
/// exact DNS name. Names are canonicalised like destinations (lower case, no trailing dot).
pub fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.contains('*') {
        let suffix = text
            .strip_prefix("*.")
            .filter(|s| !s.contains('*') && !s.is_empty())
            .ok_or_else(|| {
                format!(
                    "invalid wildcard {}: only a whole leading label may be \"*\", as in \"*.example.org\"",
                    quote(text)
                )
            })?;
        let name =
            dns_name(suffix).map_err(|why| format!("invalid wildcard {}: {why}", quote(text)))?;
        return Ok(HostPattern::Wildcard(name));
    }
    if text.contains('/') {
        return Cidr::parse(text)
            .map(HostPattern::Cidr)
            .map_err(|e| format!("invalid CIDR {}: {e}", quote(text)));
    }
    if let Some(ip) = ip_literal(text) {
        return Ok(HostPattern::Cidr(Cidr::host(ip)));
    }
    dns_name(text)
        .map(HostPattern::Exact)
        .map_err(|why| format!("invalid host {}: {why}", quote(text)))
}

fn ip_literal(text: &str) -> Option<std::net::IpAddr> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    net::parse_ipv4_strict(inner)
        .map(std::net::IpAddr::V4)
        .or_else(|| net::parse_ipv6(inner).map(std::net::IpAddr::V6))
}

/// A canonical DNS name, or why the text is not one.
fn dns_name(text: &str) -> Result<String, String> {
    match destination::parse(text.as_bytes().to_vec()) {
        Ok(d) if d.port().is_some() => Err("a rule host takes no port; use \"ports\"".into()),
        Ok(d) if d.kind() == Host::Name => Ok(d.host().to_owned()),
        Ok(_) => Err("an IP address is not a DNS name".into()),
        Err(reason) => Err(format!("not a valid DNS name or IP literal ({reason})")),
    }
}

fn header_name(value: &Json, path: &str) -> Result<String, ConfigError> {
    const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~";
    let name = value
        .as_str()
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || TCHAR.contains(&b))
        })
        .ok_or_else(|| {
            invalid(
                path,
                value,
                "expected a lower-case HTTP header name, e.g. \"x-dfp-cluster\"",
            )
        })?;
    if name == "host" {
        return Err(invalid(
            path,
            value,
            "must not be \"host\" (the destination is :authority)",
        ));
    }
    Ok(name.to_owned())
}

/// `clusters`: the plain and TLS cluster names, and the one `default` names, if any.
fn clusters(value: &Json) -> Result<(String, String, Option<String>), ConfigError> {
    let map = object(value, "clusters", CLUSTERS_KEYS)?;
    let name = |key: &str| {
        let path = format!("clusters.{key}");
        let v = member(map, key)
            .ok_or_else(|| ConfigError::new(&path, "missing: both plain and tls are required"))?;
        v.as_str()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b)))
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid(
                    &path,
                    v,
                    "expected a cluster name (visible ASCII, no spaces)",
                )
            })
    };
    let (plain, tls) = (name("plain")?, name("tls")?);
    let default =
        match member(map, "default").map(|v| either(v, "clusters.default", "plain", "tls")) {
            Some(Ok(true)) => Some(tls.clone()),
            Some(Ok(false)) => Some(plain.clone()),
            Some(Err(e)) => return Err(e),
            None => None,
        };
    Ok((plain, tls, default))
}

/// `["127.0.0.1:9901", "[::1]:10000", "0.0.0.0:10000"]`: socket addresses as Envoy prints them.
fn endpoint_list(value: &Json, path: &str) -> Result<Vec<(IpAddr, u16)>, ConfigError> {
    list_of(value, path, None, |item| {
        let text = item
            .as_str()
            .ok_or_else(|| "expected an \"ip:port\" string".to_owned())?;
        net::parse_socket_address(text.as_bytes()).ok_or_else(|| {
            "expected ip:port (IPv6 in brackets, port 1..65535, canonical IPv4)".to_owned()
        })
    })
}

fn cidr_list(value: &Json, path: &str) -> Result<Vec<Cidr>, ConfigError> {
    list_of(value, path, None, |item| {
        let text = item
            .as_str()
            .ok_or_else(|| "expected a CIDR or IP address string".to_owned())?;
        Cidr::parse(text).map_err(|e| format!("invalid CIDR: {e}"))
    })
}

fn object<'a>(
    value: &'a Json,
    path: &str,
    known: &[&str],
) -> Result<&'a [(String, Json)], ConfigError> {
    let map = value
        .as_object()
        .ok_or_else(|| invalid(path, value, "expected an object"))?;
    for (key, _) in map {
        if !known.contains(&key.as_str()) {
            let key_path = if path == "configuration" {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            return Err(ConfigError::new(
                &key_path,
                format!("unknown key (expected one of: {})", list(known)),
            ));
        }
    }
    Ok(map)
}

/// The member `key` of an object, with `null` read as absent.
fn member<'a>(map: &'a [(String, Json)], key: &str) -> Option<&'a Json> {
    map.iter()
        .find_map(|(k, v)| (k == key).then_some(v))
        .filter(|v| !v.is_null())
}

fn array<'a>(value: &'a Json, path: &str) -> Result<&'a [Json], ConfigError> {
    value
        .as_array()
        .ok_or_else(|| invalid(path, value, "expected an array"))
}

/// An error quoting the value as JSON (escaped, and shortened when long).
/// A string that must be one of two keywords: `false` for the first, `true` for the second.
fn either(value: &Json, path: &str, first: &str, second: &str) -> Result<bool, ConfigError> {
    match value.as_str() {
        Some(s) if s == first => Ok(false),
        Some(s) if s == second => Ok(true),
        _ => Err(invalid(
            path,
            value,
            &format!("expected {} or {}", quote(first), quote(second)),
        )),
    }
}

fn invalid(path: &str, value: &Json, why: &str) -> ConfigError {
    let shown = match value {
        Json::String(s) if s.chars().count() > 100 => {
            let cut: String = s.chars().take(97).collect();
            format!("{}...", quote(&cut))
        }
        Json::String(s) => quote(s),
        Json::Number(n) => n.clone(),
        Json::Bool(true) => "true".into(),
        Json::Bool(false) => "false".into(),
        Json::Null => "null".into(),
        Json::Array(_) => "[...]".into(),
        Json::Object(_) => "{...}".into(),
    };
    ConfigError::new(path, format!("invalid value {shown}: {why}"))
}

/// `s` as a JSON string literal, for quoting values in messages safely.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    json_string(&mut out, s);
    out
}

fn list(items: &[&str]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(item);
    }
    out
}

#[cfg(test)]
mod tests;
