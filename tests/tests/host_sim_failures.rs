//! Failure modes and request forms, one table run against real Envoy 1.40 and against host-sim from the same
//! bootstrap: upstream refused, closed or reset before the response headers, a slow upstream meeting the route
//! timeout, TLS with a certificate from the wrong CA or for the wrong name, absolute-form requests, CONNECT
//! tunnels, and what reaches an upstream of the request's own headers (hop-by-hop, `Proxy-Authorization`).
//! host-sim must answer as Envoy does — status, body, response code details — except where `docs/host-sim.md`
//! lists a difference, which the table then pins down.

mod host_sim_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use host_sim_support::{get, start, Outcome, Subject, Tweaks, KINDS};
use serde_json::json;
use tests::client::{self, Request};
use tests::rt::block_on;
use tests::suite;
use tests::upstream::{EchoServer, RefusedPort, Seen};
use tests::world::World;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How an ad-hoc upstream treats a request.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Reads the request head, then closes the connection (FIN).
    Close,
    /// Reads the request head, then resets the connection (RST).
    Reset,
    /// Reads the request head and never answers.
    Silent,
    /// Answers 200 announcing 100 bytes of body, sends 10, and closes.
    ShortBody,
}

/// A TCP server on loopback that misbehaves after reading a request head; stops on drop.
struct BadUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl BadUpstream {
    async fn start(behaviour: Misbehaviour) -> BadUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(misbehave(stream, behaviour));
            }
        });
        BadUpstream { addr, task }
    }
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn misbehave(mut stream: TcpStream, behaviour: Misbehaviour) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match behaviour {
        Misbehaviour::Close => {
            let _ = stream.shutdown().await;
        }
        Misbehaviour::Reset => {
            // SO_LINGER 0: close sends RST instead of FIN (and does not block, which the deprecation is about).
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
        }
        Misbehaviour::Silent => tokio::time::sleep(Duration::from_secs(60)).await,
        Misbehaviour::ShortBody => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
                .await;
            let _ = stream.shutdown().await;
        }
    }
}

/// A loopback port nothing listens on (bound once, then released).
/// A TLS server configuration with a certificate for `name` from a CA of its own (a distinct name, as any
/// other CA has), which the proxies do not trust.
fn foreign_ca_server(name: &str) -> std::sync::Arc<rustls::ServerConfig> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.distinguished_name
        .push(DnType::CommonName, "somebody else's CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![name.to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server config");
    std::sync::Arc::new(config)
}

/// The servers the table's destinations point at.
struct Upstreams {
    /// Held for the suite, so the port stays bound and refused.
    refused: RefusedPort,
    close: BadUpstream,
    reset: BadUpstream,
    silent: BadUpstream,
    short_body: BadUpstream,
    /// TLS with a certificate for the right name from a CA the proxies do not trust.
    wrong_ca: EchoServer,
    /// TLS with a certificate from the trusted CA naming two other hosts.
    two_names: EchoServer,
    /// TLS with a certificate from another CA that has the trusted CA's name: the signature does not verify.
    same_name_ca: EchoServer,
    _same_name_pki: tests::pki::Pki,
}

impl Upstreams {
    async fn start(world: &World) -> Upstreams {
        let two_names = world
            .pki
            .leaf("two-names", &["one.fail.dfp.test", "two.fail.dfp.test"])
            .expect("leaf");
        // tests::pki names every CA alike, so a second one looks like the trusted issuer with a different key.
        let same_name_pki = tests::pki::Pki::new().expect("second CA");
        let same_name_leaf = same_name_pki
            .leaf("same-name", &["same-name-ca.fail.dfp.test"])
            .expect("leaf");
        // A name that resolves off loopback: the clusters bind 127.0.0.1, so the kernel refuses the connect call.
        world.dns.set(
            "private.fail.dfp.test",
            tests::dns::Answer::ips(&["10.0.0.6".parse().expect("ip")]),
        );
        Upstreams {
            same_name_ca: EchoServer::tls(
                "same-name-ca",
                same_name_leaf.server_config().expect("tls"),
            )
            .await
            .expect("tls upstream"),
            _same_name_pki: same_name_pki,
            refused: RefusedPort::new().expect("refused port"),
            close: BadUpstream::start(Misbehaviour::Close).await,
            reset: BadUpstream::start(Misbehaviour::Reset).await,
            silent: BadUpstream::start(Misbehaviour::Silent).await,
            short_body: BadUpstream::start(Misbehaviour::ShortBody).await,
            wrong_ca: EchoServer::tls("wrong-ca", foreign_ca_server("wrong-ca.fail.dfp.test"))
                .await
                .expect("tls upstream"),
            two_names: EchoServer::tls("two-names", two_names.server_config().expect("tls"))
                .await
                .expect("tls upstream"),
        }
    }

