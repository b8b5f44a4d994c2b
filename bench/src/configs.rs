//! The bootstrap each proxy row runs, built as data and written as YAML.
//!
//! One shape for every row (listener → [policy filter] → dynamic_forward_proxy → router → the DFP
//! cluster), so rows differ only in the policy in front of the DFP. Envoy and host-sim get the very
//! same file. The allowlist holds `rules - 1` decoy rules and, last, the rule the load matches, so
//! a linear matcher (RBAC) pays for every rule and an indexed one (the filter) shows it does not.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::matrix::{Policy, Routing, Row};

/// The zone the load's destination hosts live in (the DNS server answers every name under it).
pub const HOST_ZONE: &str = "bench.test";
/// The zone of the decoy rules; nothing is ever sent there.
const DECOY_ZONE: &str = "decoy.test";

/// Where the pieces a bootstrap names are.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub filter_wasm: PathBuf,
    pub noop_wasm: PathBuf,
    pub dns_port: u16,
    pub upstream_port: u16,
    /// The DFP DNS cache's `max_hosts`, equal in every row.
    pub max_hosts: u32,
}

/// The destination host of index `i` (`h<i>.bench.test`).
pub fn host_name(i: u32) -> String {
    format!("h{i}.{HOST_ZONE}")
}

/// The bootstrap for `row` as YAML (Envoy and host-sim alike).
pub fn bootstrap_yaml(row: &Row, inputs: &Inputs) -> anyhow::Result<String> {
    Ok(serde_yaml_ng::to_string(&bootstrap(row, inputs)?)?)
}

/// The bootstrap for `row` as a JSON value.
pub fn bootstrap(row: &Row, inputs: &Inputs) -> anyhow::Result<Value> {
    let policy = row.setup.policy();
    let mut http_filters = Vec::new();
    match policy {
        Policy::None => {}
        Policy::NoopWasm => http_filters.push(noop_wasm_filter(&inputs.noop_wasm)),
        Policy::Filter { routing, .. } => {
            let mut config = downstream_config(row.scale.rules, inputs.upstream_port);
            if routing == Routing::EveryRequest {
                config["clusters"] = json!({ "plain": "dfp_plain", "tls": "dfp_tls" });
            }
            http_filters.push(wasm_filter(
                "dfp.destination_policy",
                "dfp_downstream",
                &inputs.filter_wasm,
                &config.to_string(),
            ))
        }
        Policy::Rbac => http_filters.push(rbac_filter(row.scale.rules, inputs.upstream_port)),
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.dynamic_forward_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
            "dns_cache_config": dns_cache(inputs),
        }
    }));
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        }
    }));
    // As in the shipped config, the filter's cluster header picks the cluster when present, and
    // the table falls back to dfp_plain ("clusters.default": "plain": the filter writes the
    // header only for TLS destinations, and the load has none). The other rows go straight there.
    let fallback = json!({ "match": { "prefix": "/" }, "route": { "cluster": "dfp_plain" } });
    let routes = match policy {
        Policy::Filter { .. } => json!([
            {
                "match": {
                    "prefix": "/",
                    "headers": [{ "name": "x-dfp-cluster", "present_match": true }]
                },
                "route": { "cluster_header": "x-dfp-cluster" }
            },
            fallback
        ]),
        _ => json!([fallback]),
    };
    // Envoy refuses a DFP cluster without auto_sni and auto_san_validation (as the shipped one has).
    let mut protocol_options = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "upstream_http_protocol_options": { "auto_sni": true, "auto_san_validation": true },
        "explicit_http_config": { "http_protocol_options": {} },
    });
    if let Policy::Filter {
        upstream_stage: true,
        ..
    } = policy
    {
        protocol_options["http_filters"] = json!([
            wasm_filter(
                "dfp.address_policy",
                "dfp_upstream",
                &inputs.filter_wasm,
                &upstream_config().to_string(),
            ),
            {
                "name": "envoy.filters.http.upstream_codec",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                }
            }
        ]);
    }
    let cluster = json!({
        "name": "dfp_plain",
        "connect_timeout": "5s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                "dns_cache_config": dns_cache(inputs),
            }
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protocol_options
        }
    });
    Ok(json!({
        "admin": { "address": loopback(0) },
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": loopback(0),
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "bench",
                            "route_config": {
                                "name": "bench",
                                "virtual_hosts": [{
                                    "name": "any_destination",
                                    "domains": ["*"],
                                    "routes": routes
                                }]
                            },
                            "http_filters": http_filters,
                        }
                    }]
                }]
            }],
            "clusters": [cluster],
        }
    }))
}

