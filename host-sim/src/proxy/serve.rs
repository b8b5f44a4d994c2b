//! What a thread runs: its own event loop serving each configuration generation as it is published — the plugins'
//! VMs, the accept loops, each connection from start to end (as in Envoy), ticks and asynchronous wasm work.
//!
//! The main thread runs the same loop without accepting ([`Role::Main`]): Envoy gives every plugin a VM there too,
//! created first (`ThreadLocal::InstanceImpl::SlotImpl::set` runs the plugin's initializer inline on the main thread
//! after posting it to the workers), whose root context starts, configures, ticks, makes http calls and receives
//! queue notifications like a worker's.
//!
//! A configuration generation on a thread is one [`Worker`]. When a reload publishes a new one, the thread starts it
//! (its VMs, pool and accept loops), stops the old accept loops and tells the old connections to drain: each
//! finishes the request in flight and closes (hyper's graceful shutdown).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::LocalSet;

use crate::vm::PluginHandle;

use super::calls;
use super::closing::DrainedOnClose;
use super::framing;
use super::http::handle;
use super::message::ConnectionInfo;
use super::worker::{Role, Worker};
use super::Shared;

/// The thread's body: serve each configuration generation as it is published, until shutdown. `started` is told
/// once the first generation's VMs have started (or failed to).
pub(crate) fn run(
    index: usize,
    role: Role,
    mut generations: watch::Receiver<Arc<Shared>>,
    mut shutdown: watch::Receiver<bool>,
    started: std::sync::mpsc::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(worker = index, ?role, %error, "cannot start the thread's event loop");
            let _ = started.send(());
            return;
        }
    };
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        let mut current: Option<Generation> = None;
        loop {
            let shared = generations.borrow_and_update().clone();
            match Generation::start(index, role, shared) {
                Ok(next) => {
                    if let Some(previous) = current.replace(next) {
                        previous.retire();
                    }
                }
                // Every plugin was started once before publishing, so this is rare; the thread keeps serving what it
                // has rather than serving nothing.
                Err(error) => {
                    tracing::error!(worker = index, ?role, %error, "cannot start the new configuration on this thread")
                }
            }
            let _ = started.send(());
            tokio::select! {
                changed = generations.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
    });
}

/// One configuration generation on this worker: its `Worker` and its accept loops.
struct Generation {
    worker: Rc<Worker>,
    accepting: Vec<tokio::task::JoinHandle<()>>,
}

