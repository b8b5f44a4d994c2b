//! The VM layer: one wasmtime [`Engine`] and compiled-module cache per [`Runtime`], one
//! [`PluginFactory`] per (module, plugin configuration) shared across worker threads, and one
//! [`PluginInstance`] (store, instance, root context) per worker thread.

mod epoch;
mod exports;
mod instance;
mod recovery;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use crate::shared::SharedState;

pub(crate) use crate::host_state::HostState;
pub use crate::host_state::{
    HttpCallRequest, HttpCallResponse, LogRecord, PluginConfig, DEFAULT_CALL_DEADLINE,
    DEFAULT_MEMORY_LIMIT,
};
pub use instance::{CallbackError, HttpStream, PluginInstance};
pub use recovery::{Admission, PluginHandle, ReloadEvent, DEFAULT_RELOAD_BACKOFF};

/// ABI version markers a module may export; the first found decides.
const ABI_MARKERS: &[(&str, AbiVersion)] = &[
    ("proxy_abi_version_0_2_1", AbiVersion::V0_2_1),
    ("proxy_abi_version_0_2_0", AbiVersion::V0_2_0),
    ("proxy_abi_version_0_1_0", AbiVersion::V0_1_0),
];

/// The proxy-wasm ABI a module declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    V0_1_0,
    V0_2_0,
    V0_2_1,
}

/// Errors loading a module or starting a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("failed to compile the wasm module: {0}")]
    Compile(String),
    #[error("the module exports no known proxy-wasm ABI version marker (expected one of proxy_abi_version_0_2_1, proxy_abi_version_0_2_0)")]
    NoAbiVersion,
    #[error("the module declares proxy-wasm ABI 0.1.0, which host-sim does not implement (0.2.0 and 0.2.1 are supported)")]
    UnsupportedAbi,
    #[error("the module does not export `{0}`")]
    MissingExport(&'static str),
    #[error("the module exports `{name}` with the wrong signature: {detail}")]
    BadSignature { name: String, detail: String },
    #[error("the module imports `{module}::{name}`, which this host does not provide")]
    UnknownImport { module: String, name: String },
    #[error("failed to instantiate the module: {0}")]
    Instantiate(String),
    #[error("the module trapped in {phase}: {message}")]
    Trap {
        phase: &'static str,
        message: String,
    },
    #[error("proxy_on_vm_start returned false: the plugin refused its VM configuration{}", last_words(.log))]
    VmStartFailed { log: Vec<String> },
    #[error("proxy_on_configure returned false: the plugin refused its configuration{}", last_words(.log))]
    ConfigureFailed { log: Vec<String> },
}

/// The guest's log lines at warn or above during start-up, to explain a refusal.
fn last_words(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (plugin log: {})", log.join("; "))
    }
}

/// The wasmtime configuration host-sim uses (Cranelift, with epoch interruption so a guest
/// call can be given a deadline): every engine is built here.
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.strategy(wasmtime::Strategy::Cranelift);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config.epoch_interruption(true);
    config
}

/// Hash of the bytes -> (bytes, compiled module); the bytes settle hash collisions.
type ModuleCache = HashMap<u64, Vec<(Arc<[u8]>, Module)>>;

/// One engine and a cache of compiled modules keyed by the module bytes.
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    provided: Vec<(&'static str, &'static str)>,
    cache: Mutex<ModuleCache>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new() -> Result<Self, LoadError> {
        let engine =
            Engine::new(&engine_config()).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        epoch::start_ticker(&engine).map_err(|e| LoadError::Instantiate(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        let provided = crate::abi::add_to_linker(&mut linker)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            provided,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `bytes` (binary wasm, or WAT text), or returns the cached module for
    /// identical bytes.
    pub fn compile(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        let key = hasher.finish();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache
            .get(&key)
            .and_then(|v| v.iter().find(|(b, _)| &b[..] == bytes))
        {
            return Ok(hit.1.clone());
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        cache
            .entry(key)
            .or_default()
            .push((Arc::from(bytes), module.clone()));
        Ok(module)
    }

    /// Number of distinct modules compiled so far.
    pub fn cached_modules(&self) -> usize {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.values().map(Vec::len).sum()
    }

    /// Compiles (or reuses) the module and checks it is a proxy-wasm module this host can run.
    pub fn load(
        &self,
        bytes: &[u8],
        config: PluginConfig,
        shared: SharedState,
    ) -> Result<Arc<PluginFactory>, LoadError> {
        let module = self.compile(bytes)?;
        let abi = check_module(&module)?;
        if let Some(i) = module.imports().find(|i| {
            !self.provided.contains(&(i.module(), i.name()))
                || !offered_to(abi, i.module(), i.name())
        }) {
            return Err(LoadError::UnknownImport {
                module: i.module().to_string(),
                name: i.name().to_string(),
            });
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        Ok(Arc::new(PluginFactory {
            pre,
            abi,
            config: Arc::new(config),
            shared,
        }))
    }
}

/// Whether Envoy links hostcall `module.name` for a module of `abi`: cpp-host's `WasmBase::registerCallbacks`
/// offers `proxy_get_log_level` to ABI 0.2.1 modules only, so a 0.2.0 module importing it fails to load with a
/// missing import.
fn offered_to(abi: AbiVersion, module: &str, name: &str) -> bool {
    !(module == "env" && name == "proxy_get_log_level" && abi != AbiVersion::V0_2_1)
}

/// Checks the ABI marker, the memory and the allocator before anything runs.
fn check_module(module: &Module) -> Result<AbiVersion, LoadError> {
    let abi = ABI_MARKERS
        .iter()
        .find(|(name, _)| module.get_export(name).is_some())
        .map(|(_, v)| *v)
        .ok_or(LoadError::NoAbiVersion)?;
    if abi == AbiVersion::V0_1_0 {
        return Err(LoadError::UnsupportedAbi);
    }
    if !matches!(
        module.get_export("memory"),
        Some(wasmtime::ExternType::Memory(_))
    ) {
        return Err(LoadError::MissingExport("memory"));
    }
    if module.get_export("malloc").is_none()
        && module.get_export("proxy_on_memory_allocate").is_none()
    {
        return Err(LoadError::MissingExport(
            "malloc or proxy_on_memory_allocate",
        ));
    }
    Ok(abi)
}

/// A compiled, checked module with its plugin configuration: `Send + Sync`, shared by every
/// worker thread, each of which calls [`PluginFactory::instantiate`] once.
pub struct PluginFactory {
    pre: InstancePre<HostState>,
    abi: AbiVersion,
    config: Arc<PluginConfig>,
    shared: SharedState,
}

impl std::fmt::Debug for PluginFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginFactory")
            .field("abi", &self.abi)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl PluginFactory {
    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }

    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// Instantiates the module and starts the plugin: `_initialize` (or `_start`),
    /// `proxy_on_context_create(root, 0)`, `proxy_on_vm_start`, `proxy_on_configure`.
    pub fn instantiate(self: &Arc<Self>) -> Result<PluginInstance, LoadError> {
        PluginInstance::start(self.clone())
    }
}
