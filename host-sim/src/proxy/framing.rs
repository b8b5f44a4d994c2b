//! The downstream byte stream, checked for what hyper lets through but Envoy refuses — the request-smuggling shapes:
//! `Content-Length` together with `Transfer-Encoding` (hyper silently drops the length), a repeated or malformed
//! `Content-Length`, a `Transfer-Encoding` other than exactly `chunked` — and HTTP/1.0, which Envoy refuses by
//! default (`accept_http_10: false`).
//!
//! [`GuardedStream`] follows the message framing of the bytes it hands to hyper (heads parsed with httparse, as
//! hyper parses them; bodies by length or by chunk). At a refused head it stops: hyper gets the bytes before it and
//! then end of stream, answers what it already has, and when it shuts the connection down the guard writes Envoy's
//! reply for the refused request (400, 501 or 426, `connection: close`) and closes. The refused request never
//! reaches hyper, let alone an upstream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads longer than this are hyper's to refuse (431); the guard stops looking.
const MAX_HEAD: usize = 128 * 1024;
const MAX_HEADERS: usize = 128;
/// A chunk-size line (size and extensions) longer than this ends the connection, so framing is never lost behind it.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a request was refused, with Envoy's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `http1.content_length_and_chunked_not_allowed`
    ContentLengthAndChunked,
    /// Repeated, listed or non-numeric `Content-Length` (`http1.codec_error`).
    BadContentLength,
    /// A transfer coding other than `chunked` (`http1.invalid_transfer_encoding`).
    InvalidTransferEncoding,
    /// HTTP/1.0 (`low_version`).
    LowVersion,
    /// An authority-form request target (`GET host:port`) outside CONNECT (`http1.codec_error`).
    AuthorityForm,
    /// A chunk-size line longer than [`MAX_CHUNK_LINE`] (a huge chunk extension): Envoy resets the connection.
    ChunkLineTooLong,
}

impl Refusal {
    fn reply(self) -> &'static [u8] {
        match self {
            Refusal::ContentLengthAndChunked | Refusal::BadContentLength => {
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\nserver: host-sim\r\nconnection: close\r\n\r\nBad Request"
            }
            Refusal::InvalidTransferEncoding => {
                b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 15\r\ncontent-type: text/plain\r\nserver: host-sim\r\nconnection: close\r\n\r\nNot Implemented"
            }
            Refusal::LowVersion => {
                b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 16\r\ncontent-type: text/plain\r\nserver: host-sim\r\nconnection: close\r\n\r\nUpgrade Required"
            }
            Refusal::AuthorityForm => {
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\nserver: host-sim\r\nconnection: close\r\n\r\nBad Request"
            }
            // Mid-body: no reply, the connection just ends.
            Refusal::ChunkLineTooLong => b"",
        }
    }

    /// Envoy's response code details for the access log.
    pub fn details(self) -> &'static str {
        match self {
            Refusal::ContentLengthAndChunked => "http1.content_length_and_chunked_not_allowed",
            Refusal::BadContentLength => "http1.codec_error",
            Refusal::InvalidTransferEncoding => "http1.invalid_transfer_encoding",
            Refusal::LowVersion => "low_version",
            Refusal::AuthorityForm | Refusal::ChunkLineTooLong => "http1.codec_error",
        }
    }
}

/// Where the guard is in the request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// A body of this many more bytes.
    Body(u64),
    /// A chunk-size line (collected so far).
    ChunkSize(Vec<u8>),
    /// Chunk data still to come, then its CRLF.
    ChunkData(u64),
    /// The CRLF after chunk data: how many of its bytes remain.
    ChunkEnd(u8),
    /// Trailer lines after the last chunk (collected so far).
    Trailers(Vec<u8>),
    /// No more framing to follow: a CONNECT tunnel, or a head hyper will refuse itself.
    Opaque,
    /// A refused head was found; nothing more is handed to hyper.
    Refused(Refusal),
}

