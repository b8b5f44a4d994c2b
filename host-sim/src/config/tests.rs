use std::time::Duration;

use super::*;

/// A bootstrap shaped like envoy-config/envoy.yaml: anchors, both DFP clusters, upstream wasm filters, CONNECT.
const FULL: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 9901 } }
static_resources:
  listeners:
  - name: dfp
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: dfp
          upgrade_configs: [ { upgrade_type: CONNECT } ]
          route_config:
            name: dfp_route
            virtual_hosts:
            - name: any
              domains: ["*"]
              routes:
              - match: { connect_matcher: {} }
                route:
                  cluster_header: X-DFP-Cluster
                  timeout: 0s
                  upgrade_configs: [ { upgrade_type: CONNECT, connect_config: {} } ]
              - name: everything
                match: { prefix: "/", headers: [ { name: X-DFP-Cluster, present_match: true } ] }
                route: { cluster_header: x-dfp-cluster, timeout: 2.5s }
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: dfp_downstream
                vm_config:
                  vm_id: dfp
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: target/wasm32-unknown-unknown/release/dfp_filter.wasm } }
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"allow": []}'
          - name: envoy.filters.http.dynamic_forward_proxy
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig
              dns_cache_config: &dns_cache
                name: dfp_cache
                dns_lookup_family: V4_ONLY
                max_hosts: 64
                dns_cache_circuit_breaker: { max_pending_requests: 8 }
                typed_dns_resolver_config:
                  name: envoy.network.dns_resolver.cares
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
                    resolvers: [ { socket_address: { address: 127.0.0.1, port_value: 5353 } } ]
                    use_resolvers_as_fallback: false
                    dns_resolver_options: { no_default_search_domain: true }
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: dfp_plain
    connectTimeout: 1s
    lb_policy: CLUSTER_PROVIDED
    upstream_bind_config: { source_address: { address: 127.0.0.1, port_value: 0 } }
    cluster_type:
      name: envoy.clusters.dynamic_forward_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
        allow_insecure_cluster_options: true
        dns_cache_config: *dns_cache
  - name: dfp_tls
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.dynamic_forward_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
        dns_cache_config: *dns_cache
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context: { trusted_ca: { filename: /etc/ssl/certs/ca-certificates.crt } }
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        upstream_http_protocol_options: { auto_sni: true, auto_san_validation: true }
        explicit_http_config: { http_protocol_options: {} }
        http_filters:
        - name: envoy.filters.http.wasm
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
            config:
              name: dfp_upstream
              failure_policy: FAIL_RELOAD
              vm_config:
                runtime: envoy.wasm.runtime.v8
                code: { local: { filename: dfp.wasm } }
              configuration:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{"stage": "upstream"}'
        - name: envoy.filters.http.upstream_codec
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
  - name: metadata
    type: STATIC
    load_assignment:
      cluster_name: metadata
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8080 } } }
"#;

