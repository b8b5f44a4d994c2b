//! Bodies on their way through the wasm filters. The request body streams to the upstream chunk by chunk through
//! the filters' request-body callbacks (downstream chain, then upstream chain), as Envoy streams it once the router
//! has the upstream; the response body comes back through the upstream chain, then the downstream chain, each in
//! reverse. When the response body ends (or the client goes away, or the upstream breaks off) every wasm context is
//! finished and the access log written with how the stream ended, as in Envoy's access-log phase.
//!
//! HTTP/1 trailers are read only where Envoy's codec reads them, with `enable_trailers` in the codec's
//! `http_protocol_options` (the connection manager's for a request, the cluster's for a response;
//! `ConnectionImpl::onHeaderFieldImpl` ignores them otherwise). Read, they end the body: the body callbacks see
//! end_of_stream false and the trailers callbacks follow (`ServerConnectionImpl::onMessageCompleteBase` calls
//! `decodeTrailers` instead of `decodeData(buffer, true)`). They go on only where the next codec writes them
//! (`StreamEncoderImpl::encodeTrailersBase`); otherwise, and when not read, they end the body and go no further.
//!
//! The parts: [`request`] (the request body up, and the end of a request no filter reads), [`response`] (the
//! response body down), [`gather`] (putting a chunk together as Envoy's read loop does), [`read_ahead`] (the body
//! read while a filter holds the request headers).

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};

use crate::headers::{HeaderMap, MapKind};

use super::local_reply::EnvoyReply;
use super::message::{append_wire_field, BoxError, Reply};
use super::wasm_chain::{Outcome, Phase, WasmChain};

mod gather;
mod read_ahead;
mod request;
mod response;

use gather::After;
pub(crate) use read_ahead::{ReadAhead, ReadStep};
pub(crate) use request::{FilteredRequest, NotesEnd};
pub(crate) use response::FilteredResponse;

/// The wasm contexts of one stream: the listener's filters and the cluster's upstream filters. The request body
/// (while it streams up) and the response share them.
pub(crate) struct StreamChains {
    pub downstream: WasmChain,
    pub upstream: WasmChain,
}

/// Which of a stream's two chains.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Downstream,
    Upstream,
}

/// Which codecs read and write trailers, from their `enable_trailers`: `read` for the side the body comes from,
/// `write` for the side it goes to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TrailerCodecs {
    pub read: bool,
    pub write: bool,
}

impl TrailerCodecs {
    /// The trailers a frame carried, if the reading codec takes them (`enable_trailers`; an empty trailer section
    /// is none).
    fn take(&self, trailers: Option<hyper::HeaderMap>) -> Option<hyper::HeaderMap> {
        trailers.filter(|t| self.read && !t.is_empty())
    }

    /// What followed a gathered chunk: whether the body ended, the trailers that ended it if they are read, and a
    /// failure to report after the chunk.
    fn settle<E>(&self, after: After<E>) -> (bool, Option<hyper::HeaderMap>, Option<E>) {
        match after {
            After::Open => (false, None, None),
            After::Ended => (true, None, None),
            After::Trailers(trailers) => (true, self.take(Some(trailers)), None),
            After::Failed(error) => (false, None, Some(error)),
        }
    }
}

impl StreamChains {
    pub fn side(&mut self, side: Side) -> &mut WasmChain {
        match side {
            Side::Downstream => &mut self.downstream,
            Side::Upstream => &mut self.upstream,
        }
    }

    /// Some filter paused in this headers phase: Envoy buffers the body meanwhile and hands it on in one chunk,
    /// with end_stream if the end came too (`ActiveStreamFilterBase::commonContinue`).
    fn paused_in(&self, phase: Phase) -> bool {
        self.downstream.paused_in(phase) || self.upstream.paused_in(phase)
    }

    /// Runs a body chunk through both chains in Envoy's order: the request through the downstream filters, then
    /// the upstream ones; the response back through the upstream filters, then the downstream ones. Returns the
    /// bytes to forward (`None` while some filter buffers), or the outcome that ends the stream.
    fn body(
        &mut self,
        phase: Phase,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<Option<Vec<u8>>, Outcome> {
        let chains = match phase {
            Phase::RequestHeaders => [&mut self.downstream, &mut self.upstream],
            Phase::ResponseHeaders => [&mut self.upstream, &mut self.downstream],
        };
        let mut data = data.to_vec();
        for chain in chains {
            match chain.body(phase, &data, end_of_stream)? {
                Some(out) => data = out,
                None => return Ok(None),
            }
        }
        Ok(Some(data))
    }

    /// Runs trailers through both chains in the order of [`StreamChains::body`]; `body` is what the chains still
    /// have to see ahead of them. Returns the body to forward before the trailers.
    fn trailers(
        &mut self,
        phase: Phase,
        body: Vec<u8>,
        trailers: &mut HeaderMap,
    ) -> Result<Vec<u8>, Outcome> {
        let chains = match phase {
            Phase::RequestHeaders => [&mut self.downstream, &mut self.upstream],
            Phase::ResponseHeaders => [&mut self.upstream, &mut self.downstream],
        };
        let mut data = body;
        for chain in chains {
            data = chain.trailers(phase, data, trailers)?;
        }
        Ok(data)
    }

    /// Counts body bytes for the `request.size` / `response.size` properties of every context of the stream.
    fn count(&mut self, phase: Phase, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let bytes = bytes as u64;
        for chain in [&mut self.downstream, &mut self.upstream] {
            chain.for_each_state(|state| match phase {
                Phase::RequestHeaders => state.request_body_bytes += bytes,
                Phase::ResponseHeaders => state.response_body_bytes += bytes,
            });
        }
    }
}

pub(crate) type SharedChains = Rc<RefCell<StreamChains>>;

/// Where the request body leaves the reply that ended the request early (a filter's local reply, a failed
/// filter, a body over the buffer limit), for the exchange to send once the upstream request is abandoned.
pub(crate) type EarlyReply = Rc<RefCell<Option<Reply>>>;

/// The body of a reset stream: it fails when first polled, and hyper then drops the connection without writing the
/// response it belongs to.
pub(crate) struct ResetBody;

impl Body for ResetBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Err("a wasm filter closed the stream".into())))
    }
}

/// The reply a filter outcome ends the stream with.
pub(super) fn reply_for(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::LocalReply(reply) => Reply::Wasm(reply),
        Outcome::Failed(reply) => Reply::Envoy(reply),
        Outcome::Reset => Reply::Reset,
        // Not produced by body or trailer callbacks; a stream cannot be held here.
        Outcome::Continue { .. } | Outcome::Paused => Reply::Envoy(EnvoyReply::wasm_failed()),
    }
}

/// Trailers as the filters see them (`kind` decides which names are inline, as for headers).
pub(super) fn trailers_from_hyper(kind: MapKind, trailers: &hyper::HeaderMap) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in trailers {
        map.add_as(kind, name.as_str(), value.as_bytes());
    }
    map
}

/// Trailers as hyper writes them; a name or value a filter set that is not valid on the wire is left out.
pub(super) fn trailers_to_hyper(trailers: &HeaderMap) -> hyper::HeaderMap {
    let mut map = hyper::HeaderMap::new();
    for (name, value) in trailers.iter() {
        if !append_wire_field(&mut map, name, value) {
            tracing::debug!("dropping a trailer a filter set with invalid bytes");
        }
    }
    map
}
