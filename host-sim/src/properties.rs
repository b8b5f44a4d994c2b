//! Properties (Envoy "attributes"): the values a proxy provides per stream, the ones derived
//! from the stream's headers, and their wire encodings — strings and bytes raw, integers as
//! 8-byte little-endian, booleans as one byte, durations and timestamps as i64 nanoseconds,
//! maps in the pairs format — as Envoy's `serializeValue` produces them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::headers::{encode_pairs, HeaderMap};
use crate::stream::StreamState;
use crate::types::Status;

/// A typed property value.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    String(String),
    Bytes(Vec<u8>),
    Int(i64),
    Uint(u64),
    Double(f64),
    Bool(bool),
    Duration(Duration),
    Timestamp(SystemTime),
    /// A string map (`xds.*_metadata`-like values); serialised as pairs.
    Map(Vec<(String, String)>),
}

impl PropertyValue {
    /// The bytes `proxy_get_property` hands to the guest.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PropertyValue::String(s) => s.as_bytes().to_vec(),
            PropertyValue::Bytes(b) => b.clone(),
            PropertyValue::Int(i) => i.to_le_bytes().to_vec(),
            PropertyValue::Uint(u) => u.to_le_bytes().to_vec(),
            PropertyValue::Double(d) => d.to_le_bytes().to_vec(),
            PropertyValue::Bool(b) => vec![u8::from(*b)],
            PropertyValue::Duration(d) => (d.as_nanos().min(i64::MAX as u128) as i64)
                .to_le_bytes()
                .to_vec(),
            PropertyValue::Timestamp(t) => {
                let nanos = match t.duration_since(UNIX_EPOCH) {
                    Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
                    Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
                };
                nanos.to_le_bytes().to_vec()
            }
            PropertyValue::Map(m) => {
                encode_pairs(m.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
            }
        }
    }
}

impl From<&str> for PropertyValue {
    fn from(s: &str) -> Self {
        PropertyValue::String(s.to_string())
    }
}

impl From<String> for PropertyValue {
    fn from(s: String) -> Self {
        PropertyValue::String(s)
    }
}

/// What the proxy knows about a stream when its contexts are created: the facts behind the
/// stream's properties, kept as plain values and turned into property values only when a
/// guest reads one (most streams read none). Shared by every context of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamFacts {
    /// `source.address` / `source.port`: the downstream peer.
    pub source: SocketAddr,
    /// `destination.address` / `destination.port`: the listener's local address.
    pub destination: SocketAddr,
    /// `connection.id`.
    pub connection_id: u64,
    /// `connection.mtls`.
    pub mtls: bool,
    /// `request.time`.
    pub request_time: SystemTime,
    /// `request.protocol`.
    pub protocol: &'static str,
    /// `xds.route_configuration_name`, when the route configuration has a name.
    pub route_configuration_name: Option<String>,
    /// `xds.virtual_host_name`, when a route was selected.
    pub virtual_host_name: Option<String>,
    /// `xds.route_name`, when the selected route has a name.
    pub route_name: Option<String>,
    /// `xds.cluster_name`, when the selected route names a known cluster.
    pub cluster_name: Option<Arc<str>>,
    /// `xds.listener_direction`.
    pub listener_direction: i64,
}

/// The names of a picked route, as [`StreamFacts`] holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteNames {
    pub virtual_host_name: Option<String>,
    pub route_name: Option<String>,
    pub cluster_name: Option<Arc<str>>,
}

