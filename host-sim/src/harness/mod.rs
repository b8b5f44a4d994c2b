//! The in-process harness: load a module with its plugin configuration, drive whole requests
//! (or single callbacks) through the same core the proxy uses, and observe every effect —
//! actions, header maps after mutation, local replies, logs, metrics, properties set, http
//! calls (answer them), ticks and queues. A harness owns all its state (no globals), so tests
//! using it run in parallel. See the crate documentation for an example.

mod exchange;

pub use exchange::{Outcome, Request, Response, Stage};

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use crate::headers::HeaderMap;
use crate::properties::PropertyValue;
use crate::shared::{MetricSnapshot, SharedState};
use crate::stream::StreamEffects;
use crate::types::{Action, LogLevel};
use crate::vm::{
    CallbackError, HttpCallRequest, HttpCallResponse, HttpStream, LoadError, LogRecord,
    PluginConfig, PluginInstance, Runtime,
};

/// Builder for [`Harness`].
#[derive(Debug)]
pub struct HarnessBuilder {
    bytes: Vec<u8>,
    config: PluginConfig,
    shared: Option<SharedState>,
    runtime: Option<Arc<Runtime>>,
}

impl HarnessBuilder {
    /// The plugin `configuration` (what `proxy_on_configure` reads).
    pub fn plugin_config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.config.configuration = config.into();
        self
    }

    /// The `vm_config.configuration` (what `proxy_on_vm_start` reads).
    pub fn vm_config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.config.vm_configuration = config.into();
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.config.name = name.to_string();
        self
    }

    pub fn root_id(mut self, root_id: &str) -> Self {
        self.config.root_id = root_id.to_string();
        self
    }

    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.config.vm_id = vm_id.to_string();
        self
    }

    /// A property every context can read (`xds.node`, `xds.listener_direction` ...).
    pub fn root_property(mut self, name: &str, value: impl Into<PropertyValue>) -> Self {
        self.config.root_properties.set(name, value);
        self
    }

    /// The host log level (default Trace in the harness, so every guest log is captured).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.config.log_level = level;
        self
    }

    /// The longest one guest call may run before it is interrupted (`None`: unbounded).
    pub fn call_deadline(mut self, deadline: Option<std::time::Duration>) -> Self {
        self.config.call_deadline = deadline;
        self
    }

    /// The most linear memory the VM may grow to (`None`: wasm32's 4 GiB).
    pub fn memory_limit(mut self, bytes: Option<usize>) -> Self {
        self.config.memory_limit = bytes;
        self
    }

    /// A cluster name `proxy_http_call` may target.
    pub fn cluster(mut self, name: &str) -> Self {
        self.config.clusters.push(name.to_string());
        self
    }

    /// A WASI environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.config
            .environment
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Shares metrics, shared data and queues with other harnesses (e.g. two "workers").
    pub fn shared(mut self, shared: SharedState) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Reuses a runtime (engine and module cache) across harnesses.
    pub fn runtime(mut self, runtime: Arc<Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Compiles (or reuses) the module and starts the plugin.
    pub fn build(self) -> Result<Harness, LoadError> {
        let runtime = match self.runtime {
            Some(r) => r,
            None => Arc::new(Runtime::new()?),
        };
        let shared = self.shared.unwrap_or_default();
        let factory = runtime.load(&self.bytes, self.config, shared.clone())?;
        let instance = factory.instantiate()?;
        Ok(Harness {
            runtime,
            shared,
            instance,
            flights: BTreeMap::new(),
        })
    }
}

/// A stream the harness is driving.
#[derive(Debug)]
struct Flight {
    request: Request,
    outcome: Outcome,
    /// Next step to run once the stream may continue.
    next: Step,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    RequestBody,
    RequestTrailers,
    Upstream,
    ResponseBody,
    ResponseTrailers,
    Finish,
}

/// One plugin running in one VM instance, driven in-process.
pub struct Harness {
    runtime: Arc<Runtime>,
    shared: SharedState,
    instance: PluginInstance,
    flights: BTreeMap<u32, Flight>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("instance", &self.instance)
            .field("streams_in_flight", &self.flights.len())
            .finish_non_exhaustive()
    }
}

/// A runtime shared by harnesses in one process, so a module compiles once per test binary.
pub fn shared_runtime() -> Result<Arc<Runtime>, LoadError> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    if let Some(r) = RUNTIME.get() {
        return Ok(r.clone());
    }
    let r = Arc::new(Runtime::new()?);
    Ok(RUNTIME.get_or_init(|| r).clone())
}

