//! Fuzzing the ABI boundary: a guest that imports every hostcall the host provides (proxy-wasm
//! and WASI, signatures read from the host itself) re-exports each, and proptest calls them in
//! random sequences with hostile arguments — pointers at, across and past the end of memory,
//! lengths near `u32::MAX`, random enum values and context ids, random bytes where pairs and
//! strings are expected — from the root context, a paused stream and contexts that do not exist.
//!
//! The host must never panic, must answer every proxy-wasm call with a status (WASI calls with an
//! errno), and must trap only where the ABI says so (`proc_exit`); afterwards the VM still serves
//! requests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use host_sim::abi::Hostcall;
use host_sim::harness::{Harness, Request, Stage};
use host_sim::vm::CallbackError;
use host_sim::HeaderMap;
use proptest::prelude::*;
use wasmtime::{Val, ValType};

/// Two pages of memory; test data lives in [DATA, DATA + DATA_LEN).
const MEMORY: u32 = 2 * 65536;
const DATA: u32 = 1024;
const DATA_LEN: u32 = 2048;
/// The guest's allocator hands out [HEAP, MEMORY).
const HEAP: u32 = 8192;

/// proxy-wasm statuses are 0..=12 (`WasmResult`); WASI errnos 0..=76.
const MAX_STATUS: i32 = 12;
const MAX_ERRNO: i32 = 76;

fn runtime() -> Arc<host_sim::vm::Runtime> {
    host_sim::harness::shared_runtime().expect("wasmtime engine")
}

fn hostcalls() -> &'static [Hostcall] {
    static CALLS: OnceLock<Vec<Hostcall>> = OnceLock::new();
    CALLS.get_or_init(|| host_sim::abi::hostcalls(runtime().engine()).expect("hostcall list"))
}

fn wat_type(t: &ValType) -> &'static str {
    match t {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        ValType::F32 => "f32",
        ValType::F64 => "f64",
        other => panic!("a hostcall takes a {other:?}; extend the fuzzer"),
    }
}

/// The probe guest: imports every hostcall as `$h<i>` and exports `x<i>` forwarding to it; a
/// bump allocator; request headers pause when `set_pause(1)` was called, so a stream with live
/// maps exists.
fn probe_module() -> String {
    let mut m = String::from("(module\n");
    for (i, h) in hostcalls().iter().enumerate() {
        let params: Vec<&str> = h.params.iter().map(wat_type).collect();
        let results: Vec<&str> = h.results.iter().map(wat_type).collect();
        m += &format!(
            "(import \"{}\" \"{}\" (func $h{i} (param {}) (result {})))\n",
            h.module,
            h.name,
            params.join(" "),
            results.join(" ")
        );
    }
    m += &format!("(memory (export \"memory\") {})\n", MEMORY / 65536);
    m += &format!("(global $bump (mut i32) (i32.const {HEAP}))\n");
    m += "(global $pause (mut i32) (i32.const 0))\n";
    m += &format!(
        r#"(func (export "proxy_abi_version_0_2_1"))
(func (export "set_pause") (param i32) (global.set $pause (local.get 0)))
(func (export "malloc") (param i32) (result i32) (local $p i32)
  (local.set $p (global.get $bump))
  (if (i32.gt_u (i32.add (local.get $p) (local.get 0)) (i32.const {MEMORY}))
    (then (global.set $bump (i32.const {HEAP})) (return (i32.const 0))))
  (global.set $bump (i32.add (local.get $p) (local.get 0)))
  (local.get $p))
(func (export "proxy_on_context_create") (param i32 i32))
(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (global.get $pause))
(func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
"#
    );
    for (i, h) in hostcalls().iter().enumerate() {
        let params: Vec<&str> = h.params.iter().map(wat_type).collect();
        let results: Vec<&str> = h.results.iter().map(wat_type).collect();
        let args: String = (0..params.len())
            .map(|p| format!("(local.get {p}) "))
            .collect();
        m += &format!(
            "(func (export \"x{i}\") (param {}) (result {}) (call $h{i} {args}))\n",
            params.join(" "),
            results.join(" ")
        );
    }
    m += ")\n";
    m
}

fn harness() -> Harness {
    Harness::builder(probe_module().as_bytes())
        .runtime(runtime())
        .cluster("c")
        .build()
        .expect("the probe guest loads")
}

/// A paused stream (its request maps exist); returns its context id.
fn paused_stream(h: &mut Harness) -> u32 {
    let root = h.instance().root_context_id();
    h.instance()
        .call_export(root, "set_pause", &[1])
        .expect("set_pause");
    let out = h
        .run(Request::get("http://fuzz.test/x").header("x-a", "1"))
        .expect("a stream");
    assert_eq!(out.stage, Stage::RequestPaused);
    out.stream.context_id()
}

/// 32-bit arguments that matter at the boundary.
fn arg32() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..4,
        2 => 4u32..16,
        4 => DATA..DATA + DATA_LEN,
        1 => MEMORY - 16..MEMORY + 16,
        1 => Just(MEMORY),
        1 => 0x0010_0000u32..0x0010_0010,
        1 => u32::MAX - 16..=u32::MAX,
        1 => Just(i32::MAX as u32),
        1 => Just(0x8000_0000u32),
        2 => any::<u32>(),
    ]
}