impl Generation {
    fn start(index: usize, role: Role, shared: Arc<Shared>) -> anyhow::Result<Generation> {
        let mut plugins = Vec::with_capacity(shared.plugins.len());
        for slot in &shared.plugins {
            if slot.main_only && role == Role::Worker {
                plugins.push(None);
                continue;
            }
            let instance = slot
                .factory
                .instantiate()
                .map_err(|error| anyhow::anyhow!("plugin {}: {error}", slot.name))?;
            plugins.push(Some(RefCell::new(PluginHandle::new(
                instance,
                slot.policy,
                slot.reload_backoff,
            ))));
        }
        let sockets = match role {
            Role::Main => &[][..],
            Role::Worker => &shared.sockets[..],
        };
        let listeners = sockets
            .iter()
            .map(|socket| {
                socket
                    .try_clone()
                    .and_then(tokio::net::TcpListener::from_std)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| anyhow::anyhow!("cannot use a listen socket: {error}"))?;
        let worker = Rc::new(Worker::new(shared.clone(), index, plugins));
        for slot in (0..shared.plugins.len()).filter(|&slot| worker.runs(slot)) {
            tokio::task::spawn_local(tick_loop(Rc::downgrade(&worker), slot));
            tokio::task::spawn_local(async_work_loop(Rc::downgrade(&worker), slot));
        }
        let accepting = listeners
            .into_iter()
            .enumerate()
            .map(|(listener_index, listener)| {
                tokio::task::spawn_local(accept_loop(worker.clone(), listener_index, listener))
            })
            .collect();
        Ok(Generation { worker, accepting })
    }

    /// Stops accepting with this generation and drains its connections.
    fn retire(self) {
        for accept in &self.accepting {
            accept.abort();
        }
        self.worker.drain();
    }
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
    let listener = &worker.shared.listeners[listener_index];
    listener.stats.downstream_cx_total.add(1);
    let id = worker.next_connection_id();
    let stream = DrainedOnClose(stream);
    let Some(tls) = &listener.tls else {
        let connection = Rc::new(ConnectionInfo {
            id,
            peer,
            local,
            listener: listener_index,
            tls: None,
        });
        return serve_http(worker, connection, stream).await;
    };
    // A failed handshake closes the connection before any stream exists, as Envoy's TLS transport socket does.
    let (stream, facts) = match tls.accept(stream).await {
        Ok(accepted) => accepted,
        Err(error) => {
            tracing::debug!(%error, %peer, "TLS handshake failed");
            return;
        }
    };
    let connection = Rc::new(ConnectionInfo {
        id,
        peer,
        local,
        listener: listener_index,
        tls: Some(std::sync::Arc::new(facts)),
    });
    serve_http(worker, connection, stream).await;
}

/// The HTTP/1 server on one accepted (and, on a TLS listener, handshaken) connection.
async fn serve_http<S>(worker: Rc<Worker>, connection: Rc<ConnectionInfo>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let listener_index = connection.listener;
    let peer = connection.peer;
    let mut draining = worker.draining();
    let service = {
        let worker = worker.clone();
        service_fn(move |request| handle(worker.clone(), connection.clone(), request))
    };
    let connection = http1_settings(&worker.shared.listeners[listener_index].config.http)
        .serve_connection(TokioIo::new(framing::GuardedStream::new(stream)), service)
        .with_upgrades();
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = draining.wait_for(|drain| *drain) => {
            // A newer configuration took over: finish the request in flight, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, %peer, "downstream connection ended with an error");
    }
}

/// Envoy's default `max_headers_count`: more headers get 431 and the connection closes.
const MAX_HEADERS: usize = 100;
/// With no `request_headers_timeout`, a slow or idle client still cannot pin a connection forever.
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP/1 server as Envoy's codec behaves: a request head (request line, headers, blank line) of at most
/// `max_request_headers_kb` and at most 100 headers, else 431 and the connection closes; the head must arrive
/// within `request_headers_timeout`.
fn http1_settings(
    http: &crate::config::HttpConnectionManager,
) -> hyper::server::conn::http1::Builder {
    let max_head = http.max_request_headers_kb as usize * 1024;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        // Exact: hyper measures the head as Envoy does. The read buffer is larger, so a head just over the limit is
        // read whole and refused by its size.
        .max_header_size(max_head)
        .max_buf_size((max_head + 4096).max(8192))
        .max_headers(MAX_HEADERS)
        // Answer what was asked before the read side ended (a client's half-close, or the framing guard stopping at
        // a refused request) instead of dropping it.
        .half_close(true)
        .header_read_timeout(
            http.request_headers_timeout
                .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
        );
    builder
}

/// The plugin's asynchronous work on this worker: an http call is sent as soon as the guest makes it, whatever the
/// callback (a stream's `on_log`, a root's tick; Envoy's callouts belong to the root context and outlive the
/// stream), and `proxy_on_queue_ready` runs soon after an enqueue on a queue its VM registered, as Envoy posts it to
/// the registering VM's dispatcher (cpp-host `SharedQueue::enqueue`). The signals are read again each round: a
/// reloaded VM has new ones.
async fn async_work_loop(worker: Weak<Worker>, slot: usize) {
    loop {
        let Some((inbox, calls)) = worker.upgrade().map(|worker| {
            let plugin = worker.plugin(slot).borrow();
            (plugin.queue_inbox(), plugin.calls_dispatched())
        }) else {
            return;
        };
        tokio::select! {
            _ = inbox.arrived() => {}
            _ = calls.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let Some(worker) = worker.upgrade() else {
            return;
        };
        if worker.plugin(slot).borrow().has_queue_ready() {
            let result = worker.plugin(slot).borrow_mut().deliver_queue_ready();
            if let Err(error) = result {
                tracing::warn!(plugin = %worker.shared.plugins[slot].name, %error, "proxy_on_queue_ready failed");
            }
        }
        calls::dispatch(&worker, slot);
        worker.wasm_progress.notify_waiters();
    }
}

/// Delivers `proxy_on_tick` at the period the plugin asked for, for as long as anything still uses this generation's
/// worker. As Envoy's timer (`Wasm::setTimerPeriod`, `Wasm::tickHandler`): each time the guest sets the period the
/// next tick is one period from then, and after a tick the next is one period after it returned.
async fn tick_loop(worker: Weak<Worker>, slot: usize) {
    // The period is also read again every 100 ms: a reloaded VM has a new signal to wait on.
    const RECHECK: Duration = Duration::from_millis(100);
    let mut armed_at = tokio::time::Instant::now();
    loop {
        let Some((period, period_set)) = worker.upgrade().map(|worker| {
            let plugin = worker.plugin(slot).borrow();
            (plugin.tick_period(), plugin.tick_period_set())
        }) else {
            return;
        };
        let wait = match period {
            None => RECHECK,
            Some(period) => {
                let due = armed_at + period;
                let now = tokio::time::Instant::now();
                if now >= due {
                    let Some(worker) = worker.upgrade() else {
                        return;
                    };
                    let result = worker.plugin(slot).borrow_mut().tick();
                    if let Err(error) = result {
                        tracing::warn!(plugin = %worker.shared.plugins[slot].name, %error, "proxy_on_tick failed");
                    }
                    armed_at = tokio::time::Instant::now();
                    calls::dispatch(&worker, slot);
                    worker.wasm_progress.notify_waiters();
                    continue;
                }
                (due - now).min(RECHECK)
            }
        };
        tokio::select! {
            // Set (again) by the guest, perhaps from the tick itself: re-armed from now.
            _ = period_set.notified() => armed_at = tokio::time::Instant::now(),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
