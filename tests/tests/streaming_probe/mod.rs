//! A request body streams through a wasm filter that has a request-body callback: the upstream gets the first
//! chunk while the client still holds the rest, in Envoy and in host-sim alike (a proxy that reads the body whole
//! before it forwards any of it never lets the upstream see it). The ABI probe (guests/abi-probe) without a
//! scenario continues every chunk. Shared by `envoy_e2e.rs` and `host_sim_e2e.rs`.

use std::time::Duration;

use tempfile::TempDir;
use tests::fidelity::fixtures::probe_wasm;
use tests::proxy::Proxy;
use tests::suite::{self, ProxyKind};
use tests::template::{self, Vars};
use tests::world::tests_dir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How long the client waits for the upstream to report the first chunk before calling the body held back.
const FIRST_CHUNK_WAIT: Duration = Duration::from_secs(10);

pub async fn first_chunk_arrives_before_the_body_ends(kind: ProxyKind) {
    let upstream = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the upstream");
    let upstream_port = upstream.local_addr().expect("upstream address").port();
    let (first_seen, first_chunk) = oneshot::channel();
    let upstream_task = tokio::spawn(serve_one(upstream, first_seen));

    let (proxy, _access_log_dir) = start_probe(kind, upstream_port).await;

    let mut client = TcpStream::connect(proxy.listener())
        .await
        .expect("connecting to the proxy");
    client
        .write_all(
            b"POST /stream HTTP/1.1\r\nhost: probe.dfp.test\r\nx-probe: none\r\n\
              transfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nfirst\r\n",
        )
        .await
        .expect("sending the head and the first chunk");
    let seen = tokio::time::timeout(FIRST_CHUNK_WAIT, first_chunk).await;
    assert!(
        matches!(seen, Ok(Ok(()))),
        "{kind:?}: the upstream did not get the first chunk while the client held the rest of the body\n{}",
        suite::tail(&proxy.log(), 30)
    );
    client
        .write_all(b"4\r\nrest\r\n0\r\n\r\n")
        .await
        .expect("sending the rest");
    let mut response = Vec::new();
    tokio::time::timeout(FIRST_CHUNK_WAIT, client.read_to_end(&mut response))
        .await
        .expect("the response in time")
        .expect("reading the response");
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{kind:?}: expected 200 once the body is complete, got:\n{response}"
    );
    let received = upstream_task
        .await
        .expect("the upstream task")
        .expect("the upstream exchange");
    let body_at = received.find("\r\n\r\n").map_or(0, |at| at + 4);
    let body = &received[body_at..];
    assert!(
        body.contains("first") && body.contains("rest"),
        "{kind:?}: the upstream got an incomplete body: {body:?}"
    );
}

/// A proxy of `kind` on the ABI probe's bootstrap (tests/fidelity/templates/probe.yaml) whose upstreams are all
/// `upstream_port`; the directory holds its access log.
async fn start_probe(kind: ProxyKind, upstream_port: u16) -> (Box<dyn Proxy>, TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let template_path = tests_dir().join("fidelity/templates/probe.yaml");
    let template_text = std::fs::read_to_string(&template_path).expect("the probe template");
    let mut vars = Vars::new();
    for name in ["LISTENER_PORT", "ADMIN_PORT"] {
        vars.insert(name.into(), "0".into());
    }
    for name in ["PLAIN_PORT", "SINK_PORT", "SCRIPTED_PORT"] {
        vars.insert(name.into(), upstream_port.to_string());
    }
    let wasm = probe_wasm().expect("building the ABI probe");
    vars.insert("PROBE_WASM".into(), wasm.to_string_lossy().into_owned());
    vars.insert(
        "ACCESS_LOG".into(),
        dir.path().join("access.log").to_string_lossy().into_owned(),
    );
    vars.insert("DOWNSTREAM_CONFIG".into(), "\"streaming\"".into());
    let bootstrap = template::render(&template_text, &vars).expect("rendering the probe bootstrap");
    let proxy = suite::start_bootstrap(kind, bootstrap)
        .await
        .expect("starting the proxy");
    (proxy, dir)
}

/// Accepts one connection, reports when the request's body has brought the first chunk, answers 200 once the
/// chunked body has ended, and returns everything it read.
async fn serve_one(
    listener: TcpListener,
    first_seen: oneshot::Sender<()>,
) -> anyhow::Result<String> {
    let (mut stream, _) = listener.accept().await?;
    let mut received = Vec::new();
    let mut first_seen = Some(first_seen);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(
            n > 0,
            "the proxy closed before the body ended: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received);
        let body = text.split_once("\r\n\r\n").map(|(_, body)| body);
        if body.is_some_and(|body| body.contains("first")) {
            if let Some(sender) = first_seen.take() {
                let _ = sender.send(());
            }
        }
        if body.is_some_and(|body| body.ends_with("0\r\n\r\n")) {
            break;
        }
    }
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await?;
    Ok(String::from_utf8_lossy(&received).into_owned())
}
