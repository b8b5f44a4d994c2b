//! Per-stream state the proxy fills and reads (header maps, bodies, trailers, properties),
//! and the effects the guest's hostcalls leave on it (local reply, route-cache clears,
//! continue/close requests, filter state).

use std::collections::BTreeMap;

use crate::headers::{HeaderMap, MapKind};
use crate::properties::Properties;

/// A local reply the guest asked for with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Response code details, with whitespace replaced by `_` as Envoy does.
    pub details: String,
    pub body: Vec<u8>,
    /// Additional headers, in the order the guest gave them (keys lower-cased).
    pub headers: HeaderMap,
    /// gRPC status, or `None` when the guest passed an out-of-range value (the SDK passes -1).
    pub grpc_status: Option<u32>,
}

impl LocalReply {
    /// The response headers a proxy sends for this reply, as Envoy's `sendLocalReply` builds
    /// them: `:status`, the guest's additional headers, then `content-length` and — unless the
    /// guest set one — `content-type: text/plain` when there is a body; without a body, no `content-type` at all.
    pub fn response_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.add(":status", self.status.to_string());
        // Context::sendLocalResponse adds the guest's headers with addCopy: an inline one already there
        // (`:status` itself) takes the value after a comma.
        for (k, v) in self.headers.iter() {
            h.add_as(MapKind::ResponseHeaders, k, v);
        }
        if !self.body.is_empty() {
            h.replace("content-length", self.body.len().to_string());
            if h.get("content-type").is_none() {
                h.add("content-type", "text/plain");
            }
        } else {
            // Envoy's local reply without a body carries no content-type or content-length, even ones the filter
            // set (`Utility::prepareLocalReply`: removeContentLength, removeContentType).
            h.remove("content-type");
            h.remove("content-length");
        }
        h
    }
}

/// A foreign-function request to set Envoy filter state (`set_envoy_filter_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyFilterState {
    pub path: String,
    pub value: Vec<u8>,
    /// Envoy's `LifeSpan`: 0 FilterChain, 1 DownstreamRequest, 2 DownstreamConnection.
    pub span: u32,
}

/// Effects of hostcalls on one stream. The proxy reads (and may clear) them after each call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamEffects {
    /// The first local reply the guest sent on this stream.
    pub local_reply: Option<LocalReply>,
    /// How many times the guest asked to re-pick the route (`clear_route_cache`).
    pub clear_route_cache: u32,
    /// The guest changed the request headers, which clears Envoy's route cache as well.
    pub request_headers_changed: bool,
    /// `proxy_continue_stream(Request)` was called while the request was paused.
    pub continue_request: bool,
    /// `proxy_continue_stream(Response)` was called while the response was paused.
    pub continue_response: bool,
    /// `proxy_close_stream(Request)` (reset), with Envoy's details `wasm_close_stream`.
    pub close_request: bool,
    /// `proxy_close_stream(Response)`.
    pub close_response: bool,
    /// `set_envoy_filter_state` calls, in order.
    pub envoy_filter_state: Vec<EnvoyFilterState>,
}

/// Which header maps and buffers the guest may reach right now. Envoy only holds a map while
/// the matching callback runs or while iteration is stopped in that phase; in `on_log` it
/// exposes request headers and response headers/trailers read-only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Access {
    pub request_headers: bool,
    pub request_body: bool,
    pub request_trailers: bool,
    pub response_headers: bool,
    pub response_body: bool,
    pub response_trailers: bool,
    pub access_log: bool,
    pub end_of_stream: bool,
}

/// Everything the host knows about one HTTP stream.
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    pub request_headers: HeaderMap,
    /// The request headers for the access-log phase (the context does not hold them in between).
    pub logged_request_headers: Option<HeaderMap>,
    /// Request body bytes the filter currently sees (buffered while it pauses).
    pub request_body: Vec<u8>,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    /// The response headers for the access-log phase when a direct local reply replaced the head the filter saw
    /// (`FilterManager::sendDirectLocalReply`): the log's reads see the reply's, while `Context::getMap` edits and
    /// sizes still use the map the filter held.
    pub logged_response_headers: Option<HeaderMap>,
    pub response_body: Vec<u8>,
    pub response_trailers: HeaderMap,
    /// Request body bytes received from the client so far (Envoy's `bytesReceived`).
    pub request_body_bytes: u64,
    /// Response body bytes sent to the client so far (Envoy's `bytesSent`).
    pub response_body_bytes: u64,
    /// Property values the proxy provides (addresses, route, cluster, `upstream.address` ...).
    pub properties: Properties,
    /// Values stored by `proxy_set_property` (Envoy's filter state), keyed by the raw path.
    pub filter_state: BTreeMap<Vec<u8>, Vec<u8>>,
    pub effects: StreamEffects,
    pub(crate) access: Access,
}

impl StreamEffects {
    /// Whether the route must be picked again (an explicit `clear_route_cache` or a request-header change), and
    /// forgets it until the next one.
    pub fn take_route_cache_clear(&mut self) -> bool {
        let explicit = std::mem::take(&mut self.clear_route_cache) > 0;
        let changed = std::mem::take(&mut self.request_headers_changed);
        explicit || changed
    }

    /// Whether the filter closed the stream (either direction resets an HTTP stream in Envoy), and forgets it.
    pub fn take_close(&mut self) -> bool {
        let request = std::mem::take(&mut self.close_request);
        let response = std::mem::take(&mut self.close_response);
        request || response
    }
}

impl StreamState {
    pub fn new(properties: Properties) -> Self {
        StreamState {
            properties,
            ..Default::default()
        }
    }

    /// A value stored by `proxy_set_property` under the given path segments.
    pub fn filter_state_value(&self, segments: &[&str]) -> Option<&[u8]> {
        let key = segments.join("\0").into_bytes();
        self.filter_state.get(&key).map(Vec::as_slice)
    }
}
