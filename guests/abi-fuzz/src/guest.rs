//! The interpreter: proxy-wasm exports that run a program's steps in their phase and keep the
//! report, and raw imports of every hostcall a v0.2.1 module may use in Envoy.
//!
//! The guest never traps on its own account: arguments come from the program as they are, out-
//! parameters are pre-filled with [`UNTOUCHED`], returned memory is read only inside the memory
//! and freed again. It is single-threaded (one VM per worker), so plain `thread_local` state.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use crate::program::*;

mod host {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, ptr: u32, len: u32) -> u32;
        pub fn proxy_get_log_level(out: u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(out: u32) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(t: u32, start: u32, max: u32, out_p: u32, out_s: u32) -> u32;
        pub fn proxy_get_buffer_status(t: u32, out_len: u32, out_flags: u32) -> u32;
        pub fn proxy_set_buffer_bytes(t: u32, start: u32, size: u32, p: u32, s: u32) -> u32;
        pub fn proxy_get_header_map_pairs(t: u32, out_p: u32, out_s: u32) -> u32;
        pub fn proxy_set_header_map_pairs(t: u32, p: u32, s: u32) -> u32;
        pub fn proxy_get_header_map_value(t: u32, kp: u32, ks: u32, out_p: u32, out_s: u32) -> u32;
        pub fn proxy_add_header_map_value(t: u32, kp: u32, ks: u32, vp: u32, vs: u32) -> u32;
        pub fn proxy_replace_header_map_value(t: u32, kp: u32, ks: u32, vp: u32, vs: u32) -> u32;
        pub fn proxy_remove_header_map_value(t: u32, kp: u32, ks: u32) -> u32;
        pub fn proxy_get_header_map_size(t: u32, out: u32) -> u32;
        pub fn proxy_get_property(pp: u32, ps: u32, out_p: u32, out_s: u32) -> u32;
        pub fn proxy_set_property(pp: u32, ps: u32, vp: u32, vs: u32) -> u32;
        pub fn proxy_get_shared_data(kp: u32, ks: u32, out_p: u32, out_s: u32, out_cas: u32)
            -> u32;
        pub fn proxy_set_shared_data(kp: u32, ks: u32, vp: u32, vs: u32, cas: u32) -> u32;
        pub fn proxy_register_shared_queue(np: u32, ns: u32, out: u32) -> u32;
        pub fn proxy_resolve_shared_queue(vp: u32, vs: u32, np: u32, ns: u32, out: u32) -> u32;
        pub fn proxy_dequeue_shared_queue(token: u32, out_p: u32, out_s: u32) -> u32;
        pub fn proxy_enqueue_shared_queue(token: u32, p: u32, s: u32) -> u32;
        pub fn proxy_continue_stream(t: u32) -> u32;
        pub fn proxy_close_stream(t: u32) -> u32;
        pub fn proxy_send_local_response(
            status: u32,
            dp: u32,
            ds: u32,
            bp: u32,
            bs: u32,
            hp: u32,
            hs: u32,
            grpc: i32,
        ) -> u32;
        pub fn proxy_http_call(
            up: u32,
            us: u32,
            hp: u32,
            hs: u32,
            bp: u32,
            bs: u32,
            tp: u32,
            ts: u32,
            timeout: u32,
            out: u32,
        ) -> u32;
        pub fn proxy_grpc_call(
            up: u32,
            us: u32,
            sp: u32,
            ss: u32,
            mp: u32,
            ms: u32,
            ip: u32,
            is: u32,
            rp: u32,
            rs: u32,
            timeout: u32,
            out: u32,
        ) -> u32;
        pub fn proxy_grpc_stream(
            up: u32,
            us: u32,
            sp: u32,
            ss: u32,
            mp: u32,
            ms: u32,
            ip: u32,
            is: u32,
            out: u32,
        ) -> u32;
        pub fn proxy_grpc_send(token: u32, p: u32, s: u32, end: u32) -> u32;
        pub fn proxy_grpc_cancel(token: u32) -> u32;
        pub fn proxy_grpc_close(token: u32) -> u32;
        pub fn proxy_set_effective_context(id: u32) -> u32;
        pub fn proxy_done() -> u32;
        pub fn proxy_call_foreign_function(
            np: u32,
            ns: u32,
            ap: u32,
            as_: u32,
            out_p: u32,
            out_s: u32,
        ) -> u32;
        pub fn proxy_define_metric(t: u32, np: u32, ns: u32, out: u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub fn proxy_get_metric(id: u32, out: u32) -> u32;
        pub fn proxy_get_status(out_code: u32, out_p: u32, out_s: u32) -> u32;
    }
}

