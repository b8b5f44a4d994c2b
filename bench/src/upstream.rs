//! The upstream every row ends at: HTTP/1.1 keep-alive, a small fixed body, and a count of the
//! requests it served, so a run can prove its requests went all the way through the proxy.
//!
//! It runs as its own process (`bench upstream`), so its CPU is not mixed with the load
//! generator's and the "upstream alone" row measures it like any proxy.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What every request gets back (small: the proxies, not the payload, are measured).
pub const BODY: &[u8] = b"ok: bench upstream\n";
/// Answers with the number of requests served so far (this one not counted).
pub const COUNT_PATH: &str = "/__bench/count";

/// Serves on `listener` until the task is dropped; `served` counts the requests answered with [`BODY`].
pub async fn serve(listener: TcpListener, served: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some connections end first.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let served = served.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let served = served.clone();
                async move { Ok::<_, Infallible>(answer(&request, &served)) }
            });
            // A client that hangs up only ends its own connection.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(request: &Request<Incoming>, served: &AtomicU64) -> Response<Full<Bytes>> {
    let body = if request.uri().path() == COUNT_PATH {
        Bytes::from(served.load(Ordering::SeqCst).to_string())
    } else {
        served.fetch_add(1, Ordering::Relaxed);
        Bytes::from_static(BODY)
    };
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// `bench upstream`: bind `127.0.0.1:0`, print `listening on ADDR`, serve until killed.
pub fn run_process(threads: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("upstream")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
        serve(listener, Arc::new(AtomicU64::new(0))).await;
        Ok(())
    })
}
