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

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::headers::{HeaderMap, MapKind};

use super::access_log::PendingEntry;
use super::local_reply::EnvoyReply;
use super::message::{append_wire_field, BoxError, Reply};
use super::wasm_chain::{Outcome, Phase, WasmChain};

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

/// The request body as the upstream receives it: each data frame through the request-body callbacks. While filters hold back more than `buffer_limit` bytes the request is refused
/// with 413, as Envoy refuses a body past the listener's buffer limit while a filter buffers it.
pub(crate) struct FilteredRequest<B> {
    inner: B,
    chains: SharedChains,
    early_reply: EarlyReply,
    buffer_limit: usize,
    /// Bytes received since the filters last let something through.
    held: usize,
    done: bool,
    /// The client's body broke off after data that still went through the filters: reported next.
    failed: Option<BoxError>,
    /// A filter paused the request headers: what arrived meanwhile goes on as one chunk (see [`StreamChains`]).
    held_by_pause: bool,
    gather: Gather,
    /// Set once the request's last byte is in, before the filters hear of the end (see [`NotesEnd`]).
    complete: Rc<std::cell::Cell<bool>>,
    trailer_codecs: TrailerCodecs,
    /// Trailers that go upstream once the body before them is out.
    pending_trailers: Option<hyper::HeaderMap>,
}

impl<B> FilteredRequest<B> {
    pub fn new(
        inner: B,
        chains: SharedChains,
        early_reply: EarlyReply,
        buffer_limit: usize,
    ) -> Self {
        let held_by_pause = chains.borrow().paused_in(Phase::RequestHeaders);
        FilteredRequest {
            inner,
            held_by_pause,
            chains,
            early_reply,
            buffer_limit,
            held: 0,
            done: false,
            failed: None,
            gather: Gather::default(),
            complete: Rc::default(),
            trailer_codecs: TrailerCodecs::default(),
            pending_trailers: None,
        }
    }

    /// Reads (and forwards) the request's trailers as the two codecs' `enable_trailers` say.
    pub fn with_trailers(mut self, codecs: TrailerCodecs) -> Self {
        self.trailer_codecs = codecs;
        self
    }

    /// The request ends with trailers: the body before them with end_of_stream false, then the trailers callbacks;
    /// what the filters release goes up, then the trailers if the upstream codec writes them.
    fn filter_trailers(
        &mut self,
        data: &[u8],
        trailers: &hyper::HeaderMap,
    ) -> Result<Option<Vec<u8>>, Reply> {
        let mut out = if data.is_empty() {
            Vec::new()
        } else {
            self.filter_data(data, false)?.unwrap_or_default()
        };
        self.complete.set(true);
        let mut map = trailers_from_hyper(MapKind::RequestTrailers, trailers);
        let released = self
            .chains
            .borrow_mut()
            .trailers(Phase::RequestHeaders, Vec::new(), &mut map)
            .map_err(reply_for)?;
        out.extend_from_slice(&released);
        if self.trailer_codecs.write {
            self.pending_trailers = Some(trailers_to_hyper(&map));
        }
        Ok(Some(out))
    }

    /// Notes the request's end in `complete` as soon as it is known (a reply the end callback makes then finds the
    /// request complete, as Envoy's codec marks it before `decodeData(buffer, true)`).
    pub fn noting_end_in(mut self, complete: Rc<std::cell::Cell<bool>>) -> Self {
        self.complete = complete;
        self
    }

    /// Runs a chunk through the downstream, then the upstream filters; `None` while some filter buffers.
    fn filter_data(&mut self, data: &[u8], end_of_stream: bool) -> Result<Option<Vec<u8>>, Reply> {
        if end_of_stream {
            self.complete.set(true);
        }
        self.held += data.len();
        let passed = {
            let mut chains = self.chains.borrow_mut();
            chains.count(Phase::RequestHeaders, data.len());
            chains.body(Phase::RequestHeaders, data, end_of_stream)
        };
        match passed {
            Ok(Some(out)) => {
                self.held = 0;
                Ok(Some(out))
            }
            Ok(None) if self.held > self.buffer_limit => {
                Err(Reply::Envoy(EnvoyReply::payload_too_large()))
            }
            Ok(None) => Ok(None),
            Err(outcome) => Err(reply_for(outcome)),
        }
    }

