//! `proxy_log`, `proxy_get_log_level`: guest logs go to `tracing` (target `wasm`, with the
//! plugin name) and, when enabled, into the instance's captured records.

use super::{Reg, C};
use crate::host_state::memory::{finish, with_slice, write_u32, HostResult};
use crate::host_state::{HostState, LogRecord};
use crate::types::{LogLevel, Status};

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env(
        "proxy_log",
        |mut c: C<'_>, level: u32, ptr: u32, size: u32| finish(log(&mut c, level, ptr, size)),
    )?;
    reg.env("proxy_get_log_level", |mut c: C<'_>, ptr: u32| {
        let level = c.data().config.log_level as u32;
        finish(write_u32(&mut c, ptr, level).map_err(Into::into))
    })?;
    Ok(())
}

fn log(c: &mut C<'_>, level: u32, ptr: u32, size: u32) -> HostResult {
    let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
    with_slice(c, ptr, size, |msg, st| {
        emit(st, level, &String::from_utf8_lossy(msg));
    })?;
    Ok(())
}

/// Logs one message as Envoy would print it, and captures it.
pub(crate) fn emit(st: &mut HostState, level: LogLevel, message: &str) {
    if level < st.config.log_level {
        return;
    }
    let plugin = st.config.name.as_str();
    let context = st.context_id();
    match level {
        LogLevel::Trace => tracing::trace!(target: "wasm", plugin, context, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "wasm", plugin, context, "{message}"),
        LogLevel::Info => tracing::info!(target: "wasm", plugin, context, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "wasm", plugin, context, "{message}"),
        LogLevel::Error | LogLevel::Critical => {
            tracing::error!(target: "wasm", plugin, context, "{message}")
        }
    }
    if st.recent_logs.len() == crate::host_state::RECENT_LOGS {
        st.recent_logs.pop_front();
    }
    st.recent_logs
        .push_back(format!("[{}] {message}", level.name()));
    if st.booting && level >= LogLevel::Warn && st.boot_log.len() < 64 {
        st.boot_log.push(LogRecord {
            level,
            context_id: context,
            message: message.to_string(),
        });
    }
    if st.config.capture_logs {
        if st.logs.len() < crate::host_state::MAX_CAPTURED_LOGS {
            st.logs.push(LogRecord {
                level,
                context_id: context,
                message: message.to_string(),
            });
        } else {
            st.dropped_logs += 1;
        }
    }
}