fn arg64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(1),
        Just(-1),
        Just(i64::MAX),
        Just(i64::MIN),
        any::<i64>()
    ]
}

/// Which context a call runs in.
#[derive(Debug, Clone, Copy)]
enum Ctx {
    Root,
    Stream,
    None,
    Bogus(u32),
}

fn ctx() -> impl Strategy<Value = Ctx> {
    prop_oneof![
        3 => Just(Ctx::Root),
        4 => Just(Ctx::Stream),
        1 => Just(Ctx::None),
        1 => any::<u32>().prop_map(Ctx::Bogus),
    ]
}

#[derive(Debug, Clone)]
struct Call {
    index: usize,
    ctx: Ctx,
    i32s: Vec<u32>,
    i64s: Vec<i64>,
}

/// Strings the data area always holds at [`STRINGS`], so `(pointer, length)` argument pairs can
/// name real keys, clusters, properties, metrics and queues and get past the lookups.
const KNOWN: &[&[u8]] = &[
    b":path",
    b"x-a",
    b":authority",
    b"c",
    b"clear_route_cache",
    b"set_envoy_filter_state",
    b"request\0path",
    b"plugin_name",
    b"metric",
    b"key",
    b"queue",
    b"value",
    b"",
];
const STRINGS: u32 = DATA + 1024;

/// Where each known string sits, and the bytes to put there.
fn known_layout() -> (Vec<(u32, u32)>, Vec<u8>) {
    let mut at = Vec::new();
    let mut bytes = Vec::new();
    for s in KNOWN {
        at.push((STRINGS + bytes.len() as u32, s.len() as u32));
        bytes.extend_from_slice(s);
    }
    (at, bytes)
}

/// One argument, or a `(pointer, length)` pair naming a known string.
#[derive(Debug, Clone)]
enum Piece {
    One(u32),
    Known(usize),
}

fn call() -> impl Strategy<Value = Call> {
    (
        0..hostcalls().len(),
        ctx(),
        proptest::collection::vec(
            prop_oneof![
                3 => arg32().prop_map(Piece::One),
                2 => (0..KNOWN.len()).prop_map(Piece::Known),
            ],
            12,
        ),
        proptest::collection::vec(arg64(), 4),
    )
        .prop_map(|(index, ctx, pieces, i64s)| {
            let (at, _) = known_layout();
            let mut i32s = Vec::new();
            for piece in pieces {
                match piece {
                    Piece::One(v) => i32s.push(v),
                    Piece::Known(k) => i32s.extend([at[k].0, at[k].1]),
                }
            }
            Call {
                index,
                ctx,
                i32s,
                i64s,
            }
        })
}

/// What sits in the data area before a sequence: random bytes, or well-formed pairs and text
/// so calls get past parsing into the deeper paths.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), DATA_LEN as usize),
        proptest::collection::vec(
            (
                "[a-z:\\-]{0,12}",
                proptest::collection::vec(any::<u8>(), 0..24)
            ),
            0..6
        )
        .prop_map(|pairs| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.add(k.as_str(), &v);
            }
            let mut bytes = map.to_pairs_bytes();
            bytes.extend_from_slice(b"clear_route_cache\0set_envoy_filter_state\0c\0:path\0");
            bytes.resize(DATA_LEN as usize, 0);
            bytes
        }),
    ]
}

fn params(h: &Hostcall, call: &Call) -> Vec<Val> {
    let (mut a, mut b) = (call.i32s.iter(), call.i64s.iter());
    h.params
        .iter()
        .map(|t| match t {
            ValType::I64 => Val::I64(*b.next().unwrap_or(&0)),
            ValType::F32 => Val::F32(0),
            ValType::F64 => Val::F64(0),
            _ => Val::I32(*a.next().unwrap_or(&0) as i32),
        })
        .collect()
}

/// (hostcall, answer) -> how often: what the fuzzer reached.
static ANSWERS: Mutex<BTreeMap<(usize, i32), usize>> = Mutex::new(BTreeMap::new());

/// Runs one call and checks the answer; returns whether the VM trapped (allowed for `proc_exit`).
fn run(h: &mut Harness, stream: u32, call: &Call) -> Result<bool, TestCaseError> {
    let hc = &hostcalls()[call.index];
    let root = h.instance().root_context_id();
    let ctx = match call.ctx {
        Ctx::Root => root,
        Ctx::Stream => stream,
        Ctx::None => 0,
        Ctx::Bogus(id) => id,
    };
    let args = params(hc, call);
    let what = format!("{}::{}{:?} in context {ctx}", hc.module, hc.name, args);
    match h
        .instance()
        .call_export_values(ctx, &format!("x{}", call.index), &args)
    {
        Ok(results) => {
            if let Some(Val::I32(code)) = results.first() {
                let mut seen = ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
                *seen.entry((call.index, *code)).or_default() += 1;
                let max = if hc.module == "env" {
                    MAX_STATUS
                } else {
                    MAX_ERRNO
                };
                prop_assert!(
                    (0..=max).contains(code),
                    "{what} answered {code}, not a status"
                );
            }
            Ok(false)
        }
        Err(CallbackError::Trap { message, .. }) => {
            prop_assert!(hc.name == "proc_exit", "{what} trapped: {message}");
            Ok(true)
        }
        Err(e) => Err(TestCaseError::fail(format!("{what}: {e}"))),
    }
}

