//! `proxy_call_foreign_function`: `clear_route_cache` and `set_envoy_filter_state`, as
//! Envoy registers them; any other name is NotFound.

use super::{Reg, C};
use crate::stream::EnvoyFilterState;
use crate::types::Status;
use crate::vm::memory::{check_writable, finish, read, write_u32, CallError, HostResult};

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env(
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: u32, ns: u32, ap: u32, asz: u32, rpp: u32, rsp: u32| {
            finish(call(&mut c, np, ns, ap, asz, rpp, rsp))
        },
    )?;
    Ok(())
}

/// Filter-state keys with an object factory in Envoy that host-sim knows how to accept.
/// Envoy answers NotFound for a key without a factory; so do we.
const KNOWN_FILTER_STATE: &[&str] = &[
    "envoy.network.upstream_server_name",
    "envoy.network.application_protocols",
    "envoy.network.upstream_subject_alt_names",
    "envoy.network.transport_socket.original_dst_address",
    "envoy.tcp_proxy.cluster",
    "envoy.upstream.dynamic_host",
    "envoy.upstream.dynamic_port",
    "envoy.string",
];

fn call(c: &mut C<'_>, np: u32, ns: u32, ap: u32, asz: u32, rpp: u32, rsp: u32) -> HostResult {
    let name = read(c, np, ns)?;
    let args = read(c, ap, asz)?;
    let outcome = match name.as_slice() {
        b"clear_route_cache" => {
            if let Some(s) = c.data_mut().stream_mut() {
                s.effects.clear_route_cache += 1;
            }
            Ok(())
        }
        b"set_envoy_filter_state" => set_envoy_filter_state(c, &args),
        // cpp-host `call_foreign_function`: an unknown name returns before touching the out-pointers.
        _ => return Err(Status::NotFound.into()),
    };
    // A registered function, whatever it answered: cpp-host writes the result pointer and size (null and 0, as
    // neither of these returns data) when the guest asked for them, then returns the function's status.
    if rpp != 0 {
        check_writable(c, rpp, 4)?;
        write_u32(c, rpp, 0)?;
    }
    if rsp != 0 {
        write_u32(c, rsp, 0).map_err(CallError::from)?;
    }
    outcome.map_err(Into::into)
}

/// Envoy's `set_envoy_filter_state` foreign function (`source/extensions/common/wasm/foreign.cc`).
fn set_envoy_filter_state(c: &mut C<'_>, args: &[u8]) -> Result<(), Status> {
    let fs = parse_filter_state_args(args).ok_or(Status::BadArgument)?;
    if !KNOWN_FILTER_STATE.contains(&fs.path.as_str()) {
        return Err(Status::NotFound);
    }
    if fs.path == "envoy.upstream.dynamic_port"
        && std::str::from_utf8(&fs.value)
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .is_none()
    {
        return Err(Status::BadArgument);
    }
    let stream = c.data_mut().stream_mut().ok_or(Status::NotFound)?;
    stream.effects.envoy_filter_state.push(fs);
    Ok(())
}

/// Decodes `SetEnvoyFilterStateArguments { string path = 1; string value = 2;
/// LifeSpan span = 3; }` from protobuf wire format.
pub(crate) fn parse_filter_state_args(buf: &[u8]) -> Option<EnvoyFilterState> {
    let mut path = None;
    let mut value = Vec::new();
    let mut span = 0u32;
    let mut at = 0usize;
    let varint = |at: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    while at < buf.len() {
        let key = varint(&mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        // Field number 0 does not exist in protobuf: the message does not parse.
        if field == 0 {
            return None;
        }
        match wire {
            0 => {
                let v = varint(&mut at)?;
                if field == 3 {
                    span = u32::try_from(v).ok()?;
                }
            }
            2 => {
                let len = usize::try_from(varint(&mut at)?).ok()?;
                let end = at.checked_add(len)?;
                let bytes = buf.get(at..end)?;
                at = end;
                match field {
                    1 => path = Some(String::from_utf8(bytes.to_vec()).ok()?),
                    2 => value = bytes.to_vec(),
                    _ => {}
                }
            }
            1 => at = at.checked_add(8)?,
            5 => at = at.checked_add(4)?,
            _ => return None,
        }
    }
    // A fixed-width field running past the end is a truncated message.
    if at != buf.len() {
        return None;
    }
    // proto3: an absent path is the empty string (which no factory knows: NotFound, as Envoy).
    Some(EnvoyFilterState {
        path: path.unwrap_or_default(),
        value,
        span,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filter_state_arguments() {
        let mut buf = vec![0x0a, 3];
        buf.extend_from_slice(b"a.b");
        buf.extend_from_slice(&[0x12, 2]);
        buf.extend_from_slice(b"xy");
        buf.extend_from_slice(&[0x18, 1]);
        let fs = parse_filter_state_args(&buf).expect("parses");
        assert_eq!(
            (fs.path.as_str(), fs.value.as_slice(), fs.span),
            ("a.b", &b"xy"[..], 1)
        );
        assert!(parse_filter_state_args(&[0x0a, 9, b'a']).is_none());
        // An empty message is valid (every field default), as Envoy's protobuf parser has it.
        assert_eq!(
            parse_filter_state_args(&[]).map(|fs| fs.path),
            Some(String::new())
        );
        // Field 0, or a fixed-width field cut short, is not a message.
        assert!(parse_filter_state_args(&[0x01, 0x02, b'x']).is_none());
        assert!(parse_filter_state_args(&[0x09, 1, 2]).is_none());
    }
}