fn error_of(yaml: &str) -> String {
    match Bootstrap::from_yaml(yaml) {
        Ok(_) => panic!("expected the bootstrap to be rejected"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn full_bootstrap_parses_into_the_model() {
    let bootstrap = Bootstrap::from_yaml(FULL).expect("valid bootstrap");
    assert_eq!(
        bootstrap.admin,
        Some("127.0.0.1:9901".parse().expect("addr"))
    );
    let listener = &bootstrap.listeners[0];
    assert_eq!(listener.address, "127.0.0.1:10000".parse().expect("addr"));
    assert!(listener.http.connect_enabled);
    let routes = &listener.http.route_config.virtual_hosts[0].routes;
    assert_eq!(routes[0].matcher, RouteMatch::Connect);
    assert!(routes[0].action.connect_terminate);
    assert_eq!(routes[0].action.timeout, None);
    assert_eq!(
        routes[0].action.target,
        RouteTarget::ClusterHeader("x-dfp-cluster".into())
    );
    assert_eq!(routes[1].name.as_deref(), Some("everything"));
    assert_eq!(
        routes[1].headers,
        vec![HeaderMatcher {
            name: "x-dfp-cluster".into(),
            rule: HeaderRule::Present(true),
            invert: false,
        }]
    );
    assert_eq!(routes[1].action.timeout, Some(Duration::from_millis(2500)));
    let filters = &listener.http.http_filters;
    assert_eq!(filters.len(), 3);
    let HttpFilter::Wasm(plugin) = &filters[0] else {
        panic!("first filter is wasm")
    };
    assert_eq!(plugin.name, "dfp_downstream");
    assert_eq!(plugin.vm_id, "dfp");
    assert_eq!(plugin.configuration, r#"{"allow": []}"#);
    assert_eq!(plugin.failure_policy, FailurePolicy::FailClosed);

    let plain = bootstrap.cluster("dfp_plain").expect("dfp_plain");
    assert_eq!(
        plain.connect_timeout,
        Duration::from_secs(1),
        "camelCase spelling accepted"
    );
    let ClusterKind::DynamicForwardProxy { dns_cache } = &plain.kind else {
        panic!("dfp cluster")
    };
    assert_eq!(dns_cache.max_hosts, 64);
    assert_eq!(dns_cache.max_pending_requests, 8);
    assert_eq!(dns_cache.lookup_family, LookupFamily::V4Only);
    assert_eq!(
        dns_cache.resolvers,
        vec!["127.0.0.1:5353".parse().expect("addr")]
    );
    assert_eq!(dns_cache.host_ttl, Duration::from_secs(300));

    let tls = bootstrap.cluster("dfp_tls").expect("dfp_tls");
    let context = tls.tls.as_ref().expect("tls");
    assert_eq!(
        context.trusted_ca,
        TrustedCa::File("/etc/ssl/certs/ca-certificates.crt".into())
    );
    assert!(tls.upstream.auto_sni && tls.upstream.auto_san_validation);
    assert_eq!(tls.upstream.http_filters.len(), 2);
    let HttpFilter::Wasm(upstream) = &tls.upstream.http_filters[0] else {
        panic!("upstream wasm")
    };
    assert_eq!(upstream.failure_policy, FailurePolicy::FailReload);

    let ClusterKind::Static { endpoints } = &bootstrap.cluster("metadata").expect("static").kind
    else {
        panic!("static cluster")
    };
    assert_eq!(endpoints, &vec!["127.0.0.1:8080".parse().expect("addr")]);
}

fn valid() -> String {
    FULL.to_string()
}

#[test]
fn unknown_top_level_keys_are_rejected() {
    // Envoy rejects unknown bootstrap fields too; YAML anchors must live inside known fields.
    let error = error_of(&format!("x-anchors: &a {{ name: x }}\n{FULL}"));
    assert!(
        error.starts_with("x-anchors: field not supported"),
        "{error}"
    );
}

#[test]
fn unsupported_fields_are_errors_naming_their_path() {
    let cases = [
        (
            valid().replacen("connectTimeout: 1s", "connectTimeout: 1s\n    outlier_detection: {}", 1),
            "static_resources.clusters[0].outlier_detection: field not supported by host-sim",
        ),
        (
            valid().replacen("connectTimeout: 1s", "connectTimeout: 1x", 1),
            "static_resources.clusters[0].connectTimeout: \"1x\" is not a duration",
        ),
        (
            valid().replacen("V4_ONLY", "V5_ONLY", 1),
            "http_filters[1].typed_config.dns_cache_config.dns_lookup_family: \"V5_ONLY\" is not one of",
        ),
        (
            valid().replacen("port_value: 10000", "port_value: 70000", 1),
            "static_resources.listeners[0].address.socket_address.port_value: port 70000 is out of range",
        ),
        (
            valid().replacen("address: 127.0.0.1, port_value: 10000", "address: localhost, port_value: 10000", 1),
            "static_resources.listeners[0].address.socket_address.address: \"localhost\" is not an IP address",
        ),
        (
            valid().replacen("type: STATIC", "type: STRICT_DNS", 1),
            "static_resources.clusters[2].type: \"STRICT_DNS\" is not one of STATIC",
        ),
        (
            valid().replacen("envoy.wasm.runtime.v8\n                  code", "envoy.wasm.runtime.null\n                  code", 1),
            "the null runtime runs plugins compiled into Envoy",
        ),
        (
            valid().replacen("route: { cluster_header: x-dfp-cluster, timeout: 2.5s }", "route: { cluster: nowhere }", 1),
            "virtual_hosts[0].routes[1].route.cluster: unknown cluster \"nowhere\"",
        ),
        (
            valid().replacen(
                "match: { connect_matcher: {} }",
                "match: { connect_matcher: {}, headers: [ { name: x-a, safe_regex_match: { regex: a } } ] }",
                1,
            ),
            "routes[0].match.headers[0].safe_regex_match: field not supported by host-sim",
        ),
        (
            valid().replacen(
                "match: { connect_matcher: {} }",
                "match: { connect_matcher: {}, headers: [ { name: x-a } ] }",
                1,
            ),
            "routes[0].match.headers[0]: a header matcher needs present_match or string_match",
        ),
        (
            valid().replacen(
                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                1,
            ),
            "http_filters[2].typed_config: @type \"type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua\" is not supported",
        ),
    ];
    for (yaml, expected) in cases {
        let error = error_of(&yaml);
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
    }
}

/// Proto constraints Envoy checks on fields host-sim implements (found by the configuration corpus, tests/tests/config_parity.rs).
#[test]
fn envoys_proto_constraints_are_checked() {
    let cases = [
        (
            valid().replacen("stat_prefix: dfp", "stat_prefix: \"\"", 1),
            "stat_prefix: must not be empty",
        ),
        (
            valid().replacen("domains: [\"*\"]", "domains: []", 1),
            "domains: a virtual host needs at least one domain",
        ),
        (
            valid().replacen("domains: [\"*\"]", "domains: [\"*\", \"*\"]", 1),
            "domains[1]: \"*\" is listed twice",
        ),
        (
            valid().replacen("- name: envoy.filters.http.router", "- name: \"\"", 1),
            "http_filters[2].name: must not be empty",
        ),
    ];
    for (yaml, expected) in cases {
        let error = error_of(&yaml);
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
    }
}

/// Envoy loads what it has defaults for: a STATIC cluster with no endpoints, a chain's empty runtime name.
#[test]
fn what_envoy_defaults_loads() {
    let no_endpoints = valid().replacen("    load_assignment:", "    x_load_assignment:", 1);
    let start = no_endpoints
        .find("    x_load_assignment:")
        .expect("the cluster's assignment");
    let end = no_endpoints[start..]
        .find("\n  - ")
        .map_or(no_endpoints.len(), |i| start + i + 1);
    let no_endpoints = format!("{}{}", &no_endpoints[..start], &no_endpoints[end..]);
    let bootstrap =
        Bootstrap::from_yaml(&no_endpoints).expect("a STATIC cluster without endpoints loads");
    assert!(bootstrap
        .clusters
        .iter()
        .any(|c| matches!(&c.kind, ClusterKind::Static { endpoints } if endpoints.is_empty())));
    let empty_runtime = valid().replacen("runtime: envoy.wasm.runtime.v8", "runtime: \"\"", 1);
    Bootstrap::from_yaml(&empty_runtime).expect("an empty runtime is Envoy's default");
}

#[test]
fn filter_chains_must_end_in_their_terminal_filter() {
    let yaml = valid().replacen(
        "          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n",
        "",
        1,
    );
    let error = error_of(&yaml);
    assert!(
        error.contains("http_filters: the last HTTP filter must be envoy.filters.http.router"),
        "{error}"
    );
}

#[test]
fn one_dns_cache_name_means_one_configuration() {
    let yaml = valid().replacen(
        "dns_cache_config: *dns_cache\n  - name: dfp_tls",
        "dns_cache_config: { name: dfp_cache, max_hosts: 5 }\n  - name: dfp_tls",
        1,
    );
    let error = error_of(&yaml);
    assert!(
        error.contains("DNS cache \"dfp_cache\" is configured differently"),
        "{error}"
    );
}

#[test]
fn invalid_yaml_is_reported() {
    let error = error_of("static_resources: [");
    assert!(error.starts_with("invalid YAML"), "{error}");
}

#[test]
fn generate_request_id_defaults_to_true_and_is_read() {
    let default = Bootstrap::from_yaml(FULL).expect("valid bootstrap");
    assert!(default.listeners[0].http.generate_request_id);
    let off = valid().replacen(
        "stat_prefix: dfp",
        "stat_prefix: dfp\n          generate_request_id: false",
        1,
    );
    let bootstrap = Bootstrap::from_yaml(&off).expect("valid bootstrap");
    assert!(!bootstrap.listeners[0].http.generate_request_id);
    let wrong = valid().replacen(
        "stat_prefix: dfp",
        "stat_prefix: dfp\n          generate_request_id: sometimes",
        1,
    );
    assert!(
        error_of(&wrong).contains("typed_config.generate_request_id: expected true or false"),
        "{}",
        error_of(&wrong)
    );
}

#[test]
fn enable_trailers_is_read_per_codec_and_other_http1_options_are_refused() {
    let default = Bootstrap::from_yaml(FULL).expect("valid bootstrap");
    assert!(!default.listeners[0].http.enable_trailers);
    assert!(default.clusters.iter().all(|c| !c.upstream.enable_trailers));
    let on = FULL
        .replacen(
            "stat_prefix: dfp",
            "stat_prefix: dfp\n          http_protocol_options: { enable_trailers: true }",
            1,
        )
        .replacen(
            "explicit_http_config: { http_protocol_options: {} }",
            "explicit_http_config: { http_protocol_options: { enable_trailers: true } }",
            1,
        );
    let bootstrap = Bootstrap::from_yaml(&on).expect("valid bootstrap");
    assert!(bootstrap.listeners[0].http.enable_trailers);
    assert!(bootstrap
        .clusters
        .iter()
        .any(|c| c.upstream.enable_trailers));
    let other = valid().replacen(
        "stat_prefix: dfp",
        "stat_prefix: dfp\n          http_protocol_options: { accept_http_10: true }",
        1,
    );
    let error = error_of(&other);
    assert!(
        error.contains("http_protocol_options.accept_http_10"),
        "{error}"
    );
}

#[test]
fn wasm_services_are_read_and_other_bootstrap_extensions_refused() {
    let service = |typed: &str| {
        format!(
            "bootstrap_extensions:\n- name: envoy.bootstrap.wasm\n  typed_config:\n{typed}\n{}",
            valid()
        )
    };
    let wasm = service(
        "    \"@type\": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: svc
      root_id: svc_root
      vm_config: { runtime: envoy.wasm.runtime.v8, code: { local: { filename: svc.wasm } } }",
    );
    let bootstrap = Bootstrap::from_yaml(&wasm).expect("valid bootstrap");
    let [service_config] = bootstrap.wasm_services.as_slice() else {
        panic!("one wasm service: {:?}", bootstrap.wasm_services);
    };
    assert!(service_config.singleton);
    assert_eq!(service_config.plugin.name, "svc");
    assert_eq!(service_config.plugin.root_id, "svc_root");
    assert_eq!(
        service_config.plugin.code,
        std::path::PathBuf::from("svc.wasm")
    );
    let other = service(
        "    \"@type\": type.googleapis.com/envoy.extensions.network.socket_interface.v3.DefaultSocketInterface",
    );
    let error = error_of(&other);
    assert!(
        error.contains("bootstrap_extensions[0].typed_config"),
        "{error}"
    );
    let unnamed = wasm.replacen(
        "- name: envoy.bootstrap.wasm\n  typed_config:",
        "- typed_config:",
        1,
    );
    let error = error_of(&unnamed);
    assert!(
        error.contains("bootstrap_extensions[0]: missing required field \"name\""),
        "{error}"
    );
}

/// `FULL` with a TLS transport socket on its listener's chain; `context` is the DownstreamTlsContext's body.
fn with_listener_tls(context: &str) -> String {
    let socket = format!(
        "    - transport_socket:\n        name: tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n{context}      filters:\n"
    );
    valid().replacen("    - filters:\n", &socket, 1)
}

#[test]
fn listener_tls_is_read_and_what_it_cannot_do_is_refused_by_path() {
    let certificate = "          common_tls_context:\n            tls_certificates:\n            - certificate_chain: { filename: cert.pem }\n              private_key: { filename: key.pem }\n";
    let mtls = format!(
        "          require_client_certificate: true\n{certificate}            alpn_protocols: [\"http/1.1\"]\n            validation_context:\n              trusted_ca: {{ filename: ca.pem }}\n              match_typed_subject_alt_names:\n              - {{ san_type: URI, matcher: {{ prefix: \"spiffe://dfp.test/\" }} }}\n"
    );
    let bootstrap =
        Bootstrap::from_yaml(&with_listener_tls(&mtls)).expect("an mTLS listener loads");
    let tls = bootstrap.listeners[0]
        .tls
        .as_ref()
        .expect("the listener has TLS");
    assert_eq!(tls.certificate_chain, std::path::PathBuf::from("cert.pem"));
    assert!(tls.require_client_certificate);
    assert_eq!(tls.alpn, ["http/1.1"]);
    let validation = tls
        .client_validation
        .as_ref()
        .expect("a validation context");
    assert_eq!(
        validation.subject_alt_names,
        [SanMatcher {
            san_type: SanType::Uri,
            matcher: StringMatcher::Prefix("spiffe://dfp.test/".into(), false),
        }]
    );
    assert!(validation.subject_alt_names[0]
        .matcher
        .matches("spiffe://dfp.test/ci"));
    assert!(!validation.subject_alt_names[0]
        .matcher
        .matches("spiffe://other.test/ci"));

    let chain = "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config";
    for (context, error) in [
        (
            certificate.replace("[\"http/1.1\"]", "").replace(
                "            tls_certificates:",
                "            alpn_protocols: [h2]\n            tls_certificates:",
            ),
            format!("{chain}.common_tls_context.alpn_protocols[0]: host-sim's listeners speak HTTP/1.1 only"),
        ),
        (
            format!("          ocsp_staple_policy: STRICT_STAPLING\n{certificate}"),
            format!("{chain}.ocsp_staple_policy: field not supported by host-sim"),
        ),
        (
            format!("          require_client_certificate: true\n{certificate}"),
            format!("{chain}.common_tls_context: host-sim needs a validation_context"),
        ),
        (
            certificate.replace("private_key: { filename: key.pem }", "private_key: { inline_string: key }"),
            format!("{chain}.common_tls_context.tls_certificates[0].private_key.inline_string: field not supported"),
        ),
    ] {
        let got = error_of(&with_listener_tls(&context));
        assert!(got.starts_with(&error), "want {error:?}, got {got:?}");
    }
}