impl StreamFacts {
    /// The value of `group.leaf`, if these facts provide it.
    fn lookup(&self, group: &str, leaf: &str) -> Option<PropertyValue> {
        let socket = |addr: &SocketAddr, leaf: &str| match leaf {
            "address" => Some(PropertyValue::String(addr.to_string())),
            "port" => Some(PropertyValue::Int(i64::from(addr.port()))),
            _ => None,
        };
        let name = |name: Option<&str>| name.map(PropertyValue::from);
        match (group, leaf) {
            ("source", _) => socket(&self.source, leaf),
            ("destination", _) => socket(&self.destination, leaf),
            ("connection", "id") => Some(PropertyValue::Uint(self.connection_id)),
            ("connection", "mtls") => Some(PropertyValue::Bool(self.mtls)),
            ("request", "time") => Some(PropertyValue::Timestamp(self.request_time)),
            ("request", "protocol") => Some(PropertyValue::from(self.protocol)),
            ("xds", "route_configuration_name") => name(self.route_configuration_name.as_deref()),
            ("xds", "virtual_host_name") => name(self.virtual_host_name.as_deref()),
            // A selected route without a name reads as empty.
            ("xds", "route_name") => name(self.route_name.as_deref()).or_else(|| {
                self.virtual_host_name
                    .as_ref()
                    .map(|_| PropertyValue::from(""))
            }),
            // host-sim's listeners have one unnamed chain, no TLS, and no metadata anywhere: Envoy reads these as
            // empty (an empty string, an empty protobuf Struct).
            ("connection", "requested_server_name")
            | ("xds", "filter_chain_name")
            | ("xds", "listener_metadata")
            | ("xds", "route_metadata" | "virtual_host_metadata") => Some(PropertyValue::from("")),
            ("xds", "cluster_name") => name(self.cluster_name.as_deref()),
            // Only with a cluster (Envoy's `XDSWrapper` ClusterMetadata reads `upstreamClusterInfo()`, which a
            // direct_response route never sets).
            ("xds", "cluster_metadata") => {
                self.cluster_name.as_ref().map(|_| PropertyValue::from(""))
            }
            ("xds", "listener_direction") => Some(PropertyValue::Int(self.listener_direction)),
            _ => None,
        }
    }
}

/// Values the proxy learns about one context's stream after creating it (the routed cluster,
/// the upstream address, how the response ended), kept typed so setting them allocates little.
#[derive(Debug, Clone, Default, PartialEq)]
struct Learned {
    cluster_name: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    response_code: Option<i64>,
    response_code_details: Option<String>,
}

impl Learned {
    fn lookup(&self, group: &str, leaf: &str) -> Option<PropertyValue> {
        match (group, leaf) {
            ("xds", "cluster_name") => self.cluster_name.as_deref().map(PropertyValue::from),
            // Empty metadata once there is a cluster (see `StreamFacts::lookup`).
            ("xds", "cluster_metadata") => {
                self.cluster_name.as_ref().map(|_| PropertyValue::from(""))
            }
            ("upstream", "address") => self
                .upstream
                .map(|addr| PropertyValue::String(addr.to_string())),
            ("upstream", "port") => self
                .upstream
                .map(|addr| PropertyValue::Int(i64::from(addr.port()))),
            ("response", "code") => self.response_code.map(PropertyValue::Int),
            ("response", "code_details") => self
                .response_code_details
                .as_deref()
                .map(PropertyValue::from),
            _ => None,
        }
    }
}

/// Property values by dotted attribute name (`source.address`, `xds.route_name`, ...).
/// The proxy sets what it knows; a name that is absent is reported as NotFound, exactly as
/// Envoy does for an attribute it lacks at that moment.
///
/// Three layers, the later-written winning: the stream's [`StreamFacts`] (shared: cloning a
/// `Properties` costs a reference count, not a map), the values the proxy learns later
/// ([`Properties::set_cluster_name`] ...), and names set one by one with [`Properties::set`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    facts: Option<Arc<StreamFacts>>,
    learned: Learned,
    /// Names set (`Some`) or removed (`None`) explicitly; ahead of the layers below.
    values: BTreeMap<String, Option<PropertyValue>>,
}

impl Properties {
    pub fn new() -> Self {
        Self::default()
    }

    /// The properties of a stream with these facts.
    pub fn from_facts(facts: StreamFacts) -> Self {
        Properties {
            facts: Some(Arc::new(facts)),
            ..Self::default()
        }
    }

    /// Sets `name` (dotted) to `value`, replacing any earlier value.
    pub fn set(&mut self, name: &str, value: impl Into<PropertyValue>) -> &mut Self {
        self.values.insert(name.to_string(), Some(value.into()));
        self
    }

    /// Builder form of [`Properties::set`].
    pub fn with(mut self, name: &str, value: impl Into<PropertyValue>) -> Self {
        self.set(name, value);
        self
    }