const OK: u32 = 0;
const CONTINUE: u64 = 0;
const PAUSE: u64 = 1;
const REQUEST_HEADERS: u32 = 0;
const STREAM_REQUEST: u32 = 0;
const STREAM_RESPONSE: u32 = 1;
/// The queue that carries a program's id to the root for its `on_queue_ready` steps.
const INFRA_QUEUE: &[u8] = b"abi-fuzz.infra";
/// How often the root ticks while a program waits for its `on_tick` steps.
const TICK_MS: u32 = 10;
/// The cluster of the call the root makes for a program's `on_http_call_response` steps.
const INFRA_CLUSTER: &[u8] = b"echo";

// ---- memory the host fills ----

/// Every allocation carries its size in front, so what the host allocated can be freed with the
/// right layout whatever size it reported.
const HEADER: usize = 8;

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: u32) -> u32 {
    allocate(size)
}

#[no_mangle]
pub extern "C" fn malloc(size: u32) -> u32 {
    allocate(size)
}

fn allocate(size: u32) -> u32 {
    let total = size as usize + HEADER;
    let Ok(layout) = std::alloc::Layout::from_size_align(total, 8) else {
        return 0;
    };
    // SAFETY: a non-zero layout; the size goes in the first 8 bytes.
    unsafe {
        let p = std::alloc::alloc(layout);
        if p.is_null() {
            return 0;
        }
        (p as *mut u64).write(total as u64);
        p.add(HEADER) as u32
    }
}

fn free(ptr: u32) {
    if (ptr as usize) < HEADER {
        return;
    }
    // SAFETY: `ptr` came from `allocate` (only host-returned pointers are freed, and the host
    // allocates through it); the header holds the layout's size.
    unsafe {
        let base = (ptr as usize - HEADER) as *mut u8;
        let total = (base as *const u64).read() as usize;
        if let Ok(layout) = std::alloc::Layout::from_size_align(total, 8) {
            std::alloc::dealloc(base, layout);
        }
    }
}

fn memory_bytes() -> usize {
    core::arch::wasm32::memory_size(0) * 65536
}

/// Copies `size` bytes at `ptr` if they lie inside the memory, and frees the allocation.
fn take_returned(ptr: u32, size: u32) -> Option<Vec<u8>> {
    let (p, n) = (ptr as usize, size as usize);
    if p == 0 || p.checked_add(n)? > memory_bytes() {
        return None;
    }
    // SAFETY: bounds checked against the linear memory just above.
    let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, n) }.to_vec();
    free(ptr);
    Some(bytes)
}

// ---- state ----

#[derive(Default)]
struct Report {
    bytes: Vec<u8>,
    /// Root phases and http-call answers started and still to come; the stream's own end is `stream_open`.
    pending_root: u32,
    stream_open: bool,
    /// The program's root events not started yet, the next last (see [`next_root_event`]).
    deferred: Vec<RootEvent>,
}

impl Report {
    fn push(&mut self, record: Record) {
        record.encode_into(&mut self.bytes);
    }
    fn complete(&self) -> bool {
        !self.stream_open && self.pending_root == 0 && self.deferred.is_empty()
    }
}

/// What runs a program's steps of a root phase. They start one at a time once its stream is gone, so both
/// proxies run them in one order: where a queue notification or a call's answer falls among a live stream's
/// callbacks is the event loop's choice (Envoy posts it to the dispatcher, host-sim's worker runs it when the
/// stream's task yields), and state the two share (a handle, a metric, shared data) would follow that choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RootEvent {
    QueueReady,
    Callout,
    Tick,
}

#[derive(Default)]
struct Stream {
    /// The program's id, when the stream carries one (report fetches and plain requests do not).
    program: Option<u32>,
    /// The stream type paused until its http calls are answered.
    paused: Option<u32>,
}

/// An http call in flight. The host answers it in the root context (cpp-host issues callouts
/// from `root_context()`), so the guest maps the token back to its origin, as SDKs do.
struct PendingCall {
    program: u32,
    /// The stream context that made it; `None` for a root phase.
    stream: Option<u32>,
    /// Made by the program's own `on_http_call_response` steps: its answer is recorded but runs no steps, or a
    /// program that calls from there would call for ever (measured: one such program drove the call counter to
    /// 150,000 in an epoch, at each host's own pace).
    from_response: bool,
}

