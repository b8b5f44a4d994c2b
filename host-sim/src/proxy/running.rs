//! A running proxy and its configuration generations.
//!
//! `start` loads a bootstrap, binds every socket and starts the workers on the first generation (one [`Shared`]).
//! `RunningProxy::reload` loads a new bootstrap beside it: if anything fails to load (a field host-sim does not
//! implement, a missing `.wasm`, a plugin refusing its configuration, a port it cannot bind), the reload is
//! refused and the running generation keeps serving, untouched. Otherwise the workers switch to the new
//! generation: they accept new connections with it, while connections of the old one finish what they are doing
//! (the request in flight, a CONNECT tunnel) and are then closed, as Envoy drains listeners it replaces.
//! Listen sockets whose configured address did not change are carried over, so no connection attempt is refused
//! during a reload. Stats, the wasm plugins' shared data and unchanged DNS caches carry over too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::{Bootstrap, Listener};
use crate::shared::{MetricsStore, SharedState};
use crate::vm::Runtime;

use super::worker::Role;
use super::{load, serve, Carried, Loaded, ProxyOptions, Shared};

/// A running proxy: its bound addresses, the handle that reloads it, and the one that stops it.
pub struct RunningProxy {
    /// Where the listeners of the current configuration are bound, in configuration order.
    pub listeners: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub stats: Arc<MetricsStore>,
    pub wasm: SharedState,
    options: ProxyOptions,
    /// The admin address as configured (a reload may not move it).
    admin_config: Option<SocketAddr>,
    generations: watch::Sender<Arc<Shared>>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    main_runtime: Option<tokio::runtime::Runtime>,
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
    let stats = Arc::new(MetricsStore::new());
    let wasm = SharedState::new();
    let loaded = load(
        bootstrap,
        options,
        main_runtime.handle(),
        &Carried {
            stats: &stats,
            wasm: &wasm,
            caches: &HashMap::new(),
            engine: &Runtime::new().context("starting the wasm engine")?,
        },
        true,
    )?;

    // Bind everything before serving anything: a port in use is a startup error.
    let sockets = bootstrap
        .listeners
        .iter()
        .map(bind_listener)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let admin_socket = match bootstrap.admin {
        Some(address) => {
            Some(bind(address).with_context(|| format!("admin: cannot bind {address}"))?)
        }
        None => None,
    };
    let admin = admin_socket.as_ref().map(|s| s.local_addr()).transpose()?;
    let shared = generation(loaded, sockets, admin, &stats)?;
    let bound = bound_addresses(&shared)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    if let Some(socket) = admin_socket {
        let (stats, wasm) = (stats.clone(), wasm.clone());
        let shutdown_rx = shutdown_rx.clone();
        main_runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => crate::admin::serve(listener, stats, wasm, shutdown_rx).await,
                Err(error) => tracing::error!(%error, "admin listener failed"),
            }
        });
    }

    let (generations, generations_rx) = watch::channel(shared);
    let concurrency = options.concurrency.max(1);
    let mut workers = Vec::new();
    // The main thread's VMs start before any worker's, as Envoy creates them inline while it posts the workers'
    // (`ThreadLocal::InstanceImpl::SlotImpl::set`): their on_vm_start, queue registrations and shared-data writes
    // come first.
    let threads = std::iter::once((concurrency, Role::Main))
        .chain((0..concurrency).map(|index| (index, Role::Worker)));
    for (index, role) in threads {
        let generations_rx = generations_rx.clone();
        let shutdown_rx = shutdown_rx.clone();
        let (started, started_rx) = std::sync::mpsc::channel();
        let name = match role {
            Role::Main => "host-sim-main-vms".to_string(),
            Role::Worker => format!("host-sim-worker-{index}"),
        };
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || serve::run(index, role, generations_rx, shutdown_rx, started))
            .context("starting a worker thread")?;
        if role == Role::Main {
            // An error is logged by the thread; the workers start either way.
            let _ = started_rx.recv();
        }
        workers.push(handle);
    }
    tracing::info!(listeners = ?bound, admin = ?admin, workers = concurrency, "host-sim is serving");
    Ok(RunningProxy {
        listeners: bound,
        admin,
        stats,
        wasm,
        options: options.clone(),
        admin_config: bootstrap.admin,
        generations,
        shutdown,
        workers,
        main_runtime: Some(main_runtime),
    })
}

impl RunningProxy {
    /// Replaces the configuration with `bootstrap` (see the module docs). On error nothing changed.
    pub fn reload(&mut self, bootstrap: &Bootstrap) -> anyhow::Result<()> {
        if bootstrap.admin != self.admin_config {
            anyhow::bail!(
                "admin.address: changed from {:?} to {:?}; moving the admin interface needs a restart",
                self.admin_config,
                bootstrap.admin
            );
        }
        let runtime = self
            .main_runtime
            .as_ref()
            .context("the proxy is stopped")?
            .handle()
            .clone();
        let current = self.generations.borrow().clone();
        let loaded = load(
            bootstrap,
            &self.options,
            &runtime,
            &Carried {
                stats: &self.stats,
                wasm: &self.wasm,
                caches: &current.caches,
                engine: &Runtime::new().context("starting the wasm engine")?,
            },
            true,
        )?;
        let sockets = bootstrap
            .listeners
            .iter()
            .map(|listener| match carried_socket(&current, listener) {
                Some(socket) => socket
                    .try_clone()
                    .with_context(|| format!("listener {:?}: keeping its socket", listener.name)),
                None => bind_listener(listener),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let shared = generation(loaded, sockets, self.admin, &self.stats)?;
        self.listeners = bound_addresses(&shared)?;
        self.generations.send_replace(shared);
        tracing::info!(listeners = ?self.listeners, "configuration reloaded");
        Ok(())
    }

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

/// The socket of the running generation's listener with the same configured address, if any.
fn carried_socket<'a>(
    current: &'a Shared,
    listener: &Listener,
) -> Option<&'a std::net::TcpListener> {
    current
        .listeners
        .iter()
        .zip(&current.sockets)
        .find(|(running, _)| running.config.address == listener.address)
        .map(|(_, socket)| socket)
}

fn bind_listener(listener: &Listener) -> anyhow::Result<std::net::TcpListener> {
    bind(listener.address).with_context(|| {
        format!(
            "listener {:?}: cannot bind {}",
            listener.name, listener.address
        )
    })
}

fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = std::net::TcpListener::bind(address)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn bound_addresses(shared: &Shared) -> anyhow::Result<Vec<SocketAddr>> {
    shared
        .sockets
        .iter()
        .map(|socket| socket.local_addr().context("reading a bound address"))
        .collect()
}

fn generation(
    loaded: Loaded,
    sockets: Vec<std::net::TcpListener>,
    admin: Option<SocketAddr>,
    stats: &Arc<MetricsStore>,
) -> anyhow::Result<Arc<Shared>> {
    let Loaded {
        listeners,
        clusters,
        plugins,
        caches,
    } = loaded;
    let mut own_addresses = sockets
        .iter()
        .map(|socket| socket.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    own_addresses.extend(admin);
    Ok(Arc::new(Shared {
        listeners,
        clusters,
        plugins,
        stats: stats.clone(),
        own_addresses,
        sockets,
        caches,
    }))
}