    /// Removes `name`; reading it then finds nothing (NotFound). Returns the value it had.
    pub fn remove(&mut self, name: &str) -> Option<PropertyValue> {
        let old = self.get(name).map(Cow::into_owned);
        let (group, leaf) = split_name(name);
        if self.layered(group, leaf).is_some() {
            self.values.insert(name.to_string(), None);
        } else {
            self.values.remove(name);
        }
        old
    }

    /// The value of `name` (dotted).
    pub fn get(&self, name: &str) -> Option<Cow<'_, PropertyValue>> {
        if let Some(value) = self.values.get(name) {
            return value.as_ref().map(Cow::Borrowed);
        }
        let (group, leaf) = split_name(name);
        self.layered(group, leaf).map(Cow::Owned)
    }

    /// The value of `group.leaf`, without building the dotted name unless names were set
    /// one by one.
    pub fn lookup(&self, group: &str, leaf: &str) -> Option<Cow<'_, PropertyValue>> {
        if !self.values.is_empty() {
            if let Some(value) = self.values.get(&format!("{group}.{leaf}")) {
                return value.as_ref().map(Cow::Borrowed);
            }
        }
        self.layered(group, Some(leaf)).map(Cow::Owned)
    }

    /// The learned values, then the facts.
    fn layered(&self, group: &str, leaf: Option<&str>) -> Option<PropertyValue> {
        let leaf = leaf?;
        self.learned
            .lookup(group, leaf)
            .or_else(|| self.facts.as_ref()?.lookup(group, leaf))
    }

    /// Sets `<prefix>.address` to `addr` (ip:port, IPv6 in brackets, as Envoy prints it)
    /// and `<prefix>.port` to its port as an integer.
    pub fn set_socket_address(&mut self, prefix: &str, addr: std::net::SocketAddr) -> &mut Self {
        self.set(&format!("{prefix}.address"), addr.to_string());
        self.set(
            &format!("{prefix}.port"),
            PropertyValue::Int(i64::from(addr.port())),
        );
        self
    }

    /// The route picked again after a filter cleared the route cache (`ActiveStream::refreshCachedRoute` replaces
    /// the stream's route and its cluster info, with none when nothing matches): `xds.virtual_host_name`,
    /// `xds.route_name` and `xds.cluster_name` follow it.
    pub fn set_route(&mut self, route: RouteNames) -> &mut Self {
        self.forget(&[
            "xds.virtual_host_name",
            "xds.route_name",
            "xds.cluster_name",
        ]);
        self.learned.cluster_name = None;
        if let Some(facts) = &mut self.facts {
            let facts = Arc::make_mut(facts);
            facts.virtual_host_name = route.virtual_host_name;
            facts.route_name = route.route_name;
            facts.cluster_name = route.cluster_name;
        }
        self
    }

    /// Sets `xds.cluster_name` (the cluster the router picked).
    pub fn set_cluster_name(&mut self, name: Arc<str>) -> &mut Self {
        self.forget(&["xds.cluster_name"]);
        self.learned.cluster_name = Some(name);
        self
    }

    /// Sets `upstream.address` and `upstream.port` (the host the router connects to), as
    /// [`Properties::set_socket_address`] would.
    pub fn set_upstream_address(&mut self, addr: SocketAddr) -> &mut Self {
        self.forget(&["upstream.address", "upstream.port"]);
        self.learned.upstream = Some(addr);
        self
    }

    /// Sets `response.code`.
    pub fn set_response_code(&mut self, code: i64) -> &mut Self {
        self.forget(&["response.code"]);
        self.learned.response_code = Some(code);
        self
    }

    /// Sets `response.code_details`.
    pub fn set_response_code_details(&mut self, details: &str) -> &mut Self {
        self.forget(&["response.code_details"]);
        self.learned.response_code_details = Some(details.to_string());
        self
    }

    /// Drops names set one by one, so a typed value set now is the one read.
    fn forget(&mut self, names: &[&str]) {
        if !self.values.is_empty() {
            for name in names {
                self.values.remove(*name);
            }
        }
    }
}

