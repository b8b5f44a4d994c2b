//! Upstream servers on loopback: an HTTP echo (plain or TLS) and a raw TCP echo for CONNECT.
//!
//! The HTTP echo answers every request with a JSON description of what it received, so a test
//! can assert what the proxy actually forwarded (method, path, `Host`, headers, SNI). It also
//! keeps that record itself: a request that must never reach an upstream is checked there.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The header tests put on each request so upstreams can tell which case reached them.
pub const CASE_ID_HEADER: &str = "x-case-id";

/// What an HTTP echo server saw for one request; also the JSON body of its response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    /// The server's name, chosen by the test (`plain`, `tls`, ...).
    pub server: String,
    pub tls: bool,
    /// The SNI the client sent (TLS only).
    pub sni: Option<String>,
    pub method: String,
    /// Request target as received (origin-form path and query).
    pub path: String,
    /// The `Host` header.
    pub authority: Option<String>,
    /// Every header in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The request's trailers, in arrival order (names lower-cased).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trailers: Vec<(String, String)>,
}

impl Seen {
    /// What server `server` saw of a request: its head, the body that arrived and the trailers.
    pub fn of(
        server: impl Into<String>,
        tls: bool,
        sni: Option<String>,
        head: &hyper::http::request::Parts,
        body: &[u8],
        trailers: Vec<(String, String)>,
    ) -> Seen {
        Seen {
            server: server.into(),
            tls,
            sni,
            method: head.method.to_string(),
            path: head.uri.to_string(),
            authority: head
                .headers
                .get(hyper::header::HOST)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            headers: pairs(&head.headers),
            body: String::from_utf8_lossy(body).into_owned(),
            trailers,
        }
    }

    /// The requests of `seen` that carried `x-case-id: <case_id>`.
    pub fn of_case(seen: &[Seen], case_id: &str) -> Vec<Seen> {
        seen.iter()
            .filter(|s| s.header(CASE_ID_HEADER) == Some(case_id))
            .cloned()
            .collect()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    handshakes: AtomicUsize,
}

/// An HTTP/1.1 echo server (optionally TLS) on `127.0.0.1:<ephemeral>`; stops on drop.
pub struct EchoServer {
    name: String,
    addr: SocketAddr,
    log: Arc<Log>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Starts a plain-text echo server named `name`.
    pub async fn plain(name: &str) -> anyhow::Result<Self> {
        Self::start(name, None).await
    }

    /// Starts a TLS echo server named `name` with `config` (see [`crate::pki::Leaf`]).
    pub async fn tls(name: &str, config: Arc<rustls::ServerConfig>) -> anyhow::Result<Self> {
        Self::start(name, Some(TlsAcceptor::from(config))).await
    }

    /// A plain-text echo server named `name` on `addr` (any loopback address; port 0 picks one).
    pub async fn plain_at(name: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_at(name, None, addr).await
    }

    /// A TLS echo server named `name` on `addr`.
    pub async fn tls_at(
        name: &str,
        config: Arc<rustls::ServerConfig>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::start_at(name, Some(TlsAcceptor::from(config)), addr).await
    }

