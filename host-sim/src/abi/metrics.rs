//! Metrics: define (counter, gauge, histogram), increment, record, get — with Envoy's id
//! encoding (kind in the low two bits) and its status codes.

use super::{Reg, C};
use crate::host_state::memory::{finish, read, write_u32, write_u64, CallError, HostResult};
use crate::host_state::HostState;
use crate::types::{MetricKind, Status};

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env(
        "proxy_define_metric",
        |mut c: C<'_>, kind: u32, np: u32, ns: u32, id_ptr: u32| {
            finish(define(&mut c, kind, np, ns, id_ptr))
        },
    )?;
    reg.env(
        "proxy_increment_metric",
        |mut c: C<'_>, id: u32, offset: i64| {
            finish(increment(c.data_mut(), id, offset).map_err(Into::into))
        },
    )?;
    reg.env(
        "proxy_record_metric",
        |mut c: C<'_>, id: u32, value: u64| {
            finish(record(c.data_mut(), id, value).map_err(Into::into))
        },
    )?;
    reg.env("proxy_get_metric", |mut c: C<'_>, id: u32, ptr: u32| {
        finish(get(&mut c, id, ptr))
    })?;
    Ok(())
}

const KIND_MASK: u32 = 0x3;
const ID_STEP: u32 = 0x4;

fn kind_of(id: u32) -> Option<MetricKind> {
    MetricKind::from_raw(id & KIND_MASK)
}

fn define(c: &mut C<'_>, kind: u32, np: u32, ns: u32, id_ptr: u32) -> HostResult {
    // cpp-host `define_metric` reads the name before Envoy's `defineMetric` looks at the type.
    let name = read(c, np, ns)?;
    let kind = MetricKind::from_raw(kind).ok_or(Status::BadArgument)?;
    let name = String::from_utf8_lossy(&name).into_owned();
    let st = c.data_mut();
    let metric = st.shared.metrics.define(kind, &name);
    // Each kind counts on its own, in steps of 4 from its tag (Envoy's Wasm::nextCounterMetricId and siblings):
    // counters 4, 8, ..., gauges 5, 9, ..., histograms 6, 10, ...
    let seq = &mut st.next_metric_seq[kind.id_tag() as usize % 3];
    *seq = seq.wrapping_add(1);
    let id = seq.wrapping_mul(ID_STEP) | kind.id_tag();
    st.metric_ids.insert(id, metric);
    write_u32(c, id_ptr, id).map_err(CallError::from)
}

fn increment(st: &mut HostState, id: u32, offset: i64) -> Result<(), Status> {
    match kind_of(id) {
        Some(MetricKind::Counter) => {
            let m = st.metric_ids.get(&id).ok_or(Status::NotFound)?;
            // Envoy counters only go up.
            if offset <= 0 {
                return Err(Status::BadArgument);
            }
            m.add(offset);
            Ok(())
        }
        Some(MetricKind::Gauge) => {
            st.metric_ids.get(&id).ok_or(Status::NotFound)?.add(offset);
            Ok(())
        }
        _ => Err(Status::BadArgument),
    }
}

fn record(st: &mut HostState, id: u32, value: u64) -> Result<(), Status> {
    let m = st.metric_ids.get(&id).ok_or(Status::NotFound)?;
    match kind_of(id) {
        Some(MetricKind::Counter) => m.add(value as i64),
        Some(MetricKind::Gauge) => m.set(value as i64),
        Some(MetricKind::Histogram) => m.record(value),
        None => return Err(Status::NotFound),
    }
    Ok(())
}

fn get(c: &mut C<'_>, id: u32, ptr: u32) -> HostResult {
    let value = match kind_of(id) {
        Some(MetricKind::Counter | MetricKind::Gauge) => c
            .data()
            .metric_ids
            .get(&id)
            .ok_or(Status::NotFound)?
            .value(),
        _ => return Err(Status::BadArgument.into()),
    };
    write_u64(c, ptr, value as u64).map_err(CallError::from)
}
