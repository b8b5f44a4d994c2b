//! The data every hostcall reaches through wasmtime's `Caller`: the plugin's settings, the
//! contexts of this VM instance with their stream state, which context is running, and the
//! instance's pending asynchronous work (http calls, tick period, queue inbox). It sits below
//! both the hostcalls (`abi`) and the VM that calls the guest (`vm`), as wasmtime-wasi keeps its
//! state type beside `add_to_linker`: `vm` uses `abi`, never the reverse.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use wasmtime::{Memory, StoreLimits, TypedFunc};

pub(crate) mod memory;
mod plugin_config;

pub use plugin_config::{PluginConfig, DEFAULT_CALL_DEADLINE, DEFAULT_MEMORY_LIMIT};

use crate::headers::HeaderMap;
use crate::shared::metrics::Metric;
use crate::shared::queues::QueueInbox;
use crate::shared::SharedState;
use crate::stream::StreamState;
use crate::types::LogLevel;

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub level: LogLevel,
    /// The context that was running (or made effective) when the guest logged.
    pub context_id: u32,
    pub message: String,
}

/// An http call a guest dispatched with `proxy_http_call`, waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallRequest {
    pub token: u32,
    /// The cluster name the guest gave.
    pub cluster: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    /// Timeout in milliseconds; 0 means none (Envoy then applies no per-call timeout).
    pub timeout_ms: u32,
    /// The context that was running when the call was made (informational: the response is
    /// delivered to the root context, as Envoy does).
    pub origin_context: u32,
}

/// The answer to an http call, handed back by the proxy (or a test).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

/// Cap on captured log records per instance, so a chatty guest cannot exhaust memory.
pub(crate) const MAX_CAPTURED_LOGS: usize = 100_000;
/// How many of the guest's latest log lines a trap report repeats (a Rust SDK guest logs its panic message just
/// before it traps, so the last lines usually say why).
pub(crate) const RECENT_LOGS: usize = 5;

pub(crate) struct HostState {
    pub config: Arc<PluginConfig>,
    pub shared: SharedState,
    pub inbox: Arc<QueueInbox>,
    pub memory: Option<Memory>,
    /// Shared: a hostcall handing data to the guest takes it per call (see `Exports`).
    pub alloc: Option<Arc<TypedFunc<u32, u32>>>,
    pub root_id: u32,
    pub streams: HashMap<u32, StreamState>,
    /// The context the host called into (0 outside calls).
    pub current: u32,
    /// The context set by `proxy_set_effective_context` during this call (0 = none).
    pub effective: u32,
    /// True while `proxy_on_configure` runs: the plugin configuration buffer exists only then.
    pub in_configure: bool,
    /// The response being delivered by `proxy_on_http_call_response`.
    pub call_response: Option<HttpCallResponse>,
    pub pending_calls: BTreeMap<u32, HttpCallRequest>,
    pub dispatched: Vec<HttpCallRequest>,
    /// Woken when a call joins `dispatched`: the worker sends it whatever callback made it.
    pub calls_dispatched: Arc<tokio::sync::Notify>,
    /// `declare_property` names, per context that declared them.
    pub declared_properties: std::collections::HashSet<(u32, String)>,
    pub next_call_token: u32,
    pub tick_period_ms: u32,
    /// Woken by every `proxy_set_tick_period_milliseconds`: Envoy re-arms the timer from that moment.
    pub tick_period_set: Arc<tokio::sync::Notify>,
    pub metric_ids: HashMap<u32, Arc<Metric>>,
    /// Per metric kind (counter, gauge, histogram): how many were defined.
    pub next_metric_seq: [u32; 3],
    pub logs: Vec<LogRecord>,
    /// The latest [`RECENT_LOGS`] lines the guest logged (captured or not), for trap reports.
    pub recent_logs: std::collections::VecDeque<String>,
    /// Warn-or-worse lines logged while the plugin starts, to explain a refusal.
    pub boot_log: Vec<LogRecord>,
    pub booting: bool,
    pub dropped_logs: u64,
    pub done_called: bool,
    /// The root context's `proxy_on_done` returned false; `proxy_done` completes it.
    pub pending_done: bool,
    /// Origin of the WASI monotonic clock.
    pub started: std::time::Instant,
    /// (code, message) for `proxy_get_status`.
    pub status: (u32, Vec<u8>),
    /// A local reply was sent during the current call (forces StopIteration, as Envoy's
    /// `stopNextIteration`).
    pub stop_iteration: bool,
    /// The instance's resource limits (linear memory), enforced by wasmtime.
    pub limits: StoreLimits,
}

impl Drop for HostState {
    fn drop(&mut self) {
        // Streams still open when a VM is replaced or dropped end with it.
        self.shared.live_streams.closed(self.streams.len());
    }
}

impl HostState {
    pub fn new(config: Arc<PluginConfig>, shared: SharedState) -> Self {
        HostState {
            config,
            shared,
            inbox: Arc::new(QueueInbox::default()),
            memory: None,
            alloc: None,
            root_id: 0,
            streams: HashMap::new(),
            current: 0,
            effective: 0,
            in_configure: false,
            call_response: None,
            pending_calls: BTreeMap::new(),
            dispatched: Vec::new(),
            calls_dispatched: Arc::new(tokio::sync::Notify::new()),
            declared_properties: std::collections::HashSet::new(),
            next_call_token: 0,
            tick_period_ms: 0,
            tick_period_set: Arc::new(tokio::sync::Notify::new()),
            metric_ids: HashMap::new(),
            next_metric_seq: [0; 3],
            logs: Vec::new(),
            recent_logs: std::collections::VecDeque::with_capacity(RECENT_LOGS),
            boot_log: Vec::new(),
            booting: true,
            dropped_logs: 0,
            done_called: false,
            pending_done: false,
            started: std::time::Instant::now(),
            status: (0, Vec::new()),
            stop_iteration: false,
            limits: StoreLimits::default(),
        }
    }

    /// The context hostcalls act on: the effective one if set and alive, else the current one.
    pub fn context_id(&self) -> u32 {
        if self.effective != 0
            && (self.effective == self.root_id || self.streams.contains_key(&self.effective))
        {
            self.effective
        } else {
            self.current
        }
    }

    /// The stream state of the acting context, or `None` in the root context.
    pub fn stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.context_id())
    }

    pub fn stream_mut(&mut self) -> Option<&mut StreamState> {
        let id = self.context_id();
        self.streams.get_mut(&id)
    }

    pub fn context_exists(&self, id: u32) -> bool {
        id != 0 && (id == self.root_id || self.streams.contains_key(&id))
    }
}
