//! A raw HTTP/1.1 client over TCP.
//!
//! Tests must send exactly the bytes a hostile or odd client would: absolute-form targets,
//! CONNECT, duplicate `Host` headers, control bytes. General clients normalise those away, so
//! requests here are written by hand and responses parsed with `httparse`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long a single request may take end to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o with {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no complete response from {0} within {REQUEST_TIMEOUT:?}")]
    Timeout(SocketAddr),
    #[error("connection closed before a complete response head ({0} bytes read)")]
    Truncated(usize),
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// A parsed response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// The status line's reason phrase, as sent.
    pub reason: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request to build as bytes (see [`Request::to_bytes`]).
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    /// Request target exactly as written on the request line.
    pub target: String,
    /// Headers in order; `Host` is only sent if listed here.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Serialises the request; adds `content-length` when there is a body and none was given.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let has_length = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        if !self.body.is_empty() && !has_length {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// Sends `raw` on a new connection to `addr` and reads one response. `head_only` is for
/// responses that carry no body whatever their headers say (HEAD).
pub async fn exchange(
    addr: SocketAddr,
    raw: &[u8],
    head_only: bool,
) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io { addr, source };
    timeout(REQUEST_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        stream.write_all(raw).await.map_err(io)?;
        let (response, _rest) = read_response(&mut stream, head_only).await?;
        Ok(response)
    })
    .await
    .map_err(|_| ClientError::Timeout(addr))?
}

/// [`exchange`] over TLS: the handshake with `config` (its client certificate, if any) and `server_name` as SNI,
/// then the request. A handshake the server refuses is an [`ClientError::Io`].
pub async fn exchange_tls(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: &str,
    raw: &[u8],
) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| ClientError::Malformed(format!("server name {server_name:?}: {e}")))?;
    timeout(REQUEST_TIMEOUT, async {
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        let mut stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(io)?;
        stream.write_all(raw).await.map_err(io)?;
        let (response, _rest) = read_head_then(&mut stream, addr, |status| {
            status == 204 || status == 304 || (100..200).contains(&status)
        })
        .await?;
        Ok(response)
    })
    .await
    .map_err(|_| ClientError::Timeout(addr))?
}

/// [`exchange`] that also returns the client's own port (for masking it where the proxy reports
/// the downstream address to a filter).
pub async fn exchange_from(
    addr: SocketAddr,
    raw: &[u8],
    within: Duration,
) -> Result<(Response, u16), ClientError> {
    let io = |source| ClientError::Io { addr, source };
    timeout(within, async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        stream.write_all(raw).await.map_err(io)?;
        let (response, _rest) = read_response(&mut stream, false).await?;
        Ok((response, port))
    })
    .await
    .map_err(|_| ClientError::Timeout(addr))?
}

/// An established CONNECT tunnel: the proxy's response, the stream, and any tunnel bytes that
/// arrived together with the response head.
pub struct Tunnel {
    pub response: Response,
    pub stream: TcpStream,
    pub early: Vec<u8>,
}

/// Sends `CONNECT <authority>` (with a matching `Host`) plus `extra_headers`; returns the
/// response and, when it is 2xx, the open stream.
pub async fn connect(
    addr: SocketAddr,
    authority: &str,
    extra_headers: &[(String, String)],
) -> Result<Tunnel, ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let mut headers = vec![("host".to_string(), authority.to_string())];
    headers.extend_from_slice(extra_headers);
    let request = Request {
        method: "CONNECT".into(),
        target: authority.into(),
        headers,
        body: Vec::new(),
    };
    timeout(REQUEST_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        stream.write_all(&request.to_bytes()).await.map_err(io)?;
        // A 2xx to CONNECT has no body; anything after the head belongs to the tunnel.
        let (response, early) =
            read_head_then(&mut stream, addr, |status| (200..300).contains(&status)).await?;
        Ok(Tunnel {
            response,
            stream,
            early,
        })
    })
    .await
    .map_err(|_| ClientError::Timeout(addr))?
}

async fn read_response(
    stream: &mut TcpStream,
    head_only: bool,
) -> Result<(Response, Vec<u8>), ClientError> {
    let addr = peer(stream);
    read_head_then(stream, addr, |status| {
        head_only || status == 204 || status == 304 || (100..200).contains(&status)
    })
    .await
}

