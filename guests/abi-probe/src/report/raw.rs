//! The hostcalls the report makes, raw: the status itself is reported, and out-parameters are pre-filled so an
//! untouched one shows.

use super::*;

pub(super) fn status_name(code: u32) -> String {
    if code & UNTOUCHED != 0 {
        return format!(
            "{} (out-pointers untouched)",
            status_name(code & !UNTOUCHED)
        );
    }
    match code {
        0 => "Ok".into(),
        1 => "NotFound".into(),
        2 => "BadArgument".into(),
        3 => "SerializationFailure".into(),
        4 => "ParseFailure".into(),
        5 => "BadExpression".into(),
        6 => "InvalidMemoryAccess".into(),
        7 => "Empty".into(),
        8 => "CasMismatch".into(),
        9 => "ResultMismatch".into(),
        10 => "InternalFailure".into(),
        11 => "BrokenConnection".into(),
        12 => "Unimplemented".into(),
        n => format!("Status({n})"),
    }
}

/// Takes ownership of bytes the host allocated in guest memory.
pub(super) fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host allocated `size` bytes at `data` with the guest's allocator (malloc /
    // proxy_on_memory_allocate) and handed them over; nothing else refers to them.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Added to a status when the host returned without writing the data out-pointer, told apart from a written null by
/// a sentinel: hosts differ there (cpp-host's `get_buffer_bytes` writes 0 to both for an empty result).
pub(super) const UNTOUCHED: u32 = 0x1000;
/// What the out-pointers hold before the call; no allocation the host makes lands there.
pub(super) const SENTINEL: usize = 0xFFFF_FFF0;

/// (status, bytes) of a hostcall returning a buffer.
pub(super) fn with_buffer(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> (u32, Option<Vec<u8>>) {
    let mut data = SENTINEL as *mut u8;
    let mut size: usize = SENTINEL;
    let status = call(&mut data, &mut size);
    if data as usize == SENTINEL {
        return (status | UNTOUCHED, None);
    }
    let bytes = (!data.is_null()).then(|| owned(data, size));
    (status, bytes)
}

pub(super) fn get_property(path: &str) -> (u32, Option<Vec<u8>>) {
    let serialized: Vec<u8> = path.replace('.', "\0").into_bytes();
    // SAFETY: the path buffer lives across the call; out-pointers are valid locals.
    with_buffer(|d, s| unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), d, s) })
}

pub(super) fn get_buffer(kind: u32, start: usize, max: usize) -> (u32, Option<Vec<u8>>) {
    // SAFETY: out-pointers are valid locals.
    with_buffer(|d, s| unsafe { proxy_get_buffer_bytes(kind, start, max, d, s) })
}

pub(super) fn get_pairs(map: u32) -> (u32, Option<Vec<u8>>) {
    // SAFETY: out-pointers are valid locals.
    with_buffer(|d, s| unsafe { proxy_get_header_map_pairs(map, d, s) })
}

pub(super) fn get_header(map: u32, key: &str) -> (u32, Option<Vec<u8>>) {
    // SAFETY: the key lives across the call; out-pointers are valid locals.
    with_buffer(|d, s| unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), d, s) })
}

/// Decodes the ABI's pairs format; `None` unless the bytes are exactly one well-formed map.
pub(super) fn decode_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    let mut sizes = Vec::new();
    let mut at = 4;
    for _ in 0..count {
        sizes.push((word(at)?, word(at + 4)?));
        at += 8;
    }
    let mut pairs = Vec::new();
    for (k, v) in sizes {
        let key = bytes.get(at..at + k)?.to_vec();
        at += k + 1;
        let value = bytes.get(at..at + v)?.to_vec();
        at += v + 1;
        pairs.push((key, value));
    }
    (at == bytes.len()).then_some(pairs)
}
