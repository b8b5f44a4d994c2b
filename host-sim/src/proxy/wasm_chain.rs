//! One request's walk through a list of wasm filters (the downstream ones of a listener, or the upstream ones of a
//! cluster): create an HTTP context in each plugin's VM, hand each the header map in turn, collect what they did
//! (local reply, route cache clears, pauses), and finish the contexts when the stream ends.
//!
//! Failures follow the plugin's `failure_policy`, as in Envoy 1.40: a trap (or a deadline interruption, or memory
//! past the limit) in any callback fails the VM. The stream it happened in, and every other stream reaching that
//! filter, fails with 503 (`wasm_fail_stream`) — or, under `FAIL_OPEN`, goes on without the filter. New streams
//! meet the policy when their context is created ([`PluginHandle::admit`]): `FAIL_CLOSED` keeps failing them,
//! `FAIL_RELOAD` reloads the VM after its backoff (counted in `wasm.<plugin>.vm_reload_*`), `FAIL_OPEN` skips it.
//!
//! [`PluginHandle::admit`]: crate::vm::PluginHandle::admit

use std::rc::Rc;

use crate::config::FailurePolicy;
use crate::headers::HeaderMap;
use crate::properties::Properties;
use crate::stream::{LocalReply, StreamState};
use crate::types::{Action, MetricKind};
use crate::vm::{Admission, CallbackError, HttpStream, ReloadEvent};

use super::local_reply::EnvoyReply;
use super::worker::Worker;

/// What the chain decided for one phase.
#[derive(Debug)]
pub enum Outcome {
    /// Every filter continued. `clear_route_cache`: some filter asked to re-pick the route.
    Continue { clear_route_cache: bool },
    /// A filter answered the request itself.
    LocalReply(LocalReply),
    /// A filter failed; the stream ends with this reply.
    Failed(EnvoyReply),
    /// A filter paused (`StopIteration`) and nothing resumed it: the proxy waits for `proxy_continue_stream`.
    Paused,
    /// A filter closed the stream (`proxy_close_stream`): Envoy resets it (`Context::closeStream` →
    /// `resetStream`), so the client gets no response.
    Reset,
}

/// Which header map a phase hands to the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    RequestHeaders,
    ResponseHeaders,
}

