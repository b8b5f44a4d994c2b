//! Hostile and malformed guests, written as WAT: missing ABI markers and exports, unknown
//! imports, out-of-range pointers, huge sizes, bad enum values, malformed pairs, allocators
//! that fail, and traps in every callback. The host must answer with statuses, refuse to
//! load with a clear error, or fail just the affected stream — never panic.

use host_sim::harness::{Harness, Request, Response, Stage};
use host_sim::vm::{CallbackError, LoadError};
use host_sim::{HeaderMap, Status};

use crate::common::runtime;

/// Hostcalls the hostile module re-exports as `x_<name>` so tests can pass any argument.
const PASSTHROUGH: &[(&str, &str, usize)] = &[
    ("env", "proxy_log", 3),
    ("env", "proxy_get_header_map_value", 5),
    ("env", "proxy_get_header_map_pairs", 3),
    ("env", "proxy_set_header_map_pairs", 3),
    ("env", "proxy_add_header_map_value", 5),
    ("env", "proxy_get_buffer_bytes", 5),
    ("env", "proxy_set_buffer_bytes", 5),
    ("env", "proxy_get_property", 4),
    ("env", "proxy_set_property", 4),
    ("env", "proxy_send_local_response", 8),
    ("env", "proxy_http_call", 10),
    ("env", "proxy_define_metric", 4),
    ("env", "proxy_continue_stream", 1),
    ("env", "proxy_set_effective_context", 1),
    ("env", "proxy_call_foreign_function", 6),
    ("env", "proxy_get_shared_data", 5),
    ("env", "proxy_register_shared_queue", 3),
    ("env", "proxy_enqueue_shared_queue", 3),
    ("env", "proxy_set_tick_period_milliseconds", 1),
    ("wasi_snapshot_preview1", "fd_write", 4),
    ("wasi_snapshot_preview1", "random_get", 2),
];

/// Beyond the module's 2 pages (128 KiB) of memory.
const OOB: u32 = 0x0010_0000;
/// Where the module keeps test data.
const DATA: u32 = 256;

const MODE_NULL: u32 = 1;
const MODE_OOB: u32 = 2;
const MODE_TRAP: u32 = 3;

fn pairs(p: &[(&str, &str)]) -> Vec<u8> {
    HeaderMap::from_pairs(p.iter().copied()).to_pairs_bytes()
}

/// The call headers and cluster name the module keeps at DATA.
fn data_blob() -> (Vec<u8>, u32, u32, u32) {
    let mut blob = b"c".to_vec(); // cluster name at DATA, 1 byte
    let hdr_at = DATA + blob.len() as u32;
    let h = pairs(&[(":method", "GET"), (":path", "/"), (":authority", "a")]);
    let hdr_len = h.len() as u32;
    blob.extend_from_slice(&h);
    let key_at = DATA + blob.len() as u32;
    blob.extend_from_slice(b":path");
    (blob, hdr_at, hdr_len, key_at)
}

fn wat_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("\\{x:02x}")).collect()
}

fn callback(name: &str, params: usize, result: bool, trap_id: u32, ret: &str) -> String {
    let ps = "i32 ".repeat(params);
    let res = if result { "(result i32)" } else { "" };
    let body = if result {
        ret.to_string()
    } else {
        String::new()
    };
    format!(
        "(func (export \"{name}\") (param {ps}) {res}
           (if (i32.eq (global.get $trap) (i32.const {trap_id})) (then unreachable))
           {body})\n"
    )
}

