//! Clusters: dynamic forward proxy clusters and STATIC clusters, their TLS and upstream HTTP options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::dns_cache::{parse_dns_cache, DnsCacheConfig};
use super::filters::{parse_http_filters, FilterStage, HttpFilter};
use super::node::{At, Fields};
use super::{parse_address, parse_http1_options, typed_config, ConfigError};

const DFP_CLUSTER_TYPE: &str = "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig";
const TLS_TYPE: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const RAW_BUFFER_TYPE: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
const HTTP_OPTIONS_TYPE: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub connect_timeout: Duration,
    pub kind: ClusterKind,
    /// `None`: plain TCP.
    pub tls: Option<TlsContext>,
    pub upstream: UpstreamOptions,
    /// Local address upstream connections bind to (`upstream_bind_config.source_address`).
    pub bind: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub enum ClusterKind {
    /// `cluster_type: envoy.clusters.dynamic_forward_proxy`: the host comes from the request's `:authority`.
    DynamicForwardProxy { dns_cache: DnsCacheConfig },
    /// `type: STATIC` with a `load_assignment` of IP endpoints.
    Static { endpoints: Vec<SocketAddr> },
}

#[derive(Debug, Clone)]
pub struct TlsContext {
    pub trusted_ca: TrustedCa,
    /// A fixed SNI (`sni`); with `auto_sni` the request's host wins.
    pub sni: Option<String>,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedCa {
    /// A PEM bundle file (`validation_context.trusted_ca.filename`).
    File(PathBuf),
    /// The platform's roots (`validation_context.system_root_certs: {}`).
    System,
    /// No validation context: Envoy then accepts any certificate. host-sim mirrors that.
    None,
}

/// `typed_extension_protocol_options` → `HttpProtocolOptions`.
#[derive(Debug, Clone, Default)]
pub struct UpstreamOptions {
    /// SNI from the request's host (`upstream_http_protocol_options.auto_sni`).
    pub auto_sni: bool,
    /// The certificate must name the request's host (`auto_san_validation`).
    pub auto_san_validation: bool,
    /// Upstream HTTP filters; empty when none are configured (Envoy then uses the codec directly).
    pub http_filters: Vec<HttpFilter>,
    /// `explicit_http_config.http_protocol_options.enable_trailers`: the HTTP/1 codec reads the response's trailers
    /// and writes the request's; without it both are dropped (`ConnectionImpl::onHeaderFieldImpl`,
    /// `StreamEncoderImpl::encodeTrailersBase`).
    pub enable_trailers: bool,
}

pub(crate) fn parse_cluster(at: &At<'_>) -> Result<Cluster, ConfigError> {
    let mut fields = at.map()?;
    let name = fields.req("name")?.non_empty_string()?;
    let connect_timeout_at = fields.opt("connect_timeout");
    let connect_timeout = connect_timeout_at
        .as_ref()
        .map(|t| t.duration())
        .transpose()?
        .unwrap_or(Duration::from_secs(5));
    // Cluster.connect_timeout: `gt: {}`.
    if let (Some(at), true) = (&connect_timeout_at, connect_timeout.is_zero()) {
        return Err(at.error("must be greater than 0s"));
    }
    let (kind, allow_insecure) = parse_kind(&mut fields)?;
    let tls = match fields.opt("transport_socket") {
        Some(socket) => parse_transport_socket(&socket)?,
        None => None,
    };
    let upstream = match fields.opt("typed_extension_protocol_options") {
        Some(options) => parse_protocol_options(&options)?,
        None => None,
    };
    let bind = match fields.opt("upstream_bind_config") {
        Some(bind) => {
            let mut bind_fields = bind.map()?;
            let source = bind_fields.req("source_address")?;
            bind_fields.finish()?;
            let mut source_fields = source.map()?;
            let ip = source_fields.req("address")?.ip()?;
            let port = source_fields
                .opt("port_value")
                .map(|p| p.port())
                .transpose()?
                .unwrap_or(0);
            source_fields.finish()?;
            Some(SocketAddr::new(ip, port))
        }
        None => None,
    };
    let upstream = match (upstream, &kind) {
        (Some(upstream), _) => upstream,
        // Envoy's DFP `ClusterFactory::createClusterWithConfig`: without HttpProtocolOptions the cluster gets
        // auto_sni and auto_san_validation by default (the shape of Envoy's own DFP examples).
        (None, ClusterKind::DynamicForwardProxy { .. }) => UpstreamOptions {
            auto_sni: true,
            auto_san_validation: true,
            ..UpstreamOptions::default()
        },
        (None, _) => UpstreamOptions::default(),
    };
    if let ClusterKind::DynamicForwardProxy { .. } = &kind {
        // Envoy refuses a DFP cluster whose HttpProtocolOptions would not send SNI and check the certificate
        // against the host.
        let verifies_host = upstream.auto_sni && upstream.auto_san_validation;
        if !verifies_host && !allow_insecure {
            return Err(fields.error(
                "a dynamic forward proxy cluster needs upstream_http_protocol_options with auto_sni and \
                 auto_san_validation true (as Envoy requires), unless allow_insecure_cluster_options is set",
            ));
        }
    }
    fields.finish()?;
    Ok(Cluster {
        name,
        connect_timeout,
        kind,
        tls,
        upstream,
        bind,
    })
}

fn parse_kind(fields: &mut Fields<'_>) -> Result<(ClusterKind, bool), ConfigError> {
    let lb_policy = fields.opt("lb_policy").map(|p| p.string()).transpose()?;
    if let Some(cluster_type) = fields.opt("cluster_type") {
        let mut type_fields = cluster_type.map()?;
        // CustomClusterType.name: `min_len: 1`.
        type_fields.required_label("name")?;
        let typed = type_fields.req("typed_config")?;
        type_fields.finish()?;
        let (_, mut config) = typed_config(&typed, &[DFP_CLUSTER_TYPE])?;
        let dns_cache = parse_dns_cache(&config.req("dns_cache_config")?)?;
        let allow_insecure = config
            .opt("allow_insecure_cluster_options")
            .map(|a| a.bool())
            .transpose()?
            .unwrap_or(false);
        config.finish()?;
        // The cluster provides its load balancer, and Envoy's cluster manager insists the config says so.
        if lb_policy.as_deref() != Some("CLUSTER_PROVIDED") {
            return Err(fields.error(format!(
                "lb_policy {:?}: a dynamic forward proxy cluster needs CLUSTER_PROVIDED",
                lb_policy.as_deref().unwrap_or("(absent: ROUND_ROBIN)")
            )));
        }
        return Ok((
            ClusterKind::DynamicForwardProxy { dns_cache },
            allow_insecure,
        ));
    }
    // `type` defaults to STATIC (the enum's 0).
    if let Some(kind) = fields.opt("type") {
        kind.enum_name(&["STATIC"])?;
    }
    if let Some(policy) = lb_policy.as_deref() {
        if policy != "ROUND_ROBIN" {
            return Err(fields.error(format!(
                "lb_policy {policy:?}: host-sim balances STATIC clusters round robin"
            )));
        }
    }
    // Envoy loads a STATIC cluster without a load_assignment or endpoints (it has no hosts, and its requests get
    // `no healthy upstream`): every level is optional.
    let mut endpoints = Vec::new();
    let Some(assignment) = fields.opt("load_assignment") else {
        return Ok((ClusterKind::Static { endpoints }, false));
    };
    let mut assignment_fields = assignment.map()?;
    // ClusterLoadAssignment.cluster_name: `min_len: 1`.
    assignment_fields.required_label("cluster_name")?;
    let localities = assignment_fields
        .opt("endpoints")
        .map(|e| e.list())
        .transpose()?;
    for locality in localities.unwrap_or_default() {
        let mut locality_fields = locality.map()?;
        let lb_endpoints = locality_fields
            .opt("lb_endpoints")
            .map(|e| e.list())
            .transpose()?;
        for lb_endpoint in lb_endpoints.unwrap_or_default() {
            let mut lb_fields = lb_endpoint.map()?;
            let endpoint = lb_fields.req("endpoint")?;
            lb_fields.finish()?;
            let mut endpoint_fields = endpoint.map()?;
            endpoints.push(parse_address(&endpoint_fields.req("address")?)?);
            endpoint_fields.finish()?;
        }
        locality_fields.finish()?;
    }
    assignment_fields.finish()?;
    Ok((ClusterKind::Static { endpoints }, false))
}

fn parse_transport_socket(at: &At<'_>) -> Result<Option<TlsContext>, ConfigError> {
    let mut fields = at.map()?;
    // TransportSocket.name: `min_len: 1`.
    fields.required_label("name")?;
    let typed = fields.req("typed_config")?;
    fields.finish()?;
    let (type_name, mut config) = typed_config(&typed, &[TLS_TYPE, RAW_BUFFER_TYPE])?;
    if type_name == RAW_BUFFER_TYPE {
        config.finish()?;
        return Ok(None);
    }
    let sni = config.opt("sni").map(|s| s.string()).transpose()?;
    let mut trusted_ca = TrustedCa::None;
    let mut alpn = Vec::new();
    if let Some(common) = config.opt("common_tls_context") {
        let mut common_fields = common.map()?;
        if let Some(protocols) = common_fields.opt("alpn_protocols") {
            alpn = protocols
                .list()?
                .iter()
                .map(|p| p.string())
                .collect::<Result<_, _>>()?;
        }
        if let Some(validation) = common_fields.opt("validation_context") {
            trusted_ca = parse_validation_context(&validation)?;
        }
        common_fields.finish()?;
    }
    config.finish()?;
    Ok(Some(TlsContext {
        trusted_ca,
        sni,
        alpn,
    }))
}

fn parse_validation_context(at: &At<'_>) -> Result<TrustedCa, ConfigError> {
    let mut fields = at.map()?;
    let file = match fields.opt("trusted_ca") {
        Some(source) => {
            let mut source_fields = source.map()?;
            let filename = source_fields.req("filename")?.string()?;
            source_fields.finish()?;
            Some(PathBuf::from(filename))
        }
        None => None,
    };
    let system = match fields.opt("system_root_certs") {
        Some(system) => {
            system.map()?.finish()?;
            true
        }
        None => false,
    };
    fields.finish()?;
    match (file, system) {
        (Some(file), false) => Ok(TrustedCa::File(file)),
        (None, true) => Ok(TrustedCa::System),
        (None, false) => {
            Err(at.error("a validation_context needs trusted_ca or system_root_certs"))
        }
        (Some(_), true) => {
            Err(at.error("trusted_ca and system_root_certs together are not supported by host-sim"))
        }
    }
}

/// The cluster's HttpProtocolOptions, `None` when `typed_extension_protocol_options` has none.
fn parse_protocol_options(at: &At<'_>) -> Result<Option<UpstreamOptions>, ConfigError> {
    let mut fields = at.map()?;
    let Some(options) = fields.opt(HTTP_OPTIONS_KEY) else {
        fields.finish()?;
        return Ok(None);
    };
    fields.finish()?;
    let (_, mut config) = typed_config(&options, &[HTTP_OPTIONS_TYPE])?;
    let mut result = UpstreamOptions::default();
    if let Some(http) = config.opt("upstream_http_protocol_options") {
        let mut http_fields = http.map()?;
        result.auto_sni = http_fields
            .opt("auto_sni")
            .map(|b| b.bool())
            .transpose()?
            .unwrap_or(false);
        result.auto_san_validation = http_fields
            .opt("auto_san_validation")
            .map(|b| b.bool())
            .transpose()?
            .unwrap_or(false);
        http_fields.finish()?;
    }
    if let Some(explicit) = config.opt("explicit_http_config") {
        let mut explicit_fields = explicit.map()?;
        let http1 = explicit_fields.req("http_protocol_options")?;
        explicit_fields.finish()?;
        result.enable_trailers = parse_http1_options(&http1)?;
    }
    if let Some(filters) = config.opt("http_filters") {
        result.http_filters = parse_http_filters(&filters, FilterStage::Upstream)?;
    }
    config.finish()?;
    Ok(Some(result))
}