struct Member {
    slot: usize,
    /// The filter's context; kept after a failure so the stream's state is released at the end.
    stream: Option<HttpStream>,
    policy: FailurePolicy,
    state: MemberState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberState {
    /// Callbacks run.
    Active,
    /// Left out of this stream (fail-open on a failed VM): callbacks are skipped.
    Skipped,
    /// The VM is (or became) failed and the policy closes: the stream fails when it reaches this filter.
    Failed,
}

impl Member {
    /// The context to call into, if this filter still takes part in the stream.
    fn live(&self) -> Option<HttpStream> {
        match self.state {
            MemberState::Active => self.stream,
            MemberState::Skipped | MemberState::Failed => None,
        }
    }
}

/// The wasm contexts of one request in one filter chain.
pub struct WasmChain {
    worker: Rc<Worker>,
    members: Vec<Member>,
    finished: bool,
    /// The headers phases some filter paused in.
    paused: Vec<Phase>,
}

impl WasmChain {
    /// Creates an HTTP context in every plugin of `slots`, each seeing `properties`. A plugin whose VM failed is
    /// handled by its failure policy: left out (fail-open), or the stream fails when it reaches that filter.
    pub fn new(
        worker: &Rc<Worker>,
        slots: &[usize],
        properties: &Properties,
    ) -> Result<Self, EnvoyReply> {
        let mut members = Vec::with_capacity(slots.len());
        for &slot in slots {
            let plugin = &worker.shared.plugins[slot];
            let (admission, event) = worker.plugin(slot).borrow_mut().admit(properties.clone());
            if let Some(event) = event {
                count_reload(worker, &plugin.name, event);
            }
            let (stream, state) = match admission {
                Admission::Stream(stream) => (Some(stream), MemberState::Active),
                Admission::Skip => (None, MemberState::Skipped),
                Admission::Fail => (None, MemberState::Failed),
            };
            members.push(Member {
                slot,
                stream,
                policy: plugin.policy,
                state,
            });
        }
        Ok(WasmChain {
            worker: worker.clone(),
            members,
            finished: false,
            paused: Vec::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether some filter of this chain paused in the `phase` headers callback.
    pub fn paused_in(&self, phase: Phase) -> bool {
        self.paused.contains(&phase)
    }

    /// Whether a live filter of the chain has a request-body callback: only then must the request body pass through
    /// the chain.
    pub fn filters_request_body(&self) -> bool {
        self.members.iter().any(|member| {
            member.live().is_some()
                && self
                    .worker
                    .plugin(member.slot)
                    .borrow()
                    .has_request_body_callback()
        })
    }

    /// `proxy_on_request_headers` of one filter (the `index`-th wasm filter of the chain). The map is moved into the
    /// filter's stream state and back.
    pub fn request_headers(
        &mut self,
        index: usize,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Outcome {
        let mut clear_route_cache = false;
        match self.run_headers(
            index,
            Phase::RequestHeaders,
            headers,
            end_of_stream,
            &mut clear_route_cache,
        ) {
            Some(outcome) => outcome,
            None => Outcome::Continue { clear_route_cache },
        }
    }

    /// `proxy_on_response_headers` of the filters before `below` (`usize::MAX`: all), in reverse order (Envoy's
    /// encoder order). A pause stops there: `Paused` and the paused filter's index, to wait out and resume below.
    pub fn response_headers_below(
        &mut self,
        below: usize,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> (Outcome, usize) {
        let mut clear_route_cache = false;
        for index in (0..self.members.len().min(below)).rev() {
            if self.members[index].state == MemberState::Failed {
                continue;
            }
            let outcome = self.run_headers(
                index,
                Phase::ResponseHeaders,
                headers,
                end_of_stream,
                &mut clear_route_cache,
            );
            self.dispatch_http_calls(index);
            if let Some(outcome) = outcome {
                return (outcome, index);
            }
        }
        (Outcome::Continue { clear_route_cache }, 0)
    }

    /// `proxy_on_response_headers` of every filter, in reverse order, for a local reply going out through the
    /// filters: a pause there is not waited for.
    pub fn response_headers(&mut self, headers: &mut HeaderMap, end_of_stream: bool) -> Outcome {
        let mut clear_route_cache = false;
        for index in (0..self.members.len()).rev() {
            if self.members[index].state == MemberState::Failed {
                // Already failed: the 503 going out is its doing.
                continue;
            }
            if let Some(outcome) = self.run_headers(
                index,
                Phase::ResponseHeaders,
                headers,
                end_of_stream,
                &mut clear_route_cache,
            ) {
                // A local reply is not held for a paused filter here: go on, as Envoy would once it continued.
                if !matches!(outcome, Outcome::Paused) {
                    return outcome;
                }
            }
        }
        Outcome::Continue { clear_route_cache }
    }

    /// Runs one filter's headers callback; `None` means it continued.
    fn run_headers(
        &mut self,
        index: usize,
        phase: Phase,
        headers: &mut HeaderMap,
        end_of_stream: bool,
        clear_route_cache: &mut bool,
    ) -> Option<Outcome> {
        let member = self.members.get(index)?;
        if member.state == MemberState::Failed {
            return Some(Outcome::Failed(EnvoyReply::wasm_failed()));
        }
        let stream = member.live()?;
        let slot = member.slot;
        let mut instance = self.worker.plugin(slot).borrow_mut();
        let state = instance.stream_state_mut(stream)?;
        match phase {
            Phase::RequestHeaders => state.request_headers = std::mem::take(headers),
            Phase::ResponseHeaders => state.response_headers = std::mem::take(headers),
        }
        let result = match phase {
            Phase::RequestHeaders => instance.on_request_headers(stream, end_of_stream),
            Phase::ResponseHeaders => instance.on_response_headers(stream, end_of_stream),
        };
        if let Some(state) = instance.stream_state_mut(stream) {
            match phase {
                // Envoy's context holds the request headers only during this callback (properties such as
                // `request.path` are NotFound in response callbacks) and again in the access-log phase.
                Phase::RequestHeaders => {
                    state.logged_request_headers = Some(state.request_headers.clone());
                    *headers = std::mem::take(&mut state.request_headers);
                }
                Phase::ResponseHeaders => *headers = std::mem::take(&mut state.response_headers),
            }
        }
        let action = match result {
            Ok(action) => action,
            Err(error) => {
                tracing::warn!(plugin = %self.worker.shared.plugins[slot].name, %error, "wasm filter failed");
                drop(instance);
                let trapped_here = matches!(error, CallbackError::Trap { .. });
                return self.fail_member(index, trapped_here);
            }
        };
        let state = instance.stream_state_mut(stream)?;
        let closing = state.effects.close_request || state.effects.close_response;
        if action.is_stop() || closing {
            // A filter that stopped keeps its view of the headers (Envoy's context drops its pointer to them
            // only on Continue, `Context::decodeHeaders`): later callbacks, a local reply's included, read them.
            // So does one that closed the stream (see `filter_call`).
            match phase {
                Phase::RequestHeaders => state.request_headers = headers.clone(),
                Phase::ResponseHeaders => state.response_headers = headers.clone(),
            }
        }
        if let Some(reply) = state.effects.local_reply.take() {
            return Some(Outcome::LocalReply(reply));
        }
        if state.effects.take_close() {
            return Some(Outcome::Reset);
        }
        if state.effects.take_route_cache_clear() {
            *clear_route_cache = true;
        }
        if action.is_stop() {
            let resumed = match phase {
                Phase::RequestHeaders => std::mem::take(&mut state.effects.continue_request),
                Phase::ResponseHeaders => std::mem::take(&mut state.effects.continue_response),
            };
            if !resumed {
                // Keep the paused filter's view of the headers: it may still change them before continuing.
                match phase {
                    Phase::RequestHeaders => state.request_headers = headers.clone(),
                    Phase::ResponseHeaders => state.response_headers = headers.clone(),
                }
                drop(instance);
                self.paused.push(phase);
                return Some(Outcome::Paused);
            }
        }
        None
    }

    /// After a pause: has the filter resumed (`proxy_continue_stream`), replied, or failed meanwhile? The headers
    /// it may have changed while paused are taken back into `headers`.
    pub fn resumed(
        &mut self,
        index: usize,
        phase: Phase,
        headers: &mut HeaderMap,
    ) -> Option<Outcome> {
        let member = self.members.get(index)?;
        if member.state == MemberState::Failed {
            return Some(Outcome::Failed(EnvoyReply::wasm_failed()));
        }
        let Some(stream) = member.live() else {
            // Left out meanwhile (fail-open): nothing holds the stream any more.
            return Some(Outcome::Continue {
                clear_route_cache: false,
            });
        };
        let mut instance = self.worker.plugin(member.slot).borrow_mut();
        if instance.failure().is_some() || instance.stream_state(stream).is_none() {
            // The VM failed (or was reloaded) while this stream waited.
            drop(instance);
            return Some(self.fail_member(index, false).unwrap_or(Outcome::Continue {
                clear_route_cache: false,
            }));
        }
        let state = instance.stream_state_mut(stream)?;
        if let Some(reply) = state.effects.local_reply.take() {
            return Some(Outcome::LocalReply(reply));
        }
        let resumed = match phase {
            Phase::RequestHeaders => std::mem::take(&mut state.effects.continue_request),
            Phase::ResponseHeaders => std::mem::take(&mut state.effects.continue_response),
        };
        if resumed {
            // The filter keeps its view of the headers after it resumed: Envoy's context drops its pointer to them
            // only when a headers callback returns Continue (`Context::onResponseHeaders`), not on
            // `continueStream`, so later callbacks still read them (found by the ABI fuzzer).
            *headers = match phase {
                Phase::RequestHeaders => {
                    state.logged_request_headers = Some(state.request_headers.clone());
                    state.request_headers.clone()
                }
                Phase::ResponseHeaders => state.response_headers.clone(),
            };
            let clear_route_cache = state.effects.take_route_cache_clear();
            return Some(Outcome::Continue { clear_route_cache });
        }
        None
    }

    /// Sends the http calls the `index`-th filter's plugin dispatched.
    pub fn dispatch_http_calls(&self, index: usize) {
        if let Some(member) = self.members.get(index) {
            super::calls::dispatch(&self.worker, member.slot);
        }
    }

    /// The request headers as they go upstream (the router's additions included): what the access-log phase sees,
    /// and what a filter that paused and resumed them still reads (see [`Self::note_encoded_response_headers`]).
    pub fn note_final_request_headers(&mut self, headers: &HeaderMap) {
        self.for_each_state(|state| {
            state.logged_request_headers = Some(headers.clone());
            if state.access.request_headers {
                state.request_headers = headers.clone();
            }
        });
    }

    /// The response headers as the connection manager encodes them. A filter that paused its response headers and
    /// resumed them still points at the stream's one header map (`Context::onResponseHeaders` drops the pointer
    /// only on Continue), which the filters after it and `ActiveStream::encodeHeaders` go on changing: its later
    /// callbacks read the encoded head (found by the ABI fuzzer).
    pub fn note_encoded_response_headers(&mut self, headers: &HeaderMap) {
        self.for_each_state(|state| {
            if state.access.response_headers {
                state.response_headers = headers.clone();
            }
        });
    }

    /// Sets the route names on every context of the chain, once the route was picked again.
    pub fn set_route(&mut self, route: &crate::properties::RouteNames) {
        self.for_each_state(|state| {
            state.properties.set_route(route.clone());
        });
    }

    /// Sets `xds.cluster_name` on every context of the chain, once the router picked the cluster.
    pub fn set_cluster_name(&mut self, name: &std::sync::Arc<str>) {
        self.for_each_state(|state| {
            state.properties.set_cluster_name(name.clone());
        });
    }

    /// Runs a body chunk through the filters (request: in order; response: reverse). Returns the bytes to forward
    /// (`None` while some filter buffers), or the outcome that ends the stream.
    pub fn body(
        &mut self,
        phase: Phase,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Option<Vec<u8>>, Outcome> {
        let count = self.members.len();
        let mut data = chunk.to_vec();
        for step in 0..count {
            let index = match phase {
                Phase::RequestHeaders => step,
                Phase::ResponseHeaders => count - 1 - step,
            };
            if self.members[index].state == MemberState::Failed {
                return Err(Outcome::Failed(EnvoyReply::wasm_failed()));
            }
            let Some(stream) = self.members[index].live() else {
                continue;
            };
            let slot = self.members[index].slot;
            let mut instance = self.worker.plugin(slot).borrow_mut();
            let result = match phase {
                Phase::RequestHeaders => instance.on_request_body(stream, &data, end_of_stream),
                Phase::ResponseHeaders => instance.on_response_body(stream, &data, end_of_stream),
            };
            let action = match result {
                Ok(action) => action,
                Err(error) => {
                    drop(instance);
                    match self.callback_failed(index, &error, "wasm body callback") {
                        None => continue,
                        Some(outcome) => return Err(outcome),
                    }
                }
            };
            let Some(state) = instance.stream_state_mut(stream) else {
                continue;
            };
            if let Some(outcome) = ending(state) {
                return Err(outcome);
            }
            if action == Action::Pause && !end_of_stream {
                return Ok(None);
            }
            data = match phase {
                Phase::RequestHeaders => std::mem::take(&mut state.request_body),
                Phase::ResponseHeaders => std::mem::take(&mut state.response_body),
            };
        }
        Ok(Some(data))
    }

    /// The trailers callback of every filter (request: in order; response: reverse), once trailers ended the body.
    /// `body` is what the filters before the first one let through ahead of the trailers. Each filter's body
    /// callback first gets what earlier filters released (end_of_stream false: trailers follow), then its trailers;
    /// when it goes on, the body it held goes to the next filter: Envoy's `commonContinue` hands on the buffered
    /// data (`doData`) before the trailers (`doTrailers`). A trailers callback that pauses is not waited for
    /// (docs/host-sim.md). Returns the body that leaves the last filter, the trailers changed in place.
    pub fn trailers(
        &mut self,
        phase: Phase,
        body: Vec<u8>,
        trailers: &mut HeaderMap,
    ) -> Result<Vec<u8>, Outcome> {
        let count = self.members.len();
        let mut released = body;
        for step in 0..count {
            let index = match phase {
                Phase::RequestHeaders => step,
                Phase::ResponseHeaders => count - 1 - step,
            };
            if self.members[index].state == MemberState::Failed {
                return Err(Outcome::Failed(EnvoyReply::wasm_failed()));
            }
            let Some(stream) = self.members[index].live() else {
                continue;
            };
            let slot = self.members[index].slot;
            let mut instance = self.worker.plugin(slot).borrow_mut();
            let fed = if released.is_empty() {
                Ok(Action::Continue)
            } else {
                match phase {
                    Phase::RequestHeaders => instance.on_request_body(stream, &released, false),
                    Phase::ResponseHeaders => instance.on_response_body(stream, &released, false),
                }
            };
            let result = fed.and_then(|_| {
                if let Some(state) = instance.stream_state_mut(stream) {
                    match phase {
                        Phase::RequestHeaders => state.request_trailers = std::mem::take(trailers),
                        Phase::ResponseHeaders => {
                            state.response_trailers = std::mem::take(trailers)
                        }
                    }
                }
                let result = match phase {
                    Phase::RequestHeaders => instance.on_request_trailers(stream),
                    Phase::ResponseHeaders => instance.on_response_trailers(stream),
                };
                if let Some(state) = instance.stream_state_mut(stream) {
                    *trailers = match phase {
                        Phase::RequestHeaders => state.request_trailers.clone(),
                        Phase::ResponseHeaders => state.response_trailers.clone(),
                    };
                }
                result
            });
            if let Err(error) = result {
                drop(instance);
                match self.callback_failed(index, &error, "wasm trailers callback") {
                    None => continue,
                    Some(outcome) => return Err(outcome),
                }
            }
            let Some(state) = instance.stream_state_mut(stream) else {
                continue;
            };
            if let Some(outcome) = ending(state) {
                return Err(outcome);
            }
            released = match phase {
                Phase::RequestHeaders => std::mem::take(&mut state.request_body),
                Phase::ResponseHeaders => std::mem::take(&mut state.response_body),
            };
        }
        Ok(released)
    }

    /// Lets the caller inspect or fill each live stream's state (e.g. trailers, final response properties).
    pub fn for_each_state(&mut self, mut f: impl FnMut(&mut StreamState)) {
        for member in &self.members {
            let Some(stream) = member.live() else {
                continue;
            };
            let mut instance = self.worker.plugin(member.slot).borrow_mut();
            if let Some(state) = instance.stream_state_mut(stream) {
                f(state);
            }
        }
    }

    /// Ends every context: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`. `response` (status code and details)
    /// and the response headers are visible to `on_log`, as in Envoy's access-log phase.
    pub fn finish(
        &mut self,
        response_headers: Option<&HeaderMap>,
        code: Option<u16>,
        details: &str,
    ) {
        if self.finished {
            return;
        }
        self.finished = true;
        for member in &mut self.members {
            let Some(stream) = member.stream.take() else {
                continue;
            };
            let mut instance = self.worker.plugin(member.slot).borrow_mut();
            if instance.stream_state(stream).is_none() {
                // The VM was reloaded since: the context went with the old one.
                continue;
            }
            if let Some(state) = instance.stream_state_mut(stream) {
                if let Some(headers) = response_headers {
                    if state.response_headers.is_empty() {
                        state.response_headers = headers.clone();
                    }
                }
                if let Some(code) = code {
                    state.properties.set_response_code(i64::from(code));
                }
                state.properties.set_response_code_details(details);
            }
            if let Err(error) = instance.finish_stream(stream) {
                tracing::warn!(plugin = %self.worker.shared.plugins[member.slot].name, %error, "wasm stream end failed");
            }
        }
    }
}

/// What a body or trailers callback did that ends the stream: a close (a reset), or a local reply.
fn ending(state: &mut StreamState) -> Option<Outcome> {
    if state.effects.take_close() {
        return Some(Outcome::Reset);
    }
    state.effects.local_reply.take().map(Outcome::LocalReply)
}

impl WasmChain {
    /// A body or trailers callback of the `index`-th filter failed: logged, then the failure policy applies
    /// ([`WasmChain::fail_member`]; `None`: go on without the filter).
    fn callback_failed(
        &mut self,
        index: usize,
        error: &CallbackError,
        what: &str,
    ) -> Option<Outcome> {
        let slot = self.members[index].slot;
        tracing::warn!(plugin = %self.worker.shared.plugins[slot].name, %error, "{what} failed");
        self.fail_member(index, matches!(error, CallbackError::Trap { .. }))
    }

    /// A callback of the `index`-th filter failed (its VM is failed now). The stream whose callback trapped fails
    /// with 503 whatever the policy, as in Envoy; a stream that merely meets the failed VM leaves the filter out under
    /// fail-open (`None`: go on) and fails with 503 otherwise.
    fn fail_member(&mut self, index: usize, trapped_here: bool) -> Option<Outcome> {
        let member = &mut self.members[index];
        if member.policy == FailurePolicy::FailOpen && !trapped_here {
            member.state = MemberState::Skipped;
            return None;
        }
        member.state = MemberState::Failed;
        Some(Outcome::Failed(EnvoyReply::wasm_failed()))
    }
}

/// Counts a reload decision as Envoy's `wasm.<plugin>.vm_reload_*`.
fn count_reload(worker: &Worker, plugin: &str, event: ReloadEvent) {
    worker
        .shared
        .stats
        .define(
            MetricKind::Counter,
            &format!("wasm.{plugin}.{}", event.stat_name()),
        )
        .add(1);
}

impl Drop for WasmChain {
    fn drop(&mut self) {
        // A stream that ended without a response (client gone) still gets on_done/on_log/on_delete, as in Envoy.
        self.finish(None, None, "downstream_remote_disconnect");
    }
}
