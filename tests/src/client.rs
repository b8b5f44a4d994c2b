//! A raw HTTP/1.1 client over TCP.
//!
//! Tests must send exactly the bytes a hostile or odd client would: absolute-form targets,
//! CONNECT, duplicate `Host` headers, control bytes. General clients normalise those away, so
//! requests here are written by hand and responses parsed with `httparse`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
            read_head_then(&mut stream, |status| (200..300).contains(&status)).await?;
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
    read_head_then(stream, |status| {
        head_only || status == 204 || status == 304 || (100..200).contains(&status)
    })
    .await
}

/// Reads a response head, then its body unless `no_body(status)`; returns the bytes read past
/// the response.
async fn read_head_then(
    stream: &mut TcpStream,
    no_body: impl Fn(u16) -> bool,
) -> Result<(Response, Vec<u8>), ClientError> {
    let addr = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let io = |source| ClientError::Io { addr, source };
    let mut buf = Vec::with_capacity(4096);
    let (status, headers, head_len) = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(ClientError::Truncated(buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed
                    .code
                    .ok_or_else(|| ClientError::Malformed("no status".into()))?;
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
                break (status, headers, len);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(ClientError::Malformed("response head too large".into()))
            }
            Err(e) => return Err(ClientError::Malformed(e.to_string())),
        }
    };
    let mut rest = buf.split_off(head_len);
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if no_body(status) {
        return Ok((response, rest));
    }
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
        response.body = read_chunked(stream, &mut rest).await?;
    } else if let Some(length) = length {
        while rest.len() < length {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(ClientError::Malformed(format!(
                    "body ended after {} of {length} bytes",
                    rest.len()
                )));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        let tail = rest.split_off(length);
        response.body = rest;
        rest = tail;
    } else {
        // No length: the body runs to the end of the connection.
        stream.read_to_end(&mut rest).await.map_err(io)?;
        response.body = std::mem::take(&mut rest);
    }
    Ok((response, rest))
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, ClientError> {
    let addr = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut body = Vec::new();
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
                        return Ok(body);
                    }
                } else {
                    fill(stream, buf, addr).await?;
                }
            }
        }
        while buf.len() < pos + size + 2 {
            fill(stream, buf, addr).await?;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

async fn fill(
    stream: &mut TcpStream,
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
