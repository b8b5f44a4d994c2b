//! `proxy_http_call` (dispatched to a named cluster; the answer comes back through
//! `PluginInstance::deliver_http_call_response`), `proxy_get_status`, and the gRPC calls,
//! which host-sim does not support: they answer with statuses the SDK turns into `Err`.

use super::{Reg, C};
use crate::headers::{guest_pairs, HeaderMap, MapKind};
use crate::host_state::memory::{
    check_writable, copy_out, finish, read, write_u32, CallError, HostResult,
};
use crate::host_state::HttpCallRequest;
use crate::types::Status;

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env(
        "proxy_http_call",
        |mut c: C<'_>,
         up: u32,
         us: u32,
         hp: u32,
         hs: u32,
         bp: u32,
         bs: u32,
         tp: u32,
         ts: u32,
         timeout: u32,
         token_ptr: u32| {
            finish(http_call(
                &mut c,
                [up, us, hp, hs, bp, bs, tp, ts],
                timeout,
                token_ptr,
            ))
        },
    )?;
    reg.env(
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: u32, ptr_ptr: u32, size_ptr: u32| {
            finish(get_status(&mut c, code_ptr, ptr_ptr, size_ptr))
        },
    )?;
    reg.env(
        "proxy_grpc_call",
        |mut c: C<'_>,
         sp: u32,
         ss: u32,
         np: u32,
         ns: u32,
         mp: u32,
         ms: u32,
         ip: u32,
         is: u32,
         rp: u32,
         rs: u32,
         _timeout: u32,
         token_ptr: u32| {
            finish(grpc_open(
                &mut c,
                &[(sp, ss), (np, ns), (mp, ms), (ip, is), (rp, rs)],
                sp,
                ss,
                token_ptr,
            ))
        },
    )?;
    reg.env(
        "proxy_grpc_stream",
        |mut c: C<'_>,
         sp: u32,
         ss: u32,
         np: u32,
         ns: u32,
         mp: u32,
         ms: u32,
         ip: u32,
         is: u32,
         token_ptr: u32| {
            finish(grpc_open(
                &mut c,
                &[(sp, ss), (np, ns), (mp, ms), (ip, is)],
                sp,
                ss,
                token_ptr,
            ))
        },
    )?;
    reg.env(
        "proxy_grpc_send",
        |mut c: C<'_>, token: u32, mp: u32, ms: u32, _end: u32| {
            // Context::grpcSend: anything but a stream token is BadArgument, an unknown stream
            // NotFound.
            let status = if token & CALLOUT_TYPE_MASK == GRPC_STREAM {
                Status::NotFound
            } else {
                Status::BadArgument
            };
            finish(
                read(&mut c, mp, ms)
                    .map_err(CallError::from)
                    .and(Err(status.into())),
            )
        },
    )?;
    // No gRPC call or stream is ever open here, so each answers as Envoy does for a token it does
    // not hold (Context::grpcCancel / grpcClose): NotFound for a call or stream token, else
    // BadArgument.
    reg.env("proxy_grpc_cancel", |_c: C<'_>, token: u32| {
        finish(Err(unknown_grpc_token(token).into()))
    })?;
    reg.env("proxy_grpc_close", |_c: C<'_>, token: u32| {
        finish(Err(unknown_grpc_token(token).into()))
    })?;
    Ok(())
}

/// Callout tokens (cpp-host `WasmBase`): the low two bits are the kind, each counter steps by 4.
const CALLOUT_INCREMENT: u32 = 4;
const CALLOUT_TYPE_MASK: u32 = 3;
const GRPC_CALL: u32 = 1;
const GRPC_STREAM: u32 = 2;

fn unknown_grpc_token(token: u32) -> Status {
    match token & CALLOUT_TYPE_MASK {
        GRPC_CALL | GRPC_STREAM => Status::NotFound,
        _ => Status::BadArgument,
    }
}

fn http_call(c: &mut C<'_>, p: [u32; 8], timeout: u32, token_ptr: u32) -> HostResult {
    let cluster = read(c, p[0], p[1])?;
    let headers = read(c, p[2], p[3])?;
    let body = read(c, p[4], p[5])?;
    let trailers = read(c, p[6], p[7])?;
    // Verify the token memory before starting anything, and write 0 there, as cpp-host's `http_call` does: a
    // refused call leaves the guest a 0 token.
    check_writable(c, token_ptr, 4)?;
    write_u32(c, token_ptr, 0)?;
    // buildRequestHeaderMapFromPairs: addCopy into a request map, so `host` is `:authority` and inline
    // duplicates join.
    let headers = guest_pairs(&headers);
    let headers = HeaderMap::from_pairs_as(
        MapKind::RequestHeaders,
        headers.iter().map(|(k, v)| {
            let k: &[u8] = if k.eq_ignore_ascii_case(b"host") {
                b":authority"
            } else {
                k
            };
            (k, v)
        }),
    );
    let trailers = HeaderMap::from_pairs_as(MapKind::RequestTrailers, guest_pairs(&trailers));
    let cluster = String::from_utf8(cluster).map_err(|_| Status::BadArgument)?;
    let st = c.data_mut();
    // Envoy: a negative timeout, an unknown cluster, or missing :path/:method/:authority.
    if timeout > i32::MAX as u32 || !st.config.clusters.contains(&cluster) {
        return Err(Status::BadArgument.into());
    }
    if [":path", ":method", ":authority"]
        .iter()
        .any(|h| headers.get(h).is_none())
    {
        return Err(Status::BadArgument.into());
    }
    let mut headers = headers;
    if !body.is_empty() {
        headers.replace("content-length", body.len().to_string());
    }
    // Envoy's tokens: per VM, http calls 4, 8, 12 ... (the low two bits tell http calls, gRPC
    // calls and gRPC streams apart; cpp-host WasmBase::nextHttpCallId).
    st.next_call_token = st.next_call_token.wrapping_add(CALLOUT_INCREMENT);
    let token = st.next_call_token;
    let call = HttpCallRequest {
        token,
        cluster,
        headers,
        body,
        trailers,
        timeout_ms: timeout,
        origin_context: st.context_id(),
    };
    st.pending_calls.insert(token, call.clone());
    st.dispatched.push(call);
    st.calls_dispatched.notify_one();
    write_u32(c, token_ptr, token).map_err(CallError::from)
}

fn get_status(c: &mut C<'_>, code_ptr: u32, ptr_ptr: u32, size_ptr: u32) -> HostResult {
    let (code, message) = c.data().status.clone();
    write_u32(c, code_ptr, code)?;
    copy_out(c, &message, ptr_ptr, size_ptr)
}

/// gRPC is not supported: after checking the guest's memory, an unknown cluster gets
/// ParseFailure (Envoy's answer) and a known one InternalFailure. Both are statuses the
/// SDK returns as `Err` instead of panicking.
fn grpc_open(c: &mut C<'_>, args: &[(u32, u32)], sp: u32, ss: u32, token_ptr: u32) -> HostResult {
    for (p, s) in args {
        read(c, *p, *s)?;
    }
    // Unlike http calls, cpp-host's `grpc_call` / `grpc_stream` write the token only once the call started, so a
    // refused one leaves the out-pointer as it was (never written here: no gRPC call starts).
    let _ = token_ptr;
    let service = read(c, sp, ss)?;
    let known = c
        .data()
        .config
        .clusters
        .iter()
        .any(|k| k.as_bytes() == service.as_slice());
    Err(if known {
        Status::InternalFailure
    } else {
        Status::ParseFailure
    }
    .into())
}