#[derive(Default)]
struct State {
    root_id: u32,
    programs: HashMap<u32, Program>,
    reports: BTreeMap<u32, Report>,
    streams: HashMap<u32, Stream>,
    awaiting_tick: Vec<u32>,
    calls: HashMap<u32, PendingCall>,
    infra_queue: Option<u32>,
    refs: [u64; 6],
    /// The references as the startup program left them: each program starts from these, so what one program
    /// registered or defined does not leak into the next (and a replayed program sees what it saw).
    startup_refs: [u64; 6],
    startup: Program,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

fn note(program: u32, text: String) {
    with(|s| {
        if let Some(r) = s.reports.get_mut(&program) {
            r.push(Record::Note(text));
        }
    });
}

// ---- running steps ----

/// What a callback's steps did that the guest must act on before returning.
#[derive(Default)]
struct Effects {
    sent_local_reply: bool,
    http_calls: Vec<u32>,
    touched_ticks: bool,
}

/// Runs the steps of `program` tagged `phase` in context `ctx`, recording each.
fn run_phase(program: u32, phase: Phase, ctx: u32) -> Effects {
    let steps: Vec<(usize, Step)> = with(|s| {
        let p = if program == STARTUP_PROGRAM {
            Some(&s.startup)
        } else {
            s.programs.get(&program)
        };
        p.map(|p| {
            p.steps
                .iter()
                .enumerate()
                .filter(|(_, st)| st.phase == phase)
                .map(|(i, st)| (i, st.clone()))
                .collect()
        })
        .unwrap_or_default()
    });
    let mut effects = Effects::default();
    for (index, step) in steps {
        let record = run_step(index, &step, ctx, &mut effects);
        with(|s| {
            if let Some(r) = s.reports.get_mut(&program) {
                r.push(record);
            }
        });
    }
    effects
}

fn resolve(v: u64, ctx: u32) -> u32 {
    match Ref::from_arg(v) {
        None => v as u32,
        Some(Ref::OwnContext) => ctx,
        Some(r) => with(|s| {
            if r == Ref::RootContext {
                s.root_id
            } else {
                s.refs[r as usize] as u32
            }
        }),
    }
}

/// The kinds of a call's out-parameters, in order.
#[derive(Clone, Copy, PartialEq)]
enum Out {
    U32,
    U64,
    /// A pointer; the next out-parameter is its size.
    Ptr,
}

fn outs_of(call: Call) -> &'static [Out] {
    use Out::*;
    match call {
        Call::GetLogLevel | Call::GetHeaderMapSize => &[U32],
        Call::GetCurrentTimeNanoseconds | Call::GetMetric => &[U64],
        Call::GetBufferStatus => &[U32, U32],
        Call::GetBufferBytes
        | Call::GetHeaderMapPairs
        | Call::GetHeaderMapValue
        | Call::GetProperty
        | Call::DequeueSharedQueue
        | Call::CallForeignFunction => &[Ptr, U32],
        Call::GetSharedData => &[Ptr, U32, U32],
        Call::GetStatus => &[U32, Ptr, U32],
        Call::RegisterSharedQueue
        | Call::ResolveSharedQueue
        | Call::HttpCall
        | Call::GrpcCall
        | Call::GrpcStream
        | Call::DefineMetric => &[U32],
        _ => &[],
    }
}

