//! `envoy.extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig`, shared by the DFP filter and DFP clusters.

use std::net::SocketAddr;
use std::time::Duration;

use super::node::At;
use super::rbac::parse_cidr;
use super::{parse_address, typed_config, CidrRange, ConfigError};

const CARES_TYPE: &str = "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCacheConfig {
    pub name: String,
    pub lookup_family: LookupFamily,
    /// Resolvers from `typed_dns_resolver_config` (c-ares `resolvers`); empty means the system's resolv.conf.
    pub resolvers: Vec<SocketAddr>,
    /// c-ares `use_resolvers_as_fallback`: use the system resolvers first and `resolvers` only when it has none.
    pub use_resolvers_as_fallback: bool,
    /// c-ares `dns_resolver_options.use_tcp_for_dns_lookups`.
    pub use_tcp: bool,
    /// How long an unused host stays in the cache (Envoy's default 5 min).
    pub host_ttl: Duration,
    /// At most this many hosts (Envoy's default 1024); more gives "DNS cache overflow".
    pub max_hosts: u32,
    /// Refresh period when the answer carries no TTL (default 60 s).
    pub refresh_rate: Duration,
    /// Lower bound on TTL-driven refresh (default 5 s).
    pub min_refresh_rate: Duration,
    /// Per-query timeout (default 5 s).
    pub query_timeout: Duration,
    /// Pending resolutions allowed at once (circuit breaker, default 1024).
    pub max_pending_requests: u32,
    /// `resolved_address_filter`: addresses of an answer that match are dropped before the host sees them.
    pub resolved_address_filter: Option<AddressFilter>,
    /// The configuration as written: Envoy compares the messages, not their effect, when two places name one
    /// cache (`DnsCacheManagerImpl::getCache`), so a field left out differs from the same default written out.
    pub as_written: String,
}

/// `type.matcher.v3.AddressMatcher` (Envoy's `Matcher::AddressMatcher::match`): an address in any of `ranges`
/// matches, or with `invert` one in none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressFilter {
    pub ranges: Vec<CidrRange>,
    pub invert: bool,
}

impl AddressFilter {
    pub fn matches(&self, ip: std::net::IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(ip)) != self.invert
    }
}

/// `dns_lookup_family`, as Envoy interprets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupFamily {
    /// AAAA first, A when there is none.
    Auto,
    V4Only,
    V6Only,
    /// A first, AAAA when there is none (Envoy's default).
    V4Preferred,
    /// Both families.
    All,
}