    fn allow(&self, world: &World) -> serde_json::Value {
        json!([
            { "host": "refused.fail.dfp.test", "ports": [self.refused.port()] },
            { "host": "close.fail.dfp.test", "ports": [self.close.addr.port()] },
            { "host": "reset.fail.dfp.test", "ports": [self.reset.addr.port()] },
            { "host": "slow.fail.dfp.test", "ports": [self.silent.addr.port()] },
            { "host": "short.fail.dfp.test", "ports": [self.short_body.addr.port()] },
            { "host": "wrong-ca.fail.dfp.test", "ports": [self.wrong_ca.port()], "tls": true },
            // world.tls serves a certificate for secure.dfp.test only.
            { "host": "wrong-name.fail.dfp.test", "ports": [world.tls.port()], "tls": true },
            { "host": "three.fail.dfp.test", "ports": [self.two_names.port()], "tls": true },
            { "host": "same-name-ca.fail.dfp.test", "ports": [self.same_name_ca.port()], "tls": true },
            // TLS to the plain echo.
            { "host": "plaintext.fail.dfp.test", "ports": [world.plain.port()], "tls": true },
            { "host": "private.fail.dfp.test", "ports": [world.plain.port()] },
            // Plain HTTP to the TLS echo: its TLS alert is no HTTP response.
            { "host": "api-to-tls.fail.dfp.test", "ports": [world.tls.port()], "tls": false },
            { "host": "secure.dfp.test", "ports": [world.tls.port()], "tls": true },
            { "host": "api.fail.dfp.test", "ports": [world.plain.port()] },
            { "host": "tunnel.fail.dfp.test", "ports": [world.tcp.port(), self.refused.port()] }
        ])
    }
}

/// One row of the table: a name and the request to send.
struct Row {
    name: &'static str,
    request: Request,
}

fn rows(up: &Upstreams, world: &World) -> Vec<Row> {
    let host = |name: &str, port: u16| format!("{name}.fail.dfp.test:{port}");
    let mut absolute = get(&host("api", world.plain.port()), "");
    absolute.target = format!("http://{}/abs/path?q=1", host("api", world.plain.port()));
    // Envoy takes the authority from the absolute URI, whatever Host says.
    absolute.headers = vec![("host".into(), "elsewhere.example:81".into())];
    vec![
        Row {
            name: "refused",
            request: get(&host("refused", up.refused.port()), "/"),
        },
        Row {
            name: "closed before headers",
            request: get(&host("close", up.close.addr.port()), "/"),
        },
        Row {
            name: "reset before headers",
            request: get(&host("reset", up.reset.addr.port()), "/"),
        },
        Row {
            name: "route timeout",
            request: get(&host("slow", up.silent.addr.port()), "/"),
        },
        Row {
            name: "tls wrong CA",
            request: get(&host("wrong-ca", up.wrong_ca.port()), "/"),
        },
        Row {
            name: "tls wrong name",
            request: get(&host("wrong-name", world.tls.port()), "/"),
        },
        Row {
            name: "tls wrong name, two SANs",
            request: get(&host("three", up.two_names.port()), "/"),
        },
        Row {
            name: "tls bad signature",
            request: get(&host("same-name-ca", up.same_name_ca.port()), "/"),
        },
        Row {
            name: "tls to a plain-text server",
            request: get(&host("plaintext", world.plain.port()), "/"),
        },
        Row {
            name: "immediate connect error",
            request: get(&host("private", world.plain.port()), "/"),
        },
        Row {
            name: "plain HTTP to a TLS server",
            request: get(&host("api-to-tls", world.tls.port()), "/"),
        },
        Row {
            name: "no Host header",
            request: Request {
                method: "GET".into(),
                target: "/".into(),
                headers: Vec::new(),
                body: Vec::new(),
            },
        },
        Row {
            name: "CONNECT with an absolute URI",
            request: Request {
                method: "CONNECT".into(),
                target: format!("http://{}/", host("tunnel", world.tcp.port())),
                headers: vec![("host".into(), host("tunnel", world.tcp.port()))],
                body: Vec::new(),
            },
        },
        Row {
            name: "websocket upgrade, none configured",
            request: {
                let mut request = get(&host("api", world.plain.port()), "/ws");
                request.headers.extend(
                    [
                        ("connection", "Upgrade"),
                        ("upgrade", "websocket"),
                        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                        ("sec-websocket-version", "13"),
                    ]
                    .map(|(k, v)| (k.to_string(), v.to_string())),
                );
                request
            },
        },
        Row {
            name: "expect 100-continue",
            request: Request {
                method: "POST".into(),
                target: "/expect".into(),
                headers: vec![
                    ("host".into(), host("api", world.plain.port())),
                    ("expect".into(), "100-continue".into()),
                ],
                body: b"payload".to_vec(),
            },
        },
        Row {
            name: "tls right name",
            request: get(&format!("secure.dfp.test:{}", world.tls.port()), "/tls"),
        },
        Row {
            name: "absolute-form",
            request: absolute,
        },
    ]
}

