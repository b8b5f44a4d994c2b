//! A body chunk put together as Envoy's read loop hands it to the codec, and the codec's end-of-message call.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Body;

/// How much of an upstream response body is gathered into one chunk at most: Envoy's default connection buffer
/// limit (`per_connection_buffer_limit_bytes`, 1 MiB), where its read loop stops.
pub(super) const UPSTREAM_READ_LIMIT: usize = 1024 * 1024;

/// What followed the data a [`Gather`] took.
pub(super) enum After<E> {
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
pub(super) struct Gather {
    buf: Option<bytes::BytesMut>,
    /// Rounds given to the connection task since something last arrived.
    idle_rounds: u8,
}

/// Rounds of the event loop without new data after which a chunk is complete: hyper's connection task reads one
/// buffer per round, and the order in which woken tasks run is the runtime's.
const IDLE_ROUNDS: u8 = 3;

impl Gather {
    pub(super) fn is_gathering(&self) -> bool {
        self.buf.is_some()
    }

    pub(super) fn start(&mut self, first: Bytes) {
        self.buf = Some(bytes::BytesMut::from(&first[..]));
        self.idle_rounds = 0;
    }

    /// Reads on until nothing more is ready (up to `limit` bytes); then the chunk and what followed it.
    pub(super) fn poll_rest<B>(
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
pub(super) fn data_then_end<E>(
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