/// Framing state over the bytes read so far.
#[derive(Debug)]
pub(crate) struct Framing {
    state: State,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head(Vec::new()),
        }
    }
}

impl Framing {
    /// Feeds newly read bytes. Returns how many may go to hyper: all of them, or (at a refused head) those before it.
    pub fn feed(&mut self, mut bytes: &[u8]) -> usize {
        let total = bytes.len();
        while !bytes.is_empty() {
            let used = match &mut self.state {
                State::Opaque => return total,
                State::Refused(_) => return total - bytes.len(),
                State::Body(left) => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    n
                }
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                    n
                }
                State::ChunkEnd(left) => {
                    let n = usize::from(*left).min(bytes.len());
                    *left -= n as u8;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                    n
                }
                State::ChunkSize(line) => {
                    let (n, done) = take_line(line, bytes);
                    if line.len() > MAX_CHUNK_LINE {
                        // Handing the rest to hyper unchecked would lose the framing behind it (a pipelined request
                        // could smuggle past): stop here, as Envoy resets such a connection.
                        self.state = State::Refused(Refusal::ChunkLineTooLong);
                        return total - bytes.len();
                    }
                    if done {
                        self.state = match httparse::parse_chunk_size(line) {
                            Ok(httparse::Status::Complete((_, 0))) => State::Trailers(Vec::new()),
                            Ok(httparse::Status::Complete((_, size))) => State::ChunkData(size),
                            // hyper refuses it too and closes.
                            _ => State::Opaque,
                        };
                    }
                    n
                }
                State::Trailers(buf) => {
                    let start = buf.len();
                    buf.extend_from_slice(bytes);
                    match trailers_end(buf) {
                        Some(end) => {
                            self.state = State::Head(Vec::new());
                            end - start
                        }
                        None => {
                            if buf.len() > MAX_HEAD {
                                self.state = State::Refused(Refusal::ChunkLineTooLong);
                                return total - bytes.len();
                            }
                            bytes.len()
                        }
                    }
                }
                State::Head(buf) => {
                    let start = buf.len();
                    buf.extend_from_slice(bytes);
                    match inspect_head(buf) {
                        HeadCheck::Partial => {
                            if buf.len() > MAX_HEAD {
                                self.state = State::Opaque;
                            }
                            bytes.len()
                        }
                        HeadCheck::Complete { len, next } => {
                            self.state = next;
                            len - start
                        }
                        HeadCheck::Refused(refusal) => {
                            self.state = State::Refused(refusal);
                            return total - bytes.len();
                        }
                    }
                }
            };
            bytes = &bytes[used..];
        }
        total
    }

    /// The refusal, once a refused head was met.
    pub fn refused(&self) -> Option<Refusal> {
        match self.state {
            State::Refused(r) => Some(r),
            _ => None,
        }
    }
}

/// Appends up to the end of a line (LF) to `line`; returns bytes used and whether the line ended.
fn take_line(line: &mut Vec<u8>, bytes: &[u8]) -> (usize, bool) {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&bytes[..=i]);
            (i + 1, true)
        }
        None => {
            line.extend_from_slice(bytes);
            (bytes.len(), false)
        }
    }
}

