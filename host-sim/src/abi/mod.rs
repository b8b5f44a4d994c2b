//! The hostcalls of proxy-wasm ABI v0.2.1 (every `env` function the Rust SDK 0.2.x imports,
//! plus the few extra ones the C++ host offers) and the WASI preview1 subset Envoy
//! implements. One file per family; this module only registers them.

mod attributes;
mod buffers;
mod foreign;
mod headers;
mod http_call;
mod logging;
mod metrics;
mod properties;
mod shared_data;
mod stream_control;
mod timers;
mod wasi;

use std::sync::Arc;

use wasmtime::{Caller, Engine, Extern, IntoFunc, Linker, Store, ValType};

use crate::host_state::{HostState, PluginConfig};
use crate::shared::SharedState;

pub(crate) type C<'a> = Caller<'a, HostState>;

/// Registers functions and remembers their names, so a module importing anything else is
/// refused with the name of the missing import.
pub(crate) struct Reg<'l> {
    linker: &'l mut Linker<HostState>,
    names: Vec<(&'static str, &'static str)>,
}

impl Reg<'_> {
    pub fn env<Params, Args>(
        &mut self,
        name: &'static str,
        f: impl IntoFunc<HostState, Params, Args>,
    ) -> wasmtime::Result<()> {
        self.names.push(("env", name));
        self.linker.func_wrap("env", name, f)?;
        Ok(())
    }

    /// Registers a WASI function under both module names Envoy accepts.
    pub fn wasi<Params, Args>(
        &mut self,
        name: &'static str,
        f: impl IntoFunc<HostState, Params, Args> + Clone,
    ) -> wasmtime::Result<()> {
        for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
            self.names.push((module, name));
            self.linker.func_wrap(module, name, f.clone())?;
        }
        Ok(())
    }
}

/// Adds every hostcall to `linker`; returns the (module, name) pairs provided.
pub(crate) fn add_to_linker(
    linker: &mut Linker<HostState>,
) -> wasmtime::Result<Vec<(&'static str, &'static str)>> {
    let mut reg = Reg {
        linker,
        names: Vec::new(),
    };
    logging::add(&mut reg)?;
    timers::add(&mut reg)?;
    headers::add(&mut reg)?;
    buffers::add(&mut reg)?;
    properties::add(&mut reg)?;
    metrics::add(&mut reg)?;
    shared_data::add(&mut reg)?;
    http_call::add(&mut reg)?;
    foreign::add(&mut reg)?;
    stream_control::add(&mut reg)?;
    wasi::add(&mut reg)?;
    Ok(reg.names)
}

/// One function the host provides to guests, with its wasm signature.
#[derive(Debug, Clone)]
pub struct Hostcall {
    pub module: String,
    pub name: String,
    pub params: Vec<ValType>,
    pub results: Vec<ValType>,
}

/// Every hostcall this host provides (proxy-wasm `env` and WASI), with signatures: lets tests and
/// fuzzers build guests that import and call all of them.
pub fn hostcalls(engine: &Engine) -> wasmtime::Result<Vec<Hostcall>> {
    let mut linker = Linker::new(engine);
    add_to_linker(&mut linker)?;
    let mut store = Store::new(
        engine,
        HostState::new(Arc::new(PluginConfig::default()), SharedState::new()),
    );
    let mut out = Vec::new();
    let items: Vec<(String, String, Extern)> = linker
        .iter(&mut store)
        .map(|(module, name, item)| (module.to_string(), name.to_string(), item))
        .collect();
    for (module, name, item) in items {
        if let Extern::Func(func) = item {
            let ty = func.ty(&store);
            out.push(Hostcall {
                module,
                name,
                params: ty.params().collect(),
                results: ty.results().collect(),
            });
        }
    }
    out.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
    Ok(out)
}
