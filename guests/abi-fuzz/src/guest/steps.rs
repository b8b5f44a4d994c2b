//! Running a program's steps: each hostcall with the program's arguments, its status and out-parameters recorded.

use super::*;

/// What a callback's steps did that the guest must act on before returning.
#[derive(Default)]
pub(super) struct Effects {
    pub(super) sent_local_reply: bool,
    pub(super) http_calls: Vec<u32>,
    pub(super) touched_ticks: bool,
}

/// Runs the steps of `program` tagged `phase` in context `ctx`, recording each.
pub(super) fn run_phase(program: u32, phase: Phase, ctx: u32) -> Effects {
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

pub(super) fn resolve(v: u64, ctx: u32) -> u32 {
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
pub(super) enum Out {
    U32,
    U64,
    /// A pointer; the next out-parameter is its size.
    Ptr,
}

pub(super) fn outs_of(call: Call) -> &'static [Out] {
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

pub(super) fn run_step(index: usize, step: &Step, ctx: u32, effects: &mut Effects) -> Record {
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
