//! `proxy_call_foreign_function`: `clear_route_cache`, `set_envoy_filter_state`, `declare_property`, `compress`
//! and `uncompress`, as Envoy registers them; any other name is NotFound. (`declare_property` records the
//! declaration; the type, schema and read-only flag it gives are not applied to later `set_property` calls.)

use super::{Reg, C};
use crate::host_state::memory::{
    check_writable, copy_out, finish, read, write_u32, CallError, HostResult,
};
use crate::stream::EnvoyFilterState;
use crate::types::Status;

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
        b"declare_property" => declare_property(c, &args),
        // Envoy's `compress` / `uncompress` (foreign.cc): zlib streams, SerializationFailure when zlib fails.
        b"compress" => return finish_with(c, zlib_compress(&args), rpp, rsp),
        b"uncompress" => return finish_with(c, zlib_uncompress(&args), rpp, rsp),
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

/// A foreign function's result: on success the bytes go to the guest through `rpp` / `rsp` (cpp-host hands the
/// function an allocator for them).
fn finish_with(c: &mut C<'_>, result: Result<Vec<u8>, Status>, rpp: u32, rsp: u32) -> HostResult {
    match result {
        Ok(bytes) => copy_out(c, &bytes, rpp, rsp),
        Err(status) => {
            // A failed registered function still leaves null and 0 in the out-pointers, as above.
            if rpp != 0 {
                check_writable(c, rpp, 4)?;
                write_u32(c, rpp, 0)?;
            }
            if rsp != 0 {
                write_u32(c, rsp, 0)?;
            }
            Err(status.into())
        }
    }
}

/// zlib's `compress()` (a zlib stream at the default level). The bytes may differ from Envoy's zlib-ng for the
/// same input; any zlib reader gets the same data back.
fn zlib_compress(input: &[u8]) -> Result<Vec<u8>, Status> {
    use std::io::Write;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(input)
        .and_then(|()| encoder.finish())
        .map_err(|_| Status::SerializationFailure)
}

/// zlib's `uncompress()`: the whole input must be one complete zlib stream (incomplete, corrupt or empty input is
/// SerializationFailure, as Envoy maps Z_DATA_ERROR).
fn zlib_uncompress(input: &[u8]) -> Result<Vec<u8>, Status> {
    let mut inflater = flate2::Decompress::new(true);
    let mut out = Vec::with_capacity(input.len() * 2 + 2);
    loop {
        let consumed = usize::try_from(inflater.total_in()).unwrap_or(usize::MAX);
        let before = (inflater.total_in(), inflater.total_out());
        let status = inflater
            .decompress_vec(
                input.get(consumed..).unwrap_or_default(),
                &mut out,
                flate2::FlushDecompress::Finish,
            )
            .map_err(|_| Status::SerializationFailure)?;
        if status == flate2::Status::StreamEnd {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        } else if before == (inflater.total_in(), inflater.total_out()) {
            // No progress with room to spare: the input ended before the stream did.
            return Err(Status::SerializationFailure);
        }
    }
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
    let mut state = EnvoyFilterState {
        // proto3: an absent path is the empty string (which no factory knows: NotFound, as Envoy).
        path: String::new(),
        value: Vec::new(),
        span: 0,
    };
    for (field, value) in proto_fields(buf)? {
        match (field, value) {
            (1, ProtoValue::Bytes(b)) => state.path = String::from_utf8(b.to_vec()).ok()?,
            (2, ProtoValue::Bytes(b)) => state.value = b.to_vec(),
            (3, ProtoValue::Varint(v)) => state.span = u32::try_from(v).ok()?,
            _ => {}
        }
    }
    Some(state)
}

/// Envoy's `declare_property` (foreign.cc, `DeclarePropertyFactory`): a `DeclarePropertyArguments` message
/// (name = 1, readonly = 2, type = 3, schema = 4, span = 5) that parses declares the name in the calling context,
/// once (`Context::declareProperty`: a second declaration is BadArgument, as is a message that does not parse).
fn declare_property(c: &mut C<'_>, args: &[u8]) -> Result<(), Status> {
    let mut name = String::new();
    for (field, value) in proto_fields(args).ok_or(Status::BadArgument)? {
        if let (1, ProtoValue::Bytes(b)) = (field, value) {
            name = String::from_utf8(b.to_vec()).map_err(|_| Status::BadArgument)?;
        }
    }
    let st = c.data_mut();
    // `proxy_wasm::current_context_`: the context the host called into, whatever the effective one.
    let context = st.current;
    if st.declared_properties.insert((context, name)) {
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

/// A protobuf field's value, by wire type.
enum ProtoValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of a protobuf message in wire order; `None` when it does not parse (a truncated field, field number
/// 0, a group wire type).
fn proto_fields(buf: &[u8]) -> Option<Vec<(u64, ProtoValue<'_>)>> {
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
    let mut fields = Vec::new();
    while at < buf.len() {
        let key = varint(&mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        // Field number 0 does not exist in protobuf: the message does not parse.
        if field == 0 {
            return None;
        }
        let value = match wire {
            0 => ProtoValue::Varint(varint(&mut at)?),
            2 => {
                let len = usize::try_from(varint(&mut at)?).ok()?;
                let end = at.checked_add(len)?;
                let bytes = buf.get(at..end)?;
                at = end;
                ProtoValue::Bytes(bytes)
            }
            1 => {
                at = at.checked_add(8)?;
                ProtoValue::Fixed
            }
            5 => {
                at = at.checked_add(4)?;
                ProtoValue::Fixed
            }
            _ => return None,
        };
        fields.push((field, value));
    }
    // A fixed-width field running past the end is a truncated message.
    (at == buf.len()).then_some(fields)
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