    async fn start(name: &str, tls: Option<TlsAcceptor>) -> anyhow::Result<Self> {
        Self::start_at(name, tls, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    async fn start_at(
        name: &str,
        tls: Option<TlsAcceptor>,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Log::default());
        let task = tokio::spawn(accept_loop(listener, name.to_string(), tls, log.clone()));
        Ok(EchoServer {
            name: name.to_string(),
            addr,
            log,
            task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.log.seen).clone()
    }

    /// Requests that carried `x-case-id: <case_id>`.
    pub fn seen_for_case(&self, case_id: &str) -> Vec<Seen> {
        Seen::of_case(&lock(&self.log.seen), case_id)
    }

    /// TCP connections accepted so far (a proxy may connect without sending a request).
    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far (TLS servers only).
    pub fn handshakes(&self) -> usize {
        self.log.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The trailer an echo asked for `x-echo-trailers` ends its answer with.
pub const ECHO_TRAILER: &str = "x-echo-trailer";

fn pairs(map: &hyper::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A response body of frames given in advance (data, then trailers).
#[derive(Default)]
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    /// Exact without trailers, so hyper writes a `content-length`; trailers need chunked framing.
    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.0.iter().any(Frame::is_trailers) {
            return hyper::body::SizeHint::default();
        }
        let length = self
            .0
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        hyper::body::SizeHint::with_exact(length)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(listener: TcpListener, name: String, tls: Option<TlsAcceptor>, log: Arc<Log>) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        log.connections.fetch_add(1, Ordering::SeqCst);
        let name = name.clone();
        let log = log.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(stream, name, false, None, log).await,
                Some(acceptor) => {
                    // A failed handshake (say, the client rejected our certificate) just ends
                    // the connection; the proxy reports it.
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    log.handshakes.fetch_add(1, Ordering::SeqCst);
                    let sni = stream.get_ref().1.server_name().map(str::to_string);
                    serve(stream, name, true, sni, log).await
                }
            }
        });
    }
}

async fn serve<S>(stream: S, name: String, tls: bool, sni: Option<String>, log: Arc<Log>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let name = name.clone();
        let sni = sni.clone();
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            // `x-echo-close`: answer and close the connection, so nothing a client left on it (bytes past a
            // content-length) reaches the next request.
            let close = parts.headers.contains_key("x-echo-close");
            // `x-echo-trailers` (with `te: trailers`, without which hyper writes none): the answer ends with a
            // trailer, declared in `trailer`.
            let send_trailers = parts.headers.contains_key("x-echo-trailers");
            // A body that fails mid-way is recorded as what arrived before the failure.
            let (body, trailers) = match body.collect().await {
                Ok(collected) => {
                    let trailers = collected.trailers().map(pairs).unwrap_or_default();
                    (collected.to_bytes(), trailers)
                }
                Err(_) => (Bytes::new(), Vec::new()),
            };
            let seen = Seen::of(name, tls, sni, &parts, &body, trailers);
            let json = serde_json::to_vec(&seen).unwrap_or_default();
            lock(&log.seen).push(seen);
            let mut response = Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-echo-server", "1");
            if close {
                response = response.header("connection", "close");
            }
            let mut frames = vec![Frame::data(Bytes::from(json))];
            if send_trailers {
                response = response.header("trailer", ECHO_TRAILER);
                let mut trailer = hyper::HeaderMap::new();
                trailer.insert(ECHO_TRAILER, hyper::header::HeaderValue::from_static("t"));
                frames.push(Frame::trailers(trailer));
            }
            let response = response.body(Frames(frames.into()));
            Ok::<_, Infallible>(response.unwrap_or_else(|_| Response::new(Frames::default())))
        }
    });
    // Connection errors (a client that hangs up) only end this connection.
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .http1_only()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A TCP server that writes back every byte it reads: the far end of CONNECT tunnels.
pub struct TcpEcho {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpEcho {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A TCP echo on `addr` (any loopback address; port 0 picks one).
    pub async fn start_at(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut rd, mut wr) = stream.split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                });
            }
        });
        Ok(TcpEcho {
            addr,
            connections,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port on loopback that refuses connections, held for as long as this value lives: a socket bound to it
/// without `listen`. Binding and closing a listener instead would free the port, and the kernel can then hand it
/// out as an ephemeral port (a connect from 127.0.0.1 to a free ephemeral port can even pick that very port and
/// connect to itself).
pub struct RefusedPort {
    port: u16,
    _socket: TcpSocket,
}

impl RefusedPort {
    pub fn new() -> anyhow::Result<Self> {
        Self::at(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// A refusing port on `addr` (any loopback address, v4 or v6; port 0 picks one).
    pub fn at(addr: SocketAddr) -> anyhow::Result<Self> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(addr)?;
        let port = socket.local_addr()?.port();
        Ok(RefusedPort {
            port,
            _socket: socket,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}
