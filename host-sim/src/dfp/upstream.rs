//! Upstream connections: connect to the addresses the DNS cache gave (never re-resolved; several in Envoy's happy
//! eyeballs order), optionally wrap in TLS, speak HTTP/1.1 with hyper, and keep idle connections in a per-worker pool
//! keyed by (cluster, host address, TLS name) — as Envoy keeps one connection pool per worker, cluster and host.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::UpstreamTls;

/// Why an upstream connection could not be made, with Envoy's wording for its 503 body and details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed once under way (refused, timed out ...); the OS reason as Envoy spells it
    /// ("Connection refused").
    #[error("remote connection failure: delayed connect error: {0}")]
    Refused(String),
    /// The connect call itself failed (a source address that cannot reach the destination, no route ...).
    #[error("remote connection failure: immediate connect error: {reason} ({remote})")]
    Immediate { reason: String, remote: SocketAddr },
    /// No connection within `connect_timeout`.
    #[error("connection timeout")]
    Timeout,
    /// The TLS handshake failed; the transport failure reason in BoringSSL's words (see `tls::failure_reason`).
    #[error("remote connection failure: {0}")]
    Tls(String),
    /// The HTTP/1.1 handshake over the connection failed.
    #[error("connection termination: {0}")]
    Http(String),
}

impl ConnectError {
    /// Envoy's stream reset reason (`Http::Utility::resetReasonToString`), the end of its 503 body.
    pub fn reset_reason(&self) -> &'static str {
        match self {
            ConnectError::Refused(_) | ConnectError::Immediate { .. } | ConnectError::Tls(_) => {
                "remote connection failure"
            }
            ConnectError::Timeout => "connection timeout",
            ConnectError::Http(_) => "connection termination",
        }
    }

    /// What goes between the braces of `upstream_reset_before_response_started{...}`: the reset reason and the
    /// transport failure reason, whitespace replaced by `_` as Envoy does.
    pub fn details(&self) -> String {
        let reason = self.reset_reason().replace(' ', "_");
        let transport = match self {
            ConnectError::Refused(os) => format!("delayed connect error: {os}"),
            // Envoy names the address for connect calls that fail at once.
            ConnectError::Immediate { reason, remote } => {
                format!("immediate connect error: {reason}|remote_address:{remote}")
            }
            ConnectError::Tls(tls) => tls.clone(),
            ConnectError::Timeout | ConnectError::Http(_) => return reason,
        };
        format!("{reason}|{}", transport.replace(char::is_whitespace, "_"))
    }
}

/// Where one upstream request goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub cluster: std::sync::Arc<str>,
    pub address: SocketAddr,
    /// The TLS server name (SNI and SAN check); `None` for plain connections.
    pub tls_name: Option<String>,
}

/// Idle HTTP/1.1 connections of one worker.
pub struct ConnectionPool<B> {
    idle: RefCell<HashMap<PoolKey, Vec<SendRequest<B>>>>,
    max_idle_per_key: usize,
}

impl<B> Default for ConnectionPool<B> {
    fn default() -> Self {
        ConnectionPool {
            idle: RefCell::new(HashMap::new()),
            max_idle_per_key: 64,
        }
    }
}

impl<B> ConnectionPool<B>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// An idle connection that can take a request now, if any.
    pub fn checkout(&self, key: &PoolKey) -> Option<SendRequest<B>> {
        let mut idle = self.idle.borrow_mut();
        let senders = idle.get_mut(key)?;
        while let Some(sender) = senders.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection after its response ended; closed or busy ones are dropped.
    pub fn checkin(&self, key: PoolKey, sender: SendRequest<B>) {
        if sender.is_closed() || !sender.is_ready() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let senders = idle.entry(key).or_default();
        if senders.len() < self.max_idle_per_key {
            senders.push(sender);
        }
    }

    /// A pooled connection, or a new one to the host's `addresses` (`key.address` first; TLS when `tls` is given).
    pub async fn get(
        &self,
        key: &PoolKey,
        addresses: &[SocketAddr],
        options: &ConnectOptions<'_>,
    ) -> Result<SendRequest<B>, ConnectError> {
        if let Some(sender) = self.checkout(key) {
            return Ok(sender);
        }
        connect(key, addresses, options).await
    }
}

