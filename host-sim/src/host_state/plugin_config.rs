//! Per-plugin settings: what a VM instance is started with and every hostcall may read.

use std::time::Duration;

use crate::properties::Properties;
use crate::types::LogLevel;

/// How long one call into a guest may run before epoch interruption stops it (a guest that
/// loops forever would otherwise hold its worker thread for good, as it does in Envoy).
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(1);
/// The most linear memory one VM instance may grow to; growing past it traps.
pub const DEFAULT_MEMORY_LIMIT: usize = 128 << 20;

/// Per-plugin settings, mirroring the fields of Envoy's wasm `PluginConfig` and `VmConfig`.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// `name` of the plugin (property `plugin_name`, and the log target suffix).
    pub name: String,
    /// `root_id` (property `plugin_root_id`).
    pub root_id: String,
    /// `vm_config.vm_id` (property `plugin_vm_id`; scopes shared data and queues).
    pub vm_id: String,
    /// The plugin `configuration` bytes (buffer `PluginConfiguration` in `proxy_on_configure`).
    pub configuration: Vec<u8>,
    /// The `vm_config.configuration` bytes (buffer `VmConfiguration`).
    pub vm_configuration: Vec<u8>,
    /// Properties that do not depend on a stream (`xds.node`, `xds.listener_direction` ...).
    pub root_properties: Properties,
    /// The level `proxy_get_log_level` reports; messages below it are dropped (Envoy: info).
    pub log_level: LogLevel,
    /// Keep log records in memory for inspection (the harness turns this on).
    pub capture_logs: bool,
    /// Environment variables visible through WASI `environ_get`.
    pub environment: Vec<(String, String)>,
    /// Cluster names `proxy_http_call` may target; others get BadArgument, as in Envoy.
    pub clusters: Vec<String>,
    /// The longest one guest call may run (`None`: unbounded, as in Envoy).
    pub call_deadline: Option<Duration>,
    /// The most linear memory the instance may have (`None`: the wasm32 limit of 4 GiB).
    pub memory_limit: Option<usize>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            name: String::new(),
            root_id: String::new(),
            vm_id: String::new(),
            configuration: Vec::new(),
            vm_configuration: Vec::new(),
            root_properties: Properties::new(),
            log_level: LogLevel::Info,
            capture_logs: false,
            environment: Vec::new(),
            clusters: Vec::new(),
            call_deadline: Some(DEFAULT_CALL_DEADLINE),
            memory_limit: Some(DEFAULT_MEMORY_LIMIT),
        }
    }
}
