//! CONNECT terminated at the proxy (`connect_config: {}`): once the filters allowed the tunnel and the upstream TCP
//! connection is up, the client gets 200 and bytes flow both ways untouched until either side closes.

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::headers::HeaderMap;

use super::wasm_chain::WasmChain;

/// Relays bytes until both directions are done, then ends the wasm contexts (status 200, as Envoy logs tunnels).
pub(crate) async fn relay(
    upgrade: hyper::upgrade::OnUpgrade,
    mut upstream_stream: TcpStream,
    mut downstream: WasmChain,
    mut upstream: WasmChain,
    headers: HeaderMap,
) {
    match upgrade.await {
        Ok(upgraded) => {
            let mut client = TokioIo::new(upgraded);
            if let Err(error) =
                tokio::io::copy_bidirectional(&mut client, &mut upstream_stream).await
            {
                tracing::debug!(%error, "CONNECT tunnel ended with an error");
            }
        }
        Err(error) => tracing::debug!(%error, "CONNECT upgrade failed"),
    }
    upstream.finish(Some(&headers), Some(200), "via_upstream");
    downstream.finish(Some(&headers), Some(200), "via_upstream");
}