/// A proxy-wasm module with pass-through hostcall exports, a controllable allocator, and
/// callbacks that trap when `set_trap(id)` names them.
fn hostile_module() -> String {
    let mut m = String::from("(module\n");
    for (module, name, n) in PASSTHROUGH {
        let ps = "i32 ".repeat(*n);
        m +=
            &format!("(import \"{module}\" \"{name}\" (func ${name} (param {ps}) (result i32)))\n");
    }
    m += "(memory (export \"memory\") 2)\n";
    m += "(global $trap (mut i32) (i32.const 0))\n(global $mode (mut i32) (i32.const 0))\n";
    m += "(global $bump (mut i32) (i32.const 4096))\n(global $pause (mut i32) (i32.const 0))\n";
    let (blob, ..) = data_blob();
    m += &format!("(data (i32.const {DATA}) \"{}\")\n", wat_bytes(&blob));
    m += r#"(func (export "proxy_abi_version_0_2_1"))
(func (export "set_trap") (param i32) (global.set $trap (local.get 0)))
(func (export "set_malloc_mode") (param i32) (global.set $mode (local.get 0)))
(func (export "set_pause") (param i32) (global.set $pause (local.get 0)))
(func (export "malloc") (param i32) (result i32) (local $p i32)
  (if (i32.eq (global.get $mode) (i32.const 1)) (then (return (i32.const 0))))
  (if (i32.eq (global.get $mode) (i32.const 2)) (then (return (i32.const 0x100000))))
  (if (i32.eq (global.get $mode) (i32.const 3)) (then unreachable))
  (local.set $p (global.get $bump))
  (if (i32.gt_u (i32.add (local.get $p) (local.get 0)) (i32.const 131072)) (then (return (i32.const 0))))
  (global.set $bump (i32.add (local.get $p) (local.get 0)))
  (local.get $p))
"#;
    for (_, name, n) in PASSTHROUGH {
        let ps = "i32 ".repeat(*n);
        let args: String = (0..*n).map(|i| format!("(local.get {i}) ")).collect();
        m += &format!(
            "(func (export \"x_{name}\") (param {ps}) (result i32) (call ${name} {args}))\n"
        );
    }
    // Trap ids: 1 context create (streams), 2..7 request/response callbacks, 8 done,
    // 9 log, 10 delete, 11 tick, 12 http call response, 13 queue ready.
    m += r#"(func (export "proxy_on_context_create") (param i32 i32)
  (if (i32.and (i32.ne (local.get 1) (i32.const 0)) (i32.eq (global.get $trap) (i32.const 1))) (then unreachable)))
(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
"#;
    m += &callback(
        "proxy_on_request_headers",
        3,
        true,
        2,
        "(global.get $pause)",
    );
    m += &callback("proxy_on_request_body", 3, true, 3, "(i32.const 0)");
    m += &callback("proxy_on_request_trailers", 2, true, 4, "(i32.const 0)");
    m += &callback("proxy_on_response_headers", 3, true, 5, "(i32.const 0)");
    m += &callback("proxy_on_response_body", 3, true, 6, "(i32.const 0)");
    m += &callback("proxy_on_response_trailers", 2, true, 7, "(i32.const 0)");
    m += &callback("proxy_on_done", 1, true, 8, "(i32.const 1)");
    m += &callback("proxy_on_log", 1, false, 9, "");
    m += &callback("proxy_on_delete", 1, false, 10, "");
    m += &callback("proxy_on_tick", 1, false, 11, "");
    m += &callback("proxy_on_http_call_response", 5, false, 12, "");
    m += &callback("proxy_on_queue_ready", 2, false, 13, "");
    m += ")\n";
    m
}

fn harness() -> Harness {
    Harness::builder(hostile_module().as_bytes())
        .runtime(runtime())
        .cluster("c")
        .build()
        .expect("hostile module loads")
}

fn full_request() -> Request {
    Request::get("http://h.test/x")
        .body("req")
        .trailer("t", "1")
        .upstream_response(Response::new(200).body("resp").trailer("rt", "1"))
}

/// A stream paused in request headers, so the request maps are reachable.
fn paused_stream(h: &mut Harness) -> u32 {
    let root = h.instance().root_context_id();
    h.instance()
        .call_export(root, "set_pause", &[1])
        .expect("set_pause");
    let out = h.run(Request::get("http://h.test/x")).expect("runs");
    assert_eq!(out.stage, Stage::RequestPaused);
    out.stream.context_id()
}

fn call(h: &mut Harness, ctx: u32, name: &str, args: &[u32]) -> u32 {
    h.instance()
        .call_export(ctx, &format!("x_{name}"), args)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name} returned nothing"))
}

const INVALID_MEMORY: u32 = Status::InvalidMemoryAccess as u32;
const BAD_ARGUMENT: u32 = Status::BadArgument as u32;
const NOT_FOUND: u32 = Status::NotFound as u32;