/// What the echo saw: method, path, `Host`, SNI and `Expect`.
type SeenRequest = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// What a row produced, with what the echo (if any) received, normalised for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    outcome: Outcome,
    /// The echo's record of the request.
    upstream: Option<SeenRequest>,
}

fn observe(mut outcome: Outcome) -> Observed {
    let upstream = (outcome.status == 200)
        .then(|| serde_json::from_str::<Seen>(&outcome.body).ok())
        .flatten()
        .map(|seen| {
            let expect = seen.header("expect").map(str::to_string);
            (seen.method, seen.path, seen.authority, seen.sni, expect)
        });
    if upstream.is_some() {
        outcome.body.clear();
    }
    Observed { outcome, upstream }
}

const ROUTE_TIMEOUT: Duration = Duration::from_secs(1);

async fn subject(
    kind: tests::suite::ProxyKind,
    world: &World,
    up: &Upstreams,
) -> anyhow::Result<Subject> {
    let downstream = host_sim_support::downstream_config(up.allow(world));
    let tweaks = Tweaks {
        route_timeout: Some("1s"),
        ..Tweaks::default()
    };
    start(
        kind,
        world,
        &downstream,
        &host_sim_support::upstream_config(),
        &tweaks,
    )
    .await
}

/// Every row against both proxies; all differences are reported together.
#[test]
fn failure_modes_answer_as_envoy_does() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let up = Upstreams::start(&world).await;
        let table = rows(&up, &world);
        let mut results: Vec<Vec<Observed>> = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &up).await.expect("proxy");
            let mut observed = Vec::new();
            for (i, row) in table.iter().enumerate() {
                let started = Instant::now();
                let outcome = subject
                    .send(&format!("row-{i}"), &row.request)
                    .await
                    .unwrap_or_else(|e| panic!("{} {}: {e:#}", subject.label(), row.name));
                if row.name == "route timeout" {
                    let elapsed = started.elapsed();
                    assert!(
                        elapsed >= ROUTE_TIMEOUT && elapsed < ROUTE_TIMEOUT * 4,
                        "{}: the route timeout answered after {elapsed:?}",
                        subject.label()
                    );
                }
                observed.push(observe(outcome));
            }
            results.push(observed);
        }
        let mut differences = Vec::new();
        for (i, row) in table.iter().enumerate() {
            if results[0][i] != results[1][i] {
                differences.push(format!(
                    "{}:\n  envoy:    {:?}\n  host-sim: {:?}",
                    row.name, results[0][i], results[1][i]
                ));
            }
        }
        eprintln!("envoy: {:#?}", results[0]);
        assert!(
            differences.is_empty(),
            "host-sim differs from Envoy 1.40:\n{}",
            differences.join("\n")
        );
        // And the answers are the failures they should be (not two proxies agreeing on something else).
        let by_name: BTreeMap<&str, &Observed> = table
            .iter()
            .map(|r| r.name)
            .zip(results[1].iter())
            .collect();
        for name in [
            "refused",
            "closed before headers",
            "reset before headers",
            "tls wrong CA",
            "tls wrong name",
            "tls wrong name, two SANs",
            "tls bad signature",
            "tls to a plain-text server",
            "immediate connect error",
        ] {
            assert_eq!(by_name[name].outcome.status, 503, "{name}");
            assert!(
                by_name[name]
                    .outcome
                    .body
                    .starts_with("upstream connect error or disconnect/reset before headers"),
                "{name}: {:?}",
                by_name[name]
            );
        }
        assert_eq!(by_name["route timeout"].outcome.status, 504);
        assert_eq!(by_name["plain HTTP to a TLS server"].outcome.status, 502);
        assert_eq!(by_name["no Host header"].outcome.status, 400);
        assert_eq!(by_name["CONNECT with an absolute URI"].outcome.status, 400);
        assert_eq!(
            by_name["websocket upgrade, none configured"].outcome.status,
            403
        );
        assert_eq!(by_name["expect 100-continue"].outcome.status, 200);
        assert_eq!(
            by_name["expect 100-continue"]
                .upstream
                .as_ref()
                .map(|seen| seen.4.clone()),
            Some(None),
            "the expectation is not passed on"
        );
        assert_eq!(by_name["tls right name"].outcome.status, 200);
        assert_eq!(by_name["absolute-form"].outcome.status, 200);
    });
}

