//! End-to-end against real Envoy 1.40 with the built filter: a DNS server, plain and TLS
//! upstreams and a TCP echo on loopback, requests over real sockets. The cases are data
//! (`tests/cases/*.yaml`); each variant gets one Envoy and runs its cases concurrently.

mod multi_address;
mod resolved_probe;
mod streaming_probe;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use tests::client::{self, Request};
use tests::envoy;
use tests::rt::block_on;
use tests::suite::{self, ProxyKind};
use tests::template;
use tests::upstream::EchoServer;
use tests::wasm::workspace_root;
use tests::world::tests_dir;

tests::variant_tests!(ProxyKind::Envoy);

#[test]
fn every_variant_is_run() {
    let world = block_on(suite::shared_world()).expect("fixtures");
    let (variants, _) = suite::load(&world).expect("cases");
    let mut defined: Vec<&str> = variants.keys().map(String::as_str).collect();
    let mut tested = suite::VARIANTS.to_vec();
    defined.sort_unstable();
    tested.sort_unstable();
    assert_eq!(
        defined, tested,
        "add each new variant to suite::VARIANTS and suite::variant_tests!"
    );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidConfig {
    name: String,
    stage: String,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    config_text: Option<String>,
    log_contains: String,
}

/// Envoy refuses a bootstrap whose filter configuration the wasm rejects, and says which key.
#[test]
fn invalid_filter_configs_are_refused() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let (variants, _) = suite::load(&world).expect("cases");
        let good = &variants["enforce"];
        let path = tests_dir().join("cases").join("invalid_configs.yaml");
        let text = std::fs::read_to_string(&path).expect("invalid_configs.yaml");
        let bad: Vec<InvalidConfig> = serde_yaml_ng::from_str(&text).expect("invalid_configs.yaml");
        assert!(!bad.is_empty());
        let template_text = suite::bootstrap_template().expect("template");

        // The unchanged variant must pass, or every "refused" below would prove nothing.
        let scratch = tempfile::tempdir().expect("tempdir");
        let access_log = scratch.path().join("access.log");
        let baseline = world
            .render_bootstrap(
                &template_text,
                &good.downstream,
                &good.upstream,
                (0, 0),
                &access_log,
            )
            .expect("render");
        let outcome = envoy::validate(&baseline, &workspace_root()).expect("run envoy");
        assert!(
            outcome.success,
            "the good config fails validation:\n{}",
            outcome.log
        );

        let mut failures = Vec::new();
        for case in &bad {
            // config_text may not be JSON at all: pass it as a JSON string value verbatim.
            let bad_config = match (&case.config, &case.config_text) {
                (Some(v), None) => v.to_string(),
                (None, Some(t)) => t.clone(),
                _ => panic!("{}: give exactly one of config, config_text", case.name),
            };
            let (down, up) = match case.stage.as_str() {
                "downstream" => (bad_config, good.upstream.to_string()),
                "upstream" => (good.downstream.to_string(), bad_config),
                other => panic!("{}: unknown stage {other}", case.name),
            };
            let mut vars = world.vars();
            vars.insert(
                "DOWNSTREAM_CONFIG".into(),
                serde_json::to_string(&down).unwrap_or_default(),
            );
            vars.insert(
                "UPSTREAM_CONFIG".into(),
                serde_json::to_string(&up).unwrap_or_default(),
            );
            vars.insert("LISTENER_PORT".into(), "0".into());
            vars.insert("ADMIN_PORT".into(), "0".into());
            vars.insert(
                "ACCESS_LOG".into(),
                access_log.to_string_lossy().into_owned(),
            );
            let bootstrap = template::render(&template_text, &vars).expect("render");
            let outcome = envoy::validate(&bootstrap, &workspace_root()).expect("run envoy");
            if outcome.success {
                failures.push(format!("{}: Envoy accepted the config", case.name));
            } else if !outcome.log.contains(&case.log_contains) {
                failures.push(format!(
                    "{}: refused, but the log does not name {:?}:\n{}",
                    case.name,
                    case.log_contains,
                    suite::tail(&outcome.log, 15)
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    });
}

/// The shipped envoy-config/envoy.yaml passes `envoy --mode validate` from the repository root.
/// The wasm it names (target/wasm32-unknown-unknown/release/dfp_filter.wasm) is supplied by
/// running from a scratch directory that mirrors that layout with the freshly built module.
#[test]
fn shipped_envoy_yaml_validates() {
    let wasm = tests::wasm::filter_wasm().expect("build dfp_filter.wasm");
    let scratch = tempfile::tempdir().expect("tempdir");
    let release = scratch.path().join("target/wasm32-unknown-unknown/release");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::copy(&wasm, release.join("dfp_filter.wasm")).expect("copy wasm");
    let config: PathBuf = workspace_root().join("envoy-config").join("envoy.yaml");
    let outcome = envoy::validate_file(&config, scratch.path()).expect("run envoy");
    assert!(
        outcome.success,
        "envoy-config/envoy.yaml fails validation:\n{}",
        outcome.log
    );
}

/// What the upstream stage can and cannot stop in Envoy 1.40. Envoy reads `upstream.address`
/// from the host its load balancer picked, which is set before the upstream filter chain runs,
/// so the stage sees the resolved address and denies. But Envoy asks the connection pool for a
/// stream *before* running upstream filters (`UpstreamRequest::acceptHeadersFromRouter` calls
/// `conn_pool_->newStream` first), so the connection to the denied address is opened anyway,
/// TLS handshake included on dfp_tls; only the request itself never leaves. This test pins
/// those facts down on private upstreams so no other test's traffic is counted.
#[test]
fn upstream_stage_stops_the_request_but_not_the_connect() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let plain = EchoServer::plain("probe").await.expect("probe");
        let leaf = world
            .pki
            .leaf("probe", &["probe-tls.dfp.test"])
            .expect("leaf");
        let tls = EchoServer::tls("probe-tls", leaf.server_config().expect("tls config"))
            .await
            .expect("tls probe");
        let downstream = serde_json::json!({
            "stage": "downstream",
            "allow": [
                { "host": "probe.dfp.test", "ports": [plain.port()] },
                { "host": "probe-tls.dfp.test", "ports": [tls.port()], "tls": true }
            ],
            "cluster_header": "x-dfp-cluster",
            "clusters": { "plain": "dfp_plain", "tls": "dfp_tls" }
        });
        let upstream = serde_json::json!({ "stage": "upstream" });
        let running = suite::start_proxy(ProxyKind::Envoy, &world, &downstream, &upstream)
            .await
            .expect("envoy");

        for (name, server) in [("probe.dfp.test", &plain), ("probe-tls.dfp.test", &tls)] {
            let request = Request {
                method: "GET".into(),
                target: "/probe".into(),
                headers: vec![
                    ("host".into(), format!("{name}:{}", server.port())),
                    ("connection".into(), "close".into()),
                ],
                body: Vec::new(),
            };
            let response = client::exchange(running.proxy.listener(), &request.to_bytes(), false)
                .await
                .expect("request");
            assert_eq!(response.status, 403, "{name}: {}", response.body_text());
            assert_eq!(response.header("x-dfp-denied"), Some("address_denied"));
            assert!(
                server.seen().is_empty(),
                "{name}: the request must not arrive"
            );
        }

        // Give connects that Envoy started a moment to be accepted, then look.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let note = "Envoy 1.40 connects before upstream filters decide; if this changed, \
                    update what envoy-config/envoy.yaml says the upstream stage prevents";
        assert_eq!(plain.connections(), 1, "{note}");
        assert_eq!(tls.connections(), 1, "{note}");
        assert_eq!(tls.handshakes(), 1, "{note}");
    });
}

