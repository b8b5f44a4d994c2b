//! How `proxy_get_property` resolves a path: plugin facts, `xds.*`, the stream's attribute groups (some derived from
//! its headers and body counts, as Envoy's CEL wrappers derive them), and filter state. The values themselves live
//! in [`crate::properties`].

use crate::headers::{encode_pairs, HeaderMap};
use crate::properties::{Properties, PropertyValue};
use crate::stream::StreamState;
use crate::types::Status;

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
    use crate::properties::tests::facts_for_test;
    use crate::properties::StreamFacts;
    use std::borrow::Cow;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn facts(root: &Properties) -> PluginFacts<'_> {
        PluginFacts {
            name: "p",
            root_id: "r",
            vm_id: "v",
            root_properties: root,
        }
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

    /// The same properties set one by one, as the proxy used to build them.
    fn eager_for_test(f: &StreamFacts) -> Properties {
        let mut p = Properties::new();
        p.set_socket_address("source", f.source);
        p.set_socket_address("destination", f.destination);
        p.set("connection.id", PropertyValue::Uint(f.connection_id));
        p.set("connection.mtls", PropertyValue::Bool(false));
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
}
