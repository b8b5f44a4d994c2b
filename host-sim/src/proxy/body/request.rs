//! The request body on its way up: through the request-body and trailers callbacks of both chains
//! ([`FilteredRequest`]), or untouched when no filter reads it, noting only when it ended ([`NotesEnd`]).

use super::gather::{data_then_end, Gather};
use super::*;
use hyper::body::SizeHint;

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
