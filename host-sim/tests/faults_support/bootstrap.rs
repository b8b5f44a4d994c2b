//! The bootstrap the fault suites and the CLI tests start a proxy with: one listener whose connection manager sends
//! every request to one cluster, with the given HTTP filters before the router. It is built as a JSON value, which
//! Envoy and host-sim both read as YAML, so no test splices indented text; the YAML fragments a test passes (a
//! plugin's `failure_policy`, a connection manager field) are parsed, so a bad one fails where it is written.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Map, Value};

/// The listener, its connection manager and the cluster behind it.
pub struct BootstrapBuilder {
    route: Value,
    http_filters: Vec<Value>,
    hcm: Map<String, Value>,
    cluster: Value,
}

impl BootstrapBuilder {
    /// Every request to the STATIC cluster `upstream` at `address`.
    pub fn to_static(address: SocketAddr) -> Self {
        Self::new(json!({
            "name": "upstream",
            "connect_timeout": "2s",
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": "upstream",
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(address) } }] }],
            },
        }))
    }

    /// Every request to the dynamic forward proxy cluster `dfp`, behind Envoy's dynamic forward proxy HTTP filter;
    /// the two share one DNS cache, resolved by the DNS server at `dns` only.
    pub fn to_dynamic_forward_proxy(dns: SocketAddr) -> Self {
        let cache = json!({
            "name": "cache",
            "dns_lookup_family": "V4_ONLY",
            "typed_dns_resolver_config": {
                "name": "envoy.network.dns_resolver.cares",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                    "resolvers": [socket_address(dns)],
                    "use_resolvers_as_fallback": false,
                },
            },
        });
        let mut builder = Self::new(json!({
            "name": "dfp",
            "connect_timeout": "2s",
            "lb_policy": "CLUSTER_PROVIDED",
            "cluster_type": {
                "name": "envoy.clusters.dynamic_forward_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                    "dns_cache_config": cache.clone(),
                    "allow_insecure_cluster_options": true,
                },
            },
        }));
        builder.route = json!({ "cluster": "dfp" });
        builder.http_filter(json!({
            "name": "envoy.filters.http.dynamic_forward_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
                "dns_cache_config": cache,
            },
        }))
    }

    fn new(cluster: Value) -> Self {
        BootstrapBuilder {
            route: json!({ "cluster": "upstream" }),
            http_filters: Vec::new(),
            hcm: Map::new(),
            cluster,
        }
    }

    /// The route's action in place of `{cluster: <the cluster>}`, e.g. `{cluster_header: ..., timeout: 0s}`.
    pub fn route(mut self, action: Value) -> Self {
        self.route = action;
        self
    }

    /// One more HTTP filter, after those added before and before the router.
    pub fn http_filter(mut self, filter: Value) -> Self {
        self.http_filters.push(filter);
        self
    }

    /// Fields of the connection manager, as YAML (`request_headers_timeout: 1s`).
    pub fn hcm_yaml(mut self, fields: &str) -> Self {
        self.hcm.extend(yaml_fields(fields));
        self
    }

    pub fn yaml(&self) -> String {
        let mut hcm = Map::new();
        hcm.insert(
            "@type".into(),
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
                .into(),
        );
        hcm.insert("stat_prefix".into(), "main".into());
        hcm.extend(self.hcm.clone());
        hcm.insert(
            "route_config".into(),
            json!({ "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "route": self.route }],
            }] }),
        );
        let mut filters = self.http_filters.clone();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
        }));
        hcm.insert("http_filters".into(), Value::Array(filters));
        let loopback_port_0 = socket_address(SocketAddr::from(([127, 0, 0, 1], 0)));
        let bootstrap = json!({
            "admin": { "address": loopback_port_0 },
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": loopback_port_0,
                    "filter_chains": [{ "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm,
                    }] }],
                }],
                "clusters": [self.cluster],
            },
        });
        serde_json::to_string_pretty(&bootstrap).expect("a JSON value serialises")
    }
}

/// A bootstrap: one listener whose only route goes to the STATIC cluster `upstream` at `upstream`, with the given
/// wasm filters before the router and `hcm_yaml` fields in the connection manager.
pub fn bootstrap(upstream: SocketAddr, wasm_filters: &[Value], hcm_yaml: &str) -> String {
    wasm_filters
        .iter()
        .fold(BootstrapBuilder::to_static(upstream), |b, f| {
            b.http_filter(f.clone())
        })
        .hcm_yaml(hcm_yaml)
        .yaml()
}

/// A wasm HTTP filter running `code` as plugin `name` (root id `name`, its own VM), with `plugin_yaml` fields in the
/// plugin config (`failure_policy: FAIL_RELOAD`).
pub fn wasm_filter(name: &str, code: &Path, plugin_yaml: &str) -> Value {
    let mut plugin = Map::new();
    plugin.insert("name".into(), name.into());
    plugin.extend(yaml_fields(plugin_yaml));
    plugin.insert(
        "vm_config".into(),
        json!({
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": code.display().to_string() } },
        }),
    );
    json!({
        "name": format!("faults.{name}"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": plugin,
        },
    })
}

/// A plugin's `configuration` field: `text` as the StringValue the filter reads in `on_configure`.
pub fn plugin_configuration(text: &str) -> Value {
    json!({ "@type": "type.googleapis.com/google.protobuf.StringValue", "value": text })
}

fn socket_address(address: SocketAddr) -> Value {
    json!({ "socket_address": { "address": address.ip().to_string(), "port_value": address.port() } })
}

/// The fields of a YAML mapping given as text; empty text has none.
fn yaml_fields(text: &str) -> Map<String, Value> {
    if text.trim().is_empty() {
        return Map::new();
    }
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Object(fields)) => fields,
        other => panic!("{text:?} is not a YAML mapping: {other:?}"),
    }
}
