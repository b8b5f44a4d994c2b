//! The small Envoy around the wasm host: listeners, the HTTP connection manager's filter chain (wasm →
//! dynamic_forward_proxy → router), routes, DFP and static clusters, upstream filters, Envoy's local replies.
//!
//! Threads: like Envoy, `concurrency` workers each run their own event loop (a current-thread tokio runtime) with
//! their own VM instance of every plugin and their own upstream connection pools; a main runtime runs DNS
//! resolutions and the admin endpoint.

pub(crate) mod access_log;
mod body;
mod calls;
mod http;
mod local_reply;
mod route;
mod tunnel;
mod wasm_chain;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::sync::watch;

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
}

pub(crate) struct ClusterRuntime {
    pub config: Cluster,
    pub name: Arc<str>,
    pub tls: Option<UpstreamTls>,
    /// The DNS cache a DFP cluster takes its hosts from.
    pub dns_cache: Option<DnsCache>,
    pub upstream_slots: Vec<usize>,
    /// Round-robin position for STATIC clusters.
    pub next_endpoint: AtomicUsize,
}

impl ClusterRuntime {
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
    /// Shared data, queues and custom metrics of the wasm plugins.
    pub wasm: SharedState,
    /// Addresses host-sim itself listens on: never proxied to.
    pub own_addresses: Vec<SocketAddr>,
}

/// A running proxy: its bound addresses, and the handle that stops it.
pub struct RunningProxy {
    pub listeners: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub stats: Arc<MetricsStore>,
    pub wasm: SharedState,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    main_runtime: Option<tokio::runtime::Runtime>,
}

impl RunningProxy {
    /// Stops accepting, lets the workers end, and waits for them.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    /// Blocks until the proxy stops (it stops only when `stop` is called from elsewhere or the process ends).
    pub fn wait(mut self) {
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }

