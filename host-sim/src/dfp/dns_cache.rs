//! The dynamic forward proxy's DNS cache, with Envoy's semantics (`source/extensions/common/dynamic_forward_proxy`):
//!
//! - Hosts are keyed by `host:port`, the port defaulting to 80, or 443 for a TLS cluster.
//! - A host seen for the first time starts one resolution; every request for it waits on that one query.
//! - An answer is kept and refreshed in the background: after the record's TTL (at least `dns_min_refresh_rate`);
//!   after `dns_refresh_rate` when the answer had no address (NXDOMAIN, NODATA) or the query failed (Envoy's fixed
//!   failure backoff without `dns_failure_refresh_rate`). Once a host has an address it keeps it through later
//!   failures.
//! - A query that completes counts as `dns_query_success` even with no address (c-ares reports NXDOMAIN and NODATA
//!   as a completed query with no records); server failures and timeouts count as `dns_query_failure`. The reason
//!   reaches the response code details in c-ares' words (`cares_norecords:Domain name not found`).
//! - A host not used for `host_ttl` is dropped at its next refresh.
//! - At most `max_hosts` hosts (`host_overflow`). The pending-request circuit breaker (`max_pending_requests`,
//!   `dns_rq_pending_overflow`) is consulted before the lookup, as Envoy's filter does: while it is full even a
//!   request for a cached host is refused.
//! - A host keeps every address of its answer, in the resolver's order: the first is the host's address (what the
//!   upstream RBAC matcher and `upstream.address` see), the rest are where Envoy's connection pool goes when a
//!   connect fails (`HappyEyeballsConnectionImpl`). `resolved_address_filter` drops matching addresses from the
//!   answer first (`DnsCacheImpl::finishResolve`, `dns_address_filter_out`); an answer left empty is a resolution
//!   failure with details `address_denied`.
//! - Stats are named as Envoy's: `dns_cache.<name>.dns_query_attempt` and friends.
//!
//! Resolutions run on the runtime handle given at construction (Envoy's main thread); workers only await results.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::config::{DnsCacheConfig, LookupFamily};
use crate::shared::metrics::{Metric, MetricsStore};
use crate::types::MetricKind;

