//! How a downstream socket closes: after reading what the client already sent.
//!
//! Envoy reads a readable socket until the kernel has nothing more (`RawBufferSocket::doRead` loops until EAGAIN,
//! or until the connection's read buffer is full), whatever the streams on it do with the bytes. So when a filter
//! resets a stream whose request body nobody consumed, the bytes are out of the kernel already and the close is a
//! FIN. hyper reads only what a handler polls; a socket closed with unread bytes in its receive queue makes the
//! kernel answer with a reset instead, and the client reports "connection reset" where Envoy's client reads an end
//! of stream (measured by the ABI fuzzer: a `close_stream` in the body callback of a direct response to a 20,000
//! byte request).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Envoy's default `per_connection_buffer_limit_bytes`: one read event takes at most this much.
const READ_LIMIT: usize = 1024 * 1024;

/// A downstream TCP stream that, when dropped, first reads and discards what is waiting in its receive queue.
pub(crate) struct DrainedOnClose(pub TcpStream);

impl Drop for DrainedOnClose {
    fn drop(&mut self) {
        let mut scratch = [0u8; 16 * 1024];
        let mut read = 0;
        // Only what has arrived: `try_read` never waits (WouldBlock ends it, as EAGAIN ends Envoy's loop).
        while read < READ_LIMIT {
            match self.0.try_read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    }
}

impl AsyncRead for DrainedOnClose {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for DrainedOnClose {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
