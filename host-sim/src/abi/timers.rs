//! `proxy_set_tick_period_milliseconds` (the root context's timer; the proxy or harness
//! calls `tick()`) and `proxy_get_current_time_nanoseconds`.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Reg, C};
use crate::host_state::memory::{finish, write_u64};

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env(
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: u32| {
            // Envoy keeps one timer per root context; any context may set it, and every call re-arms it to fire
            // one period from now (`Wasm::setTimerPeriod`).
            c.data_mut().tick_period_ms = period;
            c.data().tick_period_set.notify_one();
            finish(Ok(()))
        },
    )?;
    reg.env(
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ptr: u32| finish(write_u64(&mut c, ptr, now_nanos()).map_err(Into::into)),
    )?;
    Ok(())
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}
