//! One configuration generation on one thread: its VM instance of every plugin, its upstream connection pool, and
//! the signal that tells its connections to drain. The loops that run on a thread (accepting, serving, ticks and
//! asynchronous wasm work) are in `serve`; whatever holds a `Worker` (connections, CONNECT tunnels, bodies) keeps its
//! VMs alive until it ends.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::dfp::upstream::ConnectionPool;
use crate::vm::PluginHandle;

use super::message::UpstreamBody;

use super::Shared;

/// What a thread running `serve::run` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Envoy's main thread: the plugins' VMs and their root contexts, no connections.
    Main,
    /// A worker: the plugins' VMs and the connections it accepts.
    Worker,
}

pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    pub index: usize,
    /// One VM per plugin, with the plugin's failure policy; `None` for a singleton wasm service on a worker (it runs
    /// on the main thread only).
    plugins: Vec<Option<RefCell<PluginHandle>>>,
    pub pool: Rc<ConnectionPool<UpstreamBody>>,
    /// Signalled whenever asynchronous wasm work (an http call answer, a tick) ran on this worker, so paused
    /// streams re-check whether they were resumed.
    pub wasm_progress: Notify,
    next_connection_id: std::cell::Cell<u64>,
    /// Set when a newer generation took over: this one's connections finish their request and close.
    draining: watch::Sender<bool>,
}

/// A generation's VMs end with it, on its thread: each root context gets `proxy_on_done`, then `proxy_on_delete` once
/// it is done (cpp-host `WasmBase::startShutdown`, run when Envoy destroys a VM's last handle: at exit, and after a
/// reload once the old configuration's last stream ended).
impl Drop for Worker {
    fn drop(&mut self) {
        for (slot, plugin) in self.plugins.iter().enumerate() {
            let Some(plugin) = plugin else {
                continue;
            };
            if plugin.borrow().failure().is_some() {
                continue;
            }
            if let Err(error) = plugin.borrow_mut().shutdown() {
                tracing::warn!(plugin = %self.shared.plugins[slot].name, %error, "shutting the plugin's VM down failed");
            }
        }
    }
}

impl Worker {
    /// The VM of `slot` on this thread. Streams and the calls they make name filters only, which every thread runs;
    /// the loops of a singleton service are started on the main thread only.
    pub fn plugin(&self, slot: usize) -> &RefCell<PluginHandle> {
        self.plugins[slot]
            .as_ref()
            .expect("only the main thread reaches a singleton wasm service")
    }

    /// A generation's state on a thread, with one VM (`None`: not on this thread) per plugin slot.
    pub fn new(
        shared: Arc<Shared>,
        index: usize,
        plugins: Vec<Option<RefCell<PluginHandle>>>,
    ) -> Worker {
        Worker {
            shared,
            index,
            plugins,
            pool: Rc::new(ConnectionPool::default()),
            wasm_progress: Notify::new(),
            next_connection_id: std::cell::Cell::new(1),
            draining: watch::channel(false).0,
        }
    }

    /// Whether `slot`'s VM runs on this thread.
    pub fn runs(&self, slot: usize) -> bool {
        self.plugins.get(slot).is_some_and(Option::is_some)
    }

    pub fn next_connection_id(&self) -> u64 {
        // Unique across workers: the worker index in the low bits, as Envoy's ids are process-unique.
        let id = self.next_connection_id.get();
        self.next_connection_id.set(id + 1);
        id * 64 + self.index as u64
    }

    /// Tells this generation's connections to finish the request in flight and close.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Becomes true once [`Worker::drain`] was called.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }
}