fn loopback(port: u16) -> Value {
    json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } })
}

/// The DFP cache config; Envoy requires the filter's and the cluster's to be identical.
fn dns_cache(inputs: &Inputs) -> Value {
    json!({
        "name": "dfp_dns_cache",
        "dns_lookup_family": "V4_ONLY",
        "max_hosts": inputs.max_hosts,
        "typed_dns_resolver_config": {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                "resolvers": [loopback(inputs.dns_port)],
                "use_resolvers_as_fallback": false,
                "dns_resolver_options": {
                    "use_tcp_for_dns_lookups": false,
                    "no_default_search_domain": true
                }
            }
        }
    })
}

fn wasm_filter(filter_name: &str, plugin_name: &str, wasm: &Path, configuration: &str) -> Value {
    json!({
        "name": filter_name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": plugin_name,
                "root_id": "dfp",
                "vm_config": {
                    "vm_id": "dfp",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm.to_string_lossy() } }
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                }
            }
        }
    })
}

fn noop_wasm_filter(wasm: &Path) -> Value {
    json!({
        "name": "bench.noop",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "noop",
                "root_id": "noop",
                "vm_config": {
                    "vm_id": "noop",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm.to_string_lossy() } }
                }
            }
        }
    })
}

/// Decoy `i`: alternately an exact name and a wildcard, on port 80.
enum Decoy {
    Exact(String),
    Suffix(String),
}

fn decoy(i: u32) -> Decoy {
    if i.is_multiple_of(2) {
        Decoy::Exact(format!("d{i}.{DECOY_ZONE}"))
    } else {
        Decoy::Suffix(format!("w{i}.{DECOY_ZONE}"))
    }
}

/// The filter's downstream configuration with `rules` allow rules (at least the matching one).
pub fn downstream_config(rules: u32, upstream_port: u16) -> Value {
    let mut allow: Vec<Value> = (0..rules.saturating_sub(1))
        .map(|i| match decoy(i) {
            Decoy::Exact(name) => json!({ "host": name, "ports": [80], "tls": false }),
            Decoy::Suffix(suffix) => {
                json!({ "host": format!("*.{suffix}"), "ports": [80], "tls": false })
            }
        })
        .collect();
    allow.push(json!({ "host": format!("*.{HOST_ZONE}"), "ports": [upstream_port], "tls": false }));
    json!({
        "stage": "downstream",
        "mode": "enforce",
        "allow": allow,
        "deny": [],
        "cluster_header": "x-dfp-cluster",
        "clusters": { "plain": "dfp_plain", "tls": "dfp_tls", "default": "plain" }
    })
}

/// The upstream stage: the default special-purpose deny list, with loopback (where the bench
/// upstream lives) carved out.
pub fn upstream_config() -> Value {
    json!({
        "stage": "upstream",
        "mode": "enforce",
        "addresses": { "allow": ["127.0.0.0/8"] }
    })
}

