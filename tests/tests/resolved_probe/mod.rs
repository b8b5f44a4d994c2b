//! What the resolved-address stage prevents, measured on private upstreams (so no other test's
//! traffic is counted): with the shipped deny list, a name resolving to loopback gets 403 and the
//! upstream sees no TCP connection and no TLS handshake, for plain HTTP, TLS and CONNECT. The same
//! upstreams behind a stage that carves loopback out do get connections, so the counters can see
//! them. Shared by `envoy_e2e.rs` and `host_sim_e2e.rs`.

use std::time::Duration;

use serde_json::{json, Value};
use tests::client::{self, Request};
use tests::rbac;
use tests::suite::{self, ProxyKind};
use tests::upstream::{EchoServer, TcpEcho};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Probes {
    plain: EchoServer,
    tls: EchoServer,
    tcp: TcpEcho,
}

const PLAIN: &str = "probe.dfp.test";
const TLS: &str = "probe-tls.dfp.test";
const TUNNEL: &str = "probe-tunnel.dfp.test";

impl Probes {
    async fn start(world: &tests::world::World) -> anyhow::Result<Probes> {
        let leaf = world.pki.leaf("probe-tls", &[TLS])?;
        Ok(Probes {
            plain: EchoServer::plain("probe").await?,
            tls: EchoServer::tls("probe-tls", leaf.server_config()?).await?,
            tcp: TcpEcho::start().await?,
        })
    }

    fn downstream(&self) -> Value {
        json!({
            "stage": "downstream",
            "allow": [
                { "host": PLAIN, "ports": [self.plain.port()] },
                { "host": TLS, "ports": [self.tls.port()], "tls": true },
                { "host": TUNNEL, "ports": [self.tcp.port()] }
            ],
            "cluster_header": "x-dfp-cluster",
            "clusters": { "plain": "dfp_plain", "tls": "dfp_tls" }
        })
    }

    /// (plain connections, TLS connections, TLS handshakes, tunnel connections)
    fn seen(&self) -> (usize, usize, usize, usize) {
        (
            self.plain.connections(),
            self.tls.connections(),
            self.tls.handshakes(),
            self.tcp.connections(),
        )
    }
}

/// One GET through the proxy to `authority`, on its own connection.
async fn get(listener: std::net::SocketAddr, authority: &str) -> anyhow::Result<client::Response> {
    let request = Request {
        method: "GET".into(),
        target: "/probe".into(),
        headers: vec![
            ("host".into(), authority.to_string()),
            ("connection".into(), "close".into()),
        ],
        body: Vec::new(),
    };
    Ok(client::exchange(listener, &request.to_bytes(), false).await?)
}

/// CONNECT through the proxy; on 2xx, checks that bytes come back through the tunnel.
async fn tunnel(listener: std::net::SocketAddr, authority: &str) -> anyhow::Result<u16> {
    let mut tunnel = client::connect(listener, authority, &[]).await?;
    let status = tunnel.response.status;
    if (200..300).contains(&status) {
        let payload = b"probe\n";
        tunnel.stream.write_all(payload).await?;
        let mut echoed = tunnel.early.clone();
        while echoed.len() < payload.len() {
            let mut chunk = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(10), tunnel.stream.read(&mut chunk))
                .await??;
            anyhow::ensure!(n > 0, "tunnel closed early");
            echoed.extend_from_slice(&chunk[..n]);
        }
        anyhow::ensure!(echoed == payload, "tunnel echoed {echoed:?}");
    }
    Ok(status)
}

/// Runs the probe against `kind`. Panics with what went wrong.
pub async fn refused_before_connecting(kind: ProxyKind) {
    let world = suite::shared_world().await.expect("fixtures");
    let probes = Probes::start(&world).await.expect("probe upstreams");
    let plain = format!("{PLAIN}:{}", probes.plain.port());
    let tls = format!("{TLS}:{}", probes.tls.port());
    let tunnel_to = format!("{TUNNEL}:{}", probes.tcp.port());
    // The upstream stage alone would stop these requests only after connecting (see
    // upstream_stage_stops_the_request_but_not_the_connect in envoy_e2e.rs).
    let upstream = json!({ "stage": "upstream" });

    let shipped_rules = rbac::rules(&json!({})).expect("rules");
    let running = suite::start_proxy_with(
        kind,
        &world,
        &probes.downstream(),
        &upstream,
        Some(&shipped_rules),
    )
    .await
    .expect("proxy");
    let listener = running.proxy.listener();
    let want = rbac::details(rbac::DENIED_POLICY);
    for authority in [&plain, &tls] {
        let response = get(listener, authority).await.expect("request");
        assert_eq!(
            response.status,
            403,
            "{authority}: {}",
            response.body_text()
        );
        assert_eq!(response.body_text(), "RBAC: access denied", "{authority}");
        assert_eq!(response.header("x-dfp-denied"), None, "{authority}");
    }
    let status = tunnel(listener, &tunnel_to).await.expect("CONNECT");
    assert_eq!(status, 403, "CONNECT {tunnel_to}");
    // Give any connect the proxy might have started a moment to be accepted, then look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        probes.seen(),
        (0, 0, 0, 0),
        "(plain connections, TLS connections, TLS handshakes, tunnel connections) to denied \
         addresses; {} log:\n{}",
        running.proxy.kind(),
        suite::tail(&running.proxy.log(), 40)
    );
    assert!(probes.plain.seen().is_empty() && probes.tls.seen().is_empty());
    let log = std::fs::read_to_string(&running.access_log).unwrap_or_default();
    assert_eq!(
        log.matches(want.as_str()).count(),
        3,
        "three denials by {want} expected in the access log:\n{log}"
    );
    drop(running);

    // Control: the same upstreams behind a stage (and an upstream stage) that carve loopback
    // out are reached, so the zeros above are not blind counters.
    let carve_out = json!({ "addresses": { "allow": ["127.0.0.0/8"] } });
    let carved_rules = rbac::rules(&carve_out).expect("rules");
    let carved_upstream = json!({ "stage": "upstream", "addresses": { "allow": ["127.0.0.0/8"] } });
    let running = suite::start_proxy_with(
        kind,
        &world,
        &probes.downstream(),
        &carved_upstream,
        Some(&carved_rules),
    )
    .await
    .expect("proxy");
    let listener = running.proxy.listener();
    for authority in [&plain, &tls] {
        let response = get(listener, authority).await.expect("request");
        assert_eq!(
            response.status,
            200,
            "{authority}: {}",
            response.body_text()
        );
    }
    let status = tunnel(listener, &tunnel_to).await.expect("CONNECT");
    assert_eq!(status, 200, "CONNECT {tunnel_to}");
    let (plain_conns, tls_conns, handshakes, tunnels) = probes.seen();
    assert!(
        plain_conns >= 1 && tls_conns >= 1 && handshakes >= 1 && tunnels >= 1,
        "the carved-out stage must reach every upstream: {:?}",
        probes.seen()
    );
}