    /// The request ends here: the reply goes to the client instead, and the upstream request is abandoned.
    fn end_early(&mut self, reply: Reply) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        *self.early_reply.borrow_mut() = Some(reply);
        Poll::Ready(Some(Err("a wasm filter ended the request".into())))
    }
}

impl<B> Body for FilteredRequest<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(error) = this.failed.take() {
                this.done = true;
                return Poll::Ready(Some(Err(error)));
            }
            if this.done {
                return Poll::Ready(this.pending_trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let result = if this.gather.is_gathering() {
                let (data, after) =
                    match this
                        .gather
                        .poll_rest(&mut this.inner, cx, this.buffer_limit)
                    {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(read) => read,
                    };
                let (ends, trailers, failed) = this.trailer_codecs.settle(after);
                if let Some(error) = failed {
                    this.failed = Some(error.into());
                }
                if let Some(trailers) = trailers {
                    this.filter_trailers(&data, &trailers)
                        .map(|out| (out, true))
                } else if std::mem::take(&mut this.held_by_pause) && ends {
                    this.filter_data(&data, true).map(|out| (out, true))
                } else {
                    data_then_end(|d, e| this.filter_data(d, e), &data, ends)
                }
            } else {
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    // The client went away or broke the framing: the upstream request is abandoned with it.
                    Poll::Ready(Some(Err(error))) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(error.into())));
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            this.gather.start(data);
                            continue;
                        }
                        // Trailers end the body (see the module's note).
                        Err(frame) => match this.trailer_codecs.take(frame.into_trailers().ok()) {
                            Some(trailers) => {
                                this.filter_trailers(&[], &trailers).map(|out| (out, true))
                            }
                            None => this.filter_data(&[], true).map(|out| (out, true)),
                        },
                    },
                    // The body ended without a final data frame.
                    Poll::Ready(None) => this.filter_data(&[], true).map(|out| (out, true)),
                }
            };
            match result {
                Ok((Some(out), ended)) => {
                    this.done = ended;
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                // Buffered by a filter: read on.
                Ok((None, _)) => continue,
                Err(reply) => return this.end_early(reply),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // hyper stops polling at the end: trailers still to come keep it open.
        self.done && self.pending_trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // The filters may change the body's length.
        SizeHint::default()
    }
}

/// How much of an upstream response body is gathered into one chunk at most: Envoy's default connection buffer
/// limit (`per_connection_buffer_limit_bytes`, 1 MiB), where its read loop stops.
const UPSTREAM_READ_LIMIT: usize = 1024 * 1024;

/// What followed the data a [`Gather`] took.
enum After<E> {
    /// More may come later.
    Open,
    /// The body ended.
    Ended,
    /// Trailers came, which end the body.
    Trailers(hyper::HeaderMap),
    /// The body broke off.
    Failed(E),
}

/// A body chunk being put together from the frames that are ready. Envoy reads a socket until it would block (or
/// its buffer limit) and hands the codec all of it at once (`RawBufferSocket::doRead`), so the filters see what
/// arrived together as one chunk; hyper's connection task yields it in pieces of its own read size. So the frames
/// are taken until one round of the event loop brings nothing new.
#[derive(Default)]
struct Gather {
    buf: Option<bytes::BytesMut>,
    /// Rounds given to the connection task since something last arrived.
    idle_rounds: u8,
}

/// Rounds of the event loop without new data after which a chunk is complete: hyper's connection task reads one
/// buffer per round, and the order in which woken tasks run is the runtime's.
const IDLE_ROUNDS: u8 = 3;

impl Gather {
    fn is_gathering(&self) -> bool {
        self.buf.is_some()
    }

    fn start(&mut self, first: Bytes) {
        self.buf = Some(bytes::BytesMut::from(&first[..]));
        self.idle_rounds = 0;
    }