fn run_step(index: usize, step: &Step, ctx: u32, effects: &mut Effects) -> Record {
    let mut slots = [UNTOUCHED; 4];
    let out_kinds = outs_of(step.call);
    let slot_addr: Vec<u32> = (0..out_kinds.len())
        .map(|k| {
            if step.bad_pointer == 0x80 | (k as u8 + 1) {
                BAD_POINTER
            } else {
                &mut slots[k] as *mut u64 as u32
            }
        })
        .collect();
    let o = |k: usize| slot_addr.get(k).copied().unwrap_or(0);
    let bufs: Vec<(u32, u32)> = (0..step.bufs.len().max(5))
        .map(|k| {
            let b = step.buf(k);
            let ptr = if step.bad_pointer == k as u8 + 1 {
                BAD_POINTER
            } else {
                b.as_ptr() as u32
            };
            (ptr, b.len() as u32)
        })
        .collect();
    let b = |k: usize| bufs[k];
    let i = |k: usize| resolve(step.int(k), ctx);
    // SAFETY: every pointer is either one of `slots`, a byte string of the step, or the
    // deliberately bad address, which the host must reject; none outlives this call.
    let status = unsafe {
        match step.call {
            Call::Log => host::proxy_log(i(0), b(0).0, b(0).1),
            Call::GetLogLevel => host::proxy_get_log_level(o(0)),
            Call::GetCurrentTimeNanoseconds => host::proxy_get_current_time_nanoseconds(o(0)),
            Call::SetTickPeriodMilliseconds => {
                effects.touched_ticks = true;
                host::proxy_set_tick_period_milliseconds(i(0))
            }
            Call::GetBufferBytes => host::proxy_get_buffer_bytes(i(0), i(1), i(2), o(0), o(1)),
            Call::GetBufferStatus => host::proxy_get_buffer_status(i(0), o(0), o(1)),
            Call::SetBufferBytes => host::proxy_set_buffer_bytes(i(0), i(1), i(2), b(0).0, b(0).1),
            Call::GetHeaderMapPairs => host::proxy_get_header_map_pairs(i(0), o(0), o(1)),
            Call::SetHeaderMapPairs => host::proxy_set_header_map_pairs(i(0), b(0).0, b(0).1),
            Call::GetHeaderMapValue => {
                host::proxy_get_header_map_value(i(0), b(0).0, b(0).1, o(0), o(1))
            }
            Call::AddHeaderMapValue => {
                host::proxy_add_header_map_value(i(0), b(0).0, b(0).1, b(1).0, b(1).1)
            }
            Call::ReplaceHeaderMapValue => {
                host::proxy_replace_header_map_value(i(0), b(0).0, b(0).1, b(1).0, b(1).1)
            }
            Call::RemoveHeaderMapValue => host::proxy_remove_header_map_value(i(0), b(0).0, b(0).1),
            Call::GetHeaderMapSize => host::proxy_get_header_map_size(i(0), o(0)),
            Call::GetProperty => host::proxy_get_property(b(0).0, b(0).1, o(0), o(1)),
            Call::SetProperty => host::proxy_set_property(b(0).0, b(0).1, b(1).0, b(1).1),
            Call::GetSharedData => host::proxy_get_shared_data(b(0).0, b(0).1, o(0), o(1), o(2)),
            Call::SetSharedData => {
                host::proxy_set_shared_data(b(0).0, b(0).1, b(1).0, b(1).1, i(0))
            }
            Call::RegisterSharedQueue => host::proxy_register_shared_queue(b(0).0, b(0).1, o(0)),
            Call::ResolveSharedQueue => {
                host::proxy_resolve_shared_queue(b(0).0, b(0).1, b(1).0, b(1).1, o(0))
            }
            Call::DequeueSharedQueue => host::proxy_dequeue_shared_queue(i(0), o(0), o(1)),
            Call::EnqueueSharedQueue => host::proxy_enqueue_shared_queue(i(0), b(0).0, b(0).1),
            Call::ContinueStream => host::proxy_continue_stream(i(0)),
            Call::CloseStream => host::proxy_close_stream(i(0)),
            Call::SendLocalResponse => host::proxy_send_local_response(
                i(0),
                b(0).0,
                b(0).1,
                b(1).0,
                b(1).1,
                b(2).0,
                b(2).1,
                i(1) as i32,
            ),
            Call::HttpCall => host::proxy_http_call(
                b(0).0,
                b(0).1,
                b(1).0,
                b(1).1,
                b(2).0,
                b(2).1,
                b(3).0,
                b(3).1,
                i(0),
                o(0),
            ),
            Call::GrpcCall => host::proxy_grpc_call(
                b(0).0,
                b(0).1,
                b(1).0,
                b(1).1,
                b(2).0,
                b(2).1,
                b(3).0,
                b(3).1,
                b(4).0,
                b(4).1,
                i(0),
                o(0),
            ),
            Call::GrpcStream => host::proxy_grpc_stream(
                b(0).0,
                b(0).1,
                b(1).0,
                b(1).1,
                b(2).0,
                b(2).1,
                b(3).0,
                b(3).1,
                o(0),
            ),
            Call::GrpcSend => host::proxy_grpc_send(i(0), b(0).0, b(0).1, i(1)),
            Call::GrpcCancel => host::proxy_grpc_cancel(i(0)),
            Call::GrpcClose => host::proxy_grpc_close(i(0)),
            Call::SetEffectiveContext => host::proxy_set_effective_context(i(0)),
            Call::Done => host::proxy_done(),
            Call::CallForeignFunction => {
                host::proxy_call_foreign_function(b(0).0, b(0).1, b(1).0, b(1).1, o(0), o(1))
            }
            Call::DefineMetric => host::proxy_define_metric(i(0), b(0).0, b(0).1, o(0)),
            Call::IncrementMetric => host::proxy_increment_metric(i(0), step.int(1) as i64),
            Call::RecordMetric => host::proxy_record_metric(i(0), step.int(1)),
            Call::GetMetric => host::proxy_get_metric(i(0), o(0)),
            Call::GetStatus => host::proxy_get_status(o(0), o(1), o(2)),
        }
    };

    let mut outs = Vec::with_capacity(out_kinds.len());
    let mut data = Vec::new();
    for (k, kind) in out_kinds.iter().enumerate() {
        let raw = match kind {
            Out::U64 => slots[k],
            _ => slots[k] & 0xFFFF_FFFF,
        };
        if *kind == Out::Ptr {
            let size = (slots.get(k + 1).copied().unwrap_or(0) & 0xFFFF_FFFF) as u32;
            outs.push(match raw {
                0 => 0,
                UNTOUCHED => UNTOUCHED,
                _ => POINTER_SET,
            });
            data.push(if raw == UNTOUCHED || size == UNTOUCHED as u32 {
                None
            } else {
                take_returned(raw as u32, size)
            });
        } else {
            outs.push(raw);
        }
    }

    if status == OK {
        let first = slots[0] & 0xFFFF_FFFF;
        with(|s| match step.call {
            Call::RegisterSharedQueue | Call::ResolveSharedQueue => {
                s.refs[Ref::LastQueue as usize] = first
            }
            Call::DefineMetric => s.refs[Ref::LastMetric as usize] = first,
            Call::HttpCall => s.refs[Ref::LastHttpCall as usize] = first,
            Call::GrpcCall | Call::GrpcStream => s.refs[Ref::LastGrpc as usize] = first,
            _ => {}
        });
        match step.call {
            Call::HttpCall => effects.http_calls.push(first as u32),
            Call::SendLocalResponse => effects.sent_local_reply = true,
            _ => {}
        }
    }
    if step.call == Call::SetEffectiveContext {
        // Later steps and the guest's own calls act for this context again.
        // SAFETY: a plain hostcall with an integer.
        unsafe { host::proxy_set_effective_context(ctx) };
    }

    Record::Step {
        index: index as u16,
        call: step.call,
        status,
        outs,
        data,
    }
}