#[test]
fn modules_without_abi_marker_or_exports_are_refused_clearly() {
    let rt = runtime();
    let load = |wat: &str| {
        Harness::builder(wat.as_bytes())
            .runtime(rt.clone())
            .build()
            .expect_err("must be refused")
    };
    let e = load(
        r#"(module (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#,
    );
    assert!(matches!(e, LoadError::NoAbiVersion), "{e}");
    assert!(e.to_string().contains("proxy_abi_version_0_2_1"));

    let e = load(
        r#"(module (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 0)) (func (export "proxy_abi_version_0_1_0")))"#,
    );
    assert!(matches!(e, LoadError::UnsupportedAbi), "{e}");

    let e =
        load(r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))"#);
    assert!(matches!(e, LoadError::MissingExport(_)), "{e}");

    let e = load(
        r#"(module (func (export "malloc") (param i32) (result i32) (i32.const 0)) (func (export "proxy_abi_version_0_2_1")))"#,
    );
    assert!(matches!(e, LoadError::MissingExport("memory")), "{e}");

    let e = load(
        r#"(module (import "env" "proxy_frobnicate" (func (param i32) (result i32)))
           (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 0))
           (func (export "proxy_abi_version_0_2_1")))"#,
    );
    match &e {
        LoadError::UnknownImport { module, name } => {
            assert_eq!(
                (module.as_str(), name.as_str()),
                ("env", "proxy_frobnicate")
            )
        }
        other => panic!("{other}"),
    }

    // Envoy offers the ABI 0.1.0 names only to 0.1.0 modules, and proxy_get_log_level only to 0.2.1 ones
    // (cpp-host `registerCallbacks`; measured: Envoy 1.40 refuses a 0.2.1 module importing
    // proxy_continue_request with "missing import").
    for (abi, import) in [
        ("0_2_1", "proxy_continue_request"),
        ("0_2_1", "proxy_clear_route_cache"),
        ("0_2_0", "proxy_get_log_level"),
    ] {
        let e = load(&format!(
            r#"(module (import "env" "{import}" (func (result i32)))
               (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 0))
               (func (export "proxy_abi_version_{abi}")))"#
        ));
        assert!(
            matches!(&e, LoadError::UnknownImport { name, .. } if name == import),
            "{abi} importing {import}: {e}"
        );
    }

    let e = load(
        r#"(module (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 0))
           (func (export "proxy_abi_version_0_2_1"))
           (func (export "proxy_on_request_headers") (param i32) (result i32) (i32.const 0)))"#,
    );
    assert!(
        matches!(&e, LoadError::BadSignature { name, .. } if name == "proxy_on_request_headers"),
        "{e}"
    );

    let e = load("(module (garbage").to_string();
    assert!(e.contains("compile"), "{e}");
}

