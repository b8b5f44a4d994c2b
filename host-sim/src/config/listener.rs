//! Listeners, the HTTP connection manager and its route configuration.

use std::net::SocketAddr;
use std::time::Duration;

use super::filters::{parse_http_filters, FilterStage, HttpFilter};
use super::listener_tls::{parse_listener_transport_socket, ListenerTls};
use super::node::At;
use super::{parse_address, parse_http1_options, typed_config, ConfigError};

const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// The filter chain's TLS termination, if its `transport_socket` is a `DownstreamTlsContext`.
    pub tls: Option<ListenerTls>,
    pub http: HttpConnectionManager,
    /// `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB): how much request body the filters may hold
    /// back while they buffer it before the request is refused with 413.
    pub buffer_limit: usize,
    /// Index of the listener in `static_resources.listeners`, for error paths at run time.
    pub index: usize,
}

impl Listener {
    /// The YAML path of this listener's HTTP connection manager config.
    pub fn hcm_path(&self) -> String {
        format!(
            "static_resources.listeners[{}].filter_chains[0].filters[0].typed_config",
            self.index
        )
    }
}

#[derive(Debug, Clone)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub route_config: RouteConfig,
    pub http_filters: Vec<HttpFilter>,
    /// `upgrade_configs` with `upgrade_type: CONNECT` at the connection manager: CONNECT requests are accepted.
    pub connect_enabled: bool,
    /// File access logs written when a request ends.
    pub access_logs: Vec<AccessLog>,
    /// `request_headers_timeout`: how long a client may take to send a request head once it started (none by
    /// default, as in Envoy).
    pub request_headers_timeout: Option<std::time::Duration>,
    /// `max_request_headers_kb` (Envoy's default 60): the largest request head, in KiB; larger gets 431.
    pub max_request_headers_kb: u32,
    /// `generate_request_id` (default true): add an `x-request-id` to requests that have none.
    pub generate_request_id: bool,
    /// `server_name`: the `server` header of every response. Unset, host-sim writes `host-sim` where Envoy
    /// writes `envoy`.
    pub server_name: Option<String>,
    /// `http_protocol_options.enable_trailers`: the downstream HTTP/1 codec reads a request's trailers (the filters'
    /// trailer callbacks run) and writes a response's; without it both are dropped.
    pub enable_trailers: bool,
}

impl HttpConnectionManager {
    /// The router's settings (parsing made sure the chain ends with the router).
    pub fn router(&self) -> super::RouterConfig {
        match self.http_filters.last() {
            Some(super::HttpFilter::Router(router)) => *router,
            _ => super::RouterConfig::default(),
        }
    }
}

/// `envoy.access_loggers.file`: a path and a text format of Envoy command operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub path: std::path::PathBuf,
    pub format: String,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: Option<String>,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    /// Headers removed from the request before it goes upstream (`request_headers_to_remove`).
    pub request_headers_to_remove: Vec<String>,
    /// Lower-case domains: exact, `*`, `*.suffix` / `*-suffix` (suffix wildcard) or `prefix.*` (prefix wildcard).
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Option<String>,
    pub request_headers_to_remove: Vec<String>,
    pub matcher: RouteMatch,
    /// `match.headers`: the route matches only when every one of these does too.
    pub headers: Vec<HeaderMatcher>,
    pub action: RouteAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    Prefix(String),
    Path(String),
    /// `connect_matcher: {}`: matches CONNECT requests only.
    Connect,
}

/// One entry of a route's `match.headers` (Envoy's `HeaderMatcher`, the subset host-sim implements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatcher {
    /// Lower-case header name.
    pub name: String,
    pub rule: HeaderRule,
    /// `invert_match`: the entry matches when the rule does not.
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderRule {
    /// `present_match`: true matches a present header, false an absent one.
    Present(bool),
    /// `string_match: {exact, ignore_case}` on the header's values joined with `,`, as Envoy compares them; an
    /// absent header never matches.
    Exact { value: String, ignore_case: bool },
}