// ---- the guest's own hostcalls ----

fn request_header(name: &str) -> Option<Vec<u8>> {
    let (mut p, mut s) = (0u32, 0u32);
    // SAFETY: out-parameters are locals; the returned memory is read by `take_returned`.
    let status = unsafe {
        host::proxy_get_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr() as u32,
            name.len() as u32,
            &mut p as *mut u32 as u32,
            &mut s as *mut u32 as u32,
        )
    };
    if status != OK {
        return None;
    }
    take_returned(p, s)
}

fn local_reply(status: u32, body: &[u8], headers: &[(Vec<u8>, Vec<u8>)]) {
    let pairs = serialise_pairs(headers);
    let details = b"abi_fuzz";
    // SAFETY: pointers to live locals.
    unsafe {
        host::proxy_send_local_response(
            status,
            details.as_ptr() as u32,
            details.len() as u32,
            body.as_ptr() as u32,
            body.len() as u32,
            pairs.as_ptr() as u32,
            pairs.len() as u32,
            -1,
        );
    }
}

fn set_ticks(ms: u32) -> u32 {
    // SAFETY: a plain hostcall with an integer.
    unsafe { host::proxy_set_tick_period_milliseconds(ms) }
}

/// Answers a report request; returns the action for `on_request_headers`.
fn answer_fetch(id_text: &[u8]) -> u64 {
    let id = std::str::from_utf8(id_text)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    let Some(id) = id else {
        local_reply(400, b"abi-fuzz: the report id is not a number", &[]);
        return PAUSE;
    };
    let found = with(|s| {
        let r = s.reports.get(&id)?;
        let complete = r.complete();
        let bytes = r.bytes.clone();
        if complete && id != STARTUP_PROGRAM {
            s.reports.remove(&id);
            s.programs.remove(&id);
        }
        Some((complete, bytes))
    });
    match found {
        None => local_reply(404, b"abi-fuzz: no such program", &[]),
        Some((complete, bytes)) => {
            let flag = if complete {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            };
            local_reply(200, &bytes, &[(COMPLETE_HEADER.as_bytes().to_vec(), flag)]);
        }
    }
    PAUSE
}

/// Starts the program a request carries; `Err` is the reply for a malformed one.
fn start_program(ctx: u32, hex: &[u8]) -> Result<u32, String> {
    let bytes = from_hex(hex).map_err(|e| e.to_string())?;
    let program = Program::decode(&bytes).map_err(|e| e.to_string())?;
    let id = program.id;
    if id == STARTUP_PROGRAM {
        return Err("abi-fuzz: program 0 is the startup program".into());
    }
    // Run last first: `deferred` is popped.
    let deferred: Vec<RootEvent> = [
        (Phase::Tick, RootEvent::Tick),
        (Phase::HttpCallResponse, RootEvent::Callout),
        (Phase::QueueReady, RootEvent::QueueReady),
    ]
    .into_iter()
    .filter(|(phase, _)| program.has_phase(*phase))
    .map(|(_, event)| event)
    .collect();
    with(|s| {
        let report = Report {
            stream_open: true,
            deferred,
            ..Report::default()
        };
        s.reports.insert(id, report);
        s.programs.insert(id, program);
        s.refs = s.startup_refs;
        s.streams.entry(ctx).or_default().program = Some(id);
    });
    Ok(id)
}

