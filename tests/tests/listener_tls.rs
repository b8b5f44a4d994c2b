//! A listener that terminates TLS and asks for client certificates (`DownstreamTlsContext` with
//! `require_client_certificate` and a SAN matcher), from the same YAML in Envoy 1.40 and in host-sim: a client with
//! a certificate the CA signed and whose SPIFFE ID matches gets through, and the ABI probe reads the same
//! `connection.*` attributes in both; a client without a certificate, with a SAN the matcher refuses, or speaking
//! plain HTTP gets no response from either; the upstream sees `x-forwarded-proto: https`.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tests::client::{self, Request};
use tests::fidelity::fixtures::probe_wasm;
use tests::pki::Leaf;
use tests::rt::block_on;
use tests::suite::{self, ProxyKind};
use tests::upstream::EchoServer;

const PROXY_NAME: &str = "proxy.dfp.test";
const CLIENT_ID: &str = "spiffe://dfp.test/ci";
const CLIENT_DNS: &str = "ci.dfp.test";

fn bootstrap(server: &Leaf, ca: &std::path::Path, wasm: &std::path::Path, upstream: u16) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: mtls
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: ["http/1.1"]
            tls_certificates:
            - certificate_chain: {{ filename: "{cert}" }}
              private_key: {{ filename: "{key}" }}
            validation_context:
              trusted_ca: {{ filename: "{ca}" }}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ prefix: "spiffe://dfp.test/" }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mtls
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: probe
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: probe
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{wasm}" }} }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 2s
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }}
"#,
        cert = server.cert_file.display(),
        key = server.key_file.display(),
        ca = ca.display(),
        wasm = wasm.display(),
    )
}

/// A client that trusts the test CA and, when given one, presents `certificate`.
fn client_config(
    ca: &CertificateDer<'static>,
    certificate: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("the test CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut config = match certificate {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.cert_der.clone()],
                PrivateKeyDer::Pkcs8(leaf.key_der.clone_key()),
            )
            .expect("the client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn request(probe: &str) -> Vec<u8> {
    Request {
        method: "GET".into(),
        target: "/tls".into(),
        headers: vec![
            ("host".into(), "upstream.dfp.test".into()),
            ("x-probe".into(), probe.into()),
            ("x-probe-sections".into(), "properties".into()),
            ("connection".into(), "close".into()),
        ],
        body: Vec::new(),
    }
    .to_bytes()
}

/// What one proxy did with the four clients.
#[derive(Debug, PartialEq)]
struct Seen {
    /// The probe's `connection.*` attributes (`connection.id` left out: each proxy numbers its own).
    connection: BTreeMap<String, serde_json::Value>,
    /// `x-forwarded-proto` as the upstream received it.
    forwarded_proto: Option<String>,
    /// Whether each refused client got an HTTP response: without a certificate, with a foreign SAN, in plain text.
    answered: [bool; 3],
}

/// The listener's certificate and the two clients', issued once so both proxies see the same ones.
struct Certificates {
    server: Leaf,
    good: Leaf,
    foreign: Leaf,
}

async fn certificates() -> Certificates {
    let world = suite::shared_world().await.expect("fixtures");
    Certificates {
        server: world
            .pki
            .leaf("mtls-listener", &[PROXY_NAME])
            .expect("server certificate"),
        good: world
            .pki
            .client_leaf("mtls-ci", "ci", &[CLIENT_ID], &[CLIENT_DNS])
            .expect("client certificate"),
        foreign: world
            .pki
            .client_leaf("mtls-foreign", "foreign", &["spiffe://other.test/x"], &[])
            .expect("client certificate"),
    }
}

async fn run(kind: ProxyKind, certificates: &Certificates) -> Seen {
    let world = suite::shared_world().await.expect("fixtures");
    let Certificates {
        server,
        good,
        foreign,
    } = certificates;
    let upstream = EchoServer::plain("plain").await.expect("upstream");
    let wasm = probe_wasm().expect("the ABI probe");
    let yaml = bootstrap(server, &world.pki.ca_file(), &wasm, upstream.port());
    let proxy = suite::start_bootstrap(kind, yaml).await.expect("proxy");
    let listener = proxy.listener();
    let ca = world.pki.ca_der();

    // The probe answers with its report (a local reply); a second request goes on to the echo.
    let report = client::exchange_tls(
        listener,
        client_config(ca, Some(good)),
        PROXY_NAME,
        &request("report"),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{kind:?}: the mTLS client: {e}\n{}",
            suite::tail(&proxy.log(), 20)
        )
    });
    assert_eq!(report.status, 200, "{kind:?}: {}", report.body_text());
    let json = report
        .json()
        .unwrap_or_else(|| panic!("{kind:?}: not JSON: {}", report.body_text()));
    let connection: BTreeMap<String, serde_json::Value> = json["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{kind:?}: no properties in {json}"))
        .iter()
        .filter(|(name, _)| name.starts_with("connection.") && *name != "connection.id")
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let through = client::exchange_tls(
        listener,
        client_config(ca, Some(good)),
        PROXY_NAME,
        &request("none"),
    )
    .await
    .unwrap_or_else(|e| panic!("{kind:?}: the mTLS client: {e}"));
    assert_eq!(through.status, 200, "{kind:?}: {}", through.body_text());
    let forwarded_proto = through.json().and_then(|seen| {
        seen["headers"].as_array().and_then(|headers| {
            headers.iter().find_map(|pair| {
                (pair[0] == "x-forwarded-proto").then(|| pair[1].as_str().map(str::to_string))?
            })
        })
    });

    let without = client::exchange_tls(
        listener,
        client_config(ca, None),
        PROXY_NAME,
        &request("none"),
    )
    .await;
    let with_foreign = client::exchange_tls(
        listener,
        client_config(ca, Some(foreign)),
        PROXY_NAME,
        &request("none"),
    )
    .await;
    let plain = client::exchange(listener, &request("none"), false).await;
    Seen {
        connection,
        forwarded_proto,
        answered: [without.is_ok(), with_foreign.is_ok(), plain.is_ok()],
    }
}