#[test]
fn out_of_range_pointers_return_invalid_memory_access() {
    let mut h = harness();
    let root = h.instance().root_context_id();
    let (_, hdr_at, hdr_len, key_at) = data_blob();
    assert_eq!(
        call(&mut h, root, "proxy_log", &[2, OOB, 10]),
        INVALID_MEMORY
    );
    assert_eq!(
        call(&mut h, root, "proxy_log", &[2, 0xFFFF_FFF0, 0x20]),
        INVALID_MEMORY
    );
    assert_eq!(
        call(&mut h, root, "proxy_log", &[2, DATA, u32::MAX]),
        INVALID_MEMORY
    );
    assert_eq!(
        call(&mut h, root, "proxy_get_property", &[OOB, 4, 64, 68]),
        INVALID_MEMORY
    );
    assert_eq!(
        call(&mut h, root, "proxy_define_metric", &[0, DATA, 1, OOB]),
        INVALID_MEMORY
    );
    assert_eq!(
        call(&mut h, root, "proxy_register_shared_queue", &[DATA, 1, OOB]),
        INVALID_MEMORY
    );
    // cpp-host registers before it writes the token: the failed call spent token 1 on its queue, so another
    // queue gets token 2.
    assert_eq!(
        call(&mut h, root, "proxy_register_shared_queue", &[DATA, 2, 64]),
        0
    );
    assert_eq!(
        h.instance().read_guest_memory(64, 4),
        Some(2u32.to_le_bytes().to_vec())
    );
    assert_eq!(
        call(&mut h, root, "proxy_get_shared_data", &[OOB, 1, 64, 68, 72]),
        INVALID_MEMORY
    );
    assert_eq!(
        call(
            &mut h,
            root,
            "proxy_call_foreign_function",
            &[OOB, 3, 0, 0, 64, 68]
        ),
        INVALID_MEMORY
    );
    assert_eq!(
        call(&mut h, root, "random_get", &[OOB, 16]),
        21,
        "WASI EFAULT"
    );
    assert_eq!(
        call(&mut h, root, "fd_write", &[1, OOB, 1, 64]),
        21,
        "WASI EFAULT"
    );
    // http call: bad token pointer is checked before anything is dispatched.
    assert_eq!(
        call(
            &mut h,
            root,
            "proxy_http_call",
            &[DATA, 1, hdr_at, hdr_len, 0, 0, 0, 0, 1000, OOB]
        ),
        INVALID_MEMORY
    );
    assert!(h.pending_http_calls().is_empty());

    let stream = paused_stream(&mut h);
    // key out of range, and a found value with out-of-range return pointers
    assert_eq!(
        call(
            &mut h,
            stream,
            "proxy_get_header_map_value",
            &[0, OOB, 5, 64, 68]
        ),
        INVALID_MEMORY
    );
    assert_eq!(
        call(
            &mut h,
            stream,
            "proxy_get_header_map_value",
            &[0, key_at, 5, OOB, 68]
        ),
        INVALID_MEMORY
    );
    assert_eq!(
        call(
            &mut h,
            stream,
            "proxy_get_header_map_value",
            &[0, key_at, 5, 64, OOB]
        ),
        INVALID_MEMORY
    );
    assert_eq!(
        call(&mut h, stream, "proxy_get_header_map_pairs", &[0, 64, OOB]),
        INVALID_MEMORY
    );
    assert_eq!(
        call(&mut h, stream, "proxy_set_header_map_pairs", &[0, OOB, 40]),
        INVALID_MEMORY
    );
    assert_eq!(
        call(
            &mut h,
            stream,
            "proxy_add_header_map_value",
            &[0, key_at, 5, OOB, 1]
        ),
        INVALID_MEMORY
    );
    assert_eq!(
        call(&mut h, stream, "proxy_set_property", &[DATA, 1, OOB, 9]),
        INVALID_MEMORY
    );
    assert_eq!(
        call(
            &mut h,
            stream,
            "proxy_send_local_response",
            &[403, 0, 0, 0, 0, OOB, 12, u32::MAX]
        ),
        INVALID_MEMORY
    );
    // A valid call still works afterwards: the map was not touched by the failed ones.
    assert_eq!(
        call(
            &mut h,
            stream,
            "proxy_get_header_map_value",
            &[0, key_at, 5, 64, 68]
        ),
        0
    );
    let s = h.in_flight()[0];
    let st = h.instance().stream_state(s).expect("state");
    assert!(st.effects.local_reply.is_none());
    assert_eq!(st.request_headers.get_str(":path"), Some("/x"));
}

#[test]
fn bad_enum_values_return_bad_argument_and_malformed_pairs_read_as_none() {
    let mut h = harness();
    let root = h.instance().root_context_id();
    assert_eq!(call(&mut h, root, "proxy_log", &[9, DATA, 1]), BAD_ARGUMENT);
    assert_eq!(
        call(&mut h, root, "proxy_define_metric", &[7, DATA, 1, 64]),
        BAD_ARGUMENT
    );
    assert_eq!(
        call(&mut h, root, "proxy_get_buffer_bytes", &[99, 0, 10, 64, 68]),
        BAD_ARGUMENT
    );
    assert_eq!(
        call(&mut h, root, "proxy_continue_stream", &[9]),
        BAD_ARGUMENT
    );
    assert_eq!(
        call(&mut h, root, "proxy_set_effective_context", &[4242]),
        BAD_ARGUMENT
    );
    let stream = paused_stream(&mut h);
    assert_eq!(
        call(
            &mut h,
            stream,
            "proxy_get_header_map_value",
            &[42, DATA, 1, 64, 68]
        ),
        BAD_ARGUMENT
    );
    // A pairs header claiming a billion entries in a few bytes: cpp-host's PairsUtil::toPairs reads
    // it as no pairs, so the map is emptied and the call succeeds (measured by the ABI fuzzer).
    assert_eq!(
        call(&mut h, stream, "proxy_set_header_map_pairs", &[0, DATA, 8]),
        0
    );
    // A truncated one too.
    let (_, hdr_at, hdr_len, _) = data_blob();
    assert_eq!(
        call(
            &mut h,
            stream,
            "proxy_set_header_map_pairs",
            &[0, hdr_at, hdr_len - 3]
        ),
        0
    );
    // Envoy: root context maps don't exist.
    assert_eq!(
        call(
            &mut h,
            root,
            "proxy_add_header_map_value",
            &[0, DATA, 1, DATA, 1]
        ),
        BAD_ARGUMENT
    );
}

