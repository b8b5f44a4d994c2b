//! What a test hands the harness and gets back: the request (with the upstream's answer), the response, where the
//! stream stands, and everything observable about one driven request.

use std::collections::BTreeMap;

use crate::headers::HeaderMap;
use crate::properties::{Properties, PropertyValue};
use crate::stream::{LocalReply, StreamEffects};
use crate::types::Action;
use crate::vm::HttpStream;

/// A request to drive through the filter, with the upstream's answer to use if the request
/// gets that far.
#[derive(Debug, Clone)]
pub struct Request {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    /// Stream properties (`source.address`, `xds.route_name`, `upstream.address` ...).
    pub properties: Properties,
    /// What the upstream answers (default: 200 with no body).
    pub upstream_response: Response,
}

impl Request {
    /// A request with `:method`, `:scheme`, `:authority` and `:path` taken from `url`
    /// (`http://host[:port]/path?query`). A URL without a scheme is used as the path.
    pub fn new(method: &str, url: &str) -> Self {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s, r),
            None => ("http", url),
        };
        let (authority, path) = if url.contains("://") {
            match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            }
        } else {
            ("", rest)
        };
        let mut headers = HeaderMap::new();
        headers.add(":method", method);
        headers.add(":scheme", scheme);
        if !authority.is_empty() {
            headers.add(":authority", authority);
        }
        headers.add(":path", path);
        Request {
            headers,
            body: Vec::new(),
            trailers: HeaderMap::new(),
            properties: Properties::new(),
            upstream_response: Response::new(200),
        }
    }

    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// Builds a request from raw headers, exactly as given.
    pub fn from_headers(headers: HeaderMap) -> Self {
        Request {
            headers,
            body: Vec::new(),
            trailers: HeaderMap::new(),
            properties: Properties::new(),
            upstream_response: Response::new(200),
        }
    }

    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers.add(key, value);
        self
    }

    /// Replaces a header (e.g. `:authority`).
    pub fn set_header(mut self, key: &str, value: &str) -> Self {
        self.headers.replace(key, value);
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn trailer(mut self, key: &str, value: &str) -> Self {
        self.trailers.add(key, value);
        self
    }

    pub fn property(mut self, name: &str, value: impl Into<PropertyValue>) -> Self {
        self.properties.set(name, value);
        self
    }

    pub fn upstream_response(mut self, response: Response) -> Self {
        self.upstream_response = response;
        self
    }
}

/// An upstream (or local) response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            headers: HeaderMap::from_pairs([(":status", status.to_string())]),
            body: Vec::new(),
            trailers: HeaderMap::new(),
        }
    }

    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers.add(key, value);
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn trailer(mut self, key: &str, value: &str) -> Self {
        self.trailers.add(key, value);
        self
    }
}

/// Where a stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stopped in the request path, waiting for `proxy_continue_stream(Request)`.
    RequestPaused,
    /// Stopped in the response path, waiting for `proxy_continue_stream(Response)`.
    ResponsePaused,
    /// Done: `proxy_on_done`, `proxy_on_log` and `proxy_on_delete` have run.
    Finished,
    /// The guest trapped; the stream was failed (Envoy answers 503 `wasm_fail_stream`).
    Failed,
}

/// Everything observable about one driven request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stream: HttpStream,
    pub stage: Stage,
    /// Each callback run, with the action it returned (in order).
    pub actions: Vec<(&'static str, Action)>,
    /// The request as it reached the upstream (after the filter's mutations), if it did.
    pub upstream_request: Option<Response>,
    pub reached_upstream: bool,
    /// The request maps as the filter left them.
    pub request_headers: HeaderMap,
    pub request_body: Vec<u8>,
    pub request_trailers: HeaderMap,
    /// The response sent downstream (after the filter's response callbacks).
    pub response_headers: HeaderMap,
    pub response_body: Vec<u8>,
    pub response_trailers: HeaderMap,
    pub local_reply: Option<LocalReply>,
    pub effects: StreamEffects,
    /// Values stored with `proxy_set_property`, keyed by raw path (segments joined by NUL).
    pub filter_state: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The trap message when the stream failed.
    pub trap: Option<String>,
}

impl Outcome {
    /// The `:status` sent downstream (0 when the stream has not answered yet).
    pub fn status(&self) -> u16 {
        self.response_headers
            .get_str(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The action returned by the first run of `callback` (e.g. `"proxy_on_request_headers"`).
    pub fn action(&self, callback: &str) -> Option<Action> {
        self.actions
            .iter()
            .find(|(c, _)| *c == callback)
            .map(|(_, a)| *a)
    }

    /// A `proxy_set_property` value by its path segments.
    pub fn property_set(&self, segments: &[&str]) -> Option<&[u8]> {
        self.filter_state
            .get(segments.join("\0").as_bytes())
            .map(Vec::as_slice)
    }
}
