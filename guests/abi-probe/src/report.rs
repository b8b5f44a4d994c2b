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

fn status_name(code: u32) -> String {
    if code & UNTOUCHED != 0 {
        return format!(
            "{} (out-pointers untouched)",
            status_name(code & !UNTOUCHED)
        );
    }
    match code {
        0 => "Ok".into(),
        1 => "NotFound".into(),
        2 => "BadArgument".into(),
        3 => "SerializationFailure".into(),
        4 => "ParseFailure".into(),
        5 => "BadExpression".into(),
        6 => "InvalidMemoryAccess".into(),
        7 => "Empty".into(),
        8 => "CasMismatch".into(),
        9 => "ResultMismatch".into(),
        10 => "InternalFailure".into(),
        11 => "BrokenConnection".into(),
        12 => "Unimplemented".into(),
        n => format!("Status({n})"),
    }
}

/// Takes ownership of bytes the host allocated in guest memory.
fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host allocated `size` bytes at `data` with the guest's allocator (malloc /
    // proxy_on_memory_allocate) and handed them over; nothing else refers to them.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Added to a status when the host returned without writing the data out-pointer, told apart from a written null by
/// a sentinel: hosts differ there (cpp-host's `get_buffer_bytes` writes 0 to both for an empty result).
const UNTOUCHED: u32 = 0x1000;
/// What the out-pointers hold before the call; no allocation the host makes lands there.
const SENTINEL: usize = 0xFFFF_FFF0;

/// (status, bytes) of a hostcall returning a buffer.
fn with_buffer(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> (u32, Option<Vec<u8>>) {
    let mut data = SENTINEL as *mut u8;
    let mut size: usize = SENTINEL;
    let status = call(&mut data, &mut size);
    if data as usize == SENTINEL {
        return (status | UNTOUCHED, None);
    }
    let bytes = (!data.is_null()).then(|| owned(data, size));
    (status, bytes)
}

fn get_property(path: &str) -> (u32, Option<Vec<u8>>) {
    let serialized: Vec<u8> = path.replace('.', "\0").into_bytes();
    // SAFETY: the path buffer lives across the call; out-pointers are valid locals.
    with_buffer(|d, s| unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), d, s) })
}

fn get_buffer(kind: u32, start: usize, max: usize) -> (u32, Option<Vec<u8>>) {
    // SAFETY: out-pointers are valid locals.
    with_buffer(|d, s| unsafe { proxy_get_buffer_bytes(kind, start, max, d, s) })
}

fn get_pairs(map: u32) -> (u32, Option<Vec<u8>>) {
    // SAFETY: out-pointers are valid locals.
    with_buffer(|d, s| unsafe { proxy_get_header_map_pairs(map, d, s) })
}

fn get_header(map: u32, key: &str) -> (u32, Option<Vec<u8>>) {
    // SAFETY: the key lives across the call; out-pointers are valid locals.
    with_buffer(|d, s| unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), d, s) })
}

/// Decodes the ABI's pairs format; `None` unless the bytes are exactly one well-formed map.
fn decode_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    let mut sizes = Vec::new();
    let mut at = 4;
    for _ in 0..count {
        sizes.push((word(at)?, word(at + 4)?));
        at += 8;
    }
    let mut pairs = Vec::new();
    for (k, v) in sizes {
        let key = bytes.get(at..at + k)?.to_vec();
        at += k + 1;
        let value = bytes.get(at..at + v)?.to_vec();
        at += v + 1;
        pairs.push((key, value));
    }
    (at == bytes.len()).then_some(pairs)
}

/// A minimal JSON writer (the guest carries no serde).
#[derive(Default)]
struct Json(String);

impl Json {
    fn string(&mut self, s: &str) {
        self.0.push('"');
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    self.0.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    fn raw(&mut self, s: &str) {
        self.0.push_str(s);
    }

    /// Bytes as `{"utf8": ...}` when they are printable UTF-8, `{"pairs": [...]}` when they
    /// are a header-pairs map, else `{"hex": ...}`; `null` when absent.
    fn bytes(&mut self, bytes: Option<&[u8]>) {
        let Some(bytes) = bytes else {
            self.raw("null");
            return;
        };
        if let Some(pairs) = decode_pairs(bytes).filter(|p| !p.is_empty()) {
            self.raw("{\"pairs\":");
            self.pairs(&pairs);
            self.raw("}");
            return;
        }
        match std::str::from_utf8(bytes) {
            Ok(text) if text.chars().all(|c| !c.is_control()) => {
                self.raw("{\"utf8\":");
                self.string(text);
                self.raw("}");
            }
            _ => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                self.raw("{\"hex\":");
                self.string(&hex);
                self.raw("}");
            }
        }
    }