/// Cases per run: `ABI_FUZZ_CASES` (default 256) sequences of up to 40 calls.
fn cases() -> u32 {
    std::env::var("ABI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

#[test]
fn hostcalls_answer_any_arguments_with_a_status() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    });
    let strategy = (data(), proptest::collection::vec(call(), 1..40));
    let result = runner.run(&strategy, |(bytes, calls)| {
        let mut h = harness();
        let mut stream = paused_stream(&mut h);
        prop_assert!(h.instance().write_guest_memory(DATA, &bytes));
        prop_assert!(h.instance().write_guest_memory(STRINGS, &known_layout().1));
        for call in &calls {
            if run(&mut h, stream, call)? {
                // proc_exit: the VM is gone, as in Envoy; a fresh one serves on.
                h.instance().restart().expect("restart after proc_exit");
                stream = paused_stream(&mut h);
            }
        }
        // The VM still works: a fresh request runs end to end.
        let root = h.instance().root_context_id();
        h.instance()
            .call_export(root, "set_pause", &[0])
            .expect("unpause");
        let out = h.run(Request::get("http://fuzz.test/after")).expect("runs");
        prop_assert!(
            matches!(out.stage, Stage::Finished) || out.local_reply.is_some(),
            "{:?}",
            out.stage
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The fuzzer got past argument checking: most hostcalls succeeded at least once, and the
    // answers are not all one status.
    let answers = ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
    let ok: std::collections::BTreeSet<usize> = answers
        .keys()
        .filter(|(_, code)| *code == 0)
        .map(|(i, _)| *i)
        .collect();
    let never_ok: Vec<&str> = hostcalls()
        .iter()
        .enumerate()
        .filter(|(i, _)| !ok.contains(i))
        .map(|(_, h)| h.name.as_str())
        .collect();
    eprintln!(
        "{} of {} hostcalls answered Ok at least once; never: {never_ok:?}",
        ok.len(),
        hostcalls().len()
    );
    let distinct: std::collections::BTreeSet<i32> = answers.keys().map(|(_, c)| *c).collect();
    eprintln!("distinct answers: {distinct:?}");
    assert!(
        ok.len() * 2 > hostcalls().len(),
        "too shallow: {never_ok:?}"
    );
    assert!(distinct.len() >= 5, "{distinct:?}");
}

#[test]
fn the_probe_covers_every_hostcall_the_sdk_imports() {
    // The Rust SDK's imports (proxy-wasm 0.2.x hostcalls.rs) must all be among the fuzzed ones.
    let names: Vec<&str> = hostcalls().iter().map(|h| h.name.as_str()).collect();
    for sdk in [
        "proxy_log",
        "proxy_get_log_level",
        "proxy_get_current_time_nanoseconds",
        "proxy_set_tick_period_milliseconds",
        "proxy_get_buffer_bytes",
        "proxy_set_buffer_bytes",
        "proxy_get_header_map_pairs",
        "proxy_set_header_map_pairs",
        "proxy_get_header_map_value",
        "proxy_replace_header_map_value",
        "proxy_remove_header_map_value",
        "proxy_add_header_map_value",
        "proxy_get_property",
        "proxy_set_property",
        "proxy_get_shared_data",
        "proxy_set_shared_data",
        "proxy_register_shared_queue",
        "proxy_resolve_shared_queue",
        "proxy_dequeue_shared_queue",
        "proxy_enqueue_shared_queue",
        "proxy_continue_stream",
        "proxy_close_stream",
        "proxy_send_local_response",
        "proxy_http_call",
        "proxy_grpc_call",
        "proxy_grpc_stream",
        "proxy_grpc_send",
        "proxy_grpc_cancel",
        "proxy_grpc_close",
        "proxy_get_status",
        "proxy_set_effective_context",
        "proxy_call_foreign_function",
        "proxy_done",
        "proxy_define_metric",
        "proxy_get_metric",
        "proxy_record_metric",
        "proxy_increment_metric",
    ] {
        assert!(names.contains(&sdk), "{sdk} is not provided");
    }
    // And the probe really calls into them: one call of each with zero arguments answers.
    let mut h = harness();
    let mut stream = paused_stream(&mut h);
    for index in 0..hostcalls().len() {
        let call = Call {
            index,
            ctx: Ctx::Stream,
            i32s: vec![0; 12],
            i64s: vec![0; 4],
        };
        if run(&mut h, stream, &call).expect("answers") {
            h.instance().restart().expect("restart");
            stream = paused_stream(&mut h);
        }
    }
}
