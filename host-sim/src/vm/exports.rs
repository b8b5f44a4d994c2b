//! The guest's callbacks, looked up once per instance with their signatures checked.
//! A callback the module does not export is skipped, as Envoy skips it.

use std::sync::Arc;

use wasmtime::{Instance, Store, TypedFunc, WasmParams, WasmResults};

use crate::vm::{HostState, LoadError};

/// Shared so a call clones a reference count, not the function's registered type (a `TypedFunc`
/// clone takes several atomic reference counts in the engine's type registry, per callback).
type F<P, R> = Option<Arc<TypedFunc<P, R>>>;

pub(crate) struct Exports {
    pub initialize: F<(), ()>,
    pub start: F<(), ()>,
    pub on_context_create: F<(u32, u32), ()>,
    pub on_vm_start: F<(u32, u32), u32>,
    pub on_configure: F<(u32, u32), u32>,
    pub on_tick: F<u32, ()>,
    pub on_queue_ready: F<(u32, u32), ()>,
    pub on_request_headers: F<(u32, u32, u32), u32>,
    pub on_request_body: F<(u32, u32, u32), u32>,
    pub on_request_trailers: F<(u32, u32), u32>,
    pub on_response_headers: F<(u32, u32, u32), u32>,
    pub on_response_body: F<(u32, u32, u32), u32>,
    pub on_response_trailers: F<(u32, u32), u32>,
    pub on_http_call_response: F<(u32, u32, u32, u32, u32), ()>,
    pub on_done: F<u32, u32>,
    pub on_log: F<u32, ()>,
    pub on_delete: F<u32, ()>,
}

fn get<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<F<P, R>, LoadError> {
    if instance.get_func(&mut *store, name).is_none() {
        return Ok(None);
    }
    instance
        .get_typed_func::<P, R>(&mut *store, name)
        .map(|f| Some(Arc::new(f)))
        .map_err(|e| LoadError::BadSignature {
            name: name.to_string(),
            detail: format!("{e:#}"),
        })
}

impl Exports {
    pub fn new(instance: &Instance, store: &mut Store<HostState>) -> Result<Self, LoadError> {
        Ok(Exports {
            initialize: get(instance, store, "_initialize")?,
            start: get(instance, store, "_start")?,
            on_context_create: get(instance, store, "proxy_on_context_create")?,
            on_vm_start: get(instance, store, "proxy_on_vm_start")?,
            on_configure: get(instance, store, "proxy_on_configure")?,
            on_tick: get(instance, store, "proxy_on_tick")?,
            on_queue_ready: get(instance, store, "proxy_on_queue_ready")?,
            on_request_headers: get(instance, store, "proxy_on_request_headers")?,
            on_request_body: get(instance, store, "proxy_on_request_body")?,
            on_request_trailers: get(instance, store, "proxy_on_request_trailers")?,
            on_response_headers: get(instance, store, "proxy_on_response_headers")?,
            on_response_body: get(instance, store, "proxy_on_response_body")?,
            on_response_trailers: get(instance, store, "proxy_on_response_trailers")?,
            on_http_call_response: get(instance, store, "proxy_on_http_call_response")?,
            on_done: get(instance, store, "proxy_on_done")?,
            on_log: get(instance, store, "proxy_on_log")?,
            on_delete: get(instance, store, "proxy_on_delete")?,
        })
    }
}
