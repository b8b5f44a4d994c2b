//! An upstream whose behaviour each case scripts: echo, reset, close, delay, a given response,
//! a body that breaks off. It records every request it receives (as the echo servers do)
//! before acting, so "what the upstream saw" is known even when it then misbehaves.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::model::{Behaviour, Respond};
use crate::cases::generated_body;
use crate::upstream::{Seen, CASE_ID_HEADER};

/// The name the scripted server reports in [`Seen::server`].
pub const NAME: &str = "scripted";
/// Chunk size of chunked and truncated bodies.
const CHUNK: usize = 16 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    scripts: Mutex<HashMap<String, Behaviour>>,
}

/// The scripted HTTP/1.1 server on `127.0.0.1:<ephemeral>`; stops on drop.
pub struct Scripted {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Scripted {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Scripted { addr, state, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests carrying `x-case-id: <case_id>` get `behaviour`.
    pub fn script(&self, case_id: &str, behaviour: Behaviour) {
        lock(&self.state.scripts).insert(case_id.to_string(), behaviour);
    }

    /// Requests received with `x-case-id: <case_id>`.
    pub fn seen_for_case(&self, case_id: &str) -> Vec<Seen> {
        Seen::of_case(&lock(&self.state.seen), case_id)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let fd = stream.as_raw_fd();
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone(), fd));
            // A service error (reset, close) ends the connection; that is the point of it.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[derive(Debug, thiserror::Error)]
#[error("scripted: {0}")]
struct Misbehave(&'static str);

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    fd: RawFd,
) -> Result<Response<Body>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen::of(NAME, false, None, &parts, &body, Vec::new());
    let behaviour = seen
        .header(CASE_ID_HEADER)
        .and_then(|id| lock(&state.scripts).get(id).cloned())
        .unwrap_or_default();
    let echo = serde_json::to_vec(&seen).unwrap_or_default();
    lock(&state.seen).push(seen);
    match behaviour {
        Behaviour::Echo => Ok(echo_response(echo)),
        Behaviour::Delay { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(echo_response(echo))
        }
        Behaviour::Reset => {
            abortive_close(fd);
            Err(Box::new(Misbehave("reset")))
        }
        Behaviour::Close => Err(Box::new(Misbehave("close"))),
        Behaviour::Respond(respond) => respond_as(&respond).await,
        Behaviour::Truncate { declared, sent } => {
            let first = Bytes::from(generated_body(sent.min(declared)));
            let frames = vec![
                Step::Frame(Ok(Frame::data(first))),
                Step::Pause(Duration::from_millis(200)),
                Step::Frame(Err(Box::new(Misbehave("truncated body")))),
            ];
            // A plain close (FIN) after the partial body: a reset could make the peer's
            // kernel discard the bytes that did arrive.
            Response::builder()
                .status(200)
                .header("content-length", declared.to_string())
                .body(self::frames(frames))
                .map_err(|e| Box::new(e) as BoxError)
        }
    }
}

fn echo_response(json: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(json)));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-echo-server",
        hyper::header::HeaderValue::from_static("1"),
    );
    response
}

async fn respond_as(respond: &Respond) -> Result<Response<Body>, BoxError> {
    if respond.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(respond.delay_ms)).await;
    }
    let body = match respond.body_bytes {
        Some(len) => generated_body(len),
        None => respond.body.clone().unwrap_or_default().into_bytes(),
    };
    let mut builder = Response::builder().status(respond.status);
    for (name, value) in &respond.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let body: Body = if respond.chunked {
        let frames: Vec<Step> = body
            .chunks(CHUNK)
            .map(|c| Step::Frame(Ok(Frame::data(Bytes::copy_from_slice(c)))))
            .collect();
        self::frames(frames)
    } else {
        full(Bytes::from(body))
    };
    builder.body(body).map_err(|e| Box::new(e) as BoxError)
}

fn full(bytes: Bytes) -> Body {
    BodyExt::boxed(Full::new(bytes).map_err(|never: Infallible| match never {}))
}

/// One step of a scripted body.
enum Step {
    Frame(Result<Frame<Bytes>, BoxError>),
    /// Wait before the next step (so what was sent so far is flushed first).
    Pause(Duration),
}

/// A body sent step by step, with no size known in advance (so hyper does not set a length of
/// its own); an `Err` frame makes hyper abort the connection there.
struct Steps {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Steps {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            match self.steps.pop_front() {
                None => return Poll::Ready(None),
                Some(Step::Frame(frame)) => return Poll::Ready(Some(frame)),
                Some(Step::Pause(d)) => self.sleep = Some(Box::pin(tokio::time::sleep(d))),
            }
        }
    }
}

fn frames(steps: Vec<Step>) -> Body {
    BodyExt::boxed(Steps {
        steps: steps.into(),
        sleep: None,
    })
}

/// Sets SO_LINGER to zero so that closing the socket sends RST instead of FIN.
fn abortive_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the connection's socket, open while its service runs; setsockopt only
    // reads the `linger` value passed by pointer with its exact size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// An upstream that accepts connections and reads whatever arrives, and never answers: the far
/// end of routes whose requests a filter must answer itself.
pub struct Sink {
    port: u16,
    task: JoinHandle<()>,
}

impl Sink {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut stream, &mut sink).await;
                });
            }
        });
        Ok(Sink { port, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
