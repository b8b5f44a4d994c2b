//! The small Envoy around the wasm host: listeners, the HTTP connection manager's filter chain (wasm →
//! dynamic_forward_proxy → router), routes, DFP and static clusters, upstream filters, Envoy's local replies.
//!
//! Threads: like Envoy, `concurrency` workers each run their own event loop (a current-thread tokio runtime) with
//! their own VM instance of every plugin and their own upstream connection pools; a main runtime runs DNS
//! resolutions and the admin endpoint. A reload builds a new [`Shared`] generation beside the old one (see
//! `running.rs`).

pub(crate) mod access_log;
mod body;
mod calls;
mod closing;
// The read-side framing guard on every downstream connection (`serve`).
mod framing;
mod http;
mod listener_tls;
mod local_reply;
mod message;
mod own_address;
mod rbac;
mod reason;
mod request_id;
mod route;
mod running;
mod serve;
mod stats;
mod tunnel;
mod wasm_chain;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{
    Bootstrap, Cluster, ClusterKind, FailurePolicy, HttpFilter, Listener, WasmPlugin,
};
use crate::dfp::dns_cache::DnsCache;
use crate::dfp::tls::UpstreamTls;
use crate::dfp::upstream::ConnectOptions;
use crate::shared::{MetricsStore, SharedState};
use crate::types::LogLevel;
use crate::vm::{PluginConfig, PluginFactory, Runtime};

pub use local_reply::EnvoyReply;
pub use running::{start, RunningProxy};

/// How to run the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Worker threads (Envoy's `--concurrency`).
    pub concurrency: usize,
    /// The level wasm plugins see through `proxy_get_log_level`.
    pub wasm_log_level: LogLevel,
    /// How long one call into a wasm plugin may run before it is interrupted and fails like a trap (`None`:
    /// unbounded, as in Envoy, where a looping plugin holds its worker forever).
    pub wasm_call_deadline: Option<std::time::Duration>,
    /// The most linear memory one wasm VM may grow to; growing past it traps (`None`: wasm32's 4 GiB).
    pub wasm_memory_limit: Option<usize>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            wasm_log_level: LogLevel::Info,
            wasm_call_deadline: Some(crate::vm::DEFAULT_CALL_DEADLINE),
            wasm_memory_limit: Some(crate::vm::DEFAULT_MEMORY_LIMIT),
        }
    }
}

/// One loaded wasm plugin: its factory (shared by all workers) and how to treat its failures.
pub(crate) struct PluginSlot {
    pub factory: Arc<PluginFactory>,
    pub policy: FailurePolicy,
    /// `reload_config.backoff.base_interval` for `FAIL_RELOAD`.
    pub reload_backoff: std::time::Duration,
    pub name: String,
    /// A singleton wasm service: a VM on the main thread only.
    pub main_only: bool,
}

/// A downstream filter of a listener, resolved against the loaded plugins and caches.
pub(crate) enum DownstreamFilter {
    Wasm,
    DynamicForwardProxy(DnsCache),
}

pub(crate) struct ListenerRuntime {
    pub config: Listener,
    pub filters: Vec<DownstreamFilter>,
    /// The wasm slots among `filters`, in order (one context each per request).
    pub wasm_slots: Vec<usize>,
    pub access_logs: Vec<access_log::AccessLogWriter>,
    pub stats: stats::ListenerStats,
    /// TLS termination, when the filter chain has a `DownstreamTlsContext`.
    pub tls: Option<listener_tls::ListenerTlsRuntime>,
}

pub(crate) struct ClusterRuntime {
    pub config: Cluster,
    pub name: Arc<str>,
    pub tls: Option<UpstreamTls>,
    /// The DNS cache a DFP cluster takes its hosts from.
    pub dns_cache: Option<DnsCache>,
    pub upstream_slots: Vec<usize>,
    /// Upstream RBAC filters: they judge the selected host before any connection, whatever their position.
    pub upstream_rbac: Vec<crate::config::RbacConfig>,
    /// Round-robin position for STATIC clusters.
    pub next_endpoint: AtomicUsize,
    pub stats: stats::ClusterStats,
}

impl ClusterRuntime {
    /// A STATIC cluster's next endpoint, round robin; none for a cluster without endpoints (Envoy loads it, and
    /// answers its requests `no healthy upstream`).
    pub fn next_static_endpoint(&self, endpoints: &[SocketAddr]) -> Option<SocketAddr> {
        let next = self
            .next_endpoint
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        endpoints.get(next.checked_rem(endpoints.len())?).copied()
    }

    pub fn connect_options(&self) -> ConnectOptions<'_> {
        ConnectOptions {
            timeout: self.config.connect_timeout,
            bind: self.config.bind,
            tls: self.tls.as_ref(),
        }
    }

    /// The port a DFP host gets when the request names none: 443 for TLS clusters, as Envoy.
    pub fn default_port(&self) -> u16 {
        if self.tls.is_some() {
            443
        } else {
            80
        }
    }
}

