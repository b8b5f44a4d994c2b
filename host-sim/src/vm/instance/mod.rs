//! A running plugin in one VM instance (one per worker thread), its root context, and the
//! HTTP streams created on it. Callbacks are called in Envoy's order; asynchronous work
//! (http call answers, ticks, queue notifications) is delivered by explicit methods so the
//! proxy's event loop — or a test — decides when it happens.

use std::sync::Arc;

use wasmtime::{Store, StoreLimitsBuilder, TypedFunc, WasmParams, WasmResults};

use crate::host_state::{HostState, HttpCallRequest, HttpCallResponse, LogRecord};
use crate::properties::Properties;
use crate::stream::{Access, StreamState};
use crate::types::{Action, Status};
use crate::vm::epoch::deadline_ticks;
use crate::vm::exports::Exports;
use crate::vm::{LoadError, PluginFactory};

mod async_work;
mod escape_hatches;
mod streams;

/// A handle to one HTTP stream (one proxy-wasm HTTP context) of a [`PluginInstance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpStream {
    id: u32,
    generation: u32,
}

impl HttpStream {
    /// The proxy-wasm context id of this stream.
    pub fn context_id(&self) -> u32 {
        self.id
    }
}

/// Errors of stream callbacks and asynchronous deliveries.
/// Which body a body callback is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyDirection {
    Request,
    Response,
}

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("no such stream (context {0}): never created, already finished, or from another VM")]
    UnknownStream(u32),
    #[error("no pending http call with token {0}")]
    UnknownCallToken(u32),
    /// The message carries wasmtime's wasm backtrace (function names when the module has a name section) and the
    /// guest's last log lines.
    #[error("plugin {plugin:?} trapped in {callback}: {message}")]
    Trap {
        plugin: String,
        callback: &'static str,
        message: String,
    },
    #[error("this VM instance failed earlier ({0}); its streams are lost")]
    VmFailed(String),
    #[error("restarting the VM after a trap failed: {0}")]
    Restart(#[from] LoadError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

impl Phase {
    fn open(self, a: &mut Access) {
        match self {
            Phase::RequestHeaders => a.request_headers = true,
            Phase::RequestBody => a.request_body = true,
            Phase::RequestTrailers => a.request_trailers = true,
            Phase::ResponseHeaders => a.response_headers = true,
            Phase::ResponseBody => a.response_body = true,
            Phase::ResponseTrailers => a.response_trailers = true,
        }
    }

    /// Iteration continued past this phase: Envoy drops its pointer to that phase's map or buffer
    /// (`Context::decodeHeaders` / `encodeHeaders` clear the headers only on their own Continue; a body
    /// callback's Continue leaves paused headers reachable, measured by the ABI fuzzer).
    fn close(self, a: &mut Access) {
        match self {
            Phase::RequestHeaders => a.request_headers = false,
            Phase::RequestBody => a.request_body = false,
            Phase::RequestTrailers => a.request_trailers = false,
            Phase::ResponseHeaders => a.response_headers = false,
            Phase::ResponseBody => a.response_body = false,
            Phase::ResponseTrailers => a.response_trailers = false,
        }
    }
}

/// One VM instance running one plugin: wasmtime store and instance, root context, streams.
/// Not `Send`-bound by design: keep one per worker thread, as Envoy keeps one VM per worker.
pub struct PluginInstance {
    factory: Arc<PluginFactory>,
    store: Store<HostState>,
    instance: wasmtime::Instance,
    exports: Exports,
    generation: u32,
    next_context_id: u32,
    /// Set when the guest trapped: its state cannot be trusted any more.
    failed: Option<String>,
    /// Epoch ticks each guest call may run (from the plugin's call deadline).
    deadline: u64,
    /// Streams whose body callback paused (Envoy buffers further chunks for them).
    request_body_buffering: std::collections::HashSet<u32>,
    response_body_buffering: std::collections::HashSet<u32>,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("plugin", &self.factory.config().name)
            .field("root_context", &self.store.data().root_id)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn trap_message(e: &wasmtime::Error) -> String {
    format!("{e:#}")
}

/// Describes why a guest call failed; a deadline interruption says which deadline, and the guest's last log lines
/// follow (a Rust SDK guest logs its panic message there just before it traps).
fn call_failure(
    e: &wasmtime::Error,
    deadline: Option<std::time::Duration>,
    st: &HostState,
) -> String {
    let mut message = match (e.downcast_ref::<wasmtime::Trap>(), deadline) {
        (Some(wasmtime::Trap::Interrupt), Some(d)) => {
            format!("the guest ran past its call deadline of {d:?} and was interrupted")
        }
        _ => trap_message(e),
    };
    if !st.recent_logs.is_empty() {
        message.push_str("\nthe guest's last log lines:");
        for line in &st.recent_logs {
            message.push_str("\n  ");
            message.push_str(line);
        }
    }
    message
}

impl PluginInstance {
    pub(crate) fn start(factory: Arc<PluginFactory>) -> Result<Self, LoadError> {
        Self::start_generation(factory, 0)
    }

    fn start_generation(factory: Arc<PluginFactory>, generation: u32) -> Result<Self, LoadError> {
        let config = factory.config.clone();
        let mut state = HostState::new(config.clone(), factory.shared.clone());
        let mut limits = StoreLimitsBuilder::new().trap_on_grow_failure(true);
        if let Some(bytes) = config.memory_limit {
            limits = limits.memory_size(bytes);
        }
        state.limits = limits.build();
        let deadline = deadline_ticks(config.call_deadline);
        let mut store = Store::new(factory.pre.module().engine(), state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(deadline);
        let instance = factory.pre.instantiate(&mut store).map_err(|e| {
            if e.downcast_ref::<wasmtime::Trap>().is_some() {
                LoadError::Trap {
                    phase: "instantiation (start function)",
                    message: call_failure(&e, config.call_deadline, store.data()),
                }
            } else {
                LoadError::Instantiate(trap_message(&e))
            }
        })?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(LoadError::MissingExport("memory"))?;
        let alloc_name = if instance.get_func(&mut store, "malloc").is_some() {
            "malloc"
        } else {
            "proxy_on_memory_allocate"
        };
        let alloc = instance
            .get_typed_func::<u32, u32>(&mut store, alloc_name)
            .map_err(|e| LoadError::BadSignature {
                name: alloc_name.to_string(),
                detail: trap_message(&e),
            })?;
        let exports = Exports::new(&instance, &mut store)?;
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = Some(Arc::new(alloc));
        let root_id = 1;
        store.data_mut().root_id = root_id;
        let mut me = PluginInstance {
            factory,
            store,
            instance,
            exports,
            generation,
            next_context_id: root_id + 1,
            failed: None,
            deadline,
            request_body_buffering: Default::default(),
            response_body_buffering: Default::default(),
        };
        me.boot(root_id)?;
        Ok(me)
    }

    /// `_initialize`/`_start`, then the root context's create, vm_start and configure.
    fn boot(&mut self, root: u32) -> Result<(), LoadError> {
        let trap = |phase: &'static str| move |message: String| LoadError::Trap { phase, message };
        if let Some(f) = self.exports.initialize.clone() {
            self.invoke(0, &f, ()).map_err(trap("_initialize"))?;
        } else if let Some(f) = self.exports.start.clone() {
            self.invoke(0, &f, ()).map_err(trap("_start"))?;
        }
        if let Some(f) = self.exports.on_context_create.clone() {
            self.invoke(root, &f, (root, 0))
                .map_err(trap("proxy_on_context_create"))?;
        }
        if let Some(f) = self.exports.on_vm_start.clone() {
            let size = self.factory.config.vm_configuration.len() as u32;
            let ok = self
                .invoke(root, &f, (root, size))
                .map_err(trap("proxy_on_vm_start"))?;
            if ok == 0 {
                return Err(LoadError::VmStartFailed {
                    log: self.boot_log(),
                });
            }
        }
        if let Some(f) = self.exports.on_configure.clone() {
            let size = self.factory.config.configuration.len() as u32;
            self.store.data_mut().in_configure = true;
            let r = self.invoke(root, &f, (root, size));
            self.store.data_mut().in_configure = false;
            if r.map_err(trap("proxy_on_configure"))? == 0 {
                return Err(LoadError::ConfigureFailed {
                    log: self.boot_log(),
                });
            }
        }
        self.store.data_mut().booting = false;
        Ok(())
    }

    /// Warn-or-worse messages logged while starting (always kept, capture or not).
    fn boot_log(&self) -> Vec<String> {
        self.store
            .data()
            .boot_log
            .iter()
            .map(|r| r.message.clone())
            .collect()
    }

    /// Calls a guest function with `ctx` as the running context.
    fn invoke<P: WasmParams, R: WasmResults>(
        &mut self,
        ctx: u32,
        f: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R, String> {
        {
            let st = self.store.data_mut();
            st.current = ctx;
            st.effective = 0;
            st.stop_iteration = false;
        }
        self.store.set_epoch_deadline(self.deadline);
        let r = f.call(&mut self.store, params);
        let st = self.store.data_mut();
        st.current = 0;
        st.effective = 0;
        r.map_err(|e| {
            let msg = call_failure(&e, self.factory.config.call_deadline, self.store.data());
            self.failed = Some(msg.clone());
            msg
        })
    }

    /// Turns a failed call's message into the error that names this plugin and `callback`.
    fn trap(&self, callback: &'static str) -> impl FnOnce(String) -> CallbackError {
        let plugin = self.factory.config.name.clone();
        move |message| CallbackError::Trap {
            plugin,
            callback,
            message,
        }
    }

    fn check(&self, s: HttpStream) -> Result<(), CallbackError> {
        if let Some(f) = &self.failed {
            return Err(CallbackError::VmFailed(f.clone()));
        }
        if s.generation != self.generation || !self.store.data().streams.contains_key(&s.id) {
            return Err(CallbackError::UnknownStream(s.id));
        }
        Ok(())
    }

    fn check_alive(&self) -> Result<(), CallbackError> {
        match &self.failed {
            Some(f) => Err(CallbackError::VmFailed(f.clone())),
            None => Ok(()),
        }
    }

    /// The factory this instance was made from.
    pub fn factory(&self) -> &Arc<PluginFactory> {
        &self.factory
    }

    /// The root context id.
    pub fn root_context_id(&self) -> u32 {
        self.store.data().root_id
    }

    /// Why this instance failed (a trap), if it did. A failed instance stays failed: what
    /// happens next is the plugin's failure policy ([`PluginHandle`]), or [`restart`].
    ///
    /// [`PluginHandle`]: crate::vm::PluginHandle
    /// [`restart`]: PluginInstance::restart
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Replaces this VM by a fresh instance of the same factory (streams of the old one are
    /// lost: their handles no longer match). On error the old instance stays as it was.
    pub fn restart(&mut self) -> Result<(), LoadError> {
        let fresh = Self::start_generation(self.factory.clone(), self.generation.wrapping_add(1))?;
        *self = fresh;
        Ok(())
    }

    /// Shuts the root context down: `proxy_on_done(root)`; if it returns true (or the
    /// guest called `proxy_done`), `proxy_on_delete(root)`. Returns whether the root is done.
    pub fn shutdown(&mut self) -> Result<bool, CallbackError> {
        self.check_alive()?;
        let root = self.root_context_id();
        let done = match self.exports.on_done.clone() {
            Some(f) => {
                self.invoke(root, &f, root)
                    .map_err(self.trap("proxy_on_done"))?
                    != 0
            }
            None => true,
        };
        if !done {
            self.store.data_mut().pending_done = true;
        }
        let done = done || self.store.data().done_called;
        if done {
            if let Some(f) = self.exports.on_delete.clone() {
                self.invoke(root, &f, root)
                    .map_err(self.trap("proxy_on_delete"))?;
            }
        }
        Ok(done)
    }

    // ---- observation -----------------------------------------------------------------

    /// Captured log records (when the plugin config enables capture).
    pub fn logs(&self) -> &[LogRecord] {
        &self.store.data().logs
    }

    /// Takes the captured log records.
    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// Status the guest would read with `proxy_get_status` (for tests of the status path).
    pub fn last_status(&self) -> (u32, &[u8]) {
        let (c, m) = &self.store.data().status;
        (*c, m)
    }
}