/// Why a DNS cache lookup did not produce an address; each maps to one of Envoy's local replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name did not resolve (503 "DNS resolution failure"); `details` as in Envoy's response code details.
    ResolutionFailed { details: String },
    /// `max_hosts` reached (503 "DNS cache overflow").
    CacheOverflow,
    /// Too many requests already waiting for resolutions (503 "Dynamic forward proxy pending request overflow").
    PendingOverflow,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsCacheError {
    #[error("DNS cache {name:?}: cannot read the system resolver configuration: {source}")]
    SystemConfig {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS cache {name:?}: cannot build the resolver: {message}")]
    Resolver { name: String, message: String },
}

/// A host's addresses in the order Envoy tries them; the first is the host's own address. Never empty.
pub type Addresses = Arc<[SocketAddr]>;

/// One cached host: its addresses (empty until it ever resolved) and what the last resolution said.
#[derive(Debug, Clone)]
struct Resolved {
    addresses: Addresses,
    details: String,
}

struct Entry {
    /// `None` until the first resolution completes; requests wait on this channel.
    state: watch::Sender<Option<Resolved>>,
    last_used: Instant,
}

struct Stats {
    query_attempt: Arc<Metric>,
    query_success: Arc<Metric>,
    query_failure: Arc<Metric>,
    query_timeout: Arc<Metric>,
    host_address_changed: Arc<Metric>,
    host_added: Arc<Metric>,
    host_removed: Arc<Metric>,
    num_hosts: Arc<Metric>,
    host_overflow: Arc<Metric>,
    pending_overflow: Arc<Metric>,
    address_filter_out: Arc<Metric>,
}

impl Stats {
    fn new(store: &MetricsStore, cache: &str) -> Self {
        let counter =
            |name: &str| store.define(MetricKind::Counter, &format!("dns_cache.{cache}.{name}"));
        Stats {
            query_attempt: counter("dns_query_attempt"),
            query_success: counter("dns_query_success"),
            query_failure: counter("dns_query_failure"),
            query_timeout: counter("dns_query_timeout"),
            host_address_changed: counter("host_address_changed"),
            host_added: counter("host_added"),
            host_removed: counter("host_removed"),
            num_hosts: store.define(MetricKind::Gauge, &format!("dns_cache.{cache}.num_hosts")),
            host_overflow: counter("host_overflow"),
            pending_overflow: counter("dns_rq_pending_overflow"),
            address_filter_out: counter("dns_address_filter_out"),
        }
    }
}

struct Inner {
    config: DnsCacheConfig,
    resolver: TokioResolver,
    runtime: Handle,
    hosts: Mutex<HashMap<String, Entry>>,
    pending: AtomicU32,
    stats: Stats,
}

/// A shared DNS cache (cheap to clone; all clones are the same cache).
#[derive(Clone)]
pub struct DnsCache {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Releases a pending-request slot when the waiting request finishes or is dropped.
struct PendingSlot<'a>(&'a AtomicU32);

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DnsCache {
    /// Builds the cache; resolutions and refresh timers run on `runtime`.
    pub fn new(
        config: DnsCacheConfig,
        runtime: Handle,
        stats: &MetricsStore,
    ) -> Result<Self, DnsCacheError> {
        let resolver = build_resolver(&config)?;
        let stats = Stats::new(stats, &config.name);
        Ok(DnsCache {
            inner: Arc::new(Inner {
                config,
                resolver,
                runtime,
                hosts: Mutex::new(HashMap::new()),
                pending: AtomicU32::new(0),
                stats,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    pub fn config(&self) -> &DnsCacheConfig {
        &self.inner.config
    }

    /// Resolves `authority` (`host` or `host:port`, IPv6 in brackets) to the host's addresses.
    pub async fn load(&self, authority: &str, default_port: u16) -> Result<Addresses, LookupError> {
        let inner = &self.inner;
        // The circuit breaker counts requests inside the DFP filter, as Envoy's does: taken first, held while the
        // request waits for a resolution.
        let _slot = self.take_pending_slot()?;
        let (host, port) = split_authority(authority, default_port).ok_or_else(|| {
            LookupError::ResolutionFailed {
                details: "invalid_host".to_string(),
            }
        })?;
        let key = format!("{host}:{port}");

        let mut receiver = {
            let mut hosts = lock(&inner.hosts);
            if let Some(entry) = hosts.get_mut(&key) {
                entry.last_used = Instant::now();
                if let Some(resolved) = entry.state.borrow().clone() {
                    return resolved_result(resolved);
                }
                entry.state.subscribe()
            } else if hosts.len() >= inner.config.max_hosts as usize {
                inner.stats.host_overflow.add(1);
                return Err(LookupError::CacheOverflow);
            } else {
                let (sender, receiver) = watch::channel(None);
                hosts.insert(
                    key.clone(),
                    Entry {
                        state: sender,
                        last_used: Instant::now(),
                    },
                );
                inner.stats.host_added.add(1);
                inner.stats.num_hosts.set(hosts.len() as i64);
                let weak = Arc::downgrade(inner);
                inner
                    .runtime
                    .spawn(resolve_loop(weak, key.clone(), host.to_string(), port));
                receiver
            }
        };

        loop {
            if let Some(resolved) = receiver.borrow_and_update().clone() {
                return resolved_result(resolved);
            }
            if receiver.changed().await.is_err() {
                return Err(LookupError::ResolutionFailed {
                    details: "host_removed".to_string(),
                });
            }
        }
    }

    fn take_pending_slot(&self) -> Result<PendingSlot<'_>, LookupError> {
        let inner = &self.inner;
        let max = inner.config.max_pending_requests;
        let taken = inner
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current < max).then_some(current + 1)
            });
        match taken {
            Ok(_) => Ok(PendingSlot(&inner.pending)),
            Err(_) => {
                inner.stats.pending_overflow.add(1);
                Err(LookupError::PendingOverflow)
            }
        }
    }

    /// Number of hosts in the cache.
    pub fn len(&self) -> usize {
        lock(&self.inner.hosts).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn resolved_result(resolved: Resolved) -> Result<Addresses, LookupError> {
    if resolved.addresses.is_empty() {
        return Err(LookupError::ResolutionFailed {
            details: resolved.details,
        });
    }
    Ok(resolved.addresses)
}

/// Resolves one host, then keeps it fresh until it has been unused for `host_ttl`.
async fn resolve_loop(cache: Weak<Inner>, key: String, host: String, port: u16) {
    loop {
        let Some(inner) = cache.upgrade() else { return };
        let resolution = resolve_once(&inner, &host).await;
        if resolution.completed {
            inner.stats.query_success.add(1);
        } else {
            inner.stats.query_failure.add(1);
        }
        let mut details = resolution.details;
        let mut ips = resolution.addresses;
        if let (Some(filter), false) = (&inner.config.resolved_address_filter, ips.is_empty()) {
            let before = ips.len();
            ips.retain(|ip| !filter.matches(*ip));
            let dropped = before - ips.len();
            inner.stats.address_filter_out.add(dropped as i64);
            if ips.is_empty() {
                details = "address_denied".to_string();
            }
        }
        let next = if ips.is_empty() {
            publish(&inner, &key, Arc::from([]), &details);
            inner.config.refresh_rate
        } else {
            let addresses: Addresses = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            publish(&inner, &key, addresses, "resolved");
            // Envoy caps re-resolution at dns_min_refresh_rate to avoid constant queries.
            resolution.ttl.max(inner.config.min_refresh_rate)
        };
        drop(inner);
        tokio::time::sleep(next).await;

        let Some(inner) = cache.upgrade() else { return };
        let mut hosts = lock(&inner.hosts);
        let expired = hosts
            .get(&key)
            .is_none_or(|entry| entry.last_used.elapsed() > inner.config.host_ttl);
        if expired {
            if hosts.remove(&key).is_some() {
                inner.stats.host_removed.add(1);
                inner.stats.num_hosts.set(hosts.len() as i64);
            }
            return;
        }
    }
}

/// Records a resolution: the first completes the entry; later ones only replace the addresses when the list changed
/// (`DnsUtils::listChanged`; a host that once resolved keeps its addresses through failures).
fn publish(inner: &Inner, key: &str, addresses: Addresses, details: &str) {
    let hosts = lock(&inner.hosts);
    let Some(entry) = hosts.get(key) else { return };
    entry.state.send_if_modified(|state| match state.as_mut() {
        None => {
            // Envoy counts the first address as a change too (from none).
            if !addresses.is_empty() {
                inner.stats.host_address_changed.add(1);
            }
            *state = Some(Resolved {
                addresses,
                details: details.to_string(),
            });
            true
        }
        Some(current) if !addresses.is_empty() && current.addresses != addresses => {
            inner.stats.host_address_changed.add(1);
            current.addresses = addresses;
            current.details = details.to_string();
            true
        }
        _ => false,
    });
}

/// What one query produced.
struct Resolution {
    /// Every address of the answer in the resolver's order (empty when it had none), and the first record's TTL.
    addresses: Vec<IpAddr>,
    ttl: Duration,
    /// The query completed (with or without records), as opposed to failing or timing out.
    completed: bool,
    /// The reason as Envoy's c-ares resolver words it, for the response code details.
    details: String,
}

impl Resolution {
    fn no_records(reason: &str) -> Self {
        Resolution {
            addresses: Vec::new(),
            ttl: Duration::ZERO,
            completed: true,
            details: format!("cares_norecords:{reason}"),
        }
    }

    fn failure(details: String) -> Self {
        Resolution {
            addresses: Vec::new(),
            ttl: Duration::ZERO,
            completed: false,
            details,
        }
    }
}

/// One query, bounded by `dns_query_timeout` (the cache's own timer, as in Envoy; the resolver never gives up first).
async fn resolve_once(inner: &Inner, host: &str) -> Resolution {
    inner.stats.query_attempt.add(1);
    // Envoy's cache takes an unbracketed IP literal as the address it is; it hands a bracketed IPv6 literal
    // (`[::1]`, as authorities spell it) to c-ares as a name, which refuses it.
    if host.starts_with('[') {
        return Resolution::failure("cares_failure:Misformatted domain name".to_string());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Resolution {
            addresses: vec![ip],
            ttl: Duration::ZERO,
            completed: true,
            details: "cares_success:Successful completion".to_string(),
        };
    }
    // A fully qualified name: no search domains, as Envoy is configured here.
    let fqdn = format!("{host}.");
    let lookup = match tokio::time::timeout(
        inner.config.query_timeout,
        inner.resolver.lookup_ip(fqdn.as_str()),
    )
    .await
    {
        Err(_) => {
            inner.stats.query_timeout.add(1);
            return Resolution::failure("resolve_timeout".to_string());
        }
        Ok(Err(error)) => return failed_lookup(&error),
        Ok(Ok(lookup)) => lookup,
    };
    let records: Vec<(IpAddr, u32)> = lookup
        .as_lookup()
        .answers()
        .iter()
        .filter_map(|record| Some((record.data.ip_addr()?, record.ttl)))
        .collect();
    match records.first() {
        Some(&(_, ttl)) => Resolution {
            addresses: records.iter().map(|&(ip, _)| ip).collect(),
            ttl: Duration::from_secs(u64::from(ttl)),
            completed: true,
            details: "cares_success:Successful completion".to_string(),
        },
        None => Resolution::no_records("DNS server returned answer with no data"),
    }
}

/// A failed lookup in c-ares' terms: NXDOMAIN and NODATA are completed queries without records, the rest failures
/// (reasons are `ares_strerror` texts, which Envoy puts in the details).
fn failed_lookup(error: &hickory_resolver::net::NetError) -> Resolution {
    use hickory_resolver::net::{DnsError, NetError};
    use hickory_resolver::proto::op::ResponseCode;
    if error.is_nx_domain() {
        return Resolution::no_records("Domain name not found");
    }
    if error.is_no_records_found() {
        return Resolution::no_records("DNS server returned answer with no data");
    }
    let reason = match error {
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            "DNS server returned general failure"
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => "DNS server refused query",
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NotImp)) => {
            "DNS server does not implement requested operation"
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::FormErr)) => {
            "DNS server claims query was misformatted"
        }
        NetError::Timeout => "Timeout while contacting DNS servers",
        _ => "Could not contact DNS servers",
    };
    Resolution::failure(format!("cares_failure:{reason}"))
}

fn build_resolver(config: &DnsCacheConfig) -> Result<TokioResolver, DnsCacheError> {
    let resolver_config = if config.resolvers.is_empty() {
        system_config(config)?
    } else if config.use_resolvers_as_fallback {
        // c-ares: the system's name servers first; `resolvers` only when there are none.
        let system = system_config(config)?;
        if system.name_servers().is_empty() {
            configured(config)
        } else {
            system
        }
    } else {
        configured(config)
    };
    let mut options = ResolverOpts::default();
    options.ip_strategy = match config.lookup_family {
        LookupFamily::V4Only => LookupIpStrategy::Ipv4Only,
        LookupFamily::V6Only => LookupIpStrategy::Ipv6Only,
        LookupFamily::Auto => LookupIpStrategy::Ipv6thenIpv4,
        LookupFamily::V4Preferred => LookupIpStrategy::Ipv4thenIpv6,
        LookupFamily::All => LookupIpStrategy::Ipv4AndIpv6,
    };
    // This cache decides when to refresh; the resolver must not answer from a cache of its own.
    options.cache_size = 0;
    // The cache's dns_query_timeout decides when a query has failed; the resolver must not give up earlier.
    options.timeout = config.query_timeout + Duration::from_secs(1);
    options.attempts = 1;
    options.ndots = 0;
    options.use_hosts_file = ResolveHosts::Never;
    let mut builder =
        TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default());
    *builder.options_mut() = options;
    builder.build().map_err(|error| DnsCacheError::Resolver {
        name: config.name.clone(),
        message: error.to_string(),
    })
}

