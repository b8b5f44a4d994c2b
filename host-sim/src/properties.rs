//! Properties (Envoy "attributes"): the values a proxy provides per stream, the ones derived
//! from the stream's headers, and their wire encodings — strings and bytes raw, integers as
//! 8-byte little-endian, booleans as one byte, durations and timestamps as i64 nanoseconds,
//! maps in the pairs format — as Envoy's `serializeValue` produces them.

use std::collections::BTreeMap;
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

/// Property values by dotted attribute name (`source.address`, `xds.route_name`, ...).
/// The proxy sets what it knows; a name that is absent is reported as NotFound, exactly as
/// Envoy does for an attribute it lacks at that moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    values: BTreeMap<String, PropertyValue>,
}

impl Properties {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` (dotted) to `value`, replacing any earlier value.
    pub fn set(&mut self, name: &str, value: impl Into<PropertyValue>) -> &mut Self {
        self.values.insert(name.to_string(), value.into());
        self
    }

    /// Builder form of [`Properties::set`].
    pub fn with(mut self, name: &str, value: impl Into<PropertyValue>) -> Self {
        self.set(name, value);
        self
    }

    pub fn remove(&mut self, name: &str) -> Option<PropertyValue> {
        self.values.remove(name)
    }

    pub fn get(&self, name: &str) -> Option<&PropertyValue> {
        self.values.get(name)
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
                .and_then(|s| s.properties.get("connection.id"))
                .ok_or(Status::NotFound)?;
            return leaf(v.encode());
        }
        _ => {}
    }
    if top == "xds" {
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
    let name = format!("{top}.{first}");
    let value = stream
        .and_then(|p| p.get(&name))
        .or_else(|| root.get(&name))
        .ok_or(Status::NotFound)?;
    match (value, more) {
        (v, []) => Ok(v.encode()),
        (PropertyValue::Map(m), [key]) => m
            .iter()
            .find(|(k, _)| k.as_bytes() == *key)
            .map(|(_, v)| v.as_bytes().to_vec())
            .ok_or(Status::NotFound),
        _ => Err(Status::NotFound),
    }
}

/// Attributes Envoy derives from the stream's headers, unless the proxy set them explicitly.
fn derived(top: &str, rest: &[&[u8]], s: &StreamState) -> Result<Option<Vec<u8>>, Status> {
    let Ok(name) = std::str::from_utf8(rest[0]) else {
        return Ok(None);
    };
    if s.properties.get(&format!("{top}.{name}")).is_some() {
        return Ok(None);
    }
    let req = &s.request_headers;
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
        _ => None,
    };
    Ok(value)
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
    }
}