#[test]
fn an_mtls_listener_is_the_same_in_envoy_and_host_sim() {
    let certificates = block_on(certificates());
    let envoy = block_on(run(ProxyKind::Envoy, &certificates));
    let host_sim = block_on(run(ProxyKind::HostSim, &certificates));
    // What Envoy says is the rule; these are the values it must have said, so a change on both sides fails too.
    let value = |seen: &Seen, name: &str| seen.connection.get(name).map(|v| v["value"].clone());
    assert_eq!(
        value(&envoy, "connection.mtls"),
        Some(serde_json::json!({ "hex": "01" })),
        "{envoy:#?}"
    );
    assert_eq!(
        value(&envoy, "connection.uri_san_peer_certificate"),
        Some(serde_json::json!({ "utf8": CLIENT_ID })),
        "{envoy:#?}"
    );
    // Envoy's requested server name comes from the tls_inspector listener filter, not from the TLS socket: without
    // one it is empty whatever SNI the client sent.
    assert_eq!(
        value(&envoy, "connection.requested_server_name"),
        Some(serde_json::Value::Null),
        "{envoy:#?}"
    );
    // RFC 2253 as OpenSSL prints it: the last RDN first (rcgen writes CN, O, OU), a comma in a value escaped.
    assert_eq!(
        value(&envoy, "connection.subject_peer_certificate"),
        Some(serde_json::json!({ "utf8": "OU=ci\\, batch,O=dfp test,CN=ci" })),
        "{envoy:#?}"
    );
    assert_eq!(envoy.forwarded_proto.as_deref(), Some("https"));
    assert_eq!(envoy.answered, [false, false, false], "{envoy:#?}");
    assert_eq!(host_sim, envoy, "host-sim (left) and Envoy (right) differ");
}
