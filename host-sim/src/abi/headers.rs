//! Header and trailer maps: get/set pairs, get/add/replace/remove one value, map size.
//! Which maps exist follows Envoy: a stream map only while its callback runs or iteration is
//! stopped in its phase (BadArgument otherwise, NotFound in the access-log phase); the http
//! call response maps only while `proxy_on_http_call_response` runs.

use super::{Reg, C};
use crate::headers::{guest_pairs, HeaderMap, MapKind};
use crate::host_state::memory::{
    copy_out, finish, read, with_slice, write_u32, CallError, HostResult,
};
use crate::host_state::HostState;
use crate::types::{MapType, Status};

pub(super) fn add(reg: &mut Reg<'_>) -> wasmtime::Result<()> {
    reg.env(
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, t: u32, ptr_ptr: u32, size_ptr: u32| {
            finish(get_pairs(&mut c, t, ptr_ptr, size_ptr))
        },
    )?;
    reg.env(
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, t: u32, ptr: u32, size: u32| finish(set_pairs(&mut c, t, ptr, size)),
    )?;
    reg.env(
        "proxy_get_header_map_value",
        |mut c: C<'_>, t: u32, kp: u32, ks: u32, vpp: u32, vsp: u32| {
            finish(get_value(&mut c, t, kp, ks, vpp, vsp))
        },
    )?;
    reg.env(
        "proxy_add_header_map_value",
        |mut c: C<'_>, t: u32, kp: u32, ks: u32, vp: u32, vs: u32| {
            finish(modify(&mut c, t, kp, ks, Some((vp, vs)), Edit::Add))
        },
    )?;
    reg.env(
        "proxy_replace_header_map_value",
        |mut c: C<'_>, t: u32, kp: u32, ks: u32, vp: u32, vs: u32| {
            finish(modify(&mut c, t, kp, ks, Some((vp, vs)), Edit::Replace))
        },
    )?;
    reg.env(
        "proxy_remove_header_map_value",
        |mut c: C<'_>, t: u32, kp: u32, ks: u32| {
            finish(modify(&mut c, t, kp, ks, None, Edit::Remove))
        },
    )?;
    reg.env(
        "proxy_get_header_map_size",
        |mut c: C<'_>, t: u32, ptr: u32| finish(size(&mut c, t, ptr)),
    )?;
    Ok(())
}

fn map_type(t: u32) -> Result<MapType, Status> {
    MapType::from_raw(t).ok_or(Status::BadArgument)
}

/// The map a read sees (Envoy's `getConstMap`).
pub(crate) fn const_map(st: &HostState, t: MapType) -> Option<&HeaderMap> {
    match t {
        MapType::HttpCallResponseHeaders => st.call_response.as_ref().map(|r| &r.headers),
        // A response without trailers has no trailers map (`Context::getConstMap`: `(*response)->trailers()` is
        // null), so reading it is BadArgument, not NotFound (found by the ABI fuzzer).
        MapType::HttpCallResponseTrailers => st
            .call_response
            .as_ref()
            .map(|r| &r.trailers)
            .filter(|t| !t.is_empty()),
        MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => None,
        _ => {
            let s = st.stream()?;
            let a = s.access;
            let visible = match t {
                MapType::RequestHeaders => a.request_headers || a.access_log,
                MapType::RequestTrailers => a.request_trailers && !a.access_log,
                MapType::ResponseHeaders => a.response_headers || a.access_log,
                MapType::ResponseTrailers => a.response_trailers || a.access_log,
                _ => false,
            };
            if !visible {
                return None;
            }
            Some(match t {
                MapType::RequestHeaders => &s.request_headers,
                MapType::RequestTrailers => &s.request_trailers,
                // `Context::getConstMap` reads `access_log_response_headers_` in the log phase.
                MapType::ResponseHeaders if a.access_log => s
                    .logged_response_headers
                    .as_ref()
                    .unwrap_or(&s.response_headers),
                MapType::ResponseHeaders => &s.response_headers,
                _ => &s.response_trailers,
            })
        }
    }
}

/// The map a write changes (Envoy's `getMap`): stream maps only, only in their phase.
fn mut_map(st: &mut HostState, t: MapType) -> Option<&mut HeaderMap> {
    let s = st.stream_mut()?;
    let a = s.access;
    match t {
        MapType::RequestHeaders if a.request_headers => Some(&mut s.request_headers),
        MapType::RequestTrailers if a.request_trailers => Some(&mut s.request_trailers),
        // Envoy lets a filter add trailers from the last body callback.
        MapType::RequestTrailers if a.request_body && a.end_of_stream => {
            Some(&mut s.request_trailers)
        }
        MapType::ResponseHeaders if a.response_headers => Some(&mut s.response_headers),
        MapType::ResponseTrailers if a.response_trailers => Some(&mut s.response_trailers),
        MapType::ResponseTrailers if a.response_body && a.end_of_stream => {
            Some(&mut s.response_trailers)
        }
        _ => None,
    }
}