    /// Reads on until nothing more is ready (up to `limit` bytes); then the chunk and what followed it.
    fn poll_rest<B>(
        &mut self,
        inner: &mut B,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<(Bytes, After<B::Error>)>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let after = loop {
            // The end first: a last chunk that fills the limit still carries it (hyper stops polling a body once
            // its content-length is written).
            if inner.is_end_stream() {
                break After::Ended;
            }
            if self.buf.as_ref().map_or(0, |b| b.len()) >= limit {
                break After::Open;
            }
            match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Pending if self.idle_rounds < IDLE_ROUNDS => {
                    self.idle_rounds += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => break After::Open,
                Poll::Ready(None) => break After::Ended,
                Poll::Ready(Some(Err(error))) => break After::Failed(error),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(more) => {
                        self.buf
                            .get_or_insert_with(bytes::BytesMut::new)
                            .extend_from_slice(&more);
                        self.idle_rounds = 0;
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => break After::Trailers(trailers),
                        Err(_) => break After::Ended,
                    },
                },
            }
        };
        self.idle_rounds = 0;
        let chunk = self
            .buf
            .take()
            .map(bytes::BytesMut::freeze)
            .unwrap_or_default();
        Poll::Ready((chunk, after))
    }
}

/// A chunk from an HTTP/1 codec, the way Envoy's codecs hand it to the filters: data with end_stream false, then
/// an empty chunk with end_stream true once the message is complete (`ServerConnectionImpl::onMessageCompleteBase`
/// and `ClientConnectionImpl::onMessageCompleteBase` call `decodeData(buffer, true)`). When the last chunk is known
/// to be the last (`ends`), the end call follows at once: hyper stops polling a body once its content-length is
/// written, so a later one would never come. Returns what to forward (`None` while a filter buffers) and whether
/// the end went through.
fn data_then_end<E>(
    mut filter: impl FnMut(&[u8], bool) -> Result<Option<Vec<u8>>, E>,
    data: &[u8],
    ends: bool,
) -> Result<(Option<Vec<u8>>, bool), E> {
    let first = filter(data, false)?;
    if !ends {
        return Ok((first, false));
    }
    Ok(match (first, filter(&[], true)?) {
        (first, Some(rest)) => {
            let mut out = first.unwrap_or_default();
            out.extend_from_slice(&rest);
            (Some(out), true)
        }
        (first, None) => (first, false),
    })
}

/// A request body that notes when its last byte went by: a response that starts before then closes an HTTP/1
/// connection, as Envoy's `ActiveStream::encodeHeaders` does when the last downstream byte was not received.
/// Trailers go on only when both codecs take them (see the module's note).
pub(crate) struct NotesEnd<B> {
    inner: B,
    ended: Rc<std::cell::Cell<bool>>,
    pass_trailers: bool,
}

impl<B> NotesEnd<B> {
    pub fn new(inner: B, ended: Rc<std::cell::Cell<bool>>, codecs: TrailerCodecs) -> Self {
        NotesEnd {
            inner,
            ended,
            pass_trailers: codecs.read && codecs.write,
        }
    }
}

impl<B> Body for NotesEnd<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if frame.is_trailers() && !this.pass_trailers {
                polled = Poll::Ready(None);
            }
        }
        // An error (the client broke off, or a filter ended the request early) is no end of the request.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            this.ended.set(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
fn reply_for(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::LocalReply(reply) => Reply::Wasm(reply),
        Outcome::Failed(reply) => Reply::Envoy(reply),
        Outcome::Reset => Reply::Reset,
        // Not produced by body or trailer callbacks; a stream cannot be held here.
        Outcome::Continue { .. } | Outcome::Paused => Reply::Envoy(EnvoyReply::wasm_failed()),
    }
}

pub(crate) struct FilteredResponse<B> {
    inner: B,
    chains: SharedChains,
    headers: HeaderMap,
    status: u16,
    /// No filter in either chain: frames pass untouched.
    passthrough: bool,
    /// The body was empty from the start: the server may never poll it.
    empty: bool,
    done: bool,
    /// The upstream broke off after data that still went through the filters: reported next.
    failed: Option<BoxError>,
    /// A filter paused the response headers: what arrived meanwhile goes on as one chunk (see [`StreamChains`]).
    held_by_pause: bool,
    gather: Gather,
    log: Option<PendingEntry>,
    trailer_codecs: TrailerCodecs,
    /// Trailers that go to the client once the body before them is out.
    pending_trailers: Option<hyper::HeaderMap>,
}

