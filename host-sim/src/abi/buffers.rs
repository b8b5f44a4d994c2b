//! Buffers: request/response bodies (with Envoy's start/size semantics), plugin and VM
//! configuration, the http call response body.

use super::{Reg, C};
use crate::host_state::memory::{copy_out, finish, read, write_u32, CallError, HostResult};
use crate::host_state::HostState;
use crate::types::{BufferType, Status};

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env(
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, t: u32, start: u32, max: u32, ptr_ptr: u32, size_ptr: u32| {
            finish(get_bytes(&mut c, t, start, max, ptr_ptr, size_ptr))
        },
    )?;
    reg.env(
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, t: u32, start: u32, size: u32, ptr: u32, len: u32| {
            finish(set_bytes(&mut c, t, start, size, ptr, len))
        },
    )?;
    reg.env(
        "proxy_get_buffer_status",
        |mut c: C<'_>, t: u32, len_ptr: u32, flags_ptr: u32| {
            finish(status(&mut c, t, len_ptr, flags_ptr))
        },
    )?;
    Ok(())
}

/// The buffer a read sees, or `None` where Envoy has none (NotFound). A body outside its
/// phase reads as empty, as Envoy's buffer wrapper around a null body does.
fn buffer(st: &HostState, t: BufferType) -> Option<&[u8]> {
    const EMPTY: &[u8] = &[];
    match t {
        BufferType::HttpRequestBody => Some(match st.stream() {
            Some(s) if s.access.request_body => &s.request_body,
            _ => EMPTY,
        }),
        BufferType::HttpResponseBody => Some(match st.stream() {
            Some(s) if s.access.response_body => &s.response_body,
            _ => EMPTY,
        }),
        BufferType::HttpCallResponseBody => st.call_response.as_ref().map(|r| r.body.as_slice()),
        BufferType::VmConfiguration => Some(&st.config.vm_configuration),
        BufferType::PluginConfiguration if st.in_configure => Some(&st.config.configuration),
        BufferType::PluginConfiguration => None,
        BufferType::DownstreamData
        | BufferType::UpstreamData
        | BufferType::GrpcReceiveBuffer
        | BufferType::CallData => Some(EMPTY),
    }
}

fn get_bytes(
    c: &mut C<'_>,
    t: u32,
    start: u32,
    max: u32,
    ptr_ptr: u32,
    size_ptr: u32,
) -> HostResult {
    let t = BufferType::from_raw(t).ok_or(Status::BadArgument)?;
    let data = {
        let buf = buffer(c.data(), t).ok_or(Status::NotFound)?;
        // Offsets are 32-bit, so start + max cannot overflow the host's usize; don't over-read; a start past the end reads nothing.
        let start = (start as usize).min(buf.len());
        let end = start.saturating_add(max as usize).min(buf.len());
        buf[start..end].to_vec()
    };
    if data.is_empty() {
        // cpp-host `get_buffer_bytes`: nothing to return writes 0 to both out-pointers (the SDK then sees None).
        write_u32(c, ptr_ptr, 0)?;
        return write_u32(c, size_ptr, 0).map_err(CallError::from);
    }
    copy_out(c, &data, ptr_ptr, size_ptr)
}

fn set_bytes(c: &mut C<'_>, t: u32, start: u32, size: u32, ptr: u32, len: u32) -> HostResult {
    let t = BufferType::from_raw(t).ok_or(Status::BadArgument)?;
    // cpp-host `set_buffer_bytes`: the buffer is looked up before the guest's bytes are read, so a missing buffer
    // is NotFound even with a bad pointer (found by the ABI fuzzer).
    if buffer(c.data(), t).is_none() {
        return Err(Status::NotFound.into());
    }
    let data = read(c, ptr, len)?;
    let st = c.data_mut();
    let body = match (t, st.stream_mut()) {
        (BufferType::HttpRequestBody, Some(s)) if s.access.request_body => &mut s.request_body,
        (BufferType::HttpResponseBody, Some(s)) if s.access.response_body => &mut s.response_body,
        // Configuration, call responses and absent bodies are immutable.
        _ => return Err(Status::BadArgument.into()),
    };
    let (start, size) = (start as usize, size as usize);
    // Envoy's `Buffer::copyFrom` (source/extensions/common/wasm/context.cc): at start 0 drain `size` bytes (all, if
    // fewer) and prepend; at or past the end append; anything in between is BadArgument.
    if start == 0 {
        body.splice(..size.min(body.len()), data);
    } else if start >= body.len() {
        body.extend_from_slice(&data);
    } else {
        return Err(Status::BadArgument.into());
    }
    Ok(())
}

fn status(c: &mut C<'_>, t: u32, len_ptr: u32, flags_ptr: u32) -> HostResult {
    let t = BufferType::from_raw(t).ok_or(Status::BadArgument)?;
    let len = buffer(c.data(), t).ok_or(Status::NotFound)?.len() as u32;
    write_u32(c, len_ptr, len)?;
    write_u32(c, flags_ptr, 0).map_err(CallError::from)
}
