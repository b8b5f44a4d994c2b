//! The HTTP streams of a VM: creating a context, the request and response callbacks with the maps and buffers
//! each may reach (Envoy's `Context` holds them only while their phase runs or is stopped), and ending a stream
//! with `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.

use super::*;

impl PluginInstance {
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

    pub(super) fn access(&mut self, s: HttpStream) -> Option<&mut Access> {
        self.stream_state_mut(s).map(|st| &mut st.access)
    }

    pub(super) fn filter_call<P: WasmParams>(
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
    pub(super) fn on_body(
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
    pub(super) fn body_buffering(
        &mut self,
        direction: BodyDirection,
    ) -> &mut std::collections::HashSet<u32> {
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
    pub(super) fn on_headers(
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
    pub(super) fn on_trailers(
        &mut self,
        s: HttpStream,
        phase: Phase,
    ) -> Result<Action, CallbackError> {
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
    pub(super) fn map_len(&self, s: HttpStream, phase: Phase) -> u32 {
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

    pub(super) fn stream_done(&mut self, s: HttpStream) -> Result<(), CallbackError> {
        if let Some(f) = self.exports.on_done.clone() {
            self.invoke(s.id, &f, s.id)
                .map_err(self.trap("proxy_on_done"))?;
        }
        Ok(())
    }

    /// Drops a stream's state and bookkeeping.
    pub(super) fn forget_stream(&mut self, id: u32) -> Option<StreamState> {
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
}
