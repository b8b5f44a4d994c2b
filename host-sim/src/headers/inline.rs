//! Envoy's inline ("O(1)") headers: the names a header map of each kind keeps in one slot. Adding to a slot that
//! is already set appends `,value` to it instead of making a second entry (`HeaderMapImpl::insertByKey` →
//! `appendToHeader`), in every `addCopy`: a filter's `proxy_add_header_map_value`, the pairs of
//! `set_header_map_pairs`, `send_local_response` and `http_call`, and the codecs' parsed heads.
//!
//! The lists are Envoy 1.40's defaults (`envoy/http/header_map.h`: INLINE_REQ_HEADERS, INLINE_RESP_HEADERS,
//! INLINE_REQ_RESP_HEADERS, INLINE_RESP_HEADERS_TRAILERS) plus the custom inline headers the extensions of the
//! official build register at static initialisation (`RegisterCustomInlineHeader`: cache, compressor,
//! decompressor, cors, csrf, cdn_loop, grpc_web, jwt_authn, oauth2, the CEL context wasm links, ...), so they hold
//! whether or not those filters are configured. A build with another extension list (or bootstrap
//! `inline_headers`) has another set; docs/host-sim.md says so.

/// Which header map of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
}

/// Request-only defaults, then the request and response ones, then custom registrations (request).
const REQUEST: &[&str] = &[
    // INLINE_REQ_HEADERS
    "x-client-trace-id",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-is-timeout-retry",
    "x-envoy-original-path",
    "x-envoy-original-host",
    "x-envoy-original-url",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-alt-response",
    "expect",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "grpc-timeout",
    ":authority",
    ":method",
    ":path",
    ":protocol",
    ":scheme",
    "te",
    "user-agent",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-stream-duration-ms",
    "x-forwarded-port",
    // custom (request)
    "referer",
    "authorization",
    "pragma",
    "cache-control",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "cdn-loop",
    "accept-encoding",
    "content-encoding",
    "access-control-request-headers",
    "access-control-request-method",
    "origin",
    "access-control-request-private-network",
    "accept",
    "grpc-accept-encoding",
    "authentication",
];

/// INLINE_REQ_RESP_HEADERS: inline in request and response header maps.
const REQUEST_AND_RESPONSE: &[&str] = &[
    "connection",
    "content-type",
    "x-envoy-decorator-operation",
    "keep-alive",
    "proxy-connection",
    "proxy-status",
    "x-request-id",
    "transfer-encoding",
    "upgrade",
    "via",
    "content-length",
    "x-envoy-attempt-count",
];

const RESPONSE: &[&str] = &[
    // INLINE_RESP_HEADERS
    "date",
    "x-envoy-degraded",
    "x-envoy-immediate-health-check-fail",
    "x-envoy-ratelimited",
    "x-envoy-upstream-canary",
    "x-envoy-upstream-healthchecked-cluster",
    "location",
    "server",
    "x-envoy-upstream-service-time",
    ":status",
    // custom (response)
    "cache-control",
    "last-modified",
    "etag",
    "age",
    "expires",
    "vary",
    "content-encoding",
    "access-control-allow-origin",
    "access-control-allow-headers",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-max-age",
    "access-control-expose-headers",
    "access-control-allow-private-network",
];

/// INLINE_RESP_HEADERS_TRAILERS: response headers and response trailers.
const RESPONSE_AND_TRAILERS: &[&str] = &["grpc-message", "grpc-status"];

/// Whether `key` (lower-case) has an inline slot in a map of `kind`. Request trailers have none.
pub fn is_inline(kind: MapKind, key: &[u8]) -> bool {
    let lists: &[&[&str]] = match kind {
        MapKind::RequestHeaders => &[REQUEST, REQUEST_AND_RESPONSE],
        MapKind::ResponseHeaders => &[RESPONSE, REQUEST_AND_RESPONSE, RESPONSE_AND_TRAILERS],
        MapKind::ResponseTrailers => &[RESPONSE_AND_TRAILERS],
        MapKind::RequestTrailers => &[],
    };
    lists
        .iter()
        .any(|list| list.iter().any(|name| name.as_bytes() == key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_map_kind_has_its_own_slots() {
        assert!(is_inline(MapKind::RequestHeaders, b":authority"));
        assert!(is_inline(MapKind::RequestHeaders, b"content-type"));
        assert!(!is_inline(MapKind::RequestHeaders, b":status"));
        assert!(is_inline(MapKind::ResponseHeaders, b":status"));
        assert!(is_inline(MapKind::ResponseHeaders, b"grpc-status"));
        assert!(!is_inline(MapKind::ResponseHeaders, b"user-agent"));
        assert!(is_inline(MapKind::ResponseTrailers, b"grpc-message"));
        assert!(!is_inline(MapKind::RequestTrailers, b"content-type"));
        assert!(!is_inline(MapKind::RequestHeaders, b"x-a"));
        assert!(!is_inline(MapKind::RequestHeaders, b""));
    }
}