/// `group.leaf` split at the first dot (`leaf` is `None` without one).
fn split_name(name: &str) -> (&str, Option<&str>) {
    match name.split_once('.') {
        Some((group, leaf)) => (group, Some(leaf)),
        None => (name, None),
    }
}

/// Attribute groups Envoy resolves through its CEL activation; a bare group name cannot be
/// serialised (Envoy answers SerializationFailure), a missing leaf is NotFound.
const STREAM_GROUPS: &[&str] = &[
    "request",
    "response",
    "connection",
    "upstream",
    "source",
    "destination",
    "metadata",
    "filter_state",
    "upstream_filter_state",
];

/// Plugin-level facts every context can read.
#[derive(Debug, Clone)]
pub(crate) struct PluginFacts<'a> {
    pub name: &'a str,
    pub root_id: &'a str,
    pub vm_id: &'a str,
    /// Properties not tied to a stream (`xds.node`, `xds.listener_direction` ...).
    pub root_properties: &'a Properties,
}

/// Resolves a `\0`-separated property path for a context (`stream` is `None` for the root
/// context) and returns the encoded value.
pub(crate) fn resolve(
    path: &[u8],
    facts: &PluginFacts<'_>,
    stream: Option<&StreamState>,
) -> Result<Vec<u8>, Status> {
    let segments: Vec<&[u8]> = if path.is_empty() {
        Vec::new()
    } else {
        path.split(|b| *b == 0).collect()
    };
    let Some((top, rest)) = segments.split_first() else {
        return Err(Status::NotFound);
    };
    let Ok(top) = std::str::from_utf8(top) else {
        return Err(Status::NotFound);
    };
    let leaf = |v: Vec<u8>| {
        if rest.is_empty() {
            Ok(v)
        } else {
            Err(Status::NotFound)
        }
    };
    match top {
        "plugin_name" => return leaf(facts.name.as_bytes().to_vec()),
        "plugin_root_id" => return leaf(facts.root_id.as_bytes().to_vec()),
        "plugin_vm_id" => return leaf(facts.vm_id.as_bytes().to_vec()),
        "connection_id" => {
            let v = stream
                .and_then(|s| s.properties.lookup("connection", "id"))
                .ok_or(Status::NotFound)?;
            return leaf(v.encode());
        }
        _ => {}
    }
    if top == "xds" {
        // Once a host is picked Envoy has its (empty) metadata message, which the wasm serialiser refuses.
        if rest.first() == Some(&b"upstream_host_metadata".as_slice())
            && stream.is_some_and(|s| s.properties.lookup("upstream", "address").is_some())
        {
            return Err(Status::SerializationFailure);
        }
        return resolve_in(
            top,
            rest,
            stream.map(|s| &s.properties),
            facts.root_properties,
        );
    }
    if STREAM_GROUPS.contains(&top) {
        let stream = stream.ok_or(Status::NotFound)?;
        if rest.is_empty() {
            return Err(Status::SerializationFailure);
        }
        if let Some(v) = derived(top, rest, stream)? {
            return Ok(v);
        }
        return resolve_in(top, rest, Some(&stream.properties), facts.root_properties);
    }
    // Anything else is filter state written by `proxy_set_property`; Envoy looks up only the
    // first segment, and a bytes value has no fields below it.
    let stream = stream.ok_or(Status::NotFound)?;
    let value = stream
        .filter_state
        .get(top.as_bytes())
        .ok_or(Status::NotFound)?;
    leaf(value.clone())
}