/// Envoy's RBAC with the same allowlist as permissions on `:authority` (Envoy's codec keeps the
/// port in it). RBAC cannot canonicalise (case, trailing dot, absent port), which the filter does.
fn rbac_filter(rules: u32, upstream_port: u16) -> Value {
    let authority =
        |matcher: Value| json!({ "header": { "name": ":authority", "string_match": matcher } });
    let mut permissions: Vec<Value> = (0..rules.saturating_sub(1))
        .map(|i| match decoy(i) {
            Decoy::Exact(name) => authority(json!({ "exact": format!("{name}:80") })),
            Decoy::Suffix(suffix) => authority(json!({ "suffix": format!(".{suffix}:80") })),
        })
        .collect();
    permissions.push(authority(
        json!({ "suffix": format!(".{HOST_ZONE}:{upstream_port}") }),
    ));
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "allowlist": {
                        "permissions": permissions,
                        "principals": [{ "any": true }]
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{Row, Scale, Setup};

    fn inputs() -> Inputs {
        Inputs {
            filter_wasm: PathBuf::from("/x/dfp_filter.wasm"),
            noop_wasm: PathBuf::from("/x/empty_filter.wasm"),
            dns_port: 5353,
            upstream_port: 8080,
            max_hosts: 16_384,
        }
    }

    fn row(setup: Setup, rules: u32) -> Row {
        Row {
            setup,
            workers: Some(1),
            scale: Scale { hosts: 1, rules },
        }
    }

    #[test]
    fn filter_config_is_valid_for_the_filter_and_holds_n_rules() {
        for rules in [1, 10, 1000] {
            let config = downstream_config(rules, 8080);
            let parsed = dfp_filter::config::FilterConfig::from_json(&config.to_string());
            assert!(parsed.is_ok(), "{rules} rules: {parsed:?}");
            assert_eq!(
                config["allow"].as_array().map(Vec::len),
                Some(rules as usize)
            );
        }
        let upstream = dfp_filter::config::FilterConfig::from_json(&upstream_config().to_string());
        assert!(upstream.is_ok(), "{upstream:?}");
    }

    #[test]
    fn rows_differ_only_in_policy_and_route() {
        let dfp = bootstrap(&row(Setup::EnvoyDfp, 10), &inputs()).unwrap_or_default();
        let filters = &dfp["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"];
        assert_eq!(filters.as_array().map(Vec::len), Some(2));

        let rbac = bootstrap(&row(Setup::EnvoyRbac, 100), &inputs()).unwrap_or_default();
        let hcm = &rbac["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let permissions = &hcm["http_filters"][0]["typed_config"]["rules"]["policies"]["allowlist"]
            ["permissions"];
        assert_eq!(permissions.as_array().map(Vec::len), Some(100));
        assert_eq!(
            permissions[99]["header"]["string_match"]["suffix"],
            ".bench.test:8080"
        );

        let filter_config = |setup| {
            let bootstrap = bootstrap(&row(setup, 10), &inputs()).unwrap_or_default();
            let value = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
                ["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
                ["configuration"]["value"];
            serde_json::from_str::<Value>(value.as_str().unwrap_or_default()).unwrap_or_default()
        };
        assert_eq!(
            filter_config(Setup::EnvoyFilter)["clusters"]["default"],
            "plain"
        );
        let every_request = filter_config(Setup::EnvoyFilterWrite);
        assert_eq!(every_request["clusters"]["plain"], "dfp_plain");
        assert!(every_request["clusters"].get("default").is_none());

        let both = bootstrap(&row(Setup::HostSimFilterBoth, 10), &inputs()).unwrap_or_default();
        let hcm = &both["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let routes = &hcm["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["route"]["cluster_header"], "x-dfp-cluster");
        assert_eq!(
            routes[0]["match"]["headers"][0]["name"], "x-dfp-cluster",
            "the header route applies only when the filter wrote the header"
        );
        assert_eq!(routes[1]["route"]["cluster"], "dfp_plain");
        let upstream_filters = &both["static_resources"]["clusters"][0]
            ["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"];
        assert_eq!(upstream_filters.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn yaml_parses_back_and_host_sim_accepts_it() {
        for setup in [Setup::HostSimFilter, Setup::HostSimFilterBoth] {
            let yaml = bootstrap_yaml(&row(setup, 10), &inputs()).unwrap_or_default();
            let parsed = host_sim::config::Bootstrap::from_yaml(&yaml);
            assert!(parsed.is_ok(), "{setup:?}: {parsed:?}\n{yaml}");
        }
    }
}
