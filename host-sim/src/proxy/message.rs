//! The types a request's parts travel in between the modules of the proxy: bodies (boxed, worker-local), the
//! downstream connection's facts, the reply a stream ends with, and how a field is written on the wire. A leaf:
//! it imports nothing from the request flow.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::body::Body;

use crate::stream::LocalReply;

use super::local_reply::EnvoyReply;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies live on one worker (they may hold the worker's wasm contexts), so they need not be `Send`.
pub(crate) type LocalBody = std::pin::Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>;
pub(crate) type UpstreamBody = LocalBody;
pub(crate) type DownstreamBody = LocalBody;

pub(crate) fn local_body<B>(body: B) -> LocalBody
where
    B: Body<Data = Bytes, Error = BoxError> + 'static,
{
    Box::pin(body)
}

/// What the worker knows about the downstream connection.
pub(crate) struct ConnectionInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener: usize,
    /// What the handshake told, on a listener that terminates TLS.
    pub tls: Option<std::sync::Arc<crate::properties::ConnectionTls>>,
}

/// A reply from a wasm filter (with its own headers) or from the proxy itself.
pub(crate) enum Reply {
    Wasm(LocalReply),
    Envoy(EnvoyReply),
    /// No reply: the stream is reset (a filter closed it), so the client sees the connection end.
    Reset,
}

/// Appends a header (or trailer) field as hyper writes it; `false`, and nothing appended, when the name or value a
/// filter set is not valid on the wire.
pub(crate) fn append_wire_field(map: &mut hyper::HeaderMap, name: &[u8], value: &[u8]) -> bool {
    match (
        hyper::header::HeaderName::from_bytes(name),
        hyper::header::HeaderValue::from_bytes(value),
    ) {
        (Ok(name), Ok(value)) => {
            map.append(name, value);
            true
        }
        _ => false,
    }
}