impl<B: Body> FilteredResponse<B> {
    pub fn new(
        inner: B,
        chains: SharedChains,
        headers: HeaderMap,
        status: u16,
        log: Option<PendingEntry>,
    ) -> Self {
        let passthrough = {
            let chains = chains.borrow();
            chains.downstream.is_empty() && chains.upstream.is_empty()
        };
        let held_by_pause = chains.borrow().paused_in(Phase::ResponseHeaders);
        FilteredResponse {
            empty: inner.is_end_stream(),
            inner,
            held_by_pause,
            chains,
            headers,
            status,
            passthrough,
            done: false,
            failed: None,
            gather: Gather::default(),
            log,
            trailer_codecs: TrailerCodecs::default(),
            pending_trailers: None,
        }
    }

    /// Reads (and forwards) the response's trailers as the two codecs' `enable_trailers` say.
    pub fn with_trailers(mut self, codecs: TrailerCodecs) -> Self {
        self.trailer_codecs = codecs;
        self
    }
}

impl<B> FilteredResponse<B> {
    fn finish(&mut self, details: &str) {
        if !self.done {
            self.done = true;
            let mut chains = self.chains.borrow_mut();
            chains
                .upstream
                .finish(Some(&self.headers), Some(self.status), details);
            chains
                .downstream
                .finish(Some(&self.headers), Some(self.status), details);
            if let Some(log) = self.log.take() {
                log.finish(details);
            }
        }
    }

    /// Runs a chunk through both chains; `None` while some filter buffers.
    fn filter_data(
        &mut self,
        data: &[u8],
        end_of_stream: bool,
    ) -> Result<Option<Vec<u8>>, BoxError> {
        let mut chains = self.chains.borrow_mut();
        let passed = chains
            .body(Phase::ResponseHeaders, data, end_of_stream)
            .map_err(|_| AFTER_RESPONSE_STARTED)?;
        if let Some(out) = &passed {
            chains.count(Phase::ResponseHeaders, out.len());
        }
        Ok(passed)
    }
}

impl<B> FilteredResponse<B> {
    /// The response ends with trailers: the body before them with end_of_stream false, then the trailers
    /// callbacks; what the filters release goes to the client, then the trailers if the downstream codec writes
    /// them.
    fn filter_trailers(
        &mut self,
        data: &[u8],
        trailers: &hyper::HeaderMap,
    ) -> Result<Option<Vec<u8>>, BoxError> {
        let mut out = if data.is_empty() {
            Vec::new()
        } else {
            self.filter_data(data, false)?.unwrap_or_default()
        };
        let mut map = trailers_from_hyper(MapKind::ResponseTrailers, trailers);
        let mut chains = self.chains.borrow_mut();
        let released = chains
            .trailers(Phase::ResponseHeaders, Vec::new(), &mut map)
            .map_err(|_| AFTER_RESPONSE_STARTED)?;
        chains.count(Phase::ResponseHeaders, released.len());
        out.extend_from_slice(&released);
        if self.trailer_codecs.write {
            self.pending_trailers = Some(trailers_to_hyper(&map));
        }
        Ok(Some(out))
    }
}

/// Headers are gone already: a reply or failure now can only reset the stream, as in Envoy.
const AFTER_RESPONSE_STARTED: &str = "a wasm filter failed or replied after the response started";

