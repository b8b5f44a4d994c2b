//! `proxy_get_property` / `proxy_set_property`: Envoy attributes and filter state.

use super::attributes::{resolve, PluginFacts};
use super::{Reg, C};
use crate::host_state::memory::{copy_out, finish, read, with_slice, HostResult};
use crate::types::Status;

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env(
        "proxy_get_property",
        |mut c: C<'_>, pp: u32, ps: u32, vpp: u32, vsp: u32| finish(get(&mut c, pp, ps, vpp, vsp)),
    )?;
    reg.env(
        "proxy_set_property",
        |mut c: C<'_>, pp: u32, ps: u32, vp: u32, vs: u32| finish(set(&mut c, pp, ps, vp, vs)),
    )?;
    Ok(())
}

fn get(c: &mut C<'_>, pp: u32, ps: u32, vpp: u32, vsp: u32) -> HostResult {
    let value = with_slice(c, pp, ps, |path, st| {
        // An empty path names no part: Context::getProperty serialises its empty CelValue, which fails.
        if path.is_empty() {
            return Err(Status::SerializationFailure);
        }
        // The walk stops at the end of the path, so one trailing NUL names nothing more.
        let path = path.strip_suffix(b"\0").unwrap_or(path);
        let cfg = &st.config;
        let facts = PluginFacts {
            name: &cfg.name,
            root_id: &cfg.root_id,
            vm_id: &cfg.vm_id,
            root_properties: &cfg.root_properties,
        };
        resolve(path, &facts, st.stream())
    })??;
    copy_out(c, &value, vpp, vsp)
}

fn set(c: &mut C<'_>, pp: u32, ps: u32, vp: u32, vs: u32) -> HostResult {
    let path = read(c, pp, ps)?;
    let value = read(c, vp, vs)?;
    // Envoy stores filter state on the stream; the root context has none (NotFound).
    let stream = c.data_mut().stream_mut().ok_or(Status::NotFound)?;
    stream.filter_state.insert(path, value);
    Ok(())
}