#[test]
fn a_missing_buffer_is_not_found_before_the_guest_memory_is_read() {
    let mut h = harness();
    let root = h.instance().root_context_id();
    // cpp-host `set_buffer_bytes` looks the buffer up first: no http call response here, so NotFound even
    // though the data pointer is outside memory (found by the ABI fuzzer).
    assert_eq!(
        call(&mut h, root, "proxy_set_buffer_bytes", &[4, 0, 0, OOB, 5]),
        NOT_FOUND
    );
    // An unknown buffer type is refused before anything else.
    assert_eq!(
        call(&mut h, root, "proxy_set_buffer_bytes", &[99, 0, 0, OOB, 5]),
        BAD_ARGUMENT
    );
}

#[test]
fn failing_allocators_never_panic_the_host() {
    let mut h = harness();
    let stream = paused_stream(&mut h);
    let (_, _, _, key_at) = data_blob();
    let root = h.instance().root_context_id();
    for (mode, expect) in [(MODE_NULL, INVALID_MEMORY), (MODE_OOB, INVALID_MEMORY)] {
        h.instance()
            .call_export(root, "set_malloc_mode", &[mode])
            .expect("mode");
        assert_eq!(
            call(
                &mut h,
                stream,
                "proxy_get_header_map_value",
                &[0, key_at, 5, 64, 68]
            ),
            expect
        );
        assert_eq!(
            call(&mut h, stream, "proxy_get_header_map_pairs", &[0, 64, 68]),
            expect
        );
    }
    // An allocator that traps fails the call with a trap, which fails the VM.
    h.instance()
        .call_export(root, "set_malloc_mode", &[MODE_TRAP])
        .expect("mode");
    let r = h
        .instance()
        .call_export(stream, "x_proxy_get_header_map_pairs", &[0, 64, 68]);
    assert!(matches!(r, Err(CallbackError::Trap { .. })), "{r:?}");
    assert!(h.instance().failure().is_some());
    // And the next request gets a fresh VM.
    let out = h.run(Request::get("http://h.test/after")).expect("runs");
    assert_eq!(out.stage, Stage::Finished);
}

#[test]
fn huge_buffer_requests_are_clamped_not_trusted() {
    let mut h = Harness::builder(hostile_module().as_bytes())
        .runtime(runtime())
        .vm_config("vmcfg")
        .build()
        .expect("loads");
    let root = h.instance().root_context_id();
    // max_size u32::MAX over a 5-byte buffer reads 5 bytes; a start past the end reads none.
    assert_eq!(
        call(
            &mut h,
            root,
            "proxy_get_buffer_bytes",
            &[6, 0, u32::MAX, 64, 68]
        ),
        0
    );
    assert_eq!(
        call(
            &mut h,
            root,
            "proxy_get_buffer_bytes",
            &[6, 1000, u32::MAX, 64, 68]
        ),
        0
    );
    // The plugin configuration exists only during proxy_on_configure.
    assert_eq!(
        call(&mut h, root, "proxy_get_buffer_bytes", &[7, 0, 10, 64, 68]),
        Status::NotFound as u32
    );
    // Immutable buffers refuse writes.
    assert_eq!(
        call(&mut h, root, "proxy_set_buffer_bytes", &[6, 0, 0, DATA, 1]),
        BAD_ARGUMENT
    );
    assert_eq!(
        call(&mut h, root, "proxy_set_buffer_bytes", &[0, 0, 0, OOB, 1]),
        INVALID_MEMORY
    );
}