impl<B> Body for FilteredResponse<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(error) = this.failed.take() {
                this.finish(&upstream_reset_details(&error));
                return Poll::Ready(Some(Err(error)));
            }
            if this.done {
                if let Some(trailers) = this.pending_trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            let result = if this.gather.is_gathering() {
                let (data, after) =
                    match this
                        .gather
                        .poll_rest(&mut this.inner, cx, UPSTREAM_READ_LIMIT)
                    {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(read) => read,
                    };
                let (ends, trailers, failed) = this.trailer_codecs.settle(after);
                if let Some(error) = failed {
                    this.failed = Some(error.into());
                }
                if let Some(trailers) = trailers {
                    this.filter_trailers(&data, &trailers)
                        .map(|out| (out, true))
                } else if std::mem::take(&mut this.held_by_pause) && ends {
                    this.filter_data(&data, true)
                        .map(|out| (out.clone(), out.is_some()))
                } else {
                    data_then_end(|d, e| this.filter_data(d, e), &data, ends)
                }
            } else {
                match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Err(error))) => {
                        let error = error.into();
                        this.finish(&upstream_reset_details(&error));
                        return Poll::Ready(Some(Err(error)));
                    }
                    Poll::Ready(None) if this.passthrough || this.done => {
                        this.finish("via_upstream");
                        return Poll::Ready(None);
                    }
                    // Trailers go through untouched only when both codecs take them; otherwise they end the body.
                    Poll::Ready(Some(Ok(frame)))
                        if this.passthrough
                            && frame.is_trailers()
                            && !(this.trailer_codecs.read && this.trailer_codecs.write) =>
                    {
                        this.finish("via_upstream");
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Ok(frame))) if this.passthrough => {
                        if this.inner.is_end_stream() || frame.is_trailers() {
                            this.finish("via_upstream");
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            this.gather.start(data);
                            continue;
                        }
                        // Trailers end the body (see the module's note).
                        Err(frame) => match this.trailer_codecs.take(frame.into_trailers().ok()) {
                            Some(trailers) => {
                                this.filter_trailers(&[], &trailers).map(|out| (out, true))
                            }
                            None => this
                                .filter_data(&[], true)
                                .map(|out| (out.clone(), out.is_some())),
                        },
                    },
                    // The body ended without a final data frame: buffering filters get their end-of-stream call.
                    Poll::Ready(None) => this
                        .filter_data(&[], true)
                        .map(|out| (out.clone(), out.is_some())),
                }
            };
            match result {
                Ok((Some(out), ended)) => {
                    if ended {
                        this.finish("via_upstream");
                    }
                    if out.is_empty() && !ended {
                        continue;
                    }
                    if out.is_empty() {
                        return Poll::Ready(
                            this.pending_trailers.take().map(|t| Ok(Frame::trailers(t))),
                        );
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                // Buffered by a filter: read on.
                Ok((None, _)) => continue,
                Err(error) => {
                    this.finish("wasm_fail_stream");
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.passthrough && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.passthrough {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

impl<B> Drop for FilteredResponse<B> {
    fn drop(&mut self) {
        let details = if self.empty {
            "via_upstream"
        } else {
            "downstream_remote_disconnect"
        };
        self.finish(details);
    }
}

/// Envoy's details for an upstream that broke off after the response started: a body shorter than announced is a
/// protocol error, anything else the connection ending.
fn upstream_reset_details(error: &BoxError) -> String {
    let hyper_says = error
        .downcast_ref::<hyper::Error>()
        .is_some_and(|error| error.is_incomplete_message() || error.is_parse());
    // hyper reports a body cut short as an I/O "unexpected end of file" under its body error.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    let mut cut_short = false;
    while let Some(error) = source {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        {
            cut_short = true;
        }
        source = error.source();
    }
    let incomplete = hyper_says || cut_short;
    let reason = if incomplete {
        "protocol_error"
    } else {
        "connection_termination"
    };
    format!("upstream_reset_after_response_started{{{reason}}}")
}

/// Trailers as the filters see them (`kind` decides which names are inline, as for headers).
fn trailers_from_hyper(kind: MapKind, trailers: &hyper::HeaderMap) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in trailers {
        map.add_as(kind, name.as_str(), value.as_bytes());
    }
    map
}

/// Trailers as hyper writes them; a name or value a filter set that is not valid on the wire is left out.
fn trailers_to_hyper(trailers: &HeaderMap) -> hyper::HeaderMap {
    let mut map = hyper::HeaderMap::new();
    for (name, value) in trailers.iter() {
        if !append_wire_field(&mut map, name, value) {
            tracing::debug!("dropping a trailer a filter set with invalid bytes");
        }
    }
    map
}