/// CONNECT: 200, then bytes both ways to the TCP echo; to a refused port, the connect failure.
#[test]
fn connect_tunnels_answer_as_envoy_does() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let up = Upstreams::start(&world).await;
        let mut results = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &up).await.expect("proxy");
            let authority = format!("tunnel.fail.dfp.test:{}", world.tcp.port());
            let mut tunnel = client::connect(
                subject.proxy.listener(),
                &authority,
                &[("x-case-id".into(), "tunnel".into())],
            )
            .await
            .expect("CONNECT");
            let status = tunnel.response.status;
            let mut echoed = tunnel.early.clone();
            if status == 200 {
                tunnel
                    .stream
                    .write_all(b"ping through the tunnel")
                    .await
                    .expect("write");
                let deadline = Instant::now() + Duration::from_secs(5);
                while echoed.len() < 23 && Instant::now() < deadline {
                    let mut buf = [0u8; 64];
                    match tokio::time::timeout(Duration::from_secs(5), tunnel.stream.read(&mut buf))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => echoed.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
            }
            drop(tunnel);
            let refused = client::connect(
                subject.proxy.listener(),
                &format!("tunnel.fail.dfp.test:{}", up.refused.port()),
                &[("x-case-id".into(), "tunnel-refused".into())],
            )
            .await
            .expect("CONNECT");
            let refused_details = subject.details("tunnel-refused").await.expect("details");
            results.push((
                status,
                String::from_utf8_lossy(&echoed).into_owned(),
                refused.response.status,
                refused.response.body_text(),
                refused_details,
                refused.response.header("connection").map(str::to_string),
            ));
        }
        host_sim_support::assert_same("CONNECT", &results[0], &results[1]);
        assert_eq!(results[1].0, 200);
        assert_eq!(results[1].1, "ping through the tunnel");
        assert_eq!(results[1].2, 503);
        // A refused CONNECT ends the connection.
        assert_eq!(results[1].5.as_deref(), Some("close"));
    });
}

