//! The response a client receives: a hyper response built from a header map the filters may have edited, framed as
//! Envoy's HTTP/1 encoder frames it, and the replies the proxy writes itself.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::Response;

use crate::headers::HeaderMap;
use crate::proxy::local_reply::EnvoyReply;
use crate::proxy::message::{append_wire_field, local_body, BoxError, DownstreamBody, LocalBody};

/// What Envoy's connection manager removes from a (non-upgrade) response as it encodes it to an HTTP/1 client
/// (`ConnectionManagerUtility::mutateResponseHeaders`: `keep-alive` stays, by `preserve_downstream_keepalive`).
pub(super) const RESPONSE_HOP_BY_HOP: &[&str] = &[
    "connection",
    "upgrade",
    "transfer-encoding",
    "proxy-connection",
];

/// Whether the response still has the `:status` Envoy's `checkRequiredResponseHeaders` requires after the filters.
/// (A present but malformed one, e.g. `200,v` after a filter added a second `:status`, is measured to pass in some
/// paths and not in others; host-sim checks presence only, and the fuzzer's `status-header` tag documents the rest.)
pub(super) fn status_is_valid(headers: &HeaderMap) -> bool {
    headers.get(":status").is_some()
}

/// A body held whole in memory (local replies, a request body the filters have read).
/// A body whose length hyper does not learn (see [`build_response`]).
pub(super) struct LengthForgotten(LocalBody);

impl Body for LengthForgotten {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.0.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

pub(super) fn full_body(bytes: impl Into<Bytes>) -> LocalBody {
    local_body(Full::new(bytes.into()).map_err(|never| match never {}))
}

pub(super) fn envoy_reply_headers(reply: &EnvoyReply) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.add(":status", reply.status.to_string());
    if !reply.body.is_empty() {
        headers.add("content-length", reply.body.len().to_string());
        headers.add("content-type", "text/plain");
    }
    headers
}

pub(super) fn plain_reply(reply: &EnvoyReply) -> Response<DownstreamBody> {
    build_response(&envoy_reply_headers(reply), full_body(reply.body.clone()))
}

/// A hyper response from a header map (`:status` plus regular headers); invalid entries a filter wrote are dropped.
pub(super) fn build_response(
    headers: &HeaderMap,
    body: DownstreamBody,
) -> Response<DownstreamBody> {
    // A filter may leave a `content-length` that is not the body's: Envoy's HTTP/1 encoder writes the header as it
    // is and the body as it is. hyper trusts a body of known length over the header (and asserts they agree in a
    // debug build), so the length is forgotten and hyper frames by the header, as Envoy's codec does. A filter
    // may also remove it: Envoy then chunk-encodes a body that follows the head (`encodeHeadersBase`), where hyper
    // would write the known length back.
    let claimed = headers
        .get_str("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = match (body.size_hint().exact(), claimed) {
        (Some(exact), Some(claimed)) if exact != claimed => local_body(LengthForgotten(body)),
        (Some(exact), None) if exact > 0 && headers.get("content-length").is_none() => {
            local_body(LengthForgotten(body))
        }
        _ => body,
    };
    let status = headers
        .get_str(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| hyper::StatusCode::from_u16(s).ok())
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (name, value) in headers.iter() {
        // Envoy's HTTP/1 encoder writes a pseudo-header starting `:a` (`:authority`) as `host` and
        // drops every other one (StreamEncoderImpl::encodeHeadersBase).
        let name: &[u8] = match name {
            [b':', b'a', ..] => b"host",
            [b':', ..] => continue,
            _ => name,
        };
        if !append_wire_field(map, name, value) {
            tracing::debug!("dropping a response header a filter set with invalid bytes");
        }
    }
    response
}
