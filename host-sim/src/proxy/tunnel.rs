//! CONNECT terminated at the proxy (`connect_config: {}`): once the filters allowed the tunnel and the upstream TCP
//! connection is up, the client gets 200 and bytes flow both ways untouched until either side closes. The stream
//! (wasm contexts, access log) ends with the tunnel, named after the side that closed first.

use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::headers::HeaderMap;

use super::access_log::PendingEntry;
use super::wasm_chain::WasmChain;

/// Relays bytes until both directions are done, then ends the wasm contexts and writes the access log (status 200,
/// as Envoy logs tunnels).
pub(crate) async fn relay(
    upgrade: hyper::upgrade::OnUpgrade,
    upstream_stream: TcpStream,
    mut downstream: WasmChain,
    mut upstream: WasmChain,
    headers: HeaderMap,
    log: Option<PendingEntry>,
) {
    let details = match upgrade.await {
        Ok(upgraded) => pump(TokioIo::new(upgraded), upstream_stream).await,
        Err(error) => {
            tracing::debug!(%error, "CONNECT upgrade failed");
            "downstream_remote_disconnect"
        }
    };
    upstream.finish(Some(&headers), Some(200), details);
    downstream.finish(Some(&headers), Some(200), details);
    if let Some(log) = log {
        log.finish(details);
    }
}

/// Copies both ways, passing each side's end on as a half-close, until both are done. The details name the side
/// that ended first: the client (`downstream_remote_disconnect`, as Envoy logs it) or the upstream.
async fn pump<C>(client: C, upstream: TcpStream) -> &'static str
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let outbound = async {
        let copied = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
        copied
    };
    let inbound = async {
        let copied = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
        copied
    };
    tokio::pin!(outbound, inbound);
    let first = tokio::select! {
        _ = &mut outbound => "downstream_remote_disconnect",
        _ = &mut inbound => "via_upstream",
    };
    // Let the other direction drain, whichever it is.
    if first == "downstream_remote_disconnect" {
        let _ = inbound.await;
    } else {
        let _ = outbound.await;
    }
    first
}