impl Harness {
    /// Starts building a harness for `module` (binary wasm or WAT text).
    pub fn builder(module: &[u8]) -> HarnessBuilder {
        HarnessBuilder {
            bytes: module.to_vec(),
            config: PluginConfig {
                name: "harness".into(),
                log_level: LogLevel::Trace,
                capture_logs: true,
                ..PluginConfig::default()
            },
            shared: None,
            runtime: None,
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// The VM instance, for single-callback tests.
    pub fn instance(&mut self) -> &mut PluginInstance {
        &mut self.instance
    }

    // ---- whole requests ----------------------------------------------------------------

    /// Drives a request through the filter: request headers, body, trailers, the upstream
    /// (its answer from `request.upstream_response`), response headers, body, trailers, then
    /// done/log/delete. Stops early when the filter pauses (answer its http calls, tick, or
    /// deliver queues to resume it) and short-cuts on a local reply, which — as in Envoy —
    /// runs through the filter's own response callbacks without reaching the upstream.
    ///
    /// A VM that failed earlier is restarted first (the harness reloads at once, like
    /// `FAIL_RELOAD` without backoff; the proxy applies the plugin's real policy).
    pub fn run(&mut self, request: Request) -> Result<Outcome, CallbackError> {
        if self.instance.failure().is_some() {
            self.instance.restart()?;
        }
        let stream = self.instance.create_stream(request.properties.clone())?;
        let outcome = Outcome {
            stream,
            stage: Stage::RequestPaused,
            actions: Vec::new(),
            upstream_request: None,
            reached_upstream: false,
            request_headers: HeaderMap::new(),
            request_body: Vec::new(),
            request_trailers: HeaderMap::new(),
            response_headers: HeaderMap::new(),
            response_body: Vec::new(),
            response_trailers: HeaderMap::new(),
            local_reply: None,
            effects: StreamEffects::default(),
            filter_state: BTreeMap::new(),
            trap: None,
        };
        let mut flight = Flight {
            request,
            outcome,
            next: Step::RequestBody,
        };
        let eos = flight.request.body.is_empty() && flight.request.trailers.is_empty();
        if let Some(st) = self.instance.stream_state_mut(stream) {
            st.request_headers = flight.request.headers.clone();
        }
        let r = self.instance.on_request_headers(stream, eos);
        let paused = self.record(&mut flight, "proxy_on_request_headers", r);
        if !self.settled(&mut flight) {
            // Envoy keeps delivering data to a filter whose headers stopped iteration.
            let more = !eos;
            if !paused || more {
                self.advance(&mut flight, paused)?;
            }
        }
        Ok(self.park(flight))
    }

    /// The latest outcome of a stream (also of one still in flight).
    pub fn outcome(&self, stream: HttpStream) -> Option<&Outcome> {
        self.flights.get(&stream.context_id()).map(|f| &f.outcome)
    }

    /// Streams still paused.
    pub fn in_flight(&self) -> Vec<HttpStream> {
        self.flights
            .values()
            .filter(|f| {
                matches!(
                    f.outcome.stage,
                    Stage::RequestPaused | Stage::ResponsePaused
                )
            })
            .map(|f| f.outcome.stream)
            .collect()
    }

    /// Records a callback's result. Returns true when the filter stopped iteration.
    fn record(
        &mut self,
        flight: &mut Flight,
        name: &'static str,
        r: Result<Action, CallbackError>,
    ) -> bool {
        match r {
            Ok(a) => {
                flight.outcome.actions.push((name, a));
                a.is_stop()
            }
            Err(e) => {
                self.fail(flight, e);
                true
            }
        }
    }

    fn fail(&mut self, flight: &mut Flight, e: CallbackError) {
        flight.outcome.stage = Stage::Failed;
        flight.outcome.trap = Some(e.to_string());
        flight.outcome.response_headers = HeaderMap::from_pairs([(":status", "503")]);
    }

    /// Handles a failed stream or a local reply; true when the stream needs nothing more.
    fn settled(&mut self, flight: &mut Flight) -> bool {
        if flight.outcome.stage == Stage::Failed {
            return true;
        }
        let stream = flight.outcome.stream;
        let reply = self
            .instance
            .stream_state_mut(stream)
            .and_then(|st| st.effects.local_reply.clone());
        let Some(reply) = reply else {
            return false;
        };
        if flight.outcome.local_reply.is_some() {
            return false;
        }
        flight.outcome.local_reply = Some(reply.clone());
        // The local reply goes through the filter's encoder callbacks, then the stream ends.
        let headers = reply.response_headers();
        if let Some(st) = self.instance.stream_state_mut(stream) {
            st.response_headers = headers;
        }
        let r = self
            .instance
            .on_response_headers(stream, reply.body.is_empty());
        self.record(flight, "proxy_on_response_headers", r);
        if flight.outcome.stage != Stage::Failed && !reply.body.is_empty() {
            let r = self.instance.on_response_body(stream, &reply.body, true);
            self.record(flight, "proxy_on_response_body", r);
        }
        if flight.outcome.stage != Stage::Failed {
            self.finish(flight);
        }
        true
    }

    /// Runs steps from `flight.next` until the stream pauses or finishes. `headers_paused`
    /// says the request headers stopped iteration (data still flows to this filter).
    fn advance(&mut self, flight: &mut Flight, headers_paused: bool) -> Result<(), CallbackError> {
        let stream = flight.outcome.stream;
        let mut paused = headers_paused;
        loop {
            match flight.next {
                Step::RequestBody => {
                    flight.next = Step::RequestTrailers;
                    if !flight.request.body.is_empty() {
                        let eos = flight.request.trailers.is_empty();
                        let body = flight.request.body.clone();
                        let r = self.instance.on_request_body(stream, &body, eos);
                        paused = self.record(flight, "proxy_on_request_body", r);
                    }
                }
                Step::RequestTrailers => {
                    flight.next = Step::Upstream;
                    if !flight.request.trailers.is_empty() {
                        if let Some(st) = self.instance.stream_state_mut(stream) {
                            st.request_trailers = flight.request.trailers.clone();
                        }
                        let r = self.instance.on_request_trailers(stream);
                        paused = self.record(flight, "proxy_on_request_trailers", r);
                    }
                }
                Step::Upstream => {
                    if paused {
                        flight.outcome.stage = Stage::RequestPaused;
                        return Ok(());
                    }
                    flight.next = Step::ResponseBody;
                    self.forward(flight);
                    let resp = flight.request.upstream_response.clone();
                    let eos = resp.body.is_empty() && resp.trailers.is_empty();
                    if let Some(st) = self.instance.stream_state_mut(stream) {
                        st.response_headers = resp.headers.clone();
                    }
                    let r = self.instance.on_response_headers(stream, eos);
                    paused = self.record(flight, "proxy_on_response_headers", r);
                }
                Step::ResponseBody => {
                    flight.next = Step::ResponseTrailers;
                    let resp = flight.request.upstream_response.clone();
                    if !resp.body.is_empty() {
                        let r = self.instance.on_response_body(
                            stream,
                            &resp.body,
                            resp.trailers.is_empty(),
                        );
                        paused = self.record(flight, "proxy_on_response_body", r);
                    }
                }
                Step::ResponseTrailers => {
                    flight.next = Step::Finish;
                    let resp = flight.request.upstream_response.clone();
                    if !resp.trailers.is_empty() {
                        if let Some(st) = self.instance.stream_state_mut(stream) {
                            st.response_trailers = resp.trailers.clone();
                        }
                        let r = self.instance.on_response_trailers(stream);
                        paused = self.record(flight, "proxy_on_response_trailers", r);
                    }
                }
                Step::Finish => {
                    if paused {
                        flight.outcome.stage = Stage::ResponsePaused;
                        return Ok(());
                    }
                    self.finish(flight);
                    return Ok(());
                }
            }
            if self.settled(flight) {
                return Ok(());
            }
        }
    }

    /// The request leaves for the upstream: snapshot it as forwarded.
    fn forward(&mut self, flight: &mut Flight) {
        if let Some(st) = self.instance.stream_state(flight.outcome.stream) {
            flight.outcome.reached_upstream = true;
            flight.outcome.upstream_request = Some(Response {
                headers: st.request_headers.clone(),
                body: if flight.request.body.is_empty() {
                    Vec::new()
                } else {
                    st.request_body.clone()
                },
                trailers: st.request_trailers.clone(),
            });
        }
    }

    fn finish(&mut self, flight: &mut Flight) {
        let stream = flight.outcome.stream;
        match self.instance.finish_stream(stream) {
            Ok(st) => {
                let o = &mut flight.outcome;
                o.stage = Stage::Finished;
                o.request_headers = st.request_headers;
                o.request_body = st.request_body;
                o.request_trailers = st.request_trailers;
                o.response_headers = st.response_headers;
                o.response_body = st.response_body;
                o.response_trailers = st.response_trailers;
                o.effects = st.effects;
                o.filter_state = st.filter_state;
            }
            Err(e) => self.fail(flight, e),
        }
    }

    /// Stores the flight and returns its outcome, refreshed from the live stream state.
    fn park(&mut self, mut flight: Flight) -> Outcome {
        let live = match flight.outcome.stage {
            Stage::Failed | Stage::Finished => None,
            _ => self.instance.stream_state(flight.outcome.stream),
        };
        if let Some(st) = live {
            let o = &mut flight.outcome;
            o.request_headers = st.request_headers.clone();
            o.request_body = st.request_body.clone();
            o.request_trailers = st.request_trailers.clone();
            o.response_headers = st.response_headers.clone();
            o.response_body = st.response_body.clone();
            o.response_trailers = st.response_trailers.clone();
            o.effects = st.effects.clone();
            o.filter_state = st.filter_state.clone();
            if o.local_reply.is_none() {
                o.local_reply = st.effects.local_reply.clone();
            }
        }
        let outcome = flight.outcome.clone();
        self.flights.insert(outcome.stream.context_id(), flight);
        outcome
    }

    /// Resumes paused streams whose guest called continue or sent a local reply.
    fn resume(&mut self) -> Result<(), CallbackError> {
        let ids: Vec<u32> = self
            .flights
            .iter()
            .filter(|(_, f)| {
                matches!(
                    f.outcome.stage,
                    Stage::RequestPaused | Stage::ResponsePaused
                )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(mut flight) = self.flights.remove(&id) else {
                continue;
            };
            let stream = flight.outcome.stream;
            if self.instance.failure().is_some() {
                self.fail(
                    &mut flight,
                    CallbackError::VmFailed("the VM trapped".into()),
                );
                self.park(flight);
                continue;
            }
            let (go_req, go_resp) = match self.instance.stream_state_mut(stream) {
                Some(st) => {
                    let e = &mut st.effects;
                    let r = (e.continue_request, e.continue_response);
                    e.continue_request = false;
                    e.continue_response = false;
                    r
                }
                None => (false, false),
            };
            if !self.settled(&mut flight) {
                let go = match flight.outcome.stage {
                    Stage::RequestPaused => go_req,
                    Stage::ResponsePaused => go_resp,
                    _ => false,
                };
                if go {
                    self.advance(&mut flight, false)?;
                }
            }
            self.park(flight);
        }
        Ok(())
    }

    // ---- asynchronous work ---------------------------------------------------------------

    /// Http calls dispatched and not yet answered.
    pub fn pending_http_calls(&self) -> Vec<HttpCallRequest> {
        self.instance
            .pending_http_calls()
            .into_iter()
            .cloned()
            .collect()
    }

    /// Answers an http call (running `proxy_on_http_call_response`), then resumes streams the
    /// guest continued. `None` reports a failed call.
    pub fn respond_http_call(
        &mut self,
        token: u32,
        response: Option<Response>,
    ) -> Result<(), CallbackError> {
        let response = response.map(|r| HttpCallResponse {
            headers: r.headers,
            body: r.body,
            trailers: r.trailers,
        });
        let delivered = self.instance.deliver_http_call_response(token, response);
        self.resume()?;
        delivered
    }

    /// Runs `proxy_on_tick` (if a period is set), then resumes continued streams.
    pub fn tick(&mut self) -> Result<bool, CallbackError> {
        let ran = self.instance.tick();
        self.resume()?;
        ran
    }

    /// Delivers pending `proxy_on_queue_ready` notifications, then resumes streams.
    pub fn deliver_queue_ready(&mut self) -> Result<usize, CallbackError> {
        let n = self.instance.deliver_queue_ready();
        self.resume()?;
        n
    }

    // ---- observation -----------------------------------------------------------------------

    pub fn logs(&self) -> &[LogRecord] {
        self.instance.logs()
    }

    /// Messages logged at `level`.
    pub fn logs_at(&self, level: LogLevel) -> Vec<&str> {
        self.instance
            .logs()
            .iter()
            .filter(|r| r.level == level)
            .map(|r| r.message.as_str())
            .collect()
    }

    /// True when some captured log message contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.instance
            .logs()
            .iter()
            .any(|r| r.message.contains(needle))
    }

    /// A counter's or gauge's value (a histogram's sum) by name.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.shared.metrics.get(name)
    }

    pub fn metrics(&self) -> Vec<MetricSnapshot> {
        self.shared.metrics.snapshot()
    }
}