    fn pairs(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) {
        self.raw("[");
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            self.raw("[");
            self.string(&String::from_utf8_lossy(k));
            self.raw(",");
            self.string(&String::from_utf8_lossy(v));
            self.raw("]");
        }
        self.raw("]");
    }

    /// `{"status": "...", "value": <bytes>}`
    fn result(&mut self, (status, bytes): (u32, Option<Vec<u8>>)) {
        self.raw("{\"status\":");
        self.string(&status_name(status));
        self.raw(",\"value\":");
        self.bytes(bytes.as_deref());
        self.raw("}");
    }

    /// `"key":` (with a comma before all but the first key of an object).
    fn key(&mut self, first: &mut bool, key: &str) {
        if !*first {
            self.raw(",");
        }
        *first = false;
        self.string(key);
        self.raw(":");
    }
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

fn write_pairs(json: &mut Json, map: u32) {
    let (status, bytes) = get_pairs(map);
    match bytes.as_deref().and_then(decode_pairs) {
        Some(pairs) if status == 0 => json.pairs(&pairs),
        _ => {
            json.raw("{\"status\":");
            json.string(&status_name(status));
            json.raw("}");
        }
    }
}

fn write_body(json: &mut Json, kind: u32, size: usize, eos: bool, headers_eos: bool) {
    json.raw("{\"size\":");
    json.raw(&size.to_string());
    json.raw(",\"end_of_stream\":");
    json.raw(if eos { "true" } else { "false" });
    json.raw(",\"headers_end_of_stream\":");
    json.raw(if headers_eos { "true" } else { "false" });
    json.raw(",\"reads\":[");
    for (i, (start, max)) in reads(size).into_iter().enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.raw(&format!("{{\"start\":{start},\"max\":{max},\"read\":"));
        json.result(get_buffer(kind, start, max));
        json.raw("}");
    }
    json.raw("]}");
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

fn write_properties(json: &mut Json) {
    json.raw("{");
    let mut first = true;
    for path in PROPERTIES {
        json.key(&mut first, path);
        json.result(get_property(path));
    }
    json.raw("}");
}

fn write_mutations(json: &mut Json) {
    let call = |f: &dyn Fn() -> u32| status_name(f());
    let add = |k: &str, v: &str| {
        // SAFETY: key and value live across the call.
        call(&|| unsafe {
            proxy_add_header_map_value(REQUEST_HEADERS, k.as_ptr(), k.len(), v.as_ptr(), v.len())
        })
    };
    let replace = |k: &str, v: &str| {
        // SAFETY: key and value live across the call.
        call(&|| unsafe {
            proxy_replace_header_map_value(
                REQUEST_HEADERS,
                k.as_ptr(),
                k.len(),
                v.as_ptr(),
                v.len(),
            )
        })
    };
    let remove = |k: &str| {
        // SAFETY: the key lives across the call.
        call(&|| unsafe { proxy_remove_header_map_value(REQUEST_HEADERS, k.as_ptr(), k.len()) })
    };
    let steps = [
        ("add x-added=1", add("x-added", "1")),
        ("add x-added=2", add("x-added", "2")),
        ("add X-Upper=u", add("X-Upper", "u")),
        ("replace x-dup=only", replace("x-dup", "only")),
        ("replace x-new=n", replace("x-new", "n")),
        ("remove x-remove", remove("x-remove")),
        ("remove x-absent", remove("x-absent")),
        ("replace :path=/rewritten", replace(":path", "/rewritten")),
    ];
    json.raw("{\"steps\":{");
    let mut first = true;
    for (step, status) in steps {
        json.key(&mut first, step);
        json.string(&status);
    }
    json.raw("},\"after\":");
    write_pairs(json, REQUEST_HEADERS);
    json.raw("}");
}

fn metric(kind: u32, name: &str) -> (u32, u32) {
    let mut id = 0u32;
    // SAFETY: the name lives across the call; the out-pointer is a valid local.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status, id)
}

fn metric_value(id: u32) -> String {
    let mut value = 0u64;
    // SAFETY: the out-pointer is a valid local.
    let status = unsafe { proxy_get_metric(id, &mut value) };
    if status == 0 {
        value.to_string()
    } else {
        status_name(status)
    }
}

