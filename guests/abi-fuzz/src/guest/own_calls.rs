//! The guest's own hostcalls, outside any program: reading the program from the request, the infra queue,
//! call and ticks that bring a program's root phases about, and the stream callbacks' common frame.

use super::*;

pub(super) fn request_header(name: &str) -> Option<Vec<u8>> {
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

pub(super) fn local_reply(status: u32, body: &[u8], headers: &[(Vec<u8>, Vec<u8>)]) {
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

pub(super) fn set_ticks(ms: u32) -> u32 {
    // SAFETY: a plain hostcall with an integer.
    unsafe { host::proxy_set_tick_period_milliseconds(ms) }
}

/// Answers a report request; returns the action for `on_request_headers`.
pub(super) fn answer_fetch(id_text: &[u8]) -> u64 {
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
pub(super) fn start_program(ctx: u32, hex: &[u8]) -> Result<u32, String> {
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
pub(super) fn next_root_event(program: u32, ctx: u32) {
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
pub(super) fn infra_call(ctx: u32, id: u32) {
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
pub(super) fn stream_callback(ctx: u32, phase: Phase, args: Vec<u64>) -> u64 {
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
pub(super) fn restore_ticks() {
    let waiting = with(|s| !s.awaiting_tick.is_empty());
    set_ticks(if waiting { TICK_MS } else { 0 });
}
