//! The response body on its way to the client: each data frame passes the wasm filters' body callbacks (upstream
//! chain, then downstream chain in reverse), trailers pass the trailer callbacks, and when the body ends (or the
//! client goes away, or the upstream breaks off) every wasm context is finished and the access log written with
//! how the stream ended, as in Envoy's access-log phase.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::headers::HeaderMap;

use super::access_log::PendingEntry;
use super::http::BoxError;
use super::wasm_chain::{Phase, WasmChain};

pub(crate) struct FilteredResponse<B> {
    inner: B,
    downstream: WasmChain,
    upstream: WasmChain,
    headers: HeaderMap,
    status: u16,
    /// No filter in either chain: frames pass untouched.
    passthrough: bool,
    /// The body was empty from the start: the server may never poll it.
    empty: bool,
    done: bool,
    log: Option<PendingEntry>,
}

impl<B: Body> FilteredResponse<B> {
    pub fn new(
        inner: B,
        downstream: WasmChain,
        upstream: WasmChain,
        headers: HeaderMap,
        status: u16,
        log: Option<PendingEntry>,
    ) -> Self {
        let passthrough = downstream.is_empty() && upstream.is_empty();
        FilteredResponse {
            empty: inner.is_end_stream(),
            inner,
            downstream,
            upstream,
            headers,
            status,
            passthrough,
            done: false,
            log,
        }
    }
}

impl<B> FilteredResponse<B> {
    fn finish(&mut self, details: &str) {
        if !self.done {
            self.done = true;
            self.upstream
                .finish(Some(&self.headers), Some(self.status), details);
            self.downstream
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
        let mut data = data.to_vec();
        for chain in [&mut self.upstream, &mut self.downstream] {
            match chain.body(Phase::ResponseHeaders, &data, end_of_stream) {
                Ok(Some(out)) => data = out,
                Ok(None) => return Ok(None),
                // Headers are gone already: a reply or failure now can only reset the stream, as in Envoy.
                Err(_) => {
                    return Err("a wasm filter failed or replied after the response started".into())
                }
            }
        }
        Ok(Some(data))
    }
}

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
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    if !this.passthrough && !this.done {
                        // End of stream with no final frame: give buffering filters their end-of-stream call.
                        let flushed = this.filter_data(&[], true);
                        this.finish("via_upstream");
                        return match flushed {
                            Ok(Some(data)) if !data.is_empty() => {
                                Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
                            }
                            Ok(_) => Poll::Ready(None),
                            Err(error) => Poll::Ready(Some(Err(error))),
                        };
                    }
                    this.finish("via_upstream");
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    let error = error.into();
                    this.finish(&upstream_reset_details(&error));
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            if this.passthrough {
                if this.inner.is_end_stream() {
                    this.finish("via_upstream");
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            match frame.into_data() {
                Ok(data) => {
                    let end = this.inner.is_end_stream();
                    match this.filter_data(&data, end) {
                        Ok(Some(out)) => {
                            if end {
                                this.finish("via_upstream");
                            }
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                        // Buffered by a filter: read on.
                        Ok(None) => continue,
                        Err(error) => {
                            this.finish("wasm_fail_stream");
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let mut map = HeaderMap::new();
                        for (name, value) in &trailers {
                            map.add(name.as_str(), value.as_bytes());
                        }
                        for chain in [&mut this.upstream, &mut this.downstream] {
                            chain.for_each_state(|state| state.response_trailers = map.clone());
                        }
                        this.finish("via_upstream");
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    continue;
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