/// What of the client's headers reaches the upstream: hop-by-hop headers never do; `Proxy-Authorization` is the
/// client's credential for the proxy and never reaches a destination in host-sim (see docs/host-sim.md for
/// Envoy); `x-forwarded-proto` and `x-request-id` are added as Envoy's defaults add them.
#[test]
fn hop_by_hop_headers_stay_at_the_proxy() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let up = Upstreams::start(&world).await;
        let mut seen_by_kind = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &up).await.expect("proxy");
            let mut request = get(&format!("api.fail.dfp.test:{}", world.plain.port()), "/hop");
            request.headers.extend(
                [
                    ("connection", "keep-alive, x-nominated"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("te", "deflate, trailers"),
                    ("x-nominated", "by connection"),
                    ("proxy-authorization", "Basic dXNlcjpwYXNz"),
                    ("x-end-to-end", "kept"),
                    // Headers Envoy's router or connection manager act on: a client may not steer them.
                    ("x-envoy-max-retries", "3"),
                    ("x-envoy-retry-on", "5xx"),
                    ("x-envoy-retry-grpc-on", "cancelled"),
                    ("x-envoy-retriable-status-codes", "503"),
                    ("x-envoy-retriable-header-names", "x-a"),
                    ("x-envoy-upstream-rq-timeout-ms", "50"),
                    ("x-envoy-upstream-rq-per-try-timeout-ms", "50"),
                    ("x-envoy-upstream-rq-timeout-alt-response", "1"),
                    ("x-envoy-hedge-on-per-try-timeout", "true"),
                    ("x-envoy-expected-rq-timeout-ms", "7"),
                    ("x-envoy-internal", "true"),
                    ("x-envoy-external-address", "192.0.2.1"),
                    ("x-envoy-downstream-service-cluster", "c"),
                    ("x-envoy-downstream-service-node", "n"),
                    ("x-envoy-force-trace", "true"),
                    ("x-envoy-ip-tags", "t"),
                    ("x-envoy-upstream-alt-stat-name", "s"),
                    ("x-envoy-decorator-operation", "op"),
                    ("x-envoy-original-path", "/o"),
                    ("x-forwarded-for", "192.0.2.9"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            let outcome = subject.send("hop", &request).await.expect("request");
            let seen: Seen = serde_json::from_str(&outcome.body)
                .unwrap_or_else(|e| panic!("{}: {e}: {outcome:?}", subject.label()));
            let names: Vec<String> = seen.headers.iter().map(|(k, _)| k.clone()).collect();
            eprintln!("{}: upstream saw {:?}", subject.label(), seen.headers);
            seen_by_kind.push((names, seen.header("te").map(str::to_string)));
        }
        // TE is reduced to `trailers`, the one value that means something end to end.
        assert_eq!(seen_by_kind[1].1.as_deref(), Some("trailers"));
        assert_eq!(seen_by_kind[1].1, seen_by_kind[0].1, "te: host-sim, Envoy");
        let host_sim = &seen_by_kind[1].0;
        for absent in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "x-nominated",
            "proxy-authorization",
        ] {
            assert!(
                !host_sim.iter().any(|h| h == absent),
                "{absent} reached the upstream through host-sim: {host_sim:?}"
            );
        }
        for present in ["x-end-to-end", "x-forwarded-proto", "x-request-id"] {
            assert!(
                host_sim.iter().any(|h| h == present),
                "{present} missing upstream: {host_sim:?}"
            );
        }
        // Everything else as Envoy: the same header names, in the same order, apart from what docs/host-sim.md lists.
        let envoy: Vec<&String> = seen_by_kind[0]
            .0
            .iter()
            .filter(|h| h.as_str() != "proxy-authorization")
            .collect();
        let host_sim: Vec<&String> = host_sim.iter().collect();
        assert_eq!(
            host_sim, envoy,
            "upstream header names: host-sim (left), Envoy (right)"
        );
    });
}

/// How a stream ended reaches the access log as Envoy writes it, at the end: a body the upstream broke off, a
/// tunnel the client closed, a response the client read to the end.
#[test]
fn stream_ends_are_logged_as_envoy_logs_them() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let up = Upstreams::start(&world).await;
        let mut results = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &up).await.expect("proxy");
            // The upstream announces 100 bytes and sends 10: the client gets a truncated body.
            let short = format!("short.fail.dfp.test:{}", up.short_body.addr.port());
            let mut stream = TcpStream::connect(subject.proxy.listener())
                .await
                .expect("connect");
            stream
                .write_all(
                    format!("GET / HTTP/1.1\r\nhost: {short}\r\nx-case-id: short\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .expect("write");
            let mut received = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
                    .await;
            let head = String::from_utf8_lossy(&received).into_owned();
            let short_details = subject.details("short").await.expect("details");

            // A tunnel the client closes.
            let tunnel = client::connect(
                subject.proxy.listener(),
                &format!("tunnel.fail.dfp.test:{}", world.tcp.port()),
                &[("x-case-id".into(), "tunnel-closed".into())],
            )
            .await
            .expect("CONNECT");
            assert_eq!(tunnel.response.status, 200);
            drop(tunnel);
            let tunnel_details = subject.details("tunnel-closed").await.expect("details");

            // A response read to the end.
            let whole = subject
                .send(
                    "whole",
                    &get(&format!("api.fail.dfp.test:{}", world.plain.port()), "/"),
                )
                .await
                .expect("request");
            results.push((
                head.starts_with("HTTP/1.1 200"),
                short_details,
                tunnel_details,
                whole.details,
            ));
        }
        host_sim_support::assert_same("stream ends", &results[0], &results[1]);
        assert_eq!(
            results[1],
            (
                true,
                "upstream_reset_after_response_started{protocol_error}".to_string(),
                "downstream_remote_disconnect".to_string(),
                "via_upstream".to_string()
            )
        );
    });
}