pub(crate) fn parse_dns_cache(at: &At<'_>) -> Result<DnsCacheConfig, ConfigError> {
    let as_written = serde_yaml_ng::to_string(at.value).unwrap_or_default();
    let mut fields = at.map()?;
    // DnsCacheConfig.name: `min_len: 1`.
    let name = fields.req("name")?.non_empty_string()?;
    let lookup_family = match fields.opt("dns_lookup_family") {
        Some(family) => match family
            .enum_name(&["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"])?
            .as_str()
        {
            "AUTO" => LookupFamily::Auto,
            "V4_ONLY" => LookupFamily::V4Only,
            "V6_ONLY" => LookupFamily::V6Only,
            "ALL" => LookupFamily::All,
            _ => LookupFamily::V4Preferred,
        },
        None => LookupFamily::V4Preferred,
    };
    let duration_or = |fields: &mut super::node::Fields<'_>, name: &str, default: Duration| {
        fields
            .opt(name)
            .map(|d| d.duration())
            .transpose()
            .map(|d| d.unwrap_or(default))
    };
    let host_ttl = duration_or(&mut fields, "host_ttl", Duration::from_secs(300))?;
    let refresh_rate = duration_or(&mut fields, "dns_refresh_rate", Duration::from_secs(60))?;
    let min_refresh_rate =
        duration_or(&mut fields, "dns_min_refresh_rate", Duration::from_secs(5))?;
    let query_timeout = duration_or(&mut fields, "dns_query_timeout", Duration::from_secs(5))?;
    let max_hosts = fields
        .opt("max_hosts")
        .map(|m| m.u32())
        .transpose()?
        .unwrap_or(1024);
    if max_hosts == 0 {
        return Err(fields.error("max_hosts must be at least 1"));
    }
    let max_pending_requests = match fields.opt("dns_cache_circuit_breaker") {
        Some(breaker) => {
            let mut breaker_fields = breaker.map()?;
            let max = breaker_fields
                .opt("max_pending_requests")
                .map(|m| m.u32())
                .transpose()?
                .unwrap_or(1024);
            breaker_fields.finish()?;
            max
        }
        None => 1024,
    };
    let resolved_address_filter = fields
        .opt("resolved_address_filter")
        .map(|at| parse_address_filter(&at))
        .transpose()?;
    let mut resolver = ResolverSettings::default();
    if let Some(typed) = fields.opt("typed_dns_resolver_config") {
        resolver = parse_resolver(&typed)?;
    }
    fields.finish()?;
    Ok(DnsCacheConfig {
        name,
        lookup_family,
        resolvers: resolver.resolvers,
        use_resolvers_as_fallback: resolver.use_resolvers_as_fallback,
        use_tcp: resolver.use_tcp,
        host_ttl,
        max_hosts,
        refresh_rate,
        min_refresh_rate,
        query_timeout,
        max_pending_requests,
        resolved_address_filter,
        as_written,
    })
}

/// `{ ranges: [CidrRange...], invert_match }`.
fn parse_address_filter(at: &At<'_>) -> Result<AddressFilter, ConfigError> {
    let mut fields = at.map()?;
    let ranges = match fields.opt("ranges") {
        Some(list) => list
            .list()?
            .iter()
            .map(parse_cidr)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let invert = fields
        .opt("invert_match")
        .map(|f| f.bool())
        .transpose()?
        .unwrap_or(false);
    fields.finish()?;
    Ok(AddressFilter { ranges, invert })
}

#[derive(Default)]
struct ResolverSettings {
    resolvers: Vec<SocketAddr>,
    use_resolvers_as_fallback: bool,
    use_tcp: bool,
}

/// `typed_dns_resolver_config: { name: envoy.network.dns_resolver.cares, typed_config: {...} }`
fn parse_resolver(at: &At<'_>) -> Result<ResolverSettings, ConfigError> {
    let mut fields = at.map()?;
    fields.cosmetic("name");
    let typed = fields.req("typed_config")?;
    fields.finish()?;
    let (_, mut config) = typed_config(&typed, &[CARES_TYPE])?;
    let resolvers = match config.opt("resolvers") {
        Some(list) => list
            .list()?
            .iter()
            .map(parse_address)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let use_resolvers_as_fallback = config
        .opt("use_resolvers_as_fallback")
        .map(|f| f.bool())
        .transpose()?
        .unwrap_or(false);
    let mut use_tcp = false;
    if let Some(options) = config.opt("dns_resolver_options") {
        let mut option_fields = options.map()?;
        use_tcp = option_fields
            .opt("use_tcp_for_dns_lookups")
            .map(|f| f.bool())
            .transpose()?
            .unwrap_or(false);
        // host-sim's resolver never appends search domains: only `true` matches what it does.
        if let Some(no_search) = option_fields.opt("no_default_search_domain") {
            if !no_search.bool()? {
                return Err(no_search.error(
                    "host-sim never uses search domains; set no_default_search_domain: true",
                ));
            }
        }
        option_fields.finish()?;
    }
    // Cosmetic: c-ares socket tuning with no effect on answers or timing.
    config.cosmetic("udp_max_queries");
    config.finish()?;
    Ok(ResolverSettings {
        resolvers,
        use_resolvers_as_fallback,
        use_tcp,
    })
}