/// Everything the workers share, built once from the bootstrap.
pub(crate) struct Shared {
    pub listeners: Vec<ListenerRuntime>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    pub plugins: Vec<PluginSlot>,
    /// Envoy-named stats (`http.*`, `cluster.*`, `dns_cache.*`).
    pub stats: Arc<MetricsStore>,
    /// Addresses host-sim itself listens on: never proxied to.
    pub own_addresses: Vec<SocketAddr>,
    /// The bound listen sockets, one per entry of `listeners`; each worker accepts on its own duplicate.
    pub sockets: Vec<std::net::TcpListener>,
    /// The DNS caches by name, kept by a reload that configures them the same way.
    pub caches: HashMap<String, DnsCache>,
}

/// Loads what `bootstrap` needs: wasm plugins (started once, so a plugin refusing its configuration is reported
/// here), DNS caches, TLS contexts and access logs.
struct Loaded {
    listeners: Vec<ListenerRuntime>,
    clusters: HashMap<String, Arc<ClusterRuntime>>,
    plugins: Vec<PluginSlot>,
    caches: HashMap<String, DnsCache>,
}

/// What outlives a reload: stats, the wasm plugins' shared data and metrics, and DNS caches whose configuration
/// did not change (their hosts stay resolved).
struct Carried<'a> {
    stats: &'a Arc<MetricsStore>,
    wasm: &'a SharedState,
    caches: &'a HashMap<String, DnsCache>,
    /// The wasm engine and its compiled modules: a reload gets a new one, validations share one.
    engine: &'a Runtime,
}