fn in_access_log(st: &HostState) -> bool {
    st.stream().is_some_and(|s| s.access.access_log)
}

fn get_pairs(c: &mut C<'_>, t: u32, ptr_ptr: u32, size_ptr: u32) -> HostResult {
    let t = map_type(t)?;
    // A map Envoy does not hold reads as empty.
    let bytes = match const_map(c.data(), t) {
        Some(m) if !m.is_empty() => m.to_pairs_bytes(),
        _ => Vec::new(),
    };
    copy_out(c, &bytes, ptr_ptr, size_ptr)
}

fn set_pairs(c: &mut C<'_>, t: u32, ptr: u32, size: u32) -> HostResult {
    let t = map_type(t)?;
    let data = read(c, ptr, size)?;
    let pairs = guest_pairs(&data);
    let kind = map_kind(t);
    let map = mut_map(c.data_mut(), t).ok_or(Status::BadArgument)?;
    // Context::setHeaderMapPairs: every key removed, then each pair added with addCopy.
    let pairs = pairs.iter().map(|(k, v)| (map_key(t, k).to_vec(), v));
    *map = match kind {
        Some(kind) => HeaderMap::from_pairs_as(kind, pairs),
        None => HeaderMap::from_pairs(pairs),
    };
    repick_route_after(c.data_mut(), t);
    Ok(())
}

/// Envoy's wasm filter clears the route cache whenever it changes the request headers, so the route is picked
/// again from the changed headers (a rewritten `:path` or `:authority` can lead to another cluster).
fn repick_route_after(st: &mut HostState, t: MapType) {
    if t == MapType::RequestHeaders {
        if let Some(s) = st.stream_mut() {
            s.effects.request_headers_changed = true;
        }
    }
}

/// The stream map a map type names, for its inline headers.
fn map_kind(t: MapType) -> Option<MapKind> {
    match t {
        MapType::RequestHeaders => Some(MapKind::RequestHeaders),
        MapType::RequestTrailers => Some(MapKind::RequestTrailers),
        MapType::ResponseHeaders => Some(MapKind::ResponseHeaders),
        MapType::ResponseTrailers => Some(MapKind::ResponseTrailers),
        _ => None,
    }
}

/// Envoy's request header map knows the HTTP/1 name `host` as `:authority` (the legacy alias
/// of its inline `:authority` header), for reads and edits alike.
fn map_key(t: MapType, key: &[u8]) -> &[u8] {
    if t == MapType::RequestHeaders && key.eq_ignore_ascii_case(b"host") {
        b":authority"
    } else {
        key
    }
}

fn get_value(c: &mut C<'_>, t: u32, kp: u32, ks: u32, vpp: u32, vsp: u32) -> HostResult {
    let t = map_type(t)?;
    let value = with_slice(c, kp, ks, |key, st| match const_map(st, t) {
        None if in_access_log(st) => Err(Status::NotFound),
        None => Err(Status::BadArgument),
        Some(m) => m
            .get(map_key(t, key))
            .map(<[u8]>::to_vec)
            .ok_or(Status::NotFound),
    })??;
    copy_out(c, &value, vpp, vsp)
}

enum Edit {
    Add,
    Replace,
    Remove,
}

fn modify(
    c: &mut C<'_>,
    t: u32,
    kp: u32,
    ks: u32,
    value: Option<(u32, u32)>,
    edit: Edit,
) -> HostResult {
    let t = map_type(t)?;
    let key = read(c, kp, ks)?;
    let value = match value {
        Some((vp, vs)) => read(c, vp, vs)?,
        None => Vec::new(),
    };
    let map = mut_map(c.data_mut(), t).ok_or(Status::BadArgument)?;
    let key = map_key(t, &key);
    match edit {
        // Context::addHeaderMapValue: addCopy, which appends to an inline header that is set.
        Edit::Add => match map_kind(t) {
            Some(kind) => map.add_as(kind, key, &value),
            None => map.add(key, &value),
        },
        Edit::Replace => map.replace(key, &value),
        Edit::Remove => map.remove(key),
    }
    repick_route_after(c.data_mut(), t);
    Ok(())
}

fn size(c: &mut C<'_>, t: u32, ptr: u32) -> HostResult {
    let t = map_type(t)?;
    let n = mut_map(c.data_mut(), t)
        .map(|m| m.byte_size())
        .ok_or(Status::BadArgument)?;
    write_u32(c, ptr, n as u32).map_err(CallError::from)
}
