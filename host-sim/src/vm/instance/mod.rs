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

    // ---- streams ---------------------------------------------------------------------

    /// Creates an HTTP context (`proxy_on_context_create(id, root)`) with the properties the
    /// proxy knows for this stream. A failed VM creates none (`VmFailed`).
    pub fn create_stream(&mut self, properties: Properties) -> Result<HttpStream, CallbackError> {
        self.check_alive()?;
        let id = self.next_context_id;
        self.next_context_id = self.next_context_id.wrapping_add(1).max(2);
        let root = self.root_context_id();
        self.store
            .data_mut()
            .streams
            .insert(id, StreamState::new(properties));
        self.factory.shared.live_streams.opened();
        if let Some(f) = self.exports.on_context_create.clone() {
            if let Err(message) = self.invoke(id, &f, (id, root)) {
                self.forget_stream(id);
                return Err(self.trap("proxy_on_context_create")(message));
            }
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
        f: Option<Arc<TypedFunc<P, u32>>>,
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
                let raw = self.invoke(s.id, &f, params).map_err(self.trap(name))?;
                if self.store.data().stop_iteration {
                    Action::Pause
                } else {
                    Action::from_raw(raw)
                }
            }
        };
        // A stream closed in the callback is reset as the call returns (`Context::closeStream` defers
        // `resetStream` to after the VM call), which logs and destroys it at once: the context never gets to drop
        // this phase's map, so on_log and on_done still read it (found by the ABI fuzzer).
        let closing = self
            .stream_state(s)
            .is_some_and(|st| st.effects.close_request || st.effects.close_response);
        if !action.is_stop() && !closing {
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
        self.on_headers(s, Phase::RequestHeaders, end_of_stream)
    }

    /// Whether the module exports `proxy_on_request_body` (hosts skip the callback otherwise).
    pub fn has_request_body_callback(&self) -> bool {
        self.exports.on_request_body.is_some()
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
        self.on_body(s, chunk, end_of_stream, BodyDirection::Request)
    }

    /// `proxy_on_request_trailers`. Fill `request_trailers` first.
    pub fn on_request_trailers(&mut self, s: HttpStream) -> Result<Action, CallbackError> {
        self.on_trailers(s, Phase::RequestTrailers)
    }

    /// `proxy_on_response_headers`. Fill `response_headers` first.
    pub fn on_response_headers(
        &mut self,
        s: HttpStream,
        end_of_stream: bool,
    ) -> Result<Action, CallbackError> {
        self.on_headers(s, Phase::ResponseHeaders, end_of_stream)
    }

    /// `proxy_on_response_body`, buffering as [`PluginInstance::on_request_body`] does.
    pub fn on_response_body(
        &mut self,
        s: HttpStream,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, CallbackError> {
        self.on_body(s, chunk, end_of_stream, BodyDirection::Response)
    }

    /// A body callback in either direction: the chunk joins the stream's buffer (a fresh one unless the filter
    /// paused on the previous chunk), the guest sees the buffer's size, and a Pause keeps buffering.
    fn on_body(
        &mut self,
        s: HttpStream,
        chunk: &[u8],
        end_of_stream: bool,
        direction: BodyDirection,
    ) -> Result<Action, CallbackError> {
        self.check(s)?;
        let buffering = self.body_buffering(direction).contains(&s.id);
        let size = {
            let Some(st) = self.stream_state_mut(s) else {
                return Err(CallbackError::UnknownStream(s.id));
            };
            let body = match direction {
                BodyDirection::Request => &mut st.request_body,
                BodyDirection::Response => &mut st.response_body,
            };
            if !buffering {
                body.clear();
            }
            body.extend_from_slice(chunk);
            body.len() as u32
        };
        let (name, f, phase) = match direction {
            BodyDirection::Request => (
                "proxy_on_request_body",
                self.exports.on_request_body.clone(),
                Phase::RequestBody,
            ),
            BodyDirection::Response => (
                "proxy_on_response_body",
                self.exports.on_response_body.clone(),
                Phase::ResponseBody,
            ),
        };
        let action = self.filter_call(
            s,
            name,
            f,
            (s.id, size, u32::from(end_of_stream)),
            phase,
            end_of_stream,
        )?;
        let buffering = self.body_buffering(direction);
        if action == Action::Pause {
            buffering.insert(s.id);
        } else {
            buffering.remove(&s.id);
        }
        Ok(action)
    }

    /// The streams whose filter paused on a body chunk of this direction.
    fn body_buffering(&mut self, direction: BodyDirection) -> &mut std::collections::HashSet<u32> {
        match direction {
            BodyDirection::Request => &mut self.request_body_buffering,
            BodyDirection::Response => &mut self.response_body_buffering,
        }
    }

    /// `proxy_on_response_trailers`. Fill `response_trailers` first.
    pub fn on_response_trailers(&mut self, s: HttpStream) -> Result<Action, CallbackError> {
        self.on_trailers(s, Phase::ResponseTrailers)
    }

    /// The headers callback of either direction, with the map's size as the guest's header count.
    fn on_headers(
        &mut self,
        s: HttpStream,
        phase: Phase,
        end_of_stream: bool,
    ) -> Result<Action, CallbackError> {
        self.check(s)?;
        let n = self.map_len(s, phase);
        let (name, f) = match phase {
            Phase::RequestHeaders => (
                "proxy_on_request_headers",
                self.exports.on_request_headers.clone(),
            ),
            _ => (
                "proxy_on_response_headers",
                self.exports.on_response_headers.clone(),
            ),
        };
        self.filter_call(
            s,
            name,
            f,
            (s.id, n, u32::from(end_of_stream)),
            phase,
            end_of_stream,
        )
    }

    /// The trailers callback of either direction (trailers always end the stream).
    fn on_trailers(&mut self, s: HttpStream, phase: Phase) -> Result<Action, CallbackError> {
        self.check(s)?;
        let n = self.map_len(s, phase);
        let (name, f) = match phase {
            Phase::RequestTrailers => (
                "proxy_on_request_trailers",
                self.exports.on_request_trailers.clone(),
            ),
            _ => (
                "proxy_on_response_trailers",
                self.exports.on_response_trailers.clone(),
            ),
        };
        self.filter_call(s, name, f, (s.id, n), phase, true)
    }

    /// How many entries the map `phase` hands the guest holds.
    fn map_len(&self, s: HttpStream, phase: Phase) -> u32 {
        self.stream_state(s).map_or(0, |st| match phase {
            Phase::RequestHeaders => st.request_headers.len(),
            Phase::RequestTrailers => st.request_trailers.len(),
            Phase::ResponseHeaders => st.response_headers.len(),
            Phase::ResponseTrailers => st.response_trailers.len(),
            Phase::RequestBody | Phase::ResponseBody => 0,
        }) as u32
    }

    /// Ends the stream: `proxy_on_done`, `proxy_on_log` (request headers and response
    /// headers/trailers readable, as in Envoy's access-log phase), `proxy_on_delete`.
    /// Returns the stream's final state. On a failed VM nothing runs in the guest (Envoy does
    /// not call into a failed VM); the stream's state is released all the same.
    pub fn finish_stream(&mut self, s: HttpStream) -> Result<StreamState, CallbackError> {
        if self.failed.is_some() && s.generation == self.generation {
            return self
                .forget_stream(s.id)
                .ok_or(CallbackError::UnknownStream(s.id));
        }
        self.check(s)?;
        // Envoy logs a stream, then destroys its filters (`ConnectionManagerImpl::doDeferredStreamDestroy`:
        // `stream.log(...)`, then `destroyFilters()`): proxy_on_log, then proxy_on_done, then proxy_on_delete.
        // Whatever a paused filter still held stays open in the log and done phases (Envoy's context keeps its map
        // pointers until a Continue), besides the access-log view.
        let held = self.access(s).map(|a| *a).unwrap_or_default();
        if let Some(a) = self.access(s) {
            *a = Access {
                access_log: true,
                ..held
            };
        }
        // The access-log phase sees the request headers again (Envoy's `Context::log` gets them), and only it.
        let mut lent = false;
        if let Some(state) = self.store.data_mut().streams.get_mut(&s.id) {
            if let Some(logged) = state.logged_request_headers.take() {
                if state.request_headers.is_empty() {
                    state.request_headers = logged;
                    lent = true;
                }
            }
        }
        if let Some(f) = self.exports.on_log.clone() {
            self.invoke(s.id, &f, s.id)
                .map_err(self.trap("proxy_on_log"))?;
        }
        if let Some(a) = self.access(s) {
            *a = held;
        }
        // After the log phase the context holds only what a paused filter kept (Envoy clears its access-log
        // pointers once `proxy_on_log` returns): `proxy_on_done` reads nothing else. The maps are put back after
        // it, for whoever reads the finished stream.
        let mut put_aside = None;
        if let Some(state) = self.store.data_mut().streams.get_mut(&s.id) {
            if lent {
                state.request_headers = crate::headers::HeaderMap::new();
            }
            if !held.response_headers {
                put_aside = Some((
                    std::mem::take(&mut state.response_headers),
                    std::mem::take(&mut state.response_trailers),
                ));
            }
        }
        let done = self.stream_done(s);
        if let Some((headers, trailers)) = put_aside {
            if let Some(state) = self.store.data_mut().streams.get_mut(&s.id) {
                state.response_headers = headers;
                state.response_trailers = trailers;
            }
        }
        done?;
        if let Some(f) = self.exports.on_delete.clone() {
            self.invoke(s.id, &f, s.id)
                .map_err(self.trap("proxy_on_delete"))?;
        }
        self.forget_stream(s.id)
            .ok_or(CallbackError::UnknownStream(s.id))
    }

    fn stream_done(&mut self, s: HttpStream) -> Result<(), CallbackError> {
        if let Some(f) = self.exports.on_done.clone() {
            self.invoke(s.id, &f, s.id)
                .map_err(self.trap("proxy_on_done"))?;
        }
        Ok(())
    }

    /// Drops a stream's state and bookkeeping.
    fn forget_stream(&mut self, id: u32) -> Option<StreamState> {
        self.request_body_buffering.remove(&id);
        self.response_body_buffering.remove(&id);
        let state = self.store.data_mut().streams.remove(&id);
        self.store
            .data_mut()
            .declared_properties
            .retain(|(context, _)| *context != id);
        if state.is_some() {
            self.factory.shared.live_streams.closed(1);
        }
        state
    }

    /// Number of live streams on this instance.
    pub fn live_streams(&self) -> usize {
        self.store.data().streams.len()
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