/// The end of the trailer section (an empty line) in `buf`, which starts right after the last chunk's size line.
fn trailers_end(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    if buf.starts_with(b"\n") {
        return Some(1);
    }
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

enum HeadCheck {
    Partial,
    Complete { len: usize, next: State },
    Refused(Refusal),
}

fn inspect_head(buf: &[u8]) -> HeadCheck {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return HeadCheck::Partial,
        // Malformed, or more headers than hyper takes: hyper answers it and closes.
        Err(_) => {
            return HeadCheck::Complete {
                len: buf.len(),
                next: State::Opaque,
            }
        }
    };
    if request.version == Some(0) {
        return HeadCheck::Refused(Refusal::LowVersion);
    }
    let mut lengths = 0;
    let mut length: Option<u64> = None;
    let mut codings = 0;
    let mut chunked = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = parse_length(header.value);
            if length.is_none() {
                return HeadCheck::Refused(Refusal::BadContentLength);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            codings += 1;
            chunked = trim(header.value).eq_ignore_ascii_case(b"chunked");
        }
    }
    if codings > 0 && lengths > 0 {
        return HeadCheck::Refused(Refusal::ContentLengthAndChunked);
    }
    if codings > 1 || (codings == 1 && !chunked) {
        return HeadCheck::Refused(Refusal::InvalidTransferEncoding);
    }
    if lengths > 1 {
        return HeadCheck::Refused(Refusal::BadContentLength);
    }
    let connect = request.method == Some("CONNECT");
    if connect && codings > 0 {
        return HeadCheck::Refused(Refusal::InvalidTransferEncoding);
    }
    if connect && lengths > 0 {
        return HeadCheck::Refused(Refusal::BadContentLength);
    }
    if !connect && request.path.is_some_and(is_authority_form) {
        return HeadCheck::Refused(Refusal::AuthorityForm);
    }
    let next = if connect {
        State::Opaque
    } else if chunked {
        State::ChunkSize(Vec::new())
    } else {
        match length {
            Some(n) if n > 0 => State::Body(n),
            _ => State::Head(Vec::new()),
        }
    };
    HeadCheck::Complete { len, next }
}

