//! The subset of Envoy's v3 bootstrap that host-sim runs, parsed into a typed model.
//!
//! The same YAML file runs in Envoy and in host-sim. Anything host-sim does not implement and that would change
//! behaviour is an error naming its YAML path; a few purely cosmetic fields are accepted (see `Fields::cosmetic`
//! call sites, listed in the README). Relative file names resolve against the working directory, as in Envoy.

mod cluster;
mod dns_cache;
mod filters;
mod listener;
mod listener_tls;
mod node;
mod rbac;

use std::net::SocketAddr;
use std::path::Path;

use node::At;

pub use cluster::{Cluster, ClusterKind, TlsContext, TrustedCa, UpstreamOptions};
pub use dns_cache::{AddressFilter, DnsCacheConfig, LookupFamily};
pub use filters::{
    DfpFilterConfig, FailurePolicy, HttpFilter, RouterConfig, WasmPlugin, WasmService,
};
pub use listener::{
    AccessLog, DirectResponse, HeaderMatcher, HeaderRule, HttpConnectionManager, Listener, Route,
    RouteAction, RouteConfig, RouteMatch, RouteTarget, VirtualHost,
};
pub use listener_tls::{ClientValidation, ListenerTls, SanMatcher, SanType, StringMatcher};
pub use rbac::{CidrRange, Permission, RbacAction, RbacConfig, RbacPolicy, RbacRules};

/// An error in the bootstrap: where it is (a YAML path such as `static_resources.clusters[0].connect_timeout`) and
/// what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("{}: {message}", if path.is_empty() { "(document root)" } else { path.as_str() })]
    Invalid { path: String, message: String },
}

/// The bootstrap: an admin endpoint, listeners and clusters (static resources only; no xDS), and wasm services.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    /// `bootstrap_extensions` of type `envoy.extensions.wasm.v3.WasmService`.
    pub wasm_services: Vec<WasmService>,
}