/// How a cluster connects: timeout, local bind address, TLS.
pub struct ConnectOptions<'a> {
    pub timeout: Duration,
    pub bind: Option<SocketAddr>,
    pub tls: Option<&'a UpstreamTls>,
}

/// A TCP connection to one of `addresses` within `timeout` (a CONNECT tunnel's), from `bind` when given
/// (`upstream_bind_config`).
pub async fn tcp_connect(
    addresses: &[SocketAddr],
    bind: Option<SocketAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    tokio::time::timeout(
        timeout,
        connect_any(addresses, move |address| tcp_attempt(address, bind)),
    )
    .await
    .map_err(|_| ConnectError::Timeout)?
}

/// One TCP connect, without a deadline of its own.
async fn tcp_attempt(
    address: SocketAddr,
    bind: Option<SocketAddr>,
) -> Result<TcpStream, ConnectError> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|error| ConnectError::Refused(io_reason(&error)))?;
    if let Some(bind) = bind {
        socket
            .bind(bind)
            .map_err(|error| ConnectError::Refused(io_reason(&error)))?;
    }
    let stream = socket
        .connect(address)
        .await
        .map_err(|error| connect_failure(&error, address))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Envoy's delay before it tries a host's next address while the last attempt is still pending
/// (`MultiConnectionBaseImpl::tryAnotherConnection`: 300 ms).
const NEXT_ATTEMPT_DELAY: Duration = Duration::from_millis(300);

/// The order Envoy tries a host's addresses in (`HappyEyeballsConnectionProvider::sortAddresses` with the default
/// `happy_eyeballs_config`): the first address's family first, then one address of each family in turn, each family
/// keeping the resolver's order.
pub fn happy_eyeballs_order(addresses: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addresses.first() else {
        return Vec::new();
    };
    let (mut preferred, mut other): (std::collections::VecDeque<_>, std::collections::VecDeque<_>) =
        addresses
            .iter()
            .copied()
            .partition(|a| a.is_ipv4() == first.is_ipv4());
    let mut out = Vec::with_capacity(addresses.len());
    while !preferred.is_empty() || !other.is_empty() {
        out.extend(preferred.pop_front());
        out.extend(other.pop_front());
    }
    out
}

/// Connects to a host the way Envoy's connection pool does (`HostImplBase::createConnection`): one address is one
/// connect; with several, `HappyEyeballsConnectionImpl` tries them in [`happy_eyeballs_order`], starting the next
/// as soon as one fails or [`NEXT_ATTEMPT_DELAY`] after the last started, and keeps the first that connects. The
/// error is the last attempt's. `attempt` covers whatever Envoy counts as connecting (TCP, and the TLS handshake).
async fn connect_any<T, F, Fut>(addresses: &[SocketAddr], attempt: F) -> Result<T, ConnectError>
where
    T: 'static,
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<T, ConnectError>> + 'static,
{
    match addresses {
        [] => return Err(ConnectError::Refused("no address".to_string())),
        [only] => return attempt(*only).await,
        _ => {}
    }
    let mut queue = happy_eyeballs_order(addresses).into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut last_error = None;
    loop {
        if running.is_empty() {
            match queue.next() {
                Some(address) => {
                    running.spawn_local(attempt(address));
                }
                None => {
                    return Err(last_error
                        .unwrap_or_else(|| ConnectError::Refused("no address".to_string())))
                }
            }
        }
        let next_due = tokio::time::sleep(NEXT_ATTEMPT_DELAY);
        tokio::select! {
            done = running.join_next() => match done {
                Some(Ok(Ok(connected))) => return Ok(connected),
                Some(Ok(Err(error))) => {
                    last_error = Some(error);
                    // A failed attempt starts the next one at once.
                    if let Some(address) = queue.next() {
                        running.spawn_local(attempt(address));
                    }
                }
                Some(Err(join)) => last_error = Some(ConnectError::Refused(join.to_string())),
                None => {}
            },
            () = next_due => {
                if let Some(address) = queue.next() {
                    running.spawn_local(attempt(address));
                }
            }
        }
    }
}

