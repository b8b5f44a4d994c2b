//! The fidelity report: scenarios that answer with a JSON description of what the host gives
//! the guest, so the same module loaded in Envoy and in host-sim can be compared byte for byte
//! (after the runner masks times, ports and ids).
//!
//! `x-probe: report` answers at request time (after the body when one is coming) with the
//! sections named in `x-probe-sections` (comma-separated; all when absent): `properties`,
//! `headers`, `mutations`, `body`, `metrics`, `shared`, `queue`, `foreign`, `time`.
//! `x-probe: report-response` lets the request through and replaces the response body with
//! the response-side view. `x-probe: local-reply[-empty]` shows what a local reply looks like.
//! `x-probe-tag` names the metrics, shared-data keys and queues of one request, so that
//! concurrent requests do not see each other's values.
//!
//! Hostcalls are made raw here (not through the SDK's wrappers, which panic on statuses they
//! do not expect): the status code itself is part of the report.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::null_mut;

use dfp_hostcalls::{
    proxy_add_header_map_value, proxy_call_foreign_function, proxy_define_metric,
    proxy_dequeue_shared_queue, proxy_enqueue_shared_queue, proxy_get_buffer_bytes,
    proxy_get_current_time_nanoseconds, proxy_get_header_map_pairs, proxy_get_header_map_value,
    proxy_get_metric, proxy_get_property, proxy_get_shared_data, proxy_increment_metric,
    proxy_record_metric, proxy_register_shared_queue, proxy_remove_header_map_value,
    proxy_replace_header_map_value, proxy_resolve_shared_queue, proxy_set_buffer_bytes,
    proxy_set_shared_data,
};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, MapType};

mod json;
mod raw;
mod sections;

use json::*;
use raw::*;
use sections::*;

/// Property paths reported, grouped as Envoy documents its attributes; plus the wasm-specific
/// top-level names and bare groups.
const PROPERTIES: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.host",
    "request.scheme",
    "request.method",
    "request.headers",
    "request.referer",
    "request.useragent",
    "request.time",
    "request.id",
    "request.protocol",
    "request.query",
    "request.duration",
    "request.size",
    "request.total_size",
    "response.code",
    "response.code_details",
    "response.flags",
    "response.grpc_status",
    "response.headers",
    "response.trailers",
    "response.size",
    "response.total_size",
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "connection.id",
    "connection.mtls",
    "connection.requested_server_name",
    "connection.tls_version",
    "connection.subject_local_certificate",
    "connection.subject_peer_certificate",
    "connection.uri_san_local_certificate",
    "connection.uri_san_peer_certificate",
    "connection.dns_san_local_certificate",
    "connection.dns_san_peer_certificate",
    "connection.sha256_peer_certificate_digest",
    "connection.termination_details",
    "upstream.address",
    "upstream.port",
    "upstream.tls_version",
    "upstream.local_address",
    "upstream.transport_failure_reason",
    "upstream.request_attempt_count",
    "xds.cluster_name",
    "xds.cluster_metadata",
    "xds.listener_direction",
    "xds.listener_metadata",
    "xds.route_name",
    "xds.route_metadata",
    "xds.virtual_host_name",
    "xds.virtual_host_metadata",
    "xds.upstream_host_metadata",
    "xds.filter_chain_name",
    "plugin_name",
    "plugin_root_id",
    "plugin_vm_id",
    "connection_id",
    "cluster_name",
    "route_name",
    "listener_direction",
    "request",
    "no_such_property",
    "request.no_such_field",
];

/// (start, max) pairs read from a body buffer, around its edges.
fn reads(len: usize) -> Vec<(usize, usize)> {
    vec![
        (0, 0),
        (0, 5),
        (3, 4),
        (0, len + 100),
        (len.saturating_sub(2), 10),
        (len, 1),
        (len + 5, 1),
    ]
}

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const REQUEST_BODY: u32 = 0;
const RESPONSE_BODY: u32 = 1;