/// `generate_request_id: false`: no `x-request-id` is made up, in either proxy; one the client sent passes.
#[test]
fn generate_request_id_false_adds_none() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let up = Upstreams::start(&world).await;
        let downstream = host_sim_support::downstream_config(up.allow(&world));
        let tweaks = Tweaks {
            hcm: vec![("generate_request_id", false.into())],
            ..Tweaks::default()
        };
        let mut seen = Vec::new();
        for kind in KINDS {
            let subject = start(
                kind,
                &world,
                &downstream,
                &host_sim_support::upstream_config(),
                &tweaks,
            )
            .await
            .expect("proxy");
            let api = format!("api.fail.dfp.test:{}", world.plain.port());
            let mut ids = Vec::new();
            for (case, sent) in [("no-id", None), ("own-id", Some("client-chosen"))] {
                let mut request = get(&api, "/id");
                if let Some(id) = sent {
                    request.headers.push(("x-request-id".into(), id.into()));
                }
                let outcome = subject.send(case, &request).await.expect("request");
                let echo: Seen = serde_json::from_str(&outcome.body)
                    .unwrap_or_else(|e| panic!("{}: {e}: {outcome:?}", subject.label()));
                ids.push(echo.header("x-request-id").map(str::to_string));
            }
            seen.push(ids);
        }
        host_sim_support::assert_same("generate_request_id", &seen[0], &seen[1]);
        assert_eq!(seen[1], vec![None, Some("client-chosen".to_string())]);
    });
}

/// Requests without a body: which methods reach the upstream with `content-length: 0` (Envoy's HTTP/1 encoder adds
/// it for methods that anticipate a body).
#[test]
fn bodiless_requests_carry_envoys_content_length() {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "DELETE", "TRACE", "OPTIONS", "POST", "PUT", "PATCH", "PURGE",
    ];
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let up = Upstreams::start(&world).await;
        let mut seen = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &up).await.expect("proxy");
            let api = format!("api.fail.dfp.test:{}", world.plain.port());
            let mut lengths = Vec::new();
            for method in METHODS {
                let mut request = get(&api, "/bodiless");
                request.method = method.into();
                request
                    .headers
                    .push(("x-case-id".into(), format!("bodiless-{method}")));
                let before = world
                    .plain
                    .seen_for_case(&format!("bodiless-{method}"))
                    .len();
                let response = client::exchange(
                    subject.proxy.listener(),
                    &request.to_bytes(),
                    method == "HEAD",
                )
                .await
                .unwrap_or_else(|e| panic!("{} {method}: {e}", subject.label()));
                assert_eq!(response.status, 200, "{} {method}", subject.label());
                let records = world.plain.seen_for_case(&format!("bodiless-{method}"));
                let record = records.get(before).cloned().expect("the upstream saw it");
                lengths.push((method, record.header("content-length").map(str::to_string)));
            }
            seen.push(lengths);
        }
        host_sim_support::assert_same("bodiless requests", &seen[0], &seen[1]);
        let announced: Vec<&str> = seen[1]
            .iter()
            .filter(|(_, length)| length.as_deref() == Some("0"))
            .map(|(method, _)| *method)
            .collect();
        assert_eq!(announced, ["OPTIONS", "POST", "PUT", "PATCH", "PURGE"]);
    });
}