fn peer(stream: &TcpStream) -> SocketAddr {
    stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Reads a response head, then its body unless `no_body(status)`; returns the bytes read past
/// the response.
async fn read_head_then<R: AsyncRead + Unpin>(
    stream: &mut R,
    addr: SocketAddr,
    no_body: impl Fn(u16) -> bool,
) -> Result<(Response, Vec<u8>), ClientError> {
    let (mut response, mut rest) = read_head(stream, addr, Vec::new()).await?;
    if no_body(response.status) {
        return Ok((response, rest));
    }
    read_body(stream, addr, &mut response, &mut rest).await?;
    Ok((response, rest))
}

/// Reads up to the end of a response head (starting with the bytes already in `buf`); returns
/// it (without body) and the bytes after it.
async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    addr: SocketAddr,
    mut buf: Vec<u8>,
) -> Result<(Response, Vec<u8>), ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let (status, reason, headers, head_len) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed
                    .code
                    .ok_or_else(|| ClientError::Malformed("no status".into()))?;
                let reason = parsed.reason.unwrap_or_default().to_string();
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (status, reason, headers, len);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(ClientError::Malformed("response head too large".into()))
            }
            Err(e) => return Err(ClientError::Malformed(e.to_string())),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(ClientError::Truncated(buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(head_len);
    let response = Response {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    Ok((response, rest))
}

/// Reads the body of `response` (content-length, chunked, or up to the end of the connection)
/// into `response.body`, starting with the bytes already in `rest`; leaves in `rest` what
/// follows the body. On an error, `response.body` holds what arrived before it.
async fn read_body<R: AsyncRead + Unpin>(
    stream: &mut R,
    addr: SocketAddr,
    response: &mut Response,
    rest: &mut Vec<u8>,
) -> Result<(), ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let length = response
        .header("content-length")
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| ClientError::Malformed(format!("content-length {v:?}")))
        })
        .transpose()?;
    if chunked {
        return read_chunked(stream, addr, rest, &mut response.body).await;
    }
    if let Some(length) = length {
        while rest.len() < length {
            let mut chunk = [0u8; 8192];
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                Err(source) => {
                    response.body = std::mem::take(rest);
                    return Err(io(source));
                }
            };
            if n == 0 {
                let got = rest.len();
                response.body = std::mem::take(rest);
                return Err(ClientError::Malformed(format!(
                    "body ended after {got} of {length} bytes"
                )));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        let tail = rest.split_off(length);
        response.body = std::mem::replace(rest, tail);
        return Ok(());
    }
    // No length: the body runs to the end of the connection.
    let read = stream.read_to_end(rest).await;
    response.body = std::mem::take(rest);
    read.map(|_| ()).map_err(io)
}

/// Reads a chunked body into `body`; `buf` holds bytes already read and keeps what follows.
async fn read_chunked<R: AsyncRead + Unpin>(
    stream: &mut R,
    addr: SocketAddr,
    buf: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> Result<(), ClientError> {
    let mut pos = 0;
    loop {
        // Make sure a full size line is buffered.
        let line_end = loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            fill(stream, buf, addr).await?;
        };
        let line = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ClientError::Malformed(format!("chunk size {line:?}")))?;
        pos = line_end + 2;
        if size == 0 {
            // Skip trailers up to the blank line.
            loop {
                if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                    let empty = i == 0;
                    pos += i + 2;
                    if empty {
                        buf.drain(..pos);
                        return Ok(());
                    }
                } else {
                    fill(stream, buf, addr).await?;
                }
            }
        }
        while buf.len() < pos + size + 2 {
            if let Err(e) = fill(stream, buf, addr).await {
                // Keep what arrived of this chunk, for callers reporting a truncated body.
                body.extend_from_slice(&buf[pos.min(buf.len())..]);
                return Err(e);
            }
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

async fn fill<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    addr: SocketAddr,
) -> Result<(), ClientError> {
    let mut chunk = [0u8; 8192];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|source| ClientError::Io { addr, source })?;
    if n == 0 {
        return Err(ClientError::Malformed("chunked body truncated".into()));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// A response that may have been cut short: the head arrived, the body maybe not all of it.
#[derive(Clone, Debug)]
pub struct Received {
    /// Interim (1xx) responses before the final one, e.g. `100` for `expect: 100-continue`.
    pub interim: Vec<Response>,
    pub response: Response,
    /// Why the body is incomplete; `None` when it arrived whole.
    pub truncated: Option<String>,
}

/// Like [`exchange`], but writes the request while reading the response, so a proxy that
/// answers before it has read a large body (and then closes) is still heard; interim (1xx)
/// responses are collected on the way to the final one; and a response whose body breaks off
/// comes back with what arrived and why it ended.
pub async fn exchange_streaming(
    addr: SocketAddr,
    raw: Vec<u8>,
    head_only: bool,
) -> Result<Received, ClientError> {
    let io = |source| ClientError::Io { addr, source };
    timeout(REQUEST_TIMEOUT, async {
        let stream = TcpStream::connect(addr).await.map_err(io)?;
        let (mut reader, mut writer) = stream.into_split();
        let writing = tokio::spawn(async move {
            // The proxy may answer early and close; a failed write is then expected.
            let _ = writer.write_all(&raw).await;
            writer
        });
        let mut interim = Vec::new();
        let mut carry = Vec::new();
        let (mut response, mut rest) = loop {
            let (head, rest) = read_head(&mut reader, addr, carry).await?;
            // 101 ends HTTP/1 on the connection; other 1xx precede the final response.
            if (100..200).contains(&head.status) && head.status != 101 {
                interim.push(head);
                carry = rest;
                continue;
            }
            break (head, rest);
        };
        let no_body = head_only
            || response.status == 204
            || response.status == 304
            || (100..200).contains(&response.status);
        let mut truncated = None;
        if !no_body {
            if let Err(e) = read_body(&mut reader, addr, &mut response, &mut rest).await {
                truncated = Some(e.to_string());
            }
        }
        // The write half lived until the response was read (dropping it half-closes); a write
        // still pending now is one the proxy will never read.
        writing.abort();
        Ok(Received {
            interim,
            response,
            truncated,
        })
    })
    .await
    .map_err(|_| ClientError::Timeout(addr))?
}

/// A GET to the admin interface (or any plain HTTP server); returns the response.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response, ClientError> {
    let request = Request {
        method: "GET".into(),
        target: path.into(),
        headers: vec![
            ("host".into(), addr.to_string()),
            ("connection".into(), "close".into()),
        ],
        body: Vec::new(),
    };
    exchange(addr, &request.to_bytes(), false).await
}