/// `host:port` and the like: not origin-form (`/...`), not `*`, not absolute-form (`scheme://...`), yet with a colon
/// (a target without one is a path Envoy answers 404 `absolute_path_rejected`, later).
fn is_authority_form(target: &str) -> bool {
    !target.starts_with('/') && target != "*" && target.contains(':') && !target.contains("://")
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// `1*DIGIT`, as Envoy requires (no sign, no list).
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = trim(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A downstream connection's stream with the framing guard on its read side.
pub(crate) struct GuardedStream<S> {
    inner: S,
    framing: Framing,
    /// How much of the refusal reply is written.
    replied: usize,
}

impl<S> GuardedStream<S> {
    pub fn new(inner: S) -> Self {
        GuardedStream {
            inner,
            framing: Framing::default(),
            replied: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.framing.refused().is_some() {
            // End of stream for hyper: it finishes what it has, then shuts down (see poll_shutdown).
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        let allowed = this.framing.feed(fresh);
        if allowed < fresh.len() {
            buf.set_filled(before + allowed);
        }
        if let Some(refusal) = this.framing.refused() {
            tracing::debug!(
                details = refusal.details(),
                "refusing a request as Envoy's codec does"
            );
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(refusal) = this.framing.refused() {
            let reply = refusal.reply();
            while this.replied < reply.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &reply[this.replied..]))?;
                if n == 0 {
                    break;
                }
                this.replied += n;
            }
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> (usize, Option<Refusal>) {
        let mut f = Framing::default();
        let mut passed = 0;
        for c in chunks {
            passed += f.feed(c);
        }
        (passed, f.refused())
    }

    #[test]
    fn a_huge_chunk_extension_in_pieces_ends_the_stream_before_what_follows() {
        let head = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let line = format!("5;{}\r\n", "e".repeat(6000)).into_bytes();
        let rest = b"hello\r\n0\r\n\r\nPOST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n";
        let (a, b) = line.split_at(2000);
        let (b, c) = b.split_at(2000);
        let (passed, refused) = feed_all(&[&head, a, b, c, rest]);
        assert_eq!(refused, Some(Refusal::ChunkLineTooLong));
        assert!(passed <= head.len() + MAX_CHUNK_LINE + 1, "{passed}");
        // Below the limit, the extension is followed and the smuggled head behind it is found.
        let line = format!("5;{}\r\n", "e".repeat(3000)).into_bytes();
        let (a, b) = line.split_at(1500);
        let (passed, refused) = feed_all(&[&head, a, b, rest]);
        assert_eq!(refused, Some(Refusal::ContentLengthAndChunked));
        assert_eq!(passed, head.len() + line.len() + "hello\r\n0\r\n\r\n".len());
    }

    #[test]
    fn authority_form_only_with_connect_and_connect_without_a_body() {
        for target in ["127.0.0.1:8080", "a.test:80", "a:b"] {
            let raw = format!("GET {target} HTTP/1.1\r\nhost: b.test\r\n\r\n");
            assert_eq!(
                feed_all(&[raw.as_bytes()]).1,
                Some(Refusal::AuthorityForm),
                "{target}"
            );
        }
        for target in ["/x:y", "*", "http://a.test:80/", "foo"] {
            let raw = format!("OPTIONS {target} HTTP/1.1\r\nhost: b.test\r\n\r\n");
            assert_eq!(feed_all(&[raw.as_bytes()]).1, None, "{target}");
        }
        let cl =
            b"CONNECT a.test:443 HTTP/1.1\r\nhost: a.test:443\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(feed_all(&[cl]).1, Some(Refusal::BadContentLength));
        let te = b"CONNECT a.test:443 HTTP/1.1\r\nhost: a.test:443\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(feed_all(&[te]).1, Some(Refusal::InvalidTransferEncoding));
        let ok = b"CONNECT a.test:443 HTTP/1.1\r\nhost: a.test:443\r\n\r\nanything";
        assert_eq!(feed_all(&[ok]), (ok.len(), None));
    }

    #[test]
    fn plain_pipelined_requests_pass_whole() {
        let two = b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\nPOST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhelloGET /3 HTTP/1.1\r\nhost: a\r\n\r\n";
        assert_eq!(feed_all(&[two]), (two.len(), None));
        // Byte by byte, the same.
        let mut f = Framing::default();
        let passed: usize = two.iter().map(|b| f.feed(std::slice::from_ref(b))).sum();
        assert_eq!((passed, f.refused()), (two.len(), None));
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers_are_followed() {
        let req = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nt: 1\r\n\r\n";
        let next =
            b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let all = [&req[..], &next[..]].concat();
        assert_eq!(
            feed_all(&[&all]),
            (req.len(), Some(Refusal::ContentLengthAndChunked))
        );
        // A chunk whose data looks like a refused head is data, not a head.
        let sneaky = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n40\r\nGET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n\r\n0\r\n\r\n";
        assert_eq!(feed_all(&[sneaky]), (sneaky.len(), None));
    }

    #[test]
    fn smuggling_shapes_are_refused_before_hyper_sees_them() {
        let cases: &[(&[u8], Refusal)] = &[
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
                Refusal::ContentLengthAndChunked,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
                Refusal::ContentLengthAndChunked,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
                Refusal::BadContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5, 5\r\n\r\n",
                Refusal::BadContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +5\r\n\r\n",
                Refusal::BadContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Refusal::InvalidTransferEncoding,
            ),
            (
                b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
                Refusal::InvalidTransferEncoding,
            ),
            (
                b"GET / HTTP/1.0\r\nhost: a\r\n\r\n",
                Refusal::LowVersion,
            ),
        ];
        for (head, refusal) in cases {
            let prefix = b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\n";
            let all = [&prefix[..], head].concat();
            assert_eq!(
                feed_all(&[&all]),
                (prefix.len(), Some(*refusal)),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn connect_tunnels_and_malformed_heads_are_left_alone() {
        let tunnel = b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\nGET / HTTP/1.0\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(feed_all(&[tunnel]), (tunnel.len(), None));
        let garbage = b"GARBAGE\r\n\r\nGET / HTTP/1.0\r\n\r\n";
        assert_eq!(feed_all(&[garbage]), (garbage.len(), None));
    }
}