#[derive(Debug, Clone)]
pub struct RouteAction {
    pub target: RouteTarget,
    /// `None` when the timeout is `0s` (no timeout); Envoy's default is 15 s.
    pub timeout: Option<Duration>,
    /// The route accepts CONNECT (`upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]`) and terminates
    /// it here: Envoy answers 200 and tunnels raw bytes to the upstream.
    pub connect_terminate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    Cluster(String),
    /// The cluster is named by this request header (lower-case).
    ClusterHeader(String),
    /// `direct_response`: the router answers itself, with no upstream.
    Direct(DirectResponse),
}

/// `route.v3.DirectResponseAction`: the status and, when given, the body (`inline_string` or `filename`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<String>,
}

/// Envoy's `per_connection_buffer_limit_bytes` when none is configured.
const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// Envoy's route timeout when none is configured.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) fn parse_listener(index: usize, at: &At<'_>) -> Result<Listener, ConfigError> {
    let mut fields = at.map()?;
    let name = fields
        .opt("name")
        .map(|n| n.string())
        .transpose()?
        .unwrap_or_default();
    let address = parse_address(&fields.req("address")?)?;
    let chains_at = fields.req("filter_chains")?;
    let buffer_limit = fields
        .opt("per_connection_buffer_limit_bytes")
        .map(|limit| limit.u32())
        .transpose()?
        .map_or(DEFAULT_BUFFER_LIMIT, |limit| limit as usize);
    fields.finish()?;

    let chains = chains_at.list()?;
    let [chain] = chains.as_slice() else {
        return Err(chains_at.error("host-sim supports exactly one filter chain per listener"));
    };
    let mut chain_fields = chain.map()?;
    // A chain without `filters` is a chain of none, which Envoy loads (its connections are closed at once).
    let filters_at = chain_fields.opt("filters");
    let tls = chain_fields
        .opt("transport_socket")
        .map(|socket| parse_listener_transport_socket(&socket))
        .transpose()?
        .flatten();
    chain_fields.finish()?;
    let filters = filters_at
        .as_ref()
        .map(|f| f.list())
        .transpose()?
        .unwrap_or_default();
    let [filter] = filters.as_slice() else {
        return Err(filters_at.as_ref().unwrap_or(chain).error(
            "host-sim supports exactly one network filter: envoy.filters.network.http_connection_manager",
        ));
    };
    let mut filter_fields = filter.map()?;
    filter_fields.required_label("name")?;
    let typed = filter_fields.req("typed_config")?;
    filter_fields.finish()?;
    let http = parse_hcm(&typed)?;
    Ok(Listener {
        name,
        address,
        tls,
        http,
        buffer_limit,
        index,
    })
}