/// The proxy-wasm status names (ABI v0.2.1's `WasmResult`), so the report reads without a table.
/// `proxy_set_buffer_bytes` on the request body, raw: the SDK's wrapper panics on any status but Ok, and the status is
/// what a `splice-body` case compares. Returns the status's name.
pub fn splice_request_body(start: usize, size: usize, data: &[u8]) -> String {
    // SAFETY: `data` lives across the call.
    let status = unsafe { proxy_set_buffer_bytes(0, start, size, data.as_ptr(), data.len()) };
    status_name(status)
}

/// What a request's report needs between callbacks.
struct Pending {
    sections: Vec<String>,
    tag: String,
    /// The report so far (sections written at request-headers time).
    json: Json,
    first: bool,
    headers_eos: bool,
}

thread_local! {
    static PENDING: RefCell<HashMap<u32, Pending>> = RefCell::new(HashMap::new());
}

const ALL_SECTIONS: &[&str] = &[
    "properties",
    "headers",
    "mutations",
    "metrics",
    "shared",
    "queue",
    "foreign",
    "time",
    "body",
];

fn header_text(map: u32, key: &str) -> String {
    get_header(map, key)
        .1
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `x-probe: report`, request headers.
pub fn on_request_headers(context_id: u32, end_of_stream: bool) -> Action {
    let sections: Vec<String> = {
        let named = header_text(REQUEST_HEADERS, "x-probe-sections");
        if named.is_empty() {
            ALL_SECTIONS.iter().map(|s| s.to_string()).collect()
        } else {
            named.split(',').map(|s| s.trim().to_string()).collect()
        }
    };
    let tag = header_text(REQUEST_HEADERS, "x-probe-tag");
    let mut pending = Pending {
        sections,
        tag,
        json: Json::default(),
        first: true,
        headers_eos: end_of_stream,
    };
    pending.json.raw("{");
    let has = |name: &str| pending.sections.iter().any(|s| s == name);
    let (want_body, sections) = (has("body"), pending.sections.clone());
    for section in &sections {
        write_request_section(&mut pending, section);
    }
    if want_body && !end_of_stream {
        // Continue: a host does not hand the body to a filter whose headers callback paused
        // (Envoy's StopIteration), so the report is sent from the body callback instead.
        PENDING.with(|p| p.borrow_mut().insert(context_id, pending));
        return Action::Continue;
    }
    if want_body {
        let mut first = pending.first;
        pending.json.key(&mut first, "body");
        pending.first = first;
        write_body(
            &mut pending.json,
            REQUEST_BODY,
            0,
            true,
            pending.headers_eos,
        );
    }
    finish(pending);
    Action::Pause
}

/// `x-probe: report`, request body: once the whole body is buffered, the `body` section. (The
/// route sends such requests to an upstream that never answers, so the report wins.)
pub fn on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> Action {
    if !end_of_stream {
        return Action::Pause;
    }
    let Some(mut pending) = PENDING.with(|p| p.borrow_mut().remove(&context_id)) else {
        return Action::Continue;
    };
    let mut first = pending.first;
    pending.json.key(&mut first, "body");
    pending.first = first;
    write_body(
        &mut pending.json,
        REQUEST_BODY,
        body_size,
        end_of_stream,
        pending.headers_eos,
    );
    // The request headers as the body callback sees them (Envoy keeps them readable).
    pending.json.raw(",\"headers_in_body_callback\":");
    write_pairs(&mut pending.json, REQUEST_HEADERS);
    finish(pending);
    Action::Pause
}

fn finish(mut pending: Pending) {
    pending.json.raw("}");
    let body = pending.json.0;
    hostcalls::send_http_response(
        200,
        vec![
            ("content-type", "application/json"),
            ("x-probe-report", "1"),
        ],
        Some(body.as_bytes()),
    )
    .ok();
}

fn write_request_section(p: &mut Pending, section: &str) {
    let mut first = p.first;
    match section {
        "properties" => {
            p.json.key(&mut first, "properties");
            write_properties(&mut p.json);
        }
        "headers" => {
            p.json.key(&mut first, "headers");
            write_pairs(&mut p.json, REQUEST_HEADERS);
            p.json.raw(",\"header_values\":{");
            let mut inner = true;
            for key in [
                ":authority",
                ":path",
                ":method",
                ":scheme",
                "host",
                "x-dup",
                "X-Dup",
                "x-missing",
            ] {
                p.json.key(&mut inner, key);
                p.json.result(get_header(REQUEST_HEADERS, key));
            }
            p.json.raw("}");
        }
        "mutations" => {
            p.json.key(&mut first, "mutations");
            write_mutations(&mut p.json);
        }
        "metrics" => {
            p.json.key(&mut first, "metrics");
            write_metrics(&mut p.json, &p.tag);
        }
        "shared" => {
            p.json.key(&mut first, "shared");
            write_shared(&mut p.json, &p.tag);
        }
        "queue" => {
            p.json.key(&mut first, "queue");
            write_queue(&mut p.json, &p.tag);
        }
        "foreign" => {
            p.json.key(&mut first, "foreign");
            write_foreign(&mut p.json);
        }
        "time" => {
            p.json.key(&mut first, "time");
            let mut nanos: u64 = 0;
            // SAFETY: the out-pointer is a valid local.
            let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
            p.json.raw("{\"status\":");
            p.json.string(&status_name(status));
            p.json.raw(&format!(",\"nanos\":{nanos}}}"));
        }
        // `body` is written when the body is complete; unknown names are reported as such.
        "body" => {}
        other => {
            p.json.key(&mut first, other);
            p.json.raw("\"unknown section\"");
        }
    }
    p.first = first;
}

/// `x-probe: report-response`, response headers: note them, drop the length (the body will
/// be replaced), and wait for the body.
pub fn on_response_headers(context_id: u32, end_of_stream: bool) -> Action {
    let mut json = Json::default();
    json.raw("{\"response_headers\":");
    write_pairs(&mut json, RESPONSE_HEADERS);
    json.raw(",\"response_header_values\":{");
    let mut first = true;
    for key in [":status", "content-length", "x-missing"] {
        json.key(&mut first, key);
        json.result(get_header(RESPONSE_HEADERS, key));
    }
    json.raw("},\"response_properties\":");
    write_properties(&mut json);
    hostcalls::set_map_value(MapType::HttpResponseHeaders, "content-length", None).ok();
    hostcalls::set_map_value(
        MapType::HttpResponseHeaders,
        "x-probe-report",
        Some("response"),
    )
    .ok();
    let pending = Pending {
        sections: Vec::new(),
        tag: String::new(),
        json,
        first: false,
        headers_eos: end_of_stream,
    };
    PENDING.with(|p| p.borrow_mut().insert(context_id, pending));
    Action::Continue
}

/// `x-probe: report-response`, response body: at its end, replace it with the report.
pub fn on_response_body(context_id: u32, body_size: usize, end_of_stream: bool) -> Action {
    if !end_of_stream {
        return Action::Pause;
    }
    let Some(mut pending) = PENDING.with(|p| p.borrow_mut().remove(&context_id)) else {
        return Action::Continue;
    };
    pending.json.raw(",\"response_body\":");
    write_body(
        &mut pending.json,
        RESPONSE_BODY,
        body_size,
        end_of_stream,
        pending.headers_eos,
    );
    pending.json.raw("}");
    let report = pending.json.0;
    hostcalls::set_buffer(
        proxy_wasm::types::BufferType::HttpResponseBody,
        0,
        body_size,
        report.as_bytes(),
    )
    .ok();
    Action::Continue
}

/// `x-probe: local-reply` and `local-reply-empty`: a local reply with repeated and mixed-case
/// headers (and a body, or none), to compare what clients receive.
pub fn local_reply(empty: bool) -> Action {
    let body: Option<&[u8]> = if empty {
        None
    } else {
        Some(b"{\"probe\":\"local reply\"}")
    };
    hostcalls::send_http_response(
        418,
        vec![
            ("content-type", "application/json"),
            ("X-Mixed-Case", "kept"),
            ("x-repeated", "one"),
            ("x-repeated", "two"),
            ("x-empty", ""),
        ],
        body,
    )
    .ok();
    Action::Pause
}
