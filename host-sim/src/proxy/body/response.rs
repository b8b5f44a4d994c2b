//! The response body on its way down: through the response-body and trailers callbacks of both chains, each
//! context finished and the access log written when the stream ends.

use super::gather::{data_then_end, Gather, UPSTREAM_READ_LIMIT};
use super::*;
use crate::proxy::access_log::PendingEntry;
use hyper::body::SizeHint;

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