impl Bootstrap {
    /// Reads and validates a bootstrap file (YAML or JSON, which is YAML too).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates a bootstrap given as YAML text. Anchors, aliases and merge keys (`<<`) are allowed.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let mut document: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)?;
        document.apply_merge()?;
        let bootstrap = parse_bootstrap(&At::root(&document))?;
        bootstrap.check_references()?;
        Ok(bootstrap)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|cluster| cluster.name == name)
    }

    /// Every DNS cache configuration with the YAML path it was found at: DFP clusters and DFP filters.
    fn dns_caches(&self) -> Vec<(&DnsCacheConfig, String)> {
        let mut caches = Vec::new();
        for (index, cluster) in self.clusters.iter().enumerate() {
            if let ClusterKind::DynamicForwardProxy { dns_cache } = &cluster.kind {
                caches.push((
                    dns_cache,
                    format!("static_resources.clusters[{index}].cluster_type.typed_config.dns_cache_config"),
                ));
            }
        }
        for listener in &self.listeners {
            for (f, filter) in listener.http.http_filters.iter().enumerate() {
                if let HttpFilter::DynamicForwardProxy(dfp) = filter {
                    caches.push((
                        &dfp.dns_cache,
                        format!(
                            "{}.http_filters[{f}].typed_config.dns_cache_config",
                            listener.hcm_path()
                        ),
                    ));
                }
            }
        }
        caches
    }

    /// Envoy shares one DNS cache per name, so one name must always come with the same configuration.
    fn check_dns_caches(&self) -> Result<(), ConfigError> {
        let caches = self.dns_caches();
        for (index, (cache, path)) in caches.iter().enumerate() {
            if let Some((_, first)) = caches[..index]
                .iter()
                .find(|(known, _)| known.name == cache.name && *known != *cache)
            {
                return Err(invalid(
                    path.clone(),
                    format!(
                        "DNS cache {:?} is configured differently at {first}; Envoy requires one configuration per name",
                        cache.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Cross-references Envoy checks at load time: route targets name existing clusters, names are unique, and
    /// a DNS cache name always stands for one configuration.
    fn check_references(&self) -> Result<(), ConfigError> {
        for (index, cluster) in self.clusters.iter().enumerate() {
            if self.clusters[..index]
                .iter()
                .any(|c| c.name == cluster.name)
            {
                return Err(invalid(
                    format!("static_resources.clusters[{index}].name"),
                    format!("duplicate cluster name {:?}", cluster.name),
                ));
            }
        }
        self.check_dns_caches()?;
        for listener in &self.listeners {
            for (v, vhost) in listener.http.route_config.virtual_hosts.iter().enumerate() {
                for (r, route) in vhost.routes.iter().enumerate() {
                    if let RouteTarget::Cluster(name) = &route.action.target {
                        if self.cluster(name).is_none() {
                            return Err(invalid(
                                format!(
                                    "{}.route_config.virtual_hosts[{v}].routes[{r}].route.cluster",
                                    listener.hcm_path()
                                ),
                                format!("unknown cluster {name:?}"),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

fn parse_bootstrap(root: &At<'_>) -> Result<Bootstrap, ConfigError> {
    let mut fields = root.map()?;
    let admin = fields
        .opt("admin")
        .map(|admin| parse_admin(&admin))
        .transpose()?
        .flatten();
    // Cosmetic: node identity and layered runtime only label the process.
    fields.cosmetic("node");
    fields.cosmetic("layered_runtime");
    let wasm_services = match fields.opt("bootstrap_extensions") {
        Some(list) => list
            .list()?
            .iter()
            .map(filters::parse_wasm_service)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    // Without static_resources there is nothing to serve, which Envoy loads too.
    let resources = fields.opt("static_resources");
    fields.finish()?;
    let Some(resources) = resources else {
        return Ok(Bootstrap {
            admin,
            listeners: Vec::new(),
            clusters: Vec::new(),
            wasm_services,
        });
    };

    let mut resources = resources.map()?;
    let listeners = match resources.opt("listeners") {
        Some(list) => list
            .list()?
            .iter()
            .enumerate()
            .map(|(index, at)| listener::parse_listener(index, at))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let clusters = match resources.opt("clusters") {
        Some(list) => list
            .list()?
            .iter()
            .map(cluster::parse_cluster)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    resources.finish()?;
    Ok(Bootstrap {
        admin,
        listeners,
        clusters,
        wasm_services,
    })
}

/// The admin listener's address; an `admin` without one has no listener (Envoy loads it so).
fn parse_admin(admin: &At<'_>) -> Result<Option<SocketAddr>, ConfigError> {
    let mut fields = admin.map()?;
    let address = fields
        .opt("address")
        .map(|a| parse_address(&a))
        .transpose()?;
    // Cosmetic: where Envoy writes its admin access log.
    fields.cosmetic("access_log_path");
    fields.cosmetic("access_log");
    fields.finish()?;
    Ok(address)
}

/// `address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }`
pub(crate) fn parse_address(address: &At<'_>) -> Result<SocketAddr, ConfigError> {
    let mut fields = address.map()?;
    let socket = fields.req("socket_address")?;
    fields.finish()?;
    let mut socket_fields = socket.map()?;
    let ip = socket_fields.req("address")?.ip()?;
    let port = socket_fields.req("port_value")?.port()?;
    if let Some(protocol) = socket_fields.opt("protocol") {
        protocol.enum_name(&["TCP"])?;
    }
    socket_fields.finish()?;
    Ok(SocketAddr::new(ip, port))
}

/// `typed_config` → (its `@type` without the `type.googleapis.com/` prefix, the remaining fields).
/// The wrappers that carry a message as a `google.protobuf.Struct` under another type's name.
const TYPED_STRUCTS: [&str; 2] = ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"];

/// A TypedStruct without `value`: the message with every field at its default.
static EMPTY_STRUCT: std::sync::LazyLock<serde_yaml_ng::Value> =
    std::sync::LazyLock::new(|| serde_yaml_ng::Value::Mapping(serde_yaml_ng::Mapping::new()));

pub(crate) fn typed_config<'a>(
    at: &At<'a>,
    expected: &[&str],
) -> Result<(String, node::Fields<'a>), ConfigError> {
    let mut fields = at.map()?;
    let mut type_url = fields.req("@type")?.string()?;
    let mut type_name = type_url
        .strip_prefix("type.googleapis.com/")
        .unwrap_or(&type_url)
        .to_string();
    if TYPED_STRUCTS.contains(&type_name.as_str()) {
        // A TypedStruct carries the real type in `type_url` and the message as a Struct in `value`; Envoy converts
        // it to that message (`MessageUtil::unpackTo` through JSON), so its fields are read as if inline.
        type_url = fields.req("type_url")?.string()?;
        type_name = type_url
            .strip_prefix("type.googleapis.com/")
            .unwrap_or(&type_url)
            .to_string();
        let value = fields.opt("value");
        fields.finish()?;
        if !expected.contains(&type_name.as_str()) {
            return Err(at.error(format!(
                "type_url {type_url:?} is not supported by host-sim here (supported: {})",
                expected.join(", ")
            )));
        }
        let inner = match value {
            Some(value) => value.map()?,
            None => node::At {
                value: &EMPTY_STRUCT,
                path: format!("{}.value", at.path),
            }
            .map()?,
        };
        return Ok((type_name, inner));
    }
    if !expected.contains(&type_name.as_str()) {
        return Err(at.error(format!(
            "@type {type_url:?} is not supported by host-sim here (supported: {})",
            expected.join(", ")
        )));
    }
    Ok((type_name, fields))
}

/// An `Http1ProtocolOptions` (a cluster's, or a connection manager's `http_protocol_options`): host-sim takes
/// `enable_trailers` (default false) and refuses the other fields by name.
pub(crate) fn parse_http1_options(at: &At<'_>) -> Result<bool, ConfigError> {
    let mut fields = at.map()?;
    let enable_trailers = fields
        .opt("enable_trailers")
        .map(|b| b.bool())
        .transpose()?
        .unwrap_or(false);
    fields.finish()?;
    Ok(enable_trailers)
}

#[cfg(test)]
mod tests;
