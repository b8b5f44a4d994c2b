//! Stream control: continue/close a stream, send a local reply, clear the route cache,
//! switch the effective context, and `proxy_done`.

use super::{Reg, C};
use crate::headers::{guest_pairs, HeaderMap};
use crate::host_state::memory::{finish, read, HostResult};
use crate::host_state::HostState;
use crate::stream::LocalReply;
use crate::types::{Status, StreamType};

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env("proxy_continue_stream", |mut c: C<'_>, t: u32| {
        finish(continue_stream(c.data_mut(), t).map_err(Into::into))
    })?;
    reg.env("proxy_close_stream", |mut c: C<'_>, t: u32| {
        finish(close_stream(c.data_mut(), t).map_err(Into::into))
    })?;
    // No ABI 0.1.0 names (proxy_continue_request, proxy_continue_response, proxy_clear_route_cache,
    // proxy_get_configuration): cpp-host's `registerCallbacks` offers them to 0.1.0 modules only, which host-sim
    // does not run, so a 0.2.x module importing one is refused at load in both (measured with Envoy 1.40).
    reg.env(
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: u32,
         dp: u32,
         ds: u32,
         bp: u32,
         bs: u32,
         hp: u32,
         hs: u32,
         grpc: i32| {
            finish(send_local_response(
                &mut c,
                code,
                [dp, ds, bp, bs, hp, hs],
                grpc,
            ))
        },
    )?;
    reg.env("proxy_set_effective_context", |mut c: C<'_>, id: u32| {
        let st = c.data_mut();
        // cpp-host `set_effective_context`: any context the VM has, and id 0 is the VM's own context (which has
        // no stream; host-sim then acts for the context it called into, where Envoy would act for none).
        if id != 0 && !st.context_exists(id) {
            return finish(Err(Status::BadArgument.into()));
        }
        st.effective = id;
        finish(Ok(()))
    })?;
    reg.env("proxy_done", |mut c: C<'_>| {
        let st = c.data_mut();
        // Only meaningful after the root context's proxy_on_done returned false.
        if !st.pending_done {
            return finish(Err(Status::NotFound.into()));
        }
        st.pending_done = false;
        st.done_called = true;
        finish(Ok(()))
    })?;
    Ok(())
}

fn continue_stream(st: &mut HostState, t: u32) -> Result<(), Status> {
    let t = StreamType::from_raw(t).ok_or(Status::BadArgument)?;
    match t {
        StreamType::Request => {
            if let Some(s) = st.stream_mut() {
                s.effects.continue_request = true;
                // Envoy forgets the request maps once decoding continues.
                s.access.request_headers = false;
                s.access.request_body = false;
                s.access.request_trailers = false;
            }
            Ok(())
        }
        StreamType::Response => {
            if let Some(s) = st.stream_mut() {
                s.effects.continue_response = true;
                // Context::continueStream clears the request maps for either direction and keeps the response
                // ones: a continued response's headers stay reachable (measured by the ABI fuzzer).
                s.access.request_headers = false;
                s.access.request_body = false;
                s.access.request_trailers = false;
            }
            Ok(())
        }
        StreamType::Downstream => Ok(()),
        StreamType::Upstream => Err(Status::Unimplemented),
    }
}

fn close_stream(st: &mut HostState, t: u32) -> Result<(), Status> {
    let t = StreamType::from_raw(t).ok_or(Status::BadArgument)?;
    if let Some(s) = st.stream_mut() {
        match t {
            StreamType::Request => s.effects.close_request = true,
            StreamType::Response => s.effects.close_response = true,
            StreamType::Downstream | StreamType::Upstream => {}
        }
    }
    Ok(())
}

fn send_local_response(c: &mut C<'_>, code: u32, p: [u32; 6], grpc: i32) -> HostResult {
    let details = read(c, p[0], p[1])?;
    let body = read(c, p[2], p[3])?;
    let headers = read(c, p[4], p[5])?;
    let headers = guest_pairs(&headers);
    let st = c.data_mut();
    // Envoy stops iteration after the call returns, whatever the callback answers.
    st.stop_iteration = true;
    if let Some(s) = st.stream_mut() {
        if s.effects.local_reply.is_none() {
            s.effects.local_reply = Some(LocalReply {
                status: code,
                details: String::from_utf8_lossy(&details)
                    .chars()
                    .map(|ch| if ch.is_whitespace() { '_' } else { ch })
                    .collect(),
                body,
                headers: HeaderMap::from_pairs(headers),
                grpc_status: u32::try_from(grpc).ok().filter(|g| *g <= 16),
            });
        }
    }
    Ok(())
}