fn write_metrics(json: &mut Json, tag: &str) {
    let (c_status, counter) = metric(0, &format!("probe.{tag}.counter"));
    let (g_status, gauge) = metric(1, &format!("probe.{tag}.gauge"));
    let (h_status, histogram) = metric(2, &format!("probe.{tag}.histogram"));
    let (again_status, again) = metric(0, &format!("probe.{tag}.counter"));
    let (bad_status, _) = metric(7, &format!("probe.{tag}.bad"));
    // SAFETY (all below): plain integer arguments.
    let inc = |id: u32, by: i64| status_name(unsafe { proxy_increment_metric(id, by) });
    let rec = |id: u32, v: u64| status_name(unsafe { proxy_record_metric(id, v) });
    let steps = [
        ("counter +3", inc(counter, 3)),
        ("counter +2", inc(counter, 2)),
        ("counter -1", inc(counter, -1)),
        ("counter record 10", rec(counter, 10)),
        ("gauge +5", inc(gauge, 5)),
        ("gauge -7", inc(gauge, -7)),
        ("gauge record 42", rec(gauge, 42)),
        ("gauge -2", inc(gauge, -2)),
        ("histogram record 7", rec(histogram, 7)),
        ("histogram +1", inc(histogram, 1)),
        ("unknown id +1", inc(u32::MAX - 7, 1)),
    ];
    json.raw("{\"define\":{");
    let mut first = true;
    for (what, status) in [
        ("counter", c_status),
        ("gauge", g_status),
        ("histogram", h_status),
        ("counter again", again_status),
        ("type 7", bad_status),
    ] {
        json.key(&mut first, what);
        json.string(&status_name(status));
    }
    json.raw(&format!(
        "}},\"same_id_when_defined_again\":{},\"steps\":{{",
        counter == again
    ));
    let mut first = true;
    for (step, status) in steps {
        json.key(&mut first, step);
        json.string(&status);
    }
    json.raw("},\"values\":{");
    let mut first = true;
    for (what, id) in [
        ("counter", counter),
        ("gauge", gauge),
        ("histogram", histogram),
        ("unknown id", u32::MAX - 7),
    ] {
        json.key(&mut first, what);
        json.string(&metric_value(id));
    }
    json.raw("}}");
}

fn shared_get(key: &str) -> (u32, Option<Vec<u8>>, u32) {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the key lives across the call; out-pointers are valid locals.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    let bytes = (!data.is_null()).then(|| owned(data, size));
    (status, bytes, cas)
}