fn configured(config: &DnsCacheConfig) -> ResolverConfig {
    let servers = config
        .resolvers
        .iter()
        .map(|address| {
            let mut server = if config.use_tcp {
                NameServerConfig::tcp(address.ip())
            } else {
                NameServerConfig::udp_and_tcp(address.ip())
            };
            for connection in &mut server.connections {
                connection.port = address.port();
            }
            server
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}

fn system_config(config: &DnsCacheConfig) -> Result<ResolverConfig, DnsCacheError> {
    let (resolver_config, _) =
        hickory_resolver::system_conf::read_system_conf().map_err(|error| {
            DnsCacheError::SystemConfig {
                name: config.name.clone(),
                source: std::io::Error::other(error.to_string()),
            }
        })?;
    // Search domains would turn one name into several queries; Envoy's DFP asks for the name as given.
    let (_, _, servers) = resolver_config.into_parts();
    Ok(ResolverConfig::from_name_servers(servers))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host without brackets for names, with brackets kept for v6; port).
pub(crate) fn split_authority(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &authority[..end + 2];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_like_envoy() {
        assert_eq!(
            split_authority("example.test", 80),
            Some(("example.test", 80))
        );
        assert_eq!(
            split_authority("example.test:8080", 80),
            Some(("example.test", 8080))
        );
        assert_eq!(split_authority("[::1]", 443), Some(("[::1]", 443)));
        assert_eq!(split_authority("[::1]:8443", 443), Some(("[::1]", 8443)));
        assert_eq!(split_authority("::1", 80), None);
        assert_eq!(split_authority("a:b", 80), None);
        assert_eq!(split_authority("", 80), None);
        assert_eq!(split_authority("[::1]x", 80), None);
    }
}
