//! A running plugin in one VM instance (one per worker thread), its root context, and the
//! HTTP streams created on it. Callbacks are called in Envoy's order; asynchronous work
//! (http call answers, ticks, queue notifications) is delivered by explicit methods so the
//! proxy's event loop — or a test — decides when it happens.

use std::sync::Arc;

use wasmtime::{Store, TypedFunc, WasmParams, WasmResults};

use crate::properties::Properties;
use crate::stream::{Access, StreamState};
use crate::types::{Action, Status};
use crate::vm::exports::Exports;
use crate::vm::host::{HostState, HttpCallRequest, HttpCallResponse, LogRecord};
use crate::vm::{LoadError, PluginFactory};

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
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("no such stream (context {0}): never created, already finished, or from another VM")]
    UnknownStream(u32),
    #[error("no pending http call with token {0}")]
    UnknownCallToken(u32),
    #[error("the guest trapped in {callback}: {message}")]
    Trap {
        callback: &'static str,
        message: String,
    },
    #[error("this VM instance failed earlier ({0}); the stream is lost and the VM restarts for the next stream")]
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

    /// Iteration continued past this phase: Envoy drops its pointers to the maps (a Continue
    /// from a body or trailers callback also releases the paused headers).
    fn close(self, a: &mut Access) {
        match self {
            Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers => {
                a.request_headers = false;
                a.request_body = false;
                a.request_trailers = false;
            }
            Phase::ResponseHeaders | Phase::ResponseBody | Phase::ResponseTrailers => {
                a.response_headers = false;
                a.response_body = false;
                a.response_trailers = false;
            }
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

impl PluginInstance {
    pub(crate) fn start(factory: Arc<PluginFactory>) -> Result<Self, LoadError> {
        Self::start_generation(factory, 0)
    }

    fn start_generation(factory: Arc<PluginFactory>, generation: u32) -> Result<Self, LoadError> {
        let state = HostState::new(factory.config.clone(), factory.shared.clone());
        let mut store = Store::new(factory.pre.module().engine(), state);
        let instance = factory.pre.instantiate(&mut store).map_err(|e| {
            if e.downcast_ref::<wasmtime::Trap>().is_some() {
                LoadError::Trap {
                    phase: "instantiation (start function)",
                    message: trap_message(&e),
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
        store.data_mut().alloc = Some(alloc);
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
        let r = f.call(&mut self.store, params);
        let st = self.store.data_mut();
        st.current = 0;
        st.effective = 0;
        r.map_err(|e| {
            let msg = trap_message(&e);
            self.failed = Some(msg.clone());
            msg
        })
    }

    fn trap(callback: &'static str) -> impl FnOnce(String) -> CallbackError {
        move |message| CallbackError::Trap { callback, message }
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

    /// Why this instance failed (a trap), if it did. The next [`create_stream`] restarts it.
    ///
    /// [`create_stream`]: PluginInstance::create_stream
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Replaces a failed VM by a fresh instance of the same factory.
    pub fn restart(&mut self) -> Result<(), LoadError> {
        let fresh = Self::start_generation(self.factory.clone(), self.generation.wrapping_add(1))?;
        *self = fresh;
        Ok(())
    }

    // ---- streams ---------------------------------------------------------------------

    /// Creates an HTTP context (`proxy_on_context_create(id, root)`) with the properties the
    /// proxy knows for this stream. Restarts the VM first if an earlier trap failed it.
    pub fn create_stream(&mut self, properties: Properties) -> Result<HttpStream, CallbackError> {
        if self.failed.is_some() {
            self.restart()?;
        }
        let id = self.next_context_id;
        self.next_context_id = self.next_context_id.wrapping_add(1).max(2);
        let root = self.root_context_id();
        self.store
            .data_mut()
            .streams
            .insert(id, StreamState::new(properties));
        if let Some(f) = self.exports.on_context_create.clone() {
            self.invoke(id, &f, (id, root))
                .map_err(Self::trap("proxy_on_context_create"))?;
        }
        Ok(HttpStream {
            id,
            generation: self.generation,
        })
    }

    /// The stream's state: header maps, bodies, properties, effects.
    pub fn stream_state(&self, s: HttpStream) -> Option<&StreamState> {
        if s.generation != self.generation {
            return None;
        }
        self.store.data().streams.get(&s.id)
    }

    /// Mutable stream state: the proxy fills header maps and bodies before each callback and
    /// reads (or clears) the effects after it.
    pub fn stream_state_mut(&mut self, s: HttpStream) -> Option<&mut StreamState> {
        if s.generation != self.generation {
            return None;
        }
        self.store.data_mut().streams.get_mut(&s.id)
    }

    fn access(&mut self, s: HttpStream) -> Option<&mut Access> {
        self.stream_state_mut(s).map(|st| &mut st.access)
    }

    fn filter_call<P: WasmParams>(
        &mut self,
        s: HttpStream,
        name: &'static str,
        f: Option<TypedFunc<P, u32>>,
        params: P,
        phase: Phase,
        end_of_stream: bool,
    ) -> Result<Action, CallbackError> {
        if let Some(a) = self.access(s) {
            phase.open(a);
            a.end_of_stream = end_of_stream;
        }
        let action = match f {
            None => Action::Continue,
            Some(f) => {
                let raw = self.invoke(s.id, &f, params).map_err(Self::trap(name))?;
                if self.store.data().stop_iteration {
                    Action::Pause
                } else {
                    Action::from_raw(raw)
                }
            }
        };
        if !action.is_stop() {
            if let Some(a) = self.access(s) {
                phase.close(a);
            }
        }
        Ok(action)
    }

    /// `proxy_on_request_headers`. Fill `request_headers` in the stream state first.
    pub fn on_request_headers(
        &mut self,
        s: HttpStream,
        end_of_stream: bool,
    ) -> Result<Action, CallbackError> {
        self.check(s)?;
        let n = self
            .stream_state(s)
            .map_or(0, |st| st.request_headers.len()) as u32;
        let f = self.exports.on_request_headers.clone();
        self.filter_call(
            s,
            "proxy_on_request_headers",
            f,
            (s.id, n, u32::from(end_of_stream)),
            Phase::RequestHeaders,
            end_of_stream,
        )
    }

    /// `proxy_on_request_body` with the next chunk. While the filter pauses, chunks
    /// accumulate in `request_body` (Envoy's StopIterationAndBuffer) and the callback sees
    /// the whole buffered body; after a Continue the proxy forwards `request_body`, and the
    /// next call starts a fresh buffer.
    pub fn on_request_body(
        &mut self,
        s: HttpStream,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, CallbackError> {
        self.check(s)?;
        let buffering = self.request_body_buffering.contains(&s.id);
        let size = {
            let Some(st) = self.stream_state_mut(s) else {
                return Err(CallbackError::UnknownStream(s.id));
            };
            if !buffering {
                st.request_body.clear();
            }
            st.request_body.extend_from_slice(chunk);
            st.request_body.len() as u32
        };
        let f = self.exports.on_request_body.clone();
        let action = self.filter_call(
            s,
            "proxy_on_request_body",
            f,
            (s.id, size, u32::from(end_of_stream)),
            Phase::RequestBody,
            end_of_stream,
        )?;
        if action == Action::Pause {
            self.request_body_buffering.insert(s.id);
        } else {
            self.request_body_buffering.remove(&s.id);
        }
        Ok(action)
    }

    /// `proxy_on_request_trailers`. Fill `request_trailers` first.
    pub fn on_request_trailers(&mut self, s: HttpStream) -> Result<Action, CallbackError> {
        self.check(s)?;
        let n = self
            .stream_state(s)
            .map_or(0, |st| st.request_trailers.len()) as u32;
        let f = self.exports.on_request_trailers.clone();
        self.filter_call(
            s,
            "proxy_on_request_trailers",
            f,
            (s.id, n),
            Phase::RequestTrailers,
            true,
        )
    }

    /// `proxy_on_response_headers`. Fill `response_headers` first.
    pub fn on_response_headers(
        &mut self,
        s: HttpStream,
        end_of_stream: bool,
    ) -> Result<Action, CallbackError> {
        self.check(s)?;
        let n = self
            .stream_state(s)
            .map_or(0, |st| st.response_headers.len()) as u32;
        let f = self.exports.on_response_headers.clone();
        self.filter_call(
            s,
            "proxy_on_response_headers",
            f,
            (s.id, n, u32::from(end_of_stream)),
            Phase::ResponseHeaders,
            end_of_stream,
        )
    }

    /// `proxy_on_response_body`, buffering as [`PluginInstance::on_request_body`] does.
    pub fn on_response_body(
        &mut self,
        s: HttpStream,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, CallbackError> {
        self.check(s)?;
        let buffering = self.response_body_buffering.contains(&s.id);
        let size = {
            let Some(st) = self.stream_state_mut(s) else {
                return Err(CallbackError::UnknownStream(s.id));
            };
            if !buffering {
                st.response_body.clear();
            }
            st.response_body.extend_from_slice(chunk);
            st.response_body.len() as u32
        };
        let f = self.exports.on_response_body.clone();
        let action = self.filter_call(
            s,
            "proxy_on_response_body",
            f,
            (s.id, size, u32::from(end_of_stream)),
            Phase::ResponseBody,
            end_of_stream,
        )?;
        if action == Action::Pause {
            self.response_body_buffering.insert(s.id);
        } else {
            self.response_body_buffering.remove(&s.id);
        }
        Ok(action)
    }

    /// `proxy_on_response_trailers`. Fill `response_trailers` first.
    pub fn on_response_trailers(&mut self, s: HttpStream) -> Result<Action, CallbackError> {
        self.check(s)?;
        let n = self
            .stream_state(s)
            .map_or(0, |st| st.response_trailers.len()) as u32;
        let f = self.exports.on_response_trailers.clone();
        self.filter_call(
            s,
            "proxy_on_response_trailers",
            f,
            (s.id, n),
            Phase::ResponseTrailers,
            true,
        )
    }

    /// Ends the stream: `proxy_on_done`, `proxy_on_log` (request headers and response
    /// headers/trailers readable, as in Envoy's access-log phase), `proxy_on_delete`.
    /// Returns the stream's final state.
    pub fn finish_stream(&mut self, s: HttpStream) -> Result<StreamState, CallbackError> {
        self.check(s)?;
        if let Some(f) = self.exports.on_done.clone() {
            self.invoke(s.id, &f, s.id)
                .map_err(Self::trap("proxy_on_done"))?;
        }
        if let Some(a) = self.access(s) {
            *a = Access {
                access_log: true,
                ..Access::default()
            };
        }
        if let Some(f) = self.exports.on_log.clone() {
            self.invoke(s.id, &f, s.id)
                .map_err(Self::trap("proxy_on_log"))?;
        }
        if let Some(a) = self.access(s) {
            *a = Access::default();
        }
        if let Some(f) = self.exports.on_delete.clone() {
            self.invoke(s.id, &f, s.id)
                .map_err(Self::trap("proxy_on_delete"))?;
        }
        self.request_body_buffering.remove(&s.id);
        self.response_body_buffering.remove(&s.id);
        self.store
            .data_mut()
            .streams
            .remove(&s.id)
            .ok_or(CallbackError::UnknownStream(s.id))
    }

    /// Number of live streams on this instance.
    pub fn live_streams(&self) -> usize {
        self.store.data().streams.len()
    }

    // ---- asynchronous work -----------------------------------------------------------

    /// Http calls dispatched since the last call of this method. The proxy routes each to
    /// its cluster and answers with [`PluginInstance::deliver_http_call_response`].
    pub fn take_http_calls(&mut self) -> Vec<HttpCallRequest> {
        std::mem::take(&mut self.store.data_mut().dispatched)
    }

    /// Http calls still waiting for an answer.
    pub fn pending_http_calls(&self) -> Vec<&HttpCallRequest> {
        self.store.data().pending_calls.values().collect()
    }

    /// Answers an http call: runs `proxy_on_http_call_response(root, token, headers, body
    /// size, trailers)` with the response readable through the HttpCallResponse* maps and
    /// buffer. `None` reports a failure (reset, timeout, no healthy upstream): Envoy then
    /// calls back with zero headers, body and trailers, no response maps (reading them is
    /// BadArgument), and `proxy_get_status` answering (BrokenConnection, "reset").
    pub fn deliver_http_call_response(
        &mut self,
        token: u32,
        response: Option<HttpCallResponse>,
    ) -> Result<(), CallbackError> {
        self.check_alive()?;
        if self.store.data_mut().pending_calls.remove(&token).is_none() {
            return Err(CallbackError::UnknownCallToken(token));
        }
        let root = self.root_context_id();
        let (h, b, t) = response.as_ref().map_or((0, 0, 0), |r| {
            (
                r.headers.len() as u32,
                r.body.len() as u32,
                r.trailers.len() as u32,
            )
        });
        if response.is_none() {
            // Envoy reports the failure through proxy_get_status: BrokenConnection, "reset".
            self.store.data_mut().status = (Status::BrokenConnection.code(), b"reset".to_vec());
        }
        self.store.data_mut().call_response = response;
        let r = match self.exports.on_http_call_response.clone() {
            Some(f) => self
                .invoke(root, &f, (root, token, h, b, t))
                .map_err(Self::trap("proxy_on_http_call_response")),
            None => Ok(()),
        };
        let st = self.store.data_mut();
        st.call_response = None;
        st.status = (0, Vec::new());
        r
    }

    /// The tick period the root context asked for (`None` when ticks are off).
    pub fn tick_period(&self) -> Option<std::time::Duration> {
        match self.store.data().tick_period_ms {
            0 => None,
            ms => Some(std::time::Duration::from_millis(u64::from(ms))),
        }
    }

    /// Runs `proxy_on_tick(root)` when a tick period is set. Returns whether it ran.
    pub fn tick(&mut self) -> Result<bool, CallbackError> {
        self.check_alive()?;
        if self.store.data().tick_period_ms == 0 {
            return Ok(false);
        }
        let Some(f) = self.exports.on_tick.clone() else {
            return Ok(false);
        };
        let root = self.root_context_id();
        self.invoke(root, &f, root)
            .map_err(Self::trap("proxy_on_tick"))?;
        Ok(true)
    }

    /// Delivers `proxy_on_queue_ready(root, token)` for every enqueue on a queue this
    /// instance registered since the last delivery. Returns how many were delivered.
    pub fn deliver_queue_ready(&mut self) -> Result<usize, CallbackError> {
        self.check_alive()?;
        let ready = self.store.data().inbox.drain();
        let Some(f) = self.exports.on_queue_ready.clone() else {
            return Ok(0);
        };
        for (root, token) in &ready {
            self.invoke(*root, &f, (*root, *token))
                .map_err(Self::trap("proxy_on_queue_ready"))?;
        }
        Ok(ready.len())
    }

    /// True when some queue registered by this instance has items to announce.
    pub fn has_queue_ready(&self) -> bool {
        !self.store.data().inbox.is_empty()
    }

    /// Shuts the root context down: `proxy_on_done(root)`; if it returns true (or the
    /// guest called `proxy_done`), `proxy_on_delete(root)`. Returns whether the root is done.
    pub fn shutdown(&mut self) -> Result<bool, CallbackError> {
        self.check_alive()?;
        let root = self.root_context_id();
        let done = match self.exports.on_done.clone() {
            Some(f) => {
                self.invoke(root, &f, root)
                    .map_err(Self::trap("proxy_on_done"))?
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
                    .map_err(Self::trap("proxy_on_delete"))?;
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

    /// Runs a raw guest export `name(args...)` (i32 arguments) with `ctx` as the running
    /// context and returns its first i32 result: an escape hatch for ABI tests that drive
    /// purpose-built exports of hostile or probe guests.
    pub fn call_export(
        &mut self,
        ctx: u32,
        name: &str,
        args: &[u32],
    ) -> Result<Option<u32>, CallbackError> {
        self.check_alive()?;
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Err(CallbackError::Trap {
                callback: "call_export",
                message: format!("the module has no function export `{name}`"),
            });
        };
        let params: Vec<wasmtime::Val> =
            args.iter().map(|a| wasmtime::Val::I32(*a as i32)).collect();
        let n_results = func.ty(&self.store).results().len();
        let mut results = vec![wasmtime::Val::I32(0); n_results];
        {
            let st = self.store.data_mut();
            st.current = ctx;
            st.effective = 0;
        }
        let r = func.call(&mut self.store, &params, &mut results);
        let st = self.store.data_mut();
        st.current = 0;
        st.effective = 0;
        if let Err(e) = r {
            let message = trap_message(&e);
            self.failed = Some(message.clone());
            return Err(CallbackError::Trap {
                callback: "call_export",
                message,
            });
        }
        Ok(results.first().and_then(|v| v.i32()).map(|v| v as u32))
    }
}