/// The resolved-address stage in Envoy 1.40: a name resolving to a denied address gets 403 with
/// no TCP connection and no TLS handshake to it, for plain, TLS and CONNECT.
#[test]
fn resolved_stage_refuses_before_connecting() {
    block_on(resolved_probe::refused_before_connecting(ProxyKind::Envoy));
}

/// The RBAC list in envoy-config/envoy.yaml is the filter's default address policy, so the
/// address a name resolves to is judged before connecting exactly as the wasm filter judges it
/// after: same blocks, and the same verdict on addresses in, next to and between them.
#[test]
fn shipped_resolved_stage_is_the_filter_default_policy() {
    let path = workspace_root().join("envoy-config").join("envoy.yaml");
    let text = std::fs::read_to_string(&path).expect("envoy.yaml");
    let yaml: Value = serde_yaml_ng::from_str(&text).expect("envoy.yaml parses");
    let rules = suite::shipped_resolved_rules(&yaml).expect("the resolved stage");
    let shipped = tests::rbac::read_rules(&rules).expect("a stage these tests can read");
    let expected =
        tests::rbac::AddressLists::from_filter(&serde_json::json!({})).expect("defaults");
    assert_eq!(
        shipped.clone().normalized(),
        expected.clone().normalized(),
        "envoy.yaml's denied_address blocks differ from the filter's default addresses.deny"
    );

    let policy = dfp_filter::policy::Policy::compile(
        &dfp_filter::config::FilterConfig::from_json(r#"{"stage":"upstream"}"#).expect("config"),
    );
    let mut probes: Vec<IpAddr> = Vec::new();
    for &(prefix, len) in shipped.deny.iter().chain(&shipped.allow) {
        // The first and last address of each block, and their neighbours outside it.
        match prefix {
            IpAddr::V4(a) => {
                let first = u32::from(a);
                let last = first | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                for n in [first, last, first.wrapping_sub(1), last.wrapping_add(1)] {
                    probes.push(IpAddr::V4(Ipv4Addr::from(n)));
                }
            }
            IpAddr::V6(a) => {
                let first = u128::from(a);
                let last = first | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                for n in [first, last, first.wrapping_sub(1), last.wrapping_add(1)] {
                    probes.push(IpAddr::V6(Ipv6Addr::from(n)));
                }
            }
        }
    }
    // And a spread of addresses anywhere (a fixed linear congruential walk).
    let mut x: u128 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        x = x
            .wrapping_mul(0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645)
            .wrapping_add(0x5851_f42d_4c95_7f2d_1405_7b7e_f767_814f);
        probes.push(IpAddr::V6(Ipv6Addr::from(x)));
        probes.push(IpAddr::V4(Ipv4Addr::from((x >> 64) as u32)));
        probes.push(IpAddr::V6(Ipv6Addr::from((0xffff_u128 << 32) | (x >> 96))));
        probes.push(IpAddr::V6(Ipv6Addr::from(
            (0x64_ff9b_u128 << 96) | (x >> 96),
        )));
    }
    let wrong: Vec<String> = probes
        .iter()
        .filter(|ip| shipped.denies(**ip) != policy.address_denied(**ip))
        .map(|ip| {
            format!(
                "{ip}: RBAC denies {}, filter {}",
                shipped.denies(*ip),
                policy.address_denied(*ip)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} disagreements:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
}

/// Every DNS cache config in envoy-config/envoy.yaml drops, from each DNS answer, exactly the addresses the filter's
/// default address policy denies: the same blocks as the RBAC stage, so the two never disagree on an address.
#[test]
fn shipped_dns_filter_is_the_filter_default_policy() {
    let path = workspace_root().join("envoy-config").join("envoy.yaml");
    let text = std::fs::read_to_string(&path).expect("envoy.yaml");
    let yaml: Value = serde_yaml_ng::from_str(&text).expect("envoy.yaml parses");
    let filters = suite::dns_cache_address_filters(&yaml);
    assert_eq!(
        filters.len(),
        3,
        "the DFP filter's and both clusters' dns_cache_config"
    );
    let expected = tests::rbac::AddressLists::from_filter(&serde_json::json!({}))
        .expect("defaults")
        .normalized();
    for filter in &filters {
        let mut blocks = tests::rbac::read_address_filter(filter).expect("a readable filter");
        blocks.sort();
        blocks.dedup();
        assert_eq!(
            blocks, expected.deny,
            "resolved_address_filter differs from the default addresses.deny"
        );
    }
    assert!(expected.allow.is_empty());
}

/// A request body streams through a wasm filter with a body callback: the upstream gets the first chunk before the
/// client sends the rest.
#[test]
fn request_body_streams_through_a_body_filter() {
    block_on(streaming_probe::first_chunk_arrives_before_the_body_ends(
        ProxyKind::Envoy,
    ));
}

/// A name with several addresses: the shipped design gives the denied ones no connection (see `multi_address`).
#[test]
fn denied_addresses_of_a_name_get_no_connection() {
    block_on(multi_address::denied_addresses_get_nothing(
        ProxyKind::Envoy,
    ));
}

/// The hole the DNS cache's filter closes, measured: Envoy's pool walks on to the second address.
#[test]
fn without_the_dns_filter_envoy_reaches_the_second_address() {
    block_on(
        multi_address::without_the_filter_the_pool_reaches_the_second_address(ProxyKind::Envoy),
    );
}

/// `envoy --mode validate` and host-sim's validation of the same bootstrap text.
fn validate_in_both(yaml: &str) -> (envoy::Validation, anyhow::Result<()>) {
    let envoy_says = envoy::validate(yaml, &workspace_root()).expect("run envoy");
    let host_sim_says = host_sim::config::Bootstrap::from_yaml(yaml)
        .map_err(anyhow::Error::from)
        .and_then(|b| host_sim::proxy::validate(&b, &host_sim::proxy::ProxyOptions::default()));
    (envoy_says, host_sim_says)
}

/// A dynamic forward proxy cluster's HttpProtocolOptions, accepted or refused the same by `envoy --mode validate` and
/// host-sim: without them (Envoy's own DFP examples) the cluster defaults to auto_sni and auto_san_validation
/// (`ClusterFactory::createClusterWithConfig`), TLS or not; with them, both must be true unless
/// `allow_insecure_cluster_options`.
#[test]
fn dfp_cluster_protocol_options_are_judged_as_envoy_judges_them() {
    let world = block_on(suite::shared_world()).expect("fixtures");
    let ca = world.pki.ca_file();
    let tls = format!(
        "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": \
         type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        \
         common_tls_context:\n          validation_context:\n            trusted_ca: {{ filename: {} }}\n",
        ca.display()
    );
    let options = |http: &str| {
        format!(
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
             \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n{http}        \
             explicit_http_config: {{ http_protocol_options: {{}} }}\n"
        )
    };
    let auto =
        "        upstream_http_protocol_options: { auto_sni: true, auto_san_validation: true }\n";
    let half = "        upstream_http_protocol_options: { auto_sni: true }\n";
    let cases: Vec<(&str, String, &str, bool)> = vec![
        ("no protocol options", String::new(), "", true),
        ("no protocol options, TLS", tls.clone(), "", true),
        ("auto_sni and auto_san_validation", tls.clone(), auto, true),
        ("protocol options without them", String::new(), "", false),
        ("auto_san_validation missing", tls.clone(), half, false),
        ("insecure allowed", String::new(), "insecure", true),
    ];
    let mut failures = Vec::new();
    for (what, socket, http, envoy_accepts) in cases {
        let (insecure, protocol) = match http {
            "" if what == "protocol options without them" => ("", options("")),
            "" => ("", String::new()),
            "insecure" => (
                "        allow_insecure_cluster_options: true\n",
                options(""),
            ),
            http => ("", options(http)),
        };
        let yaml = format!(
            r#"static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: dfp }} }}]
          http_filters:
          - name: envoy.filters.http.dynamic_forward_proxy
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig
              dns_cache_config: {{ name: c, dns_lookup_family: V4_ONLY }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: dfp
    connect_timeout: 1s
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.dynamic_forward_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
        dns_cache_config: {{ name: c, dns_lookup_family: V4_ONLY }}
{insecure}{socket}{protocol}"#
        );
        let (envoy_says, host_sim_says) = validate_in_both(&yaml);
        if envoy_says.success != envoy_accepts {
            failures.push(format!(
                "{what}: Envoy accepts {}, expected {envoy_accepts}:\n{}",
                envoy_says.success,
                suite::tail(&envoy_says.log, 5)
            ));
        }
        if host_sim_says.is_ok() != envoy_says.success {
            failures.push(format!(
                "{what}: host-sim {host_sim_says:?}, Envoy accepts {}",
                envoy_says.success
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bootstrap shapes Envoy's own examples use, accepted (or refused) alike by `envoy --mode validate` and host-sim: a
/// repeated field given one value (`listeners:` as a mapping, `domains: "*"`), a `direct_response` route, a filter
/// config wrapped in a `TypedStruct`; and a direct response status outside 200..599, which both refuse.
#[test]
fn bootstrap_shapes_are_accepted_as_envoy_accepts_them() {
    let bootstrap = |status: u32| {
        format!(
            r#"static_resources:
  listeners:
    name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
              name: v
              domains: "*"
              routes: {{ match: {{ prefix: "/" }}, direct_response: {{ status: {status}, body: {{ inline_string: "hi" }} }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              value: {{}}
"#
        )
    };
    for (status, accepted) in [(200, true), (599, true), (199, false), (600, false)] {
        let yaml = bootstrap(status);
        let (envoy_says, host_sim_says) = validate_in_both(&yaml);
        assert_eq!(
            envoy_says.success,
            accepted,
            "status {status}: Envoy\n{}",
            suite::tail(&envoy_says.log, 5)
        );
        assert_eq!(
            host_sim_says.is_ok(),
            accepted,
            "status {status}: host-sim {host_sim_says:?}"
        );
    }
}

/// What `host-sim run FILTER.wasm --print-config` prints runs in Envoy as it is: `envoy --mode validate` and host-sim
/// accept it, with a static upstream and with the dynamic forward proxy, and both refuse it when the plugin refuses
/// its configuration.
#[test]
fn host_sim_run_prints_a_bootstrap_envoy_accepts() {
    use host_sim::run_config::{bootstrap, RunSpec, Upstream};
    let wasm = tests::wasm::filter_wasm().expect("build dfp_filter.wasm");
    for (upstream, config, accepted) in [
        (
            Upstream::Static("127.0.0.1:8080".parse().expect("address")),
            r#"{"allow":[{"host":"a.test"}]}"#,
            true,
        ),
        (
            Upstream::DynamicForwardProxy,
            r#"{"allow":[{"host":"a.test"}]}"#,
            true,
        ),
        (
            Upstream::DynamicForwardProxy,
            r#"{"allow":"everything"}"#,
            false,
        ),
    ] {
        let yaml = bootstrap(&RunSpec {
            wasm: wasm.clone(),
            plugin_config: Some(config.to_string()),
            vm_config: None,
            root_id: String::new(),
            upstream: upstream.clone(),
            listen: "127.0.0.1:0".parse().expect("address"),
            admin: "127.0.0.1:0".parse().expect("address"),
        });
        let (envoy_says, host_sim_says) = validate_in_both(&yaml);
        assert_eq!(
            envoy_says.success,
            accepted,
            "{upstream:?} {config}: Envoy\n{}\n{yaml}",
            suite::tail(&envoy_says.log, 5)
        );
        assert_eq!(
            host_sim_says.is_ok(),
            accepted,
            "{upstream:?} {config}: host-sim {host_sim_says:?}"
        );
    }
}