fn parse_hcm(at: &At<'_>) -> Result<HttpConnectionManager, ConfigError> {
    let (_, mut fields) = typed_config(at, &[HCM_TYPE])?;
    let stat_prefix = fields.req("stat_prefix")?.non_empty_string()?;
    if let Some(codec) = fields.opt("codec_type") {
        // host-sim speaks HTTP/1.1 downstream; AUTO and HTTP1 both accept it.
        codec.enum_name(&["AUTO", "HTTP1"])?;
    }
    let route_config = parse_route_config(&fields.req("route_config")?)?;
    let http_filters = parse_http_filters(&fields.req("http_filters")?, FilterStage::Downstream)?;
    let connect_enabled = match fields.opt("upgrade_configs") {
        Some(upgrades) => parse_upgrade_types(&upgrades)?,
        None => false,
    };
    let access_logs = match fields.opt("access_log") {
        Some(logs) => logs
            .list()?
            .iter()
            .map(parse_access_log)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let request_headers_timeout = match fields.opt("request_headers_timeout") {
        Some(timeout) => Some(timeout.duration()?).filter(|d| !d.is_zero()),
        None => None,
    };
    let max_request_headers_kb = match fields.opt("max_request_headers_kb") {
        Some(kb) => {
            let value = kb.u32()?;
            // Envoy's bounds (0 < kb <= 8192).
            if value == 0 || value > 8192 {
                return Err(kb.error("max_request_headers_kb must be in 1..=8192"));
            }
            value
        }
        None => 60,
    };
    // HTTP/2 options only matter for h2 downstreams, which host-sim does not serve; allow_connect is implied.
    fields.cosmetic("http2_protocol_options");
    // How long Envoy waits for the client to close after it closed its side (default 1 s): host-sim closes at
    // once, as Envoy with `0s`. Only the moment the client sees the close differs.
    if let Some(timeout) = fields.opt("delayed_close_timeout") {
        timeout.duration()?;
    }
    let generate_request_id = fields
        .opt("generate_request_id")
        .map(|g| g.bool())
        .transpose()?
        .unwrap_or(true);
    let server_name = fields.opt("server_name").map(|n| n.string()).transpose()?;
    let enable_trailers = match fields.opt("http_protocol_options") {
        Some(options) => parse_http1_options(&options)?,
        None => false,
    };
    fields.finish()?;
    Ok(HttpConnectionManager {
        server_name,
        stat_prefix,
        route_config,
        http_filters,
        connect_enabled,
        access_logs,
        request_headers_timeout,
        max_request_headers_kb,
        generate_request_id,
        enable_trailers,
    })
}

const FILE_ACCESS_LOG_TYPE: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// Envoy's default access log format (used when `log_format` is absent).
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% \
%PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \
\"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

fn parse_access_log(at: &At<'_>) -> Result<AccessLog, ConfigError> {
    let mut fields = at.map()?;
    fields.optional_label("name")?;
    let typed = fields.req("typed_config")?;
    fields.finish()?;
    let (_, mut config) = typed_config(&typed, &[FILE_ACCESS_LOG_TYPE])?;
    let path = std::path::PathBuf::from(config.req("path")?.string()?);
    let format = match config.opt("log_format") {
        Some(log_format) => {
            let mut format_fields = log_format.map()?;
            let source = format_fields.req("text_format_source")?;
            format_fields.finish()?;
            let mut source_fields = source.map()?;
            let inline = source_fields.req("inline_string")?;
            source_fields.finish()?;
            let text = inline.string()?;
            if let Err(message) = crate::proxy::access_log::check_format(&text) {
                return Err(inline.error(message));
            }
            text
        }
        None => DEFAULT_ACCESS_LOG_FORMAT.to_string(),
    };
    config.finish()?;
    Ok(AccessLog { path, format })
}

fn header_list(at: Option<At<'_>>) -> Result<Vec<String>, ConfigError> {
    match at {
        Some(list) => list
            .list()?
            .iter()
            .map(|h| h.string().map(|s| s.to_ascii_lowercase()))
            .collect(),
        None => Ok(Vec::new()),
    }
}

/// HCM-level `upgrade_configs`: only CONNECT is implemented.
fn parse_upgrade_types(at: &At<'_>) -> Result<bool, ConfigError> {
    let mut connect = false;
    let upgrades = at.list()?;
    // `ConnectionManagerConfig`: "multiple upgrade configs with the same name".
    if upgrades.len() > 1 {
        return Err(at.error("an upgrade type may be configured once"));
    }
    for upgrade in upgrades {
        let mut fields = upgrade.map()?;
        let kind = fields.req("upgrade_type")?;
        if !kind.string()?.eq_ignore_ascii_case("CONNECT") {
            return Err(kind.error("host-sim implements only the CONNECT upgrade"));
        }
        if let Some(enabled) = fields.opt("enabled") {
            connect = enabled.bool()?;
        } else {
            connect = true;
        }
        fields.finish()?;
    }
    Ok(connect)
}

fn parse_route_config(at: &At<'_>) -> Result<RouteConfig, ConfigError> {
    let mut fields = at.map()?;
    let name = fields.opt("name").map(|n| n.string()).transpose()?;
    let virtual_hosts = fields
        .req("virtual_hosts")?
        .list()?
        .iter()
        .map(parse_virtual_host)
        .collect::<Result<Vec<_>, _>>()?;
    fields.finish()?;
    // `RouteMatcher`: a domain (and `*`) may belong to one virtual host only.
    let mut seen = std::collections::HashSet::new();
    for host in &virtual_hosts {
        for domain in &host.domains {
            if !seen.insert(domain.as_str()) {
                return Err(at.error(format!(
                    "domain {domain:?} is in more than one virtual host; Envoy permits each domain once per route \
                     configuration"
                )));
            }
        }
    }
    Ok(RouteConfig {
        name,
        virtual_hosts,
    })
}

fn parse_virtual_host(at: &At<'_>) -> Result<VirtualHost, ConfigError> {
    let mut fields = at.map()?;
    let name = fields.req("name")?.non_empty_string()?;
    let domains_at = fields.req("domains")?;
    let mut domains = Vec::new();
    let listed = domains_at.list()?;
    // VirtualHost.domains: `min_items: 1`.
    if listed.is_empty() {
        return Err(domains_at.error("a virtual host needs at least one domain"));
    }
    for domain in listed {
        let text = domain.string()?.to_ascii_lowercase();
        // `RouteMatcher`: "Only unique values for domains are permitted" (and one `*`).
        if domains.contains(&text) {
            return Err(domain.error(format!(
                "{text:?} is listed twice; Envoy permits each domain once"
            )));
        }
        let wildcards = text.matches('*').count();
        let valid = text == "*"
            || wildcards == 0
            || (wildcards == 1 && (text.starts_with('*') || text.ends_with('*')));
        if !valid {
            return Err(domain.error(format!(
                "{text:?}: wildcards are allowed only as a prefix or a suffix"
            )));
        }
        domains.push(text);
    }
    let routes = fields
        .req("routes")?
        .list()?
        .iter()
        .map(parse_route)
        .collect::<Result<Vec<_>, _>>()?;
    let request_headers_to_remove = header_list(fields.opt("request_headers_to_remove"))?;
    fields.finish()?;
    Ok(VirtualHost {
        name,
        request_headers_to_remove,
        domains,
        routes,
    })
}

fn parse_route(at: &At<'_>) -> Result<Route, ConfigError> {
    let mut fields = at.map()?;
    let name = fields.opt("name").map(|n| n.string()).transpose()?;
    let (matcher, headers) = parse_route_match(&fields.req("match")?)?;
    let action =
        match (fields.opt("route"), fields.opt("direct_response")) {
            (Some(route), None) => parse_route_action(&route)?,
            (None, Some(direct)) => RouteAction {
                target: RouteTarget::Direct(parse_direct_response(&direct)?),
                timeout: None,
                connect_terminate: false,
            },
            (Some(_), Some(direct)) => {
                return Err(direct.error("a route takes either route or direct_response, not both"))
            }
            (None, None) => return Err(fields.error(
                "a route needs an action: route or direct_response (host-sim implements these two)",
            )),
        };
    let request_headers_to_remove = header_list(fields.opt("request_headers_to_remove"))?;
    fields.finish()?;
    Ok(Route {
        name,
        request_headers_to_remove,
        matcher,
        headers,
        action,
    })
}

fn parse_route_match(at: &At<'_>) -> Result<(RouteMatch, Vec<HeaderMatcher>), ConfigError> {
    let mut fields = at.map()?;
    let prefix = fields.opt("prefix").map(|p| p.string()).transpose()?;
    let path = fields.opt("path").map(|p| p.string()).transpose()?;
    let connect = match fields.opt("connect_matcher") {
        Some(matcher) => {
            matcher.map()?.finish()?;
            true
        }
        None => false,
    };
    let headers = match fields.opt("headers") {
        Some(list) => list
            .list()?
            .iter()
            .map(parse_header_matcher)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    fields.finish()?;
    let matcher = match (prefix, path, connect) {
        (Some(prefix), None, false) => Ok(RouteMatch::Prefix(prefix)),
        (None, Some(path), false) => Ok(RouteMatch::Path(path)),
        (None, None, true) => Ok(RouteMatch::Connect),
        (None, None, false) => {
            Err(at.error("a route match needs one of prefix, path or connect_matcher"))
        }
        _ => Err(at.error("a route match takes exactly one of prefix, path or connect_matcher")),
    }?;
    Ok((matcher, headers))
}

/// `match.headers[]`: `present_match` or `string_match.exact`, optionally `invert_match`. Other matchers (regex,
/// range, prefix ...) are errors naming their path: a route that matched differently would route differently.
fn parse_header_matcher(at: &At<'_>) -> Result<HeaderMatcher, ConfigError> {
    let mut fields = at.map()?;
    let name = fields.req("name")?.string()?.to_ascii_lowercase();
    let invert = fields
        .opt("invert_match")
        .map(|i| i.bool())
        .transpose()?
        .unwrap_or(false);
    let present = fields.opt("present_match").map(|p| p.bool()).transpose()?;
    let exact = match fields.opt("string_match") {
        Some(string_match) => {
            let mut matcher = string_match.map()?;
            let value = matcher.req("exact")?.string()?;
            let ignore_case = matcher
                .opt("ignore_case")
                .map(|i| i.bool())
                .transpose()?
                .unwrap_or(false);
            matcher.finish()?;
            Some(HeaderRule::Exact { value, ignore_case })
        }
        None => None,
    };
    fields.finish()?;
    let rule = match (present, exact) {
        (Some(present), None) => HeaderRule::Present(present),
        (None, Some(exact)) => exact,
        (None, None) => {
            return Err(at.error("a header matcher needs present_match or string_match"))
        }
        (Some(_), Some(_)) => {
            return Err(
                at.error("a header matcher takes either present_match or string_match, not both")
            )
        }
    };
    Ok(HeaderMatcher { name, rule, invert })
}

/// `{ status, body: { inline_string | filename } }`; Envoy takes statuses 200..=599.
fn parse_direct_response(at: &At<'_>) -> Result<DirectResponse, ConfigError> {
    let mut fields = at.map()?;
    let status_at = fields.req("status")?;
    let status = status_at.u32()?;
    if !(200..=599).contains(&status) {
        return Err(status_at.error(format!("status {status} is outside 200..599")));
    }
    let body = match fields.opt("body") {
        Some(body) => {
            let mut source = body.map()?;
            let text = match (source.opt("inline_string"), source.opt("filename")) {
                (Some(inline), None) => inline.string()?,
                (None, Some(file)) => {
                    let path = file.string()?;
                    std::fs::read_to_string(&path)
                        .map_err(|e| file.error(format!("cannot read {path}: {e}")))?
                }
                _ => return Err(body.error("host-sim takes a body as inline_string or filename")),
            };
            source.finish()?;
            Some(text)
        }
        None => None,
    };
    fields.finish()?;
    Ok(DirectResponse {
        status: status as u16,
        body,
    })
}

fn parse_route_action(at: &At<'_>) -> Result<RouteAction, ConfigError> {
    let mut fields = at.map()?;
    let cluster = fields.opt("cluster").map(|c| c.string()).transpose()?;
    let cluster_header = fields
        .opt("cluster_header")
        .map(|c| c.string())
        .transpose()?;
    let target = match (cluster, cluster_header) {
        (Some(cluster), None) => RouteTarget::Cluster(cluster),
        (None, Some(header)) => RouteTarget::ClusterHeader(header.to_ascii_lowercase()),
        (None, None) => return Err(at.error("a route needs cluster or cluster_header")),
        (Some(_), Some(_)) => {
            return Err(at.error("a route takes either cluster or cluster_header, not both"))
        }
    };
    let timeout = match fields.opt("timeout") {
        Some(timeout) => {
            let timeout = timeout.duration()?;
            (!timeout.is_zero()).then_some(timeout)
        }
        None => Some(DEFAULT_ROUTE_TIMEOUT),
    };
    let connect_terminate = match fields.opt("upgrade_configs") {
        Some(upgrades) => parse_route_upgrades(&upgrades)?,
        None => false,
    };
    fields.finish()?;
    Ok(RouteAction {
        target,
        timeout,
        connect_terminate,
    })
}

/// Route-level `upgrade_configs`: `{upgrade_type: CONNECT, connect_config: {}}` terminates CONNECT here.
fn parse_route_upgrades(at: &At<'_>) -> Result<bool, ConfigError> {
    let mut terminate = false;
    for upgrade in at.list()? {
        let mut fields = upgrade.map()?;
        let kind = fields.req("upgrade_type")?;
        if !kind.string()?.eq_ignore_ascii_case("CONNECT") {
            return Err(kind.error("host-sim implements only the CONNECT upgrade"));
        }
        let enabled = fields
            .opt("enabled")
            .map(|e| e.bool())
            .transpose()?
            .unwrap_or(true);
        match fields.opt("connect_config") {
            Some(config) => {
                config.map()?.finish()?;
                terminate = enabled;
            }
            None => {
                return Err(upgrade.error(
                    "host-sim terminates CONNECT at the proxy only: add connect_config: {} (forwarding the CONNECT \
                     request upstream is not implemented)",
                ))
            }
        }
        fields.finish()?;
    }
    Ok(terminate)
}
