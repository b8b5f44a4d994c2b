//! The proxy-wasm hostcalls the filter makes, imported directly rather than through the SDK's
//! `hostcalls` wrappers: those panic on a status outside the SDK's enum (a panic path and its
//! formatting in every wrapper, bytes in every Envoy worker), some take owned paths, and the local
//! reply has no details argument. Statuses are plain integers here; callers treat anything but
//! [`OK`] as "the host refused".

use std::ptr::null_mut;

use dfp_hostcalls::{
    proxy_call_foreign_function, proxy_define_metric, proxy_get_buffer_bytes,
    proxy_get_current_time_nanoseconds, proxy_get_header_map_pairs, proxy_get_log_level,
    proxy_get_property, proxy_get_shared_data, proxy_increment_metric, proxy_log,
    proxy_remove_header_map_value, proxy_replace_header_map_value, proxy_send_local_response,
    proxy_set_shared_data,
};

/// `proxy_status_t` values the filter looks at.
pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const CAS_MISMATCH: u32 = 8;

/// `proxy_map_type_t`: the request header map.
const REQUEST_HEADERS: u32 = 0;
/// `proxy_buffer_type_t`: the plugin configuration.
const PLUGIN_CONFIGURATION: u32 = 7;
/// `proxy_metric_type_t`: a counter.
const COUNTER: u32 = 0;

/// Takes ownership of a buffer the host filled through our exported allocator (the SDK's,
/// which hands out exactly `size` bytes). `None` when the call failed or returned nothing.
fn host_buffer(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if status != OK || data.is_null() {
        return None;
    }
    // SAFETY: `data` was allocated by our allocator for `size` bytes and is owned by nobody
    // else once the hostcall returned; we take it exactly once.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Every request header, serialized (see [`crate::header_pairs`]).
pub fn request_header_pairs() -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host writes the two out-parameters.
    let status = unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) };
    host_buffer(status, data, size)
}

/// Replaces every value of a request header with `value` (adds it if absent).
pub fn replace_request_header(name: &str, value: &str) -> u32 {
    // SAFETY: both pointer/length pairs describe live buffers for the call.
    unsafe {
        proxy_replace_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    }
}

pub fn remove_request_header(name: &str) -> u32 {
    // SAFETY: a live buffer for the call.
    unsafe { proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len()) }
}

/// The plugin configuration; `Err(status)` when the host refused, `Ok(empty)` when there is none.
pub fn plugin_configuration() -> Result<Vec<u8>, u32> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host writes the two out-parameters.
    let status = unsafe {
        proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, usize::MAX, &mut data, &mut size)
    };
    match status {
        OK => Ok(host_buffer(status, data, size).unwrap_or_default()),
        NOT_FOUND => Ok(Vec::new()),
        refused => Err(refused),
    }
}

pub fn define_counter(name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: a live name buffer; the host writes one u32.
    let status = unsafe { proxy_define_metric(COUNTER, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

pub fn increment_counter(id: u32) {
    // SAFETY: no pointers. A refused increment loses one count; nothing to do about it here.
    unsafe { proxy_increment_metric(id, 1) };
}

/// Calls a host function that takes no arguments, dropping any result it returns.
pub fn call_foreign_function(name: &str) -> u32 {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: a live name buffer, an empty argument buffer; the host writes the out-parameters.
    let status = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            [].as_ptr(),
            0,
            &mut data,
            &mut size,
        )
    };
    drop(host_buffer(status, data, size));
    status
}

/// A local reply with response code details (the SDK's has none).
pub fn send_local_response(status: u32, details: &str, body: &[u8], headers: &[u8]) -> u32 {
    // SAFETY: every pointer/length pair describes a live buffer that outlives the call.
    unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    }
}

/// The `upstream.address` property (path segments are NUL-separated in the ABI).
pub fn upstream_address() -> Option<Vec<u8>> {
    const PATH: &[u8] = b"upstream\0address";
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: a live path buffer; the host writes the out-parameters.
    let status = unsafe { proxy_get_property(PATH.as_ptr(), PATH.len(), &mut data, &mut size) };
    host_buffer(status, data, size)
}

/// A shared data value and its compare-and-swap token; a key never set reads as empty with token 0.
pub fn get_shared_data(key: &str) -> Result<(Vec<u8>, u32), u32> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    // SAFETY: a live key buffer; the host writes the out-parameters.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status {
        OK => Ok((host_buffer(status, data, size).unwrap_or_default(), cas)),
        NOT_FOUND => Ok((Vec::new(), 0)),
        other => Err(other),
    }
}

/// Writes a shared data value if its token is still `cas` (0: unconditionally); `CAS_MISMATCH` when another worker
/// wrote it first.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> u32 {
    // SAFETY: live buffers for the call.
    unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) }
}

/// Wall-clock seconds since the epoch, as the host tells them.
pub fn now_seconds() -> Option<u64> {
    let mut nanos = 0u64;
    // SAFETY: the host writes one u64.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    (status == OK).then_some(nanos / 1_000_000_000)
}

/// `destination.address`: the local address of the downstream connection (the listener's), as `ip:port`.
pub fn destination_address() -> Option<Vec<u8>> {
    const PATH: &[u8] = b"destination\0address";
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: a live path buffer; the host writes the out-parameters.
    let status = unsafe { proxy_get_property(PATH.as_ptr(), PATH.len(), &mut data, &mut size) };
    host_buffer(status, data, size)
}

/// The host's log level as the ABI numbers it (0 trace .. 5 critical), if it tells.
fn log_level() -> Option<u32> {
    let mut raw = u32::MAX;
    // SAFETY: the host writes one u32.
    let status = unsafe { proxy_get_log_level(&mut raw) };
    (status == OK).then_some(raw)
}

fn log_message(level: u32, message: &str) {
    // SAFETY: a live buffer for the call.
    unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// The allocator the host fills returned buffers through (`malloc` is the name hosts look for
/// in a module without WASI). Exactly `size` bytes, so [`host_buffer`] can take them back.
#[export_name = "malloc"]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size));
    buffer.as_mut_ptr()
}

/// `log` records go to the host's log (`proxy_log`), at the host's level or above.
struct HostLog;

static HOST_LOG: HostLog = HostLog;

impl log::Log for HostLog {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        log_message(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Routes `log` and panic messages to the host, and follows the host's log level: debug logging
/// per request is affordable only when the host would print it. Safe to call again (the level is
/// re-read: a plugin may be configured after the host's level changed).
pub fn install_logger() {
    if log::set_logger(&HOST_LOG).is_ok() {
        // A panic traps the VM; say why first, as the host cannot.
        std::panic::set_hook(Box::new(|info| log_message(5, &info.to_string())));
    }
    let level = match log_level() {
        Some(0) => log::LevelFilter::Trace,
        Some(1) => log::LevelFilter::Debug,
        Some(2) | None => log::LevelFilter::Info,
        Some(3) => log::LevelFilter::Warn,
        _ => log::LevelFilter::Error,
    };
    log::set_max_level(level);
}