/// Starts the program's next root event, once its stream is gone and what the last one started (its phase, the
/// calls its steps made) is over. Calls a stream made from `on_log` or `on_done` are waited for too: both proxies
/// answer them (measured), and one answered while the next event runs would interleave with it. `ctx` is the context the guest runs in now.
fn next_root_event(program: u32, ctx: u32) {
    let event = with(|s| {
        let r = s.reports.get_mut(&program)?;
        if r.stream_open || r.pending_root > 0 {
            return None;
        }
        let event = r.deferred.pop()?;
        r.pending_root += u32::from(event != RootEvent::Callout);
        if event == RootEvent::Tick {
            s.awaiting_tick.push(program);
        }
        Some(event)
    });
    match event {
        None => {}
        Some(RootEvent::Tick) => {
            let status = set_ticks(TICK_MS);
            note(program, format!("tick armed: {status}"));
        }
        Some(RootEvent::QueueReady) => {
            let mut token = UNTOUCHED as u32;
            // SAFETY: pointers to a static name and a local.
            let status = unsafe {
                host::proxy_register_shared_queue(
                    INFRA_QUEUE.as_ptr() as u32,
                    INFRA_QUEUE.len() as u32,
                    &mut token as *mut u32 as u32,
                )
            };
            let id_bytes = program.to_le_bytes();
            // SAFETY: pointer to a local.
            let queued = unsafe {
                host::proxy_enqueue_shared_queue(
                    token,
                    id_bytes.as_ptr() as u32,
                    id_bytes.len() as u32,
                )
            };
            with(|s| s.infra_queue = Some(token));
            note(
                program,
                format!("queued for on_queue_ready: register {status}, enqueue {queued}"),
            );
        }
        Some(RootEvent::Callout) => {
            infra_call(ctx, program);
            // A call the host refused is not waited for.
            next_root_event(program, ctx);
        }
    }
}

/// Makes a call whose response runs the program's `on_http_call_response` steps: the program's own calls rarely
/// reach a cluster with headers a host accepts (measured: 6 of 474 such steps ran in 2,000 programs). It is made
/// as the root context, whose calls outlive the stream (a stream's are cancelled when it ends), so the steps run
/// whatever the stream does.
fn infra_call(ctx: u32, id: u32) {
    let root = with(|s| s.root_id);
    let headers = serialise_pairs(&[
        (b":method".to_vec(), b"GET".to_vec()),
        (b":path".to_vec(), b"/abi-fuzz-callout".to_vec()),
        (b":authority".to_vec(), b"fuzz.test".to_vec()),
    ]);
    let mut token = UNTOUCHED as u32;
    // SAFETY: plain hostcalls with integers, pointers to constants and locals.
    let (switched, status, back) = unsafe {
        let switched = host::proxy_set_effective_context(root);
        let status = host::proxy_http_call(
            INFRA_CLUSTER.as_ptr() as u32,
            INFRA_CLUSTER.len() as u32,
            headers.as_ptr() as u32,
            headers.len() as u32,
            0,
            0,
            0,
            0,
            5000,
            &mut token as *mut u32 as u32,
        );
        (switched, status, host::proxy_set_effective_context(ctx))
    };
    if status == OK {
        note_calls(
            id,
            None,
            &Effects {
                http_calls: vec![token],
                ..Effects::default()
            },
        );
    }
    note(
        id,
        format!("callout from the root: switch {switched}, call {status}, back {back}"),
    );
}

/// Records a stream callback, runs its steps, and decides what it returns.
fn stream_callback(ctx: u32, phase: Phase, args: Vec<u64>) -> u64 {
    let Some(program) = with(|s| s.streams.get(&ctx).and_then(|st| st.program)) else {
        return CONTINUE;
    };
    let effects = run_phase(program, phase, ctx);
    let stream_type = match phase {
        Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers => Some(STREAM_REQUEST),
        Phase::ResponseHeaders | Phase::ResponseBody | Phase::ResponseTrailers => {
            Some(STREAM_RESPONSE)
        }
        _ => None,
    };
    note_calls(program, Some(ctx), &effects);
    let returned = with(|s| {
        let stream = s.streams.entry(ctx).or_default();
        match stream_type {
            Some(_) if effects.sent_local_reply => PAUSE,
            // Wait for the calls: otherwise the stream may end first and cancel them, and the
            // report would depend on which finished first.
            Some(t) if !effects.http_calls.is_empty() => {
                stream.paused = Some(t);
                PAUSE
            }
            _ => CONTINUE,
        }
    });
    if effects.touched_ticks {
        restore_ticks();
    }
    with(|s| {
        if let Some(r) = s.reports.get_mut(&program) {
            r.push(Record::Callback {
                phase,
                args,
                returned,
            });
        }
    });
    returned
}

