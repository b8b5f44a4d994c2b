//! Properties (Envoy "attributes"): the values a proxy provides per stream and their wire encodings — strings and
//! bytes raw, integers as 8-byte little-endian, booleans as one byte, durations and timestamps as i64 nanoseconds,
//! maps in the pairs format — as Envoy's `serializeValue` produces them. A leaf store: how a property path is
//! resolved against a stream (the attributes derived from its headers included) is `abi::attributes`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::headers::encode_pairs;

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

/// What a TLS connection's handshake told: Envoy's `Ssl::ConnectionInfo`, as far as attributes read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionTls {
    /// `TLSv1.2` or `TLSv1.3`, as BoringSSL names them.
    pub version: &'static str,
    pub local: Arc<CertificateFacts>,
    /// The client's certificate, when it presented one.
    pub peer: Option<CertificateFacts>,
}

/// The parts of a certificate Envoy's `Ssl::ConnectionInfo` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The subject as `X509_NAME_print_ex(..., XN_FLAG_RFC2253)` prints it.
    pub subject: String,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// Lower-case hex SHA-256 of the DER certificate.
    pub sha256: String,
}

impl ConnectionTls {
    /// One of the TLS leaves of `connection` (`SslExtractorsValues` in Envoy's `expr/context.cc`): a subject reads
    /// empty without a certificate, a SAN or digest is absent.
    fn lookup(&self, leaf: &str) -> Option<PropertyValue> {
        let peer = self.peer.as_ref();
        let first = |sans: Option<&Vec<String>>| {
            sans.and_then(|s| s.first())
                .map(|s| PropertyValue::from(s.as_str()))
        };
        match leaf {
            "tls_version" => Some(PropertyValue::from(self.version)),
            "subject_local_certificate" => Some(PropertyValue::from(self.local.subject.as_str())),
            "subject_peer_certificate" => {
                Some(PropertyValue::from(peer.map_or("", |p| p.subject.as_str())))
            }
            "uri_san_local_certificate" => first(Some(&self.local.uri_sans)),
            "dns_san_local_certificate" => first(Some(&self.local.dns_sans)),
            "uri_san_peer_certificate" => first(peer.map(|p| &p.uri_sans)),
            "dns_san_peer_certificate" => first(peer.map(|p| &p.dns_sans)),
            "sha256_peer_certificate_digest" => peer
                .filter(|p| !p.sha256.is_empty())
                .map(|p| PropertyValue::from(p.sha256.as_str())),
            _ => None,
        }
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
    /// The downstream connection's TLS, if it has any: `connection.mtls`, `connection.tls_version` and the rest.
    pub tls: Option<Arc<ConnectionTls>>,
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
            // `ConnectionLookupValues`: a TLS connection whose client presented a certificate.
            ("connection", "mtls") => Some(PropertyValue::Bool(
                self.tls.as_ref().is_some_and(|tls| tls.peer.is_some()),
            )),
            // Set by the tls_inspector listener filter (host-sim has no listener filters), not by the TLS
            // socket: empty whatever SNI the client sent (measured in tests/tests/listener_tls.rs).
            ("connection", "requested_server_name") => Some(PropertyValue::from("")),
            ("connection", _) => self.tls.as_ref().and_then(|tls| tls.lookup(leaf)),
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
            // host-sim's listeners have one unnamed chain and no metadata anywhere: Envoy reads these as empty (an
            // empty string, an empty protobuf Struct).
            ("xds", "filter_chain_name")
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn facts_for_test() -> StreamFacts {
        StreamFacts {
            source: "[2001:db8::1]:5555".parse().expect("address"),
            destination: "127.0.0.1:10000".parse().expect("address"),
            connection_id: 7,
            tls: None,
            request_time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            protocol: "HTTP/1.1",
            route_configuration_name: Some("local_route".to_string()),
            virtual_host_name: Some("vh".to_string()),
            route_name: None,
            cluster_name: Some(Arc::from("dfp_plain")),
            listener_direction: 0,
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
