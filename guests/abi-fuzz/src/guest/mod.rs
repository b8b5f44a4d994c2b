//! The interpreter: proxy-wasm exports that run a program's steps in their phase and keep the
//! report, and raw imports of every hostcall a v0.2.1 module may use in Envoy.
//!
//! The guest never traps on its own account: arguments come from the program as they are, out-
//! parameters are pre-filled with [`UNTOUCHED`], returned memory is read only inside the memory
//! and freed again. It is single-threaded (one VM per worker), so plain `thread_local` state.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use crate::program::*;

mod host;
mod memory;
mod own_calls;
mod steps;

use memory::*;
use own_calls::*;
use steps::*;

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