/// Looks a dotted name up in the stream's properties, then the plugin's root properties,
/// descending into a map value for one more segment.
fn resolve_in(
    top: &str,
    rest: &[&[u8]],
    stream: Option<&Properties>,
    root: &Properties,
) -> Result<Vec<u8>, Status> {
    let Some((first, more)) = rest.split_first() else {
        return Err(Status::SerializationFailure);
    };
    let first = std::str::from_utf8(first).map_err(|_| Status::NotFound)?;
    let value = stream
        .and_then(|p| p.lookup(top, first))
        .or_else(|| root.lookup(top, first))
        .ok_or(Status::NotFound)?;
    match (&*value, more) {
        (v, []) => Ok(v.encode()),
        (PropertyValue::Map(m), [key]) => m
            .iter()
            .find(|(k, _)| k.as_bytes() == *key)
            .map(|(_, v)| v.as_bytes().to_vec())
            .ok_or(Status::NotFound),
        _ => Err(Status::NotFound),
    }
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc_status(http: u16) -> u32 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// The `request.*` attributes Envoy's `RequestWrapper` answers only while it has the request headers
/// (`request.headers` is not among them: its `HeaderValueWrapper` of no map serializes as an empty map).
const REQUEST_HEADER_ATTRIBUTES: &[&str] = &[
    "path",
    "url_path",
    "host",
    "scheme",
    "method",
    "referer",
    "id",
    "useragent",
    "query",
];

/// Attributes Envoy derives from the stream's headers, unless the proxy set them explicitly.
fn derived(top: &str, rest: &[&[u8]], s: &StreamState) -> Result<Option<Vec<u8>>, Status> {
    let Ok(name) = std::str::from_utf8(rest[0]) else {
        return Ok(None);
    };
    if s.properties.lookup(top, name).is_some() {
        return Ok(None);
    }
    // Envoy's `RequestWrapper` reads the context's request headers, which `Context::continueStream` forgets (either
    // direction): after that, outside the access-log phase, the attributes taken from them are NotFound and
    // `request.size` counts bytes.
    let empty = HeaderMap::default();
    let req = if s.access.request_headers || s.access.access_log {
        &s.request_headers
    } else {
        if top == "request" && REQUEST_HEADER_ATTRIBUTES.contains(&name) {
            return Err(Status::NotFound);
        }
        &empty
    };
    let header = |map: &HeaderMap, key: &str| map.get(key).map(<[u8]>::to_vec);
    let value = match (top, name) {
        ("request", "headers") => return map_lookup(req, &rest[1..]).map(Some),
        ("response", "headers") => return map_lookup(&s.response_headers, &rest[1..]).map(Some),
        ("response", "trailers") => return map_lookup(&s.response_trailers, &rest[1..]).map(Some),
        _ if rest.len() > 1 => return Ok(None),
        ("request", "path") => header(req, ":path"),
        ("request", "url_path") => {
            header(req, ":path").map(|p| p.split(|b| *b == b'?').next().unwrap_or(&[]).to_vec())
        }
        ("request", "query") => header(req, ":path").map(|p| {
            p.iter()
                .position(|b| *b == b'?')
                .map(|i| p[i + 1..].to_vec())
                .unwrap_or_default()
        }),
        ("request", "host") => header(req, ":authority"),
        ("request", "scheme") => header(req, ":scheme"),
        ("request", "method") => header(req, ":method"),
        ("request", "referer") => header(req, "referer"),
        ("request", "useragent") => header(req, "user-agent"),
        ("request", "id") => header(req, "x-request-id"),
        ("response", "code") => s
            .response_headers
            .get_str(":status")
            .and_then(|v| v.parse::<i64>().ok())
            .map(|c| c.to_le_bytes().to_vec()),
        // Envoy's CEL sizes: the request body's `content-length` when the headers have one, else the body bytes so
        // far; the totals add the header (and trailer) bytes.
        ("request", "size") => Some(body_size(req, s.request_body_bytes)),
        ("request", "total_size") => {
            Some(int(s.request_body_bytes as i64 + req.byte_size() as i64))
        }
        // Unlike the request's, the response's size is the body bytes sent so far, whatever `content-length` says.
        ("response", "size") => Some(int(s.response_body_bytes as i64)),
        ("response", "total_size") => Some(int(s.response_body_bytes as i64
            + s.response_headers.byte_size() as i64
            + s.response_trailers.byte_size() as i64)),
        // host-sim sets no response flags (its access log prints `-`).
        ("response", "flags") => Some(int(0)),
        // CEL's `response.grpc_status` (`Grpc::Common::getGrpcStatus(trailers, headers, info, true)`): the
        // `grpc-status` trailer or header, else the HTTP status mapped as `Grpc::Utility::httpToGrpcStatus`.
        ("response", "grpc_status") => {
            let explicit = s
                .response_trailers
                .get_str("grpc-status")
                .or_else(|| s.response_headers.get_str("grpc-status"))
                .and_then(|v| v.parse::<i64>().ok());
            let learned = match s.properties.lookup("response", "code").as_deref() {
                Some(PropertyValue::Int(code)) => u16::try_from(*code).ok(),
                _ => None,
            };
            let code = learned.or_else(|| {
                s.response_headers
                    .get_str(":status")
                    .and_then(|v| v.parse::<u16>().ok())
            });
            explicit
                .or_else(|| code.map(|c| i64::from(http_to_grpc_status(c))))
                .map(int)
        }
        // No retries: the router's one attempt starts when it has the upstream address.
        ("upstream", "request_attempt_count") => Some(int(i64::from(
            s.properties.lookup("upstream", "address").is_some(),
        ))),
        // `UpstreamTransportFailureReason` (expr/context.cc): a string, empty unless the transport failed, once the
        // router has upstream info. host-sim records no failure reasons, so it is empty whenever a host was picked.
        ("upstream", "transport_failure_reason") => s
            .properties
            .lookup("upstream", "address")
            .is_some()
            .then(Vec::new),
        _ => None,
    };
    Ok(value)
}

fn int(value: i64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// `request.size`: `content-length` if the headers carry a number there, else the bytes counted.
fn body_size(headers: &HeaderMap, counted: u64) -> Vec<u8> {
    let declared = headers
        .get_str("content-length")
        .and_then(|value| value.parse::<i64>().ok());
    int(declared.unwrap_or(counted as i64))
}

/// A header map as a property: the whole map as pairs (repeated keys joined by `,`, as
/// Envoy's CEL header map does), or one key's value.
fn map_lookup(map: &HeaderMap, rest: &[&[u8]]) -> Result<Vec<u8>, Status> {
    let joined = |key: &[u8]| -> Option<Vec<u8>> {
        let values = map.get_all(key);
        if values.is_empty() {
            None
        } else {
            Some(values.join(&b","[..]))
        }
    };
    match rest {
        [] => {
            let mut seen: Vec<&[u8]> = Vec::new();
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for (k, _) in map.iter() {
                if !seen.contains(&k) {
                    seen.push(k);
                    pairs.push((k.to_vec(), joined(k).unwrap_or_default()));
                }
            }
            Ok(encode_pairs(
                pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
            ))
        }
        [key] => joined(key).ok_or(Status::NotFound),
        _ => Err(Status::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(root: &Properties) -> PluginFacts<'_> {
        PluginFacts {
            name: "p",
            root_id: "r",
            vm_id: "v",
            root_properties: root,
        }
    }

    #[test]
    fn encodings_follow_envoy() {
        assert_eq!(
            PropertyValue::Int(80).encode(),
            80i64.to_le_bytes().to_vec()
        );
        assert_eq!(PropertyValue::Bool(true).encode(), vec![1]);
        assert_eq!(
            PropertyValue::Duration(Duration::from_millis(2)).encode(),
            2_000_000i64.to_le_bytes().to_vec()
        );
    }

    #[test]
    fn stream_attributes_and_absence() {
        let root = Properties::new().with("xds.node", "n");
        let mut s = StreamState::new(Properties::new().with("xds.route_name", "r1"));
        s.request_headers = HeaderMap::from_pairs([(":path", "/a?b=1"), ("x", "1"), ("x", "2")]);
        s.access.request_headers = true;
        let f = facts(&root);
        assert_eq!(
            resolve(b"request\0url_path", &f, Some(&s)),
            Ok(b"/a".to_vec())
        );
        assert_eq!(
            resolve(b"request\0query", &f, Some(&s)),
            Ok(b"b=1".to_vec())
        );
        assert_eq!(
            resolve(b"request\0headers\0x", &f, Some(&s)),
            Ok(b"1,2".to_vec())
        );
        assert_eq!(
            resolve(b"xds\0route_name", &f, Some(&s)),
            Ok(b"r1".to_vec())
        );
        assert_eq!(resolve(b"xds\0node", &f, None), Ok(b"n".to_vec()));
        assert_eq!(
            resolve(b"source\0address", &f, Some(&s)),
            Err(Status::NotFound)
        );
        assert_eq!(resolve(b"request\0path", &f, None), Err(Status::NotFound));
        assert_eq!(
            resolve(b"request", &f, Some(&s)),
            Err(Status::SerializationFailure)
        );
        assert_eq!(resolve(b"plugin_vm_id", &f, None), Ok(b"v".to_vec()));
        // Once the context let go of the request headers (`Context::continueStream`), the attributes read from them
        // are gone, outside the access-log phase.
        s.access.request_headers = false;
        assert_eq!(
            resolve(b"request\0url_path", &f, Some(&s)),
            Err(Status::NotFound)
        );
        s.access.access_log = true;
        assert_eq!(
            resolve(b"request\0url_path", &f, Some(&s)),
            Ok(b"/a".to_vec())
        );
    }

    fn facts_for_test() -> StreamFacts {
        StreamFacts {
            source: "[2001:db8::1]:5555".parse().expect("address"),
            destination: "127.0.0.1:10000".parse().expect("address"),
            connection_id: 7,
            mtls: false,
            request_time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            protocol: "HTTP/1.1",
            route_configuration_name: Some("local_route".to_string()),
            virtual_host_name: Some("vh".to_string()),
            route_name: None,
            cluster_name: Some(Arc::from("dfp_plain")),
            listener_direction: 0,
        }
    }

    /// The same properties set one by one, as the proxy used to build them.
    fn eager_for_test(f: &StreamFacts) -> Properties {
        let mut p = Properties::new();
        p.set_socket_address("source", f.source);
        p.set_socket_address("destination", f.destination);
        p.set("connection.id", PropertyValue::Uint(f.connection_id));
        p.set("connection.mtls", PropertyValue::Bool(f.mtls));
        p.set("request.time", PropertyValue::Timestamp(f.request_time));
        p.set("request.protocol", f.protocol);
        p.set(
            "xds.route_configuration_name",
            f.route_configuration_name.clone().unwrap_or_default(),
        );
        p.set(
            "xds.virtual_host_name",
            f.virtual_host_name.clone().unwrap_or_default(),
        );
        p.set("xds.cluster_name", f.cluster_name.as_deref().unwrap_or(""));
        p.set(
            "xds.listener_direction",
            PropertyValue::Int(f.listener_direction),
        );
        // A route was selected (there is a virtual host) and it has no name.
        p.set("xds.route_name", "");
        for empty in [
            "connection.requested_server_name",
            "xds.filter_chain_name",
            "xds.listener_metadata",
            "xds.cluster_metadata",
            "xds.route_metadata",
            "xds.virtual_host_metadata",
        ] {
            p.set(empty, "");
        }
        p
    }

    const PATHS: &[&str] = &[
        "source\0address",
        "source\0port",
        "destination\0address",
        "destination\0port",
        "connection\0id",
        "connection\0mtls",
        "connection_id",
        "request\0time",
        "request\0protocol",
        "request\0path",
        "request\0host",
        "response\0code",
        "response\0code_details",
        "upstream\0address",
        "upstream\0port",
        "xds\0route_configuration_name",
        "xds\0virtual_host_name",
        "xds\0route_name",
        "xds\0cluster_name",
        "xds\0listener_direction",
        "xds\0node",
        "xds\0filter_chain_name",
        "xds\0route_metadata",
        "connection\0requested_server_name",
        "request\0size",
        "request\0total_size",
        "response\0size",
        "response\0flags",
        "upstream\0request_attempt_count",
        "upstream\0transport_failure_reason",
        "source",
        "source\0address\0more",
        "source\0",
    ];

    fn read_all(properties: Properties, root: &Properties) -> Vec<Result<Vec<u8>, Status>> {
        let mut s = StreamState::new(properties);
        s.request_headers = HeaderMap::from_pairs([(":path", "/a"), (":authority", "h:80")]);
        s.response_headers = HeaderMap::from_pairs([(":status", "204")]);
        let f = facts(root);
        PATHS
            .iter()
            .map(|path| resolve(path.as_bytes(), &f, Some(&s)))
            .collect()
    }

    #[test]
    fn facts_read_as_the_values_they_stand_for() {
        let root = Properties::new().with("xds.node", "n");
        let f = facts_for_test();
        let lazy = Properties::from_facts(f.clone());
        assert_eq!(
            read_all(lazy.clone(), &root),
            read_all(eager_for_test(&f), &root)
        );
        assert_eq!(
            lazy.get("source.address").map(Cow::into_owned),
            Some(PropertyValue::from("[2001:db8::1]:5555"))
        );
        // The selected route has no name: empty, as in Envoy; no route selected: absent.
        assert_eq!(
            lazy.get("xds.route_name").map(Cow::into_owned),
            Some(PropertyValue::from(""))
        );
        let unrouted = Properties::from_facts(StreamFacts {
            virtual_host_name: None,
            ..f.clone()
        });
        assert_eq!(unrouted.get("xds.route_name"), None);
        // No cluster (a direct_response route): no cluster metadata either, until the router picks one.
        let mut clusterless = Properties::from_facts(StreamFacts {
            cluster_name: None,
            ..f.clone()
        });
        assert_eq!(clusterless.get("xds.cluster_metadata"), None);
        clusterless.set_cluster_name(Arc::from("picked"));
        assert_eq!(
            clusterless.get("xds.cluster_metadata").map(Cow::into_owned),
            Some(PropertyValue::from(""))
        );

        // What the proxy learns later reads as if it had been set by name.
        let upstream: SocketAddr = "192.0.2.9:8443".parse().expect("address");
        let mut lazy = lazy;
        lazy.set_cluster_name(Arc::from("dfp_tls"))
            .set_upstream_address(upstream)
            .set_response_code(503)
            .set_response_code_details("via_upstream");
        let mut eager = eager_for_test(&f);
        eager
            .set("xds.cluster_name", "dfp_tls")
            .set_socket_address("upstream", upstream)
            .set("response.code", PropertyValue::Int(503))
            .set("response.code_details", "via_upstream");
        assert_eq!(read_all(lazy, &root), read_all(eager, &root));
    }

    #[test]
    fn the_last_write_wins_across_layers() {
        let mut p = Properties::from_facts(facts_for_test());
        p.set("xds.cluster_name", "by_name");
        assert_eq!(
            p.get("xds.cluster_name").map(Cow::into_owned),
            Some(PropertyValue::from("by_name"))
        );
        p.set_cluster_name(Arc::from("typed"));
        assert_eq!(
            p.lookup("xds", "cluster_name").map(Cow::into_owned),
            Some(PropertyValue::from("typed"))
        );
        p.set("xds.cluster_name", "again");
        assert_eq!(
            p.lookup("xds", "cluster_name").map(Cow::into_owned),
            Some(PropertyValue::from("again"))
        );

        // Removing a fact hides it; setting it again shows the new value.
        assert_eq!(p.remove("source.port"), Some(PropertyValue::Int(5555)));
        assert_eq!(p.get("source.port"), None);
        assert_eq!(p.lookup("source", "port"), None);
        assert_eq!(p.remove("source.port"), None);
        p.set("source.port", PropertyValue::Int(1));
        assert_eq!(
            p.get("source.port").map(Cow::into_owned),
            Some(PropertyValue::Int(1))
        );
        p.remove("upstream.address");
        p.set_upstream_address("10.0.0.1:80".parse().expect("address"));
        assert_eq!(
            p.get("upstream.address").map(Cow::into_owned),
            Some(PropertyValue::from("10.0.0.1:80"))
        );

        // A removed name falls through to the plugin's root properties, as an absent one does.
        let root = Properties::new().with("xds.listener_direction", PropertyValue::Int(1));
        let mut s = Properties::from_facts(facts_for_test());
        s.remove("xds.listener_direction");
        let state = StreamState::new(s);
        assert_eq!(
            resolve(b"xds\0listener_direction", &facts(&root), Some(&state)),
            Ok(1i64.to_le_bytes().to_vec())
        );
    }

    #[test]
    fn clones_share_the_facts() {
        let p = Properties::from_facts(facts_for_test());
        let mut q = p.clone();
        q.set_upstream_address("10.0.0.1:80".parse().expect("address"));
        assert!(matches!(
            (&p.facts, &q.facts),
            (Some(a), Some(b)) if Arc::ptr_eq(a, b)
        ));
        assert_eq!(p.get("upstream.address"), None);
    }
}
