//! A worker thread: its own event loop, its own VM instance of every plugin, its own upstream connection pool.
//! Connections accepted on the shared listen sockets are served here from start to end, as in Envoy.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};
use tokio::task::LocalSet;

use crate::dfp::upstream::ConnectionPool;
use crate::vm::PluginHandle;

use super::http::{handle, ConnectionInfo, UpstreamBody};
use super::Shared;

pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    pub index: usize,
    /// One VM per plugin, with the plugin's failure policy.
    plugins: Vec<RefCell<PluginHandle>>,
    pub pool: Rc<ConnectionPool<UpstreamBody>>,
    /// Signalled whenever asynchronous wasm work (an http call answer, a tick) ran on this worker, so paused
    /// streams re-check whether they were resumed.
    pub wasm_progress: Notify,
    next_connection_id: std::cell::Cell<u64>,
}

impl Worker {
    pub fn plugin(&self, slot: usize) -> &RefCell<PluginHandle> {
        &self.plugins[slot]
    }

    fn next_connection_id(&self) -> u64 {
        // Unique across workers: the worker index in the low bits, as Envoy's ids are process-unique.
        let id = self.next_connection_id.get();
        self.next_connection_id.set(id + 1);
        id * 64 + self.index as u64
    }
}

/// The worker thread's body: build the worker, accept on every listener until shutdown.
pub(crate) fn run(
    index: usize,
    shared: Arc<Shared>,
    sockets: Vec<std::net::TcpListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(worker = index, %error, "cannot start the worker's event loop");
            return;
        }
    };
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        let mut plugins = Vec::with_capacity(shared.plugins.len());
        for slot in &shared.plugins {
            match slot.factory.instantiate() {
                Ok(instance) => plugins.push(RefCell::new(PluginHandle::new(
                    instance,
                    slot.policy,
                    slot.reload_backoff,
                ))),
                Err(error) => {
                    tracing::error!(worker = index, plugin = %slot.name, %error, "cannot start the plugin on this worker");
                    return;
                }
            }
        }
        let worker = Rc::new(Worker {
            shared: shared.clone(),
            index,
            plugins,
            pool: Rc::new(ConnectionPool::default()),
            wasm_progress: Notify::new(),
            next_connection_id: std::cell::Cell::new(1),
        });
        for slot in 0..shared.plugins.len() {
            tokio::task::spawn_local(tick_loop(worker.clone(), slot));
        }
        for (listener_index, socket) in sockets.into_iter().enumerate() {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => {
                    tokio::task::spawn_local(accept_loop(worker.clone(), listener_index, listener));
                }
                Err(error) => tracing::error!(worker = index, %error, "cannot use the listen socket"),
            }
        }
        let _ = shutdown.wait_for(|stop| *stop).await;
    });
}

async fn accept_loop(worker: Rc<Worker>, listener_index: usize, listener: tokio::net::TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = stream.local_addr().unwrap_or(peer);
        let _ = stream.set_nodelay(true);
        let worker = worker.clone();
        tokio::task::spawn_local(serve_connection(
            worker,
            listener_index,
            stream,
            peer,
            local,
        ));
    }
}

async fn serve_connection(
    worker: Rc<Worker>,
    listener_index: usize,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let prefix = worker.shared.listeners[listener_index]
        .config
        .http
        .stat_prefix
        .clone();
    worker
        .shared
        .stats
        .define(
            crate::types::MetricKind::Counter,
            &format!("http.{prefix}.downstream_cx_total"),
        )
        .add(1);
    let connection = Rc::new(ConnectionInfo {
        id: worker.next_connection_id(),
        peer,
        local,
        listener: listener_index,
    });
    let service = {
        let worker = worker.clone();
        service_fn(move |request| handle(worker.clone(), connection.clone(), request))
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        // Envoy's default header read timeout is none, but a slow client must not pin a connection forever.
        .header_read_timeout(Duration::from_secs(60))
        .max_buf_size(64 * 1024 + 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, %peer, "downstream connection ended with an error");
    }
}

/// Delivers `proxy_on_tick` at the period the plugin asked for (it may change or stop it at any time).
async fn tick_loop(worker: Rc<Worker>, slot: usize) {
    loop {
        let period = worker.plugin(slot).borrow().tick_period();
        match period {
            None => tokio::time::sleep(Duration::from_millis(100)).await,
            Some(period) => {
                tokio::time::sleep(period).await;
                let result = worker.plugin(slot).borrow_mut().tick();
                if let Err(error) = result {
                    tracing::warn!(plugin = %worker.shared.plugins[slot].name, %error, "proxy_on_tick failed");
                }
                super::calls::dispatch(&worker, slot);
                worker.wasm_progress.notify_waiters();
            }
        }
    }
}