fn shared_set(key: &str, value: &[u8], cas: u32) -> String {
    // SAFETY: key and value live across the call.
    status_name(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

fn write_shared(json: &mut Json, tag: &str) {
    let key = format!("probe.{tag}.key");
    let (missing_status, missing_value, missing_cas) = shared_get(&key);
    let set_new = shared_set(&key, b"v1", 0);
    let (s1, v1, cas1) = shared_get(&key);
    let stale = shared_set(&key, b"stale", cas1.wrapping_add(1));
    let right = shared_set(&key, b"v2", cas1);
    let (s2, v2, cas2) = shared_get(&key);
    let old = shared_set(&key, b"v3", cas1);
    let unconditional = shared_set(&key, b"v4", 0);
    let (s3, v3, cas3) = shared_get(&key);
    let empty_value = shared_set(&format!("probe.{tag}.empty"), b"", 0);
    let (s4, v4, _) = shared_get(&format!("probe.{tag}.empty"));
    json.raw("{\"missing\":");
    json.result((missing_status, missing_value));
    json.raw(&format!(",\"missing_cas_is_zero\":{}", missing_cas == 0));
    json.raw(",\"set_new_with_cas_0\":");
    json.string(&set_new);
    json.raw(",\"after_set\":");
    json.result((s1, v1));
    json.raw(&format!(",\"cas_after_set_is_nonzero\":{}", cas1 != 0));
    json.raw(",\"set_with_wrong_cas\":");
    json.string(&stale);
    json.raw(",\"set_with_right_cas\":");
    json.string(&right);
    json.raw(",\"after_cas_set\":");
    json.result((s2, v2));
    json.raw(&format!(",\"cas_changed\":{}", cas2 != cas1));
    json.raw(",\"set_with_old_cas\":");
    json.string(&old);
    json.raw(",\"set_with_cas_0_again\":");
    json.string(&unconditional);
    json.raw(",\"final\":");
    json.result((s3, v3));
    json.raw(&format!(",\"cas_changed_again\":{}", cas3 != cas2));
    json.raw(",\"set_empty_value\":");
    json.string(&empty_value);
    json.raw(",\"empty_value\":");
    json.result((s4, v4));
    json.raw("}");
}

fn write_queue(json: &mut Json, tag: &str) {
    let name = format!("probe.{tag}.queue");
    let mut id = 0u32;
    // SAFETY (queue calls below): names and values live across the calls; out-pointers are
    // valid locals.
    let registered = unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) };
    let mut again = 0u32;
    let registered_again =
        unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut again) };
    let vm = get_property("plugin_vm_id").1.unwrap_or_default();
    let mut resolved = 0u32;
    let resolve = unsafe {
        proxy_resolve_shared_queue(
            vm.as_ptr(),
            vm.len(),
            name.as_ptr(),
            name.len(),
            &mut resolved,
        )
    };
    let unknown_name = format!("probe.{tag}.nope");
    let mut nothing = 0u32;
    let resolve_unknown = unsafe {
        proxy_resolve_shared_queue(
            vm.as_ptr(),
            vm.len(),
            unknown_name.as_ptr(),
            unknown_name.len(),
            &mut nothing,
        )
    };
    let other_vm = b"no-such-vm";
    let resolve_other_vm = unsafe {
        proxy_resolve_shared_queue(
            other_vm.as_ptr(),
            other_vm.len(),
            name.as_ptr(),
            name.len(),
            &mut nothing,
        )
    };
    let enqueue = |q: u32, v: &[u8]| {
        status_name(unsafe { proxy_enqueue_shared_queue(q, v.as_ptr(), v.len()) })
    };
    let dequeue = |q: u32| with_buffer(|d, s| unsafe { proxy_dequeue_shared_queue(q, d, s) });
    let e1 = enqueue(id, b"first");
    let e2 = enqueue(id, b"second");
    let e3 = enqueue(id, b"");
    let d1 = dequeue(id);
    let d2 = dequeue(id);
    let d3 = dequeue(id);
    let d4 = dequeue(id);
    let bad_enqueue = enqueue(u32::MAX - 3, b"x");
    let bad_dequeue = dequeue(u32::MAX - 3);
    json.raw("{\"register\":");
    json.string(&status_name(registered));
    json.raw(",\"register_again\":");
    json.string(&status_name(registered_again));
    json.raw(&format!(",\"register_again_same_id\":{}", id == again));
    json.raw(",\"resolve\":");
    json.string(&status_name(resolve));
    json.raw(&format!(",\"resolve_same_id\":{}", resolved == id));
    json.raw(",\"resolve_unknown_name\":");
    json.string(&status_name(resolve_unknown));
    json.raw(",\"resolve_other_vm\":");
    json.string(&status_name(resolve_other_vm));
    json.raw(",\"enqueue\":[");
    json.string(&e1);
    json.raw(",");
    json.string(&e2);
    json.raw(",");
    json.string(&e3);
    json.raw("],\"dequeue\":[");
    for (i, d) in [d1, d2, d3, d4].into_iter().enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.result(d);
    }
    json.raw("],\"enqueue_unknown_id\":");
    json.string(&bad_enqueue);
    json.raw(",\"dequeue_unknown_id\":");
    json.result(bad_dequeue);
    json.raw("}");
}

fn foreign(name: &str, args: &[u8]) -> (u32, Option<Vec<u8>>) {
    // SAFETY: name and arguments live across the call; out-pointers are valid locals.
    with_buffer(|d, s| unsafe {
        proxy_call_foreign_function(name.as_ptr(), name.len(), args.as_ptr(), args.len(), d, s)
    })
}

fn write_foreign(json: &mut Json) {
    json.raw("{");
    let mut first = true;
    for (what, name, args) in [
        ("clear_route_cache", "clear_route_cache", &b""[..]),
        (
            "clear_route_cache with arguments",
            "clear_route_cache",
            &b"x"[..],
        ),
        (
            "set_envoy_filter_state without arguments",
            "set_envoy_filter_state",
            &b""[..],
        ),
        (
            "set_envoy_filter_state with garbage",
            "set_envoy_filter_state",
            &b"\x01\x02garbage"[..],
        ),
        ("unknown function", "no_such_function", &b"x"[..]),
        ("empty name", "", &b""[..]),
    ] {
        json.key(&mut first, what);
        json.result(foreign(name, args));
    }
    json.raw("}");
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