#[test]
fn a_trap_in_each_stream_callback_fails_only_that_stream() {
    let mut h = harness();
    let names = [
        (1, "proxy_on_context_create"),
        (2, "proxy_on_request_headers"),
        (3, "proxy_on_request_body"),
        (4, "proxy_on_request_trailers"),
        (5, "proxy_on_response_headers"),
        (6, "proxy_on_response_body"),
        (7, "proxy_on_response_trailers"),
        (8, "proxy_on_done"),
        (9, "proxy_on_log"),
        (10, "proxy_on_delete"),
    ];
    for (id, name) in names {
        let root = h.instance().root_context_id();
        h.instance()
            .call_export(root, "set_trap", &[id])
            .expect("set_trap");
        let out = match h.run(full_request()) {
            Ok(out) => out,
            // A trap while creating the context surfaces before there is a stream.
            Err(CallbackError::Trap { callback, .. }) => {
                assert_eq!(callback, name);
                h.instance().restart().expect("restart");
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!(out.stage, Stage::Failed, "{name}");
        let trap = out.trap.clone().expect("trap");
        assert!(trap.contains(name), "{name}: {trap}");
        assert_eq!(out.status(), 503);
        let next = h.run(full_request()).expect("next stream runs");
        assert_eq!(next.stage, Stage::Finished, "after a trap in {name}");
        assert_eq!(next.response_body, b"resp");
    }
}

#[test]
fn traps_in_root_and_async_callbacks_are_reported_and_recovered() {
    // Tick
    let mut h = harness();
    let root = h.instance().root_context_id();
    assert_eq!(
        call(&mut h, root, "proxy_set_tick_period_milliseconds", &[10]),
        0
    );
    assert!(h.tick().expect("tick runs"));
    h.instance()
        .call_export(root, "set_trap", &[11])
        .expect("set_trap");
    assert!(matches!(
        h.tick(),
        Err(CallbackError::Trap {
            callback: "proxy_on_tick",
            ..
        })
    ));
    assert!(matches!(h.tick(), Err(CallbackError::VmFailed(_))));
    assert_eq!(
        h.run(Request::get("http://h.test/")).expect("runs").stage,
        Stage::Finished
    );

    // Http call response
    let mut h = harness();
    let root = h.instance().root_context_id();
    let (_, hdr_at, hdr_len, _) = data_blob();
    assert_eq!(
        call(
            &mut h,
            root,
            "proxy_http_call",
            &[DATA, 1, hdr_at, hdr_len, 0, 0, 0, 0, 1000, 64]
        ),
        0
    );
    let token = h.pending_http_calls()[0].token;
    h.instance()
        .call_export(root, "set_trap", &[12])
        .expect("set_trap");
    let r = h.respond_http_call(token, Some(Response::new(200)));
    assert!(
        matches!(
            r,
            Err(CallbackError::Trap {
                callback: "proxy_on_http_call_response",
                ..
            })
        ),
        "{r:?}"
    );

    // Queue ready
    let mut h = harness();
    let root = h.instance().root_context_id();
    assert_eq!(
        call(&mut h, root, "proxy_register_shared_queue", &[DATA, 1, 64]),
        0
    );
    let token = {
        let out = h
            .instance()
            .call_export(root, "x_proxy_enqueue_shared_queue", &[1, DATA, 1]);
        assert_eq!(out.expect("enqueue"), Some(0));
        1
    };
    assert_eq!(token, 1);
    h.instance()
        .call_export(root, "set_trap", &[13])
        .expect("set_trap");
    assert!(matches!(
        h.deliver_queue_ready(),
        Err(CallbackError::Trap {
            callback: "proxy_on_queue_ready",
            ..
        })
    ));

    // vm_start / configure traps refuse the plugin with the phase named.
    for (cb, phase) in [
        ("proxy_on_vm_start", "proxy_on_vm_start"),
        ("proxy_on_configure", "proxy_on_configure"),
    ] {
        let wat = format!(
            r#"(module (memory (export "memory") 1) (func (export "malloc") (param i32) (result i32) (i32.const 64))
               (func (export "proxy_abi_version_0_2_1"))
               (func (export "{cb}") (param i32 i32) (result i32) unreachable))"#
        );
        let e = Harness::builder(wat.as_bytes())
            .runtime(runtime())
            .build()
            .expect_err("refused");
        assert!(
            matches!(&e, LoadError::Trap { phase: p, .. } if *p == phase),
            "{e}"
        );
    }
}

#[test]
fn effective_context_switches_where_hostcalls_act() {
    let mut h = harness();
    let stream = paused_stream(&mut h);
    let root = h.instance().root_context_id();
    // From the root, adding a request header is BadArgument; after switching it works.
    let (_, _, _, key_at) = data_blob();
    assert_eq!(
        call(
            &mut h,
            root,
            "proxy_add_header_map_value",
            &[0, key_at, 5, key_at, 5]
        ),
        BAD_ARGUMENT
    );
    let code = h
        .instance()
        .call_export(root, "x_proxy_set_effective_context", &[stream])
        .expect("call");
    assert_eq!(code, Some(0));
    // Each call starts with no effective context, as Envoy resets it per callback.
    assert_eq!(
        call(
            &mut h,
            root,
            "proxy_add_header_map_value",
            &[0, key_at, 5, key_at, 5]
        ),
        BAD_ARGUMENT
    );
}