    fn stop_inner(&mut self) {
        let _ = self.shutdown.send(true);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        if let Some(runtime) = self.main_runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Loads what `bootstrap` needs: wasm plugins (started once, so a plugin refusing its configuration is reported
/// here), DNS caches, TLS contexts and access logs.
struct Loaded {
    listeners: Vec<ListenerRuntime>,
    clusters: HashMap<String, Arc<ClusterRuntime>>,
    plugins: Vec<PluginSlot>,
    stats: Arc<MetricsStore>,
    wasm: SharedState,
}

fn load(
    bootstrap: &Bootstrap,
    options: &ProxyOptions,
    main: &tokio::runtime::Handle,
) -> anyhow::Result<Loaded> {
    let stats = Arc::new(MetricsStore::new());
    let wasm = SharedState::new();
    let runtime = Runtime::new().context("starting the wasm engine")?;

    let mut caches: HashMap<String, DnsCache> = HashMap::new();
    let mut cache_for = |config: &crate::config::DnsCacheConfig| -> anyhow::Result<DnsCache> {
        if let Some(cache) = caches.get(&config.name) {
            return Ok(cache.clone());
        }
        let cache = DnsCache::new(config.clone(), main.clone(), &stats)?;
        caches.insert(config.name.clone(), cache.clone());
        Ok(cache)
    };

    let cluster_names: Vec<String> = bootstrap.clusters.iter().map(|c| c.name.clone()).collect();
    let mut plugins = Vec::new();
    let mut load_plugin = |plugin: &WasmPlugin, where_: &str| -> anyhow::Result<usize> {
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
        // Envoy creates the plugin's reload counters with the plugin, so they read 0 before any reload.
        for event in [
            crate::vm::ReloadEvent::Backoff,
            crate::vm::ReloadEvent::Success,
            crate::vm::ReloadEvent::Failure,
        ] {
            stats.define(
                crate::types::MetricKind::Counter,
                &format!("wasm.{}.{}", plugin.name, event.stat_name()),
            );
        }
        plugins.push(PluginSlot {
            factory,
            policy: plugin.failure_policy,
            reload_backoff: plugin.reload_backoff,
            name: plugin.name.clone(),
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
        for (f, filter) in cluster.upstream.http_filters.iter().enumerate() {
            if let HttpFilter::Wasm(plugin) = filter {
                upstream_slots.push(load_plugin(
                    plugin,
                    &format!("{path}.typed_extension_protocol_options.http_filters[{f}]"),
                )?);
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
                next_endpoint: AtomicUsize::new(0),
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
                    )?;
                    wasm_slots.push(slot);
                    filters.push(DownstreamFilter::Wasm);
                }
                HttpFilter::DynamicForwardProxy(dfp) => {
                    filters.push(DownstreamFilter::DynamicForwardProxy(cache_for(
                        &dfp.dns_cache,
                    )?));
                }
                HttpFilter::Router | HttpFilter::UpstreamCodec => {}
            }
        }
        let access_logs = listener
            .http
            .access_logs
            .iter()
            .map(|log| access_log::AccessLogWriter::open(&log.path, &log.format))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| anyhow::anyhow!("{}.access_log: {message}", listener.hcm_path()))?;
        listeners.push(ListenerRuntime {
            config: listener.clone(),
            filters,
            wasm_slots,
            access_logs,
        });
    }

    Ok(Loaded {
        listeners,
        clusters,
        plugins,
        stats,
        wasm,
    })
}

/// Checks a configuration the way `envoy --mode validate` does: everything loads and every plugin starts.
pub fn validate(bootstrap: &Bootstrap, options: &ProxyOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for validation")?;
    load(bootstrap, options, runtime.handle()).map(|_| ())
}

/// Loads the plugins and caches of `bootstrap`, binds its listeners and admin address, and starts the workers.
/// Every error here (a missing `.wasm`, a plugin refusing its configuration, a port in use) is reported with the
/// part of the configuration at fault; nothing is served until everything loaded.
pub fn start(bootstrap: &Bootstrap, options: &ProxyOptions) -> anyhow::Result<RunningProxy> {
    let main_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("host-sim-main")
        .enable_all()
        .build()
        .context("starting the main runtime")?;
    let Loaded {
        listeners,
        clusters,
        plugins,
        stats,
        wasm,
    } = load(bootstrap, options, main_runtime.handle())?;

    // Bind everything before serving anything: a port in use is a startup error.
    let mut sockets = Vec::new();
    for listener in &bootstrap.listeners {
        let socket = std::net::TcpListener::bind(listener.address).with_context(|| {
            format!(
                "listener {:?}: cannot bind {}",
                listener.name, listener.address
            )
        })?;
        socket.set_nonblocking(true)?;
        sockets.push(socket);
    }
    let bound: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?;
    let admin_socket = match bootstrap.admin {
        Some(address) => {
            let socket = std::net::TcpListener::bind(address)
                .with_context(|| format!("admin: cannot bind {address}"))?;
            socket.set_nonblocking(true)?;
            Some(socket)
        }
        None => None,
    };
    let admin = admin_socket.as_ref().map(|s| s.local_addr()).transpose()?;
    let mut own_addresses = bound.clone();
    own_addresses.extend(admin);

    let shared = Arc::new(Shared {
        listeners,
        clusters,
        plugins,
        stats: stats.clone(),
        wasm: wasm.clone(),
        own_addresses,
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    if let Some(socket) = admin_socket {
        let shared = shared.clone();
        let shutdown_rx = shutdown_rx.clone();
        main_runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => crate::admin::serve(listener, shared, shutdown_rx).await,
                Err(error) => tracing::error!(%error, "admin listener failed"),
            }
        });
    }

    let mut workers = Vec::new();
    for index in 0..options.concurrency.max(1) {
        let sockets = sockets
            .iter()
            .map(|s| s.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .context("sharing the listen sockets with a worker")?;
        let shared = shared.clone();
        let shutdown_rx = shutdown_rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("host-sim-worker-{index}"))
            .spawn(move || worker::run(index, shared, sockets, shutdown_rx))
            .context("starting a worker thread")?;
        workers.push(handle);
    }
    tracing::info!(listeners = ?bound, admin = ?admin, workers = workers.len(), "host-sim is serving");
    Ok(RunningProxy {
        listeners: bound,
        admin,
        stats,
        wasm,
        shutdown,
        workers,
        main_runtime: Some(main_runtime),
    })
}