/// After a step changed the tick period: tick while some program waits for `on_tick`, else not.
fn restore_ticks() {
    let waiting = with(|s| !s.awaiting_tick.is_empty());
    set_ticks(if waiting { TICK_MS } else { 0 });
}

// ---- exports ----

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(ctx: u32, parent: u32) {
    with(|s| {
        if parent == 0 {
            if s.root_id == 0 {
                s.root_id = ctx;
            }
        } else {
            s.streams.insert(ctx, Stream::default());
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(root: u32, size: u32) -> u32 {
    // The VM configuration carries the startup program too (buffer 6 here): its on_vm_start steps run now.
    if !load_startup(6, size) {
        return 0;
    }
    root_startup(root, Phase::VmStart, size)
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root: u32, size: u32) -> u32 {
    // The startup program is the plugin configuration (hex); an empty one runs nothing.
    if !load_startup(7, size) {
        return 0;
    }
    root_startup(root, Phase::Configure, size)
}

/// Reads the startup program from a configuration buffer (nothing there: the empty program); false when it does
/// not decode.
fn load_startup(buffer: u32, size: u32) -> bool {
    let (mut p, mut s) = (0u32, 0u32);
    // SAFETY: out-parameters are locals.
    let status = unsafe {
        host::proxy_get_buffer_bytes(
            buffer,
            0,
            size,
            &mut p as *mut u32 as u32,
            &mut s as *mut u32 as u32,
        )
    };
    let config = if status == OK {
        take_returned(p, s).unwrap_or_default()
    } else {
        Vec::new()
    };
    let program = if config.is_empty() {
        Ok(Program::default())
    } else {
        from_hex(&config).and_then(|b| Program::decode(&b))
    };
    match program {
        Ok(program) => {
            with(|st| st.startup = program);
            true
        }
        Err(_) => false,
    }
}

fn root_startup(root: u32, phase: Phase, size: u32) -> u32 {
    with(|s| {
        s.reports.entry(STARTUP_PROGRAM).or_default();
    });
    run_phase(STARTUP_PROGRAM, phase, root);
    with(|s| {
        if let Some(r) = s.reports.get_mut(&STARTUP_PROGRAM) {
            r.push(Record::Callback {
                phase,
                args: vec![u64::from(size)],
                returned: 1,
            });
        }
        s.startup_refs = s.refs;
    });
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root: u32) {
    let due = with(|s| std::mem::take(&mut s.awaiting_tick));
    for program in due {
        let effects = run_phase(program, Phase::Tick, root);
        root_calls(program, &effects);
        finish_root_phase(program, Phase::Tick, root);
    }
    restore_ticks();
}

#[no_mangle]
pub extern "C" fn proxy_on_queue_ready(root: u32, token: u32) {
    if with(|s| s.infra_queue) != Some(token) {
        return;
    }
    loop {
        let (mut p, mut size) = (0u32, 0u32);
        // SAFETY: out-parameters are locals.
        let status = unsafe {
            host::proxy_dequeue_shared_queue(
                token,
                &mut p as *mut u32 as u32,
                &mut size as *mut u32 as u32,
            )
        };
        if status != OK {
            break;
        }
        let Some(bytes) = take_returned(p, size) else {
            break;
        };
        let Ok(id) = <[u8; 4]>::try_from(bytes.as_slice()).map(u32::from_le_bytes) else {
            continue;
        };
        let effects = run_phase(id, Phase::QueueReady, root);
        root_calls(id, &effects);
        finish_root_phase(id, Phase::QueueReady, root);
    }
}

/// Remembers whose the calls a callback's steps made are; each is one more thing its report
/// waits for.
fn note_calls(program: u32, stream: Option<u32>, effects: &Effects) {
    note_calls_from(program, stream, effects, false);
}

fn note_calls_from(program: u32, stream: Option<u32>, effects: &Effects, from_response: bool) {
    with(|s| {
        for token in &effects.http_calls {
            s.calls.insert(
                *token,
                PendingCall {
                    program,
                    stream,
                    from_response,
                },
            );
            if let Some(r) = s.reports.get_mut(&program) {
                r.pending_root += 1;
            }
        }
    });
}

fn root_calls(program: u32, effects: &Effects) {
    note_calls(program, None, effects);
    if effects.touched_ticks {
        restore_ticks();
    }
}

fn finish_root_phase(program: u32, phase: Phase, root: u32) {
    with(|s| {
        if let Some(r) = s.reports.get_mut(&program) {
            r.push(Record::Callback {
                phase,
                args: vec![],
                returned: 0,
            });
            r.pending_root = r.pending_root.saturating_sub(1);
        }
    });
    next_root_event(program, root);
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    ctx: u32,
    token: u32,
    headers: u32,
    body: u32,
    trailers: u32,
) {
    let Some((call, root)) = with(|s| s.calls.remove(&token).map(|c| (c, s.root_id))) else {
        return;
    };
    let program = call.program;
    let args = vec![
        u64::from(ctx == root),
        u64::from(token),
        u64::from(headers),
        u64::from(body),
        u64::from(trailers),
    ];
    // Act for the stream that made the call, if it is still there, as SDKs do.
    let stream = call
        .stream
        .filter(|st| with(|s| s.streams.contains_key(st)));
    let acting = match stream {
        Some(st) => {
            // SAFETY: a plain hostcall with an integer.
            let status = unsafe { host::proxy_set_effective_context(st) };
            note(program, format!("acting for the calling stream: {status}"));
            st
        }
        None => ctx,
    };
    let effects = if call.from_response {
        Effects::default()
    } else {
        run_phase(program, Phase::HttpCallResponse, acting)
    };
    note_calls_from(program, stream, &effects, true);
    if effects.touched_ticks {
        restore_ticks();
    }
    let resume = stream.and_then(|st| {
        with(|s| {
            let waiting = s.calls.values().any(|c| c.stream == Some(st));
            if waiting {
                None
            } else {
                s.streams.get_mut(&st).and_then(|x| x.paused.take())
            }
        })
    });
    with(|s| {
        if let Some(r) = s.reports.get_mut(&program) {
            r.push(Record::Callback {
                phase: Phase::HttpCallResponse,
                args,
                returned: 0,
            });
            r.pending_root = r.pending_root.saturating_sub(1);
        }
    });
    next_root_event(program, acting);
    if let Some(stream_type) = resume {
        if !effects.sent_local_reply {
            // SAFETY: a plain hostcall with an integer.
            let status = unsafe { host::proxy_continue_stream(stream_type) };
            note(program, format!("resumed stream {stream_type}: {status}"));
        }
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(ctx: u32, headers: u32, end: u32) -> u32 {
    if let Some(id) = request_header(FETCH_HEADER) {
        return answer_fetch(&id) as u32;
    }
    let Some(hex) = request_header(PROGRAM_HEADER) else {
        return CONTINUE as u32;
    };
    if let Err(message) = start_program(ctx, &hex) {
        local_reply(400, message.as_bytes(), &[]);
        return PAUSE as u32;
    }
    stream_callback(
        ctx,
        Phase::RequestHeaders,
        vec![u64::from(headers), u64::from(end)],
    ) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(ctx: u32, size: u32, end: u32) -> u32 {
    stream_callback(
        ctx,
        Phase::RequestBody,
        vec![u64::from(size), u64::from(end)],
    ) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(ctx: u32, trailers: u32) -> u32 {
    stream_callback(ctx, Phase::RequestTrailers, vec![u64::from(trailers)]) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(ctx: u32, headers: u32, end: u32) -> u32 {
    stream_callback(
        ctx,
        Phase::ResponseHeaders,
        vec![u64::from(headers), u64::from(end)],
    ) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(ctx: u32, size: u32, end: u32) -> u32 {
    stream_callback(
        ctx,
        Phase::ResponseBody,
        vec![u64::from(size), u64::from(end)],
    ) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(ctx: u32, trailers: u32) -> u32 {
    stream_callback(ctx, Phase::ResponseTrailers, vec![u64::from(trailers)]) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_log(ctx: u32) {
    stream_callback(ctx, Phase::Log, vec![]);
}

#[no_mangle]
pub extern "C" fn proxy_on_done(ctx: u32) -> u32 {
    stream_callback(ctx, Phase::Done, vec![]);
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(ctx: u32) {
    let Some(stream) = with(|s| s.streams.remove(&ctx)) else {
        return;
    };
    let Some(program) = stream.program else {
        return;
    };
    with(|s| {
        if let Some(r) = s.reports.get_mut(&program) {
            r.push(Record::Callback {
                phase: Phase::Delete,
                args: vec![],
                returned: 0,
            });
            r.stream_open = false;
        }
    });
    next_root_event(program, ctx);
}