/// A new HTTP/1.1 connection to the host's `addresses`; its driver task runs on the current worker's `LocalSet`.
pub async fn connect<B>(
    key: &PoolKey,
    addresses: &[SocketAddr],
    options: &ConnectOptions<'_>,
) -> Result<SendRequest<B>, ConnectError>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bind = options.bind;
    let tls = match (options.tls, &key.tls_name) {
        (Some(tls), Some(name)) => {
            let server_name = tls.server_name(name).map_err(ConnectError::Tls)?;
            Some((TlsConnector::from(tls.client_config()), server_name))
        }
        _ => None,
    };
    let establish = connect_any(addresses, move |address| {
        let tls = tls.clone();
        async move {
            let tcp = tcp_attempt(address, bind).await?;
            match tls {
                Some((connector, server_name)) => {
                    let stream = connector
                        .connect(server_name, tcp)
                        .await
                        .map_err(|error| ConnectError::Tls(super::tls::failure_reason(&error)))?;
                    Ok(Box::new(stream) as Box<dyn Io>)
                }
                None => Ok(Box::new(tcp) as Box<dyn Io>),
            }
        }
    });
    let io = tokio::time::timeout(options.timeout, establish)
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|error| ConnectError::Http(error.to_string()))?;
    tokio::task::spawn_local(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// A failed connect, split as Envoy splits it: errors the connect call returns at once (on a non-blocking socket
/// that is everything but the outcome of the handshake) and errors the handshake ends with.
fn connect_failure(error: &std::io::Error, remote: SocketAddr) -> ConnectError {
    const IMMEDIATE: [i32; 6] = [
        libc_errno::EACCES,
        libc_errno::EPERM,
        libc_errno::EINVAL,
        libc_errno::EADDRNOTAVAIL,
        libc_errno::EAFNOSUPPORT,
        libc_errno::ENETUNREACH,
    ];
    match error.raw_os_error() {
        Some(code) if IMMEDIATE.contains(&code) => ConnectError::Immediate {
            reason: io_reason(error),
            remote,
        },
        _ => ConnectError::Refused(io_reason(error)),
    }
}

/// Linux errno values (the platform host-sim and Envoy's wording target).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const EACCES: i32 = 13;
    pub const EINVAL: i32 = 22;
    pub const EAFNOSUPPORT: i32 = 97;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENETUNREACH: i32 = 101;
}

/// The OS reason in Envoy's spelling ("Connection refused").
fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "Connection refused".to_string(),
        std::io::ErrorKind::TimedOut => "Connection timed out".to_string(),
        _ => {
            let text = error.to_string();
            // Drop the " (os error N)" suffix std adds.
            text.split(" (os error").next().unwrap_or(&text).to_string()
        }
    }
}

/// A response body that hands its connection back to the pool once the body has been read to the end.
pub struct PooledBody<B, R> {
    inner: R,
    release: Option<(Rc<ConnectionPool<B>>, PoolKey, SendRequest<B>)>,
}

impl<B, R> PooledBody<B, R> {
    pub fn new(
        inner: R,
        pool: Rc<ConnectionPool<B>>,
        key: PoolKey,
        sender: SendRequest<B>,
    ) -> Self {
        PooledBody {
            inner,
            release: Some((pool, key, sender)),
        }
    }
}

impl<B, R> PooledBody<B, R>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn release(&mut self) {
        if let Some((pool, key, sender)) = self.release.take() {
            pool.checkin(key, sender);
        }
    }
}

impl<B, R> Body for PooledBody<B, R>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R: Body + Unpin,
{
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.release = None,
            _ => {}
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

impl<B, R> Unpin for PooledBody<B, R> {}