fn load(
    bootstrap: &Bootstrap,
    options: &ProxyOptions,
    main: &tokio::runtime::Handle,
    carried: &Carried<'_>,
    starts_services: bool,
) -> anyhow::Result<Loaded> {
    let Carried {
        stats,
        wasm,
        engine: runtime,
        ..
    } = *carried;

    let mut caches: HashMap<String, DnsCache> = HashMap::new();
    let mut cache_for = |config: &crate::config::DnsCacheConfig| -> anyhow::Result<DnsCache> {
        if let Some(cache) = caches.get(&config.name) {
            return Ok(cache.clone());
        }
        let cache = match carried.caches.get(&config.name) {
            Some(previous) if previous.config() == config => previous.clone(),
            _ => DnsCache::new(config.clone(), main.clone(), stats)?,
        };
        caches.insert(config.name.clone(), cache.clone());
        Ok(cache)
    };

    let cluster_names: Vec<String> = bootstrap.clusters.iter().map(|c| c.name.clone()).collect();
    let mut plugins = Vec::new();
    let mut load_plugin = |plugin: &WasmPlugin,
                           where_: &str,
                           main_only: bool|
     -> anyhow::Result<usize> {
        let bytes = std::fs::read(&plugin.code).with_context(|| {
            format!("{where_}: cannot read the wasm module {} (relative paths resolve against the working directory)", plugin.code.display())
        })?;
        let config = PluginConfig {
            name: plugin.name.clone(),
            root_id: plugin.root_id.clone(),
            vm_id: plugin.vm_id.clone(),
            configuration: plugin.configuration.clone().into_bytes(),
            vm_configuration: plugin.vm_configuration.clone().into_bytes(),
            log_level: options.wasm_log_level,
            clusters: cluster_names.clone(),
            call_deadline: options.wasm_call_deadline,
            memory_limit: options.wasm_memory_limit,
            ..PluginConfig::default()
        };
        let factory = runtime
            .load(&bytes, config, wasm.clone())
            .with_context(|| {
                format!(
                    "{where_}: wasm plugin {:?} ({})",
                    plugin.name,
                    plugin.code.display()
                )
            })?;
        // Start it once here so a plugin that refuses its configuration stops startup, as Envoy rejects the config.
        factory
            .instantiate()
            .with_context(|| format!("{where_}: wasm plugin {:?} failed to start", plugin.name))?;
        // Envoy creates the plugin's reload counters with the plugin, so they read 0 before any reload; it also
        // declares a plain `vm_reload` that 1.40 never increments.
        let reload_counters = [
            crate::vm::ReloadEvent::Backoff,
            crate::vm::ReloadEvent::Success,
            crate::vm::ReloadEvent::Failure,
        ]
        .map(crate::vm::ReloadEvent::stat_name);
        for name in std::iter::once("vm_reload").chain(reload_counters) {
            stats.define(
                crate::types::MetricKind::Counter,
                &format!("wasm.{}.{name}", plugin.name),
            );
        }
        plugins.push(PluginSlot {
            factory,
            policy: plugin.failure_policy,
            reload_backoff: plugin.reload_backoff,
            name: plugin.name.clone(),
            main_only,
        });
        Ok(plugins.len() - 1)
    };

    let mut clusters = HashMap::new();
    for (index, cluster) in bootstrap.clusters.iter().enumerate() {
        let path = format!("static_resources.clusters[{index}]");
        let tls = cluster
            .tls
            .as_ref()
            .map(|context| UpstreamTls::new(&cluster.name, context, &cluster.upstream))
            .transpose()
            .with_context(|| format!("{path}.transport_socket"))?;
        let dns_cache = match &cluster.kind {
            ClusterKind::DynamicForwardProxy { dns_cache } => Some(cache_for(dns_cache)?),
            ClusterKind::Static { .. } => None,
        };
        let mut upstream_slots = Vec::new();
        let mut upstream_rbac = Vec::new();
        for (f, filter) in cluster.upstream.http_filters.iter().enumerate() {
            match filter {
                HttpFilter::Wasm(plugin) => upstream_slots.push(load_plugin(
                    plugin,
                    &format!("{path}.typed_extension_protocol_options.http_filters[{f}]"),
                    false,
                )?),
                HttpFilter::Rbac(rbac) => upstream_rbac.push(rbac.clone()),
                _ => {}
            }
        }
        clusters.insert(
            cluster.name.clone(),
            Arc::new(ClusterRuntime {
                config: cluster.clone(),
                name: Arc::from(cluster.name.as_str()),
                tls,
                dns_cache,
                upstream_slots,
                upstream_rbac,
                next_endpoint: AtomicUsize::new(0),
                stats: stats::ClusterStats::new(stats, &cluster.name),
            }),
        );
    }

    let mut listeners = Vec::new();
    for listener in &bootstrap.listeners {
        let mut filters = Vec::new();
        let mut wasm_slots = Vec::new();
        for (f, filter) in listener.http.http_filters.iter().enumerate() {
            match filter {
                HttpFilter::Wasm(plugin) => {
                    let slot = load_plugin(
                        plugin,
                        &format!("{}.http_filters[{f}]", listener.hcm_path()),
                        false,
                    )?;
                    wasm_slots.push(slot);
                    filters.push(DownstreamFilter::Wasm);
                }
                HttpFilter::DynamicForwardProxy(dfp) => {
                    filters.push(DownstreamFilter::DynamicForwardProxy(cache_for(
                        &dfp.dns_cache,
                    )?));
                }
                HttpFilter::Router(_) | HttpFilter::UpstreamCodec | HttpFilter::Rbac(_) => {}
            }
        }
        let access_logs = listener
            .http
            .access_logs
            .iter()
            .map(|log| access_log::AccessLogWriter::open(&log.path, &log.format))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| anyhow::anyhow!("{}.access_log: {message}", listener.hcm_path()))?;
        let tls = listener
            .tls
            .as_ref()
            .map(|tls| {
                listener_tls::ListenerTlsRuntime::new(
                    tls,
                    &format!(
                        "static_resources.listeners[{}].filter_chains[0].transport_socket",
                        listener.index
                    ),
                )
            })
            .transpose()?;
        listeners.push(ListenerRuntime {
            tls,
            config: listener.clone(),
            filters,
            wasm_slots,
            access_logs,
            stats: stats::ListenerStats::new(stats, &listener.http.stat_prefix),
        });
    }

    // Wasm services start once the server is up (`WasmServiceExtension::onServerInitialized`), after everything
    // else; `envoy --mode validate` never gets there, so a validation only parses them.
    if starts_services {
        for (index, service) in bootstrap.wasm_services.iter().enumerate() {
            load_plugin(
                &service.plugin,
                &format!("bootstrap_extensions[{index}]"),
                service.singleton,
            )?;
        }
    }

    Ok(Loaded {
        listeners,
        clusters,
        plugins,
        caches,
    })
}

/// Checks a configuration the way `envoy --mode validate` does: everything loads and every plugin starts.
pub fn validate(bootstrap: &Bootstrap, options: &ProxyOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for validation")?;
    // One engine for every validation in the process, so a module is compiled once however many configurations
    // name it (the configuration corpus validates hundreds).
    static ENGINE: std::sync::OnceLock<Result<Runtime, String>> = std::sync::OnceLock::new();
    let engine = ENGINE
        .get_or_init(|| Runtime::new().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("starting the wasm engine: {e}"))?;
    let carried = Carried {
        stats: &Arc::new(MetricsStore::new()),
        wasm: &SharedState::new(),
        caches: &HashMap::new(),
        engine,
    };
    let loaded = load(bootstrap, options, runtime.handle(), &carried, false)?;
    // `envoy --mode validate` starts each plugin twice too: the check VM, then the main thread's
    // (`ThreadLocal::InstanceImpl::SlotImpl::set` runs on the main thread in validation as well).
    for slot in &loaded.plugins {
        slot.factory
            .instantiate()
            .with_context(|| format!("wasm plugin {:?} failed to start", slot.name))?;
    }
    Ok(())
}
