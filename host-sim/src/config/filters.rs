//! HTTP filters: wasm, dynamic_forward_proxy and router downstream; rbac (Envoy's upstream RBAC filter, see
//! `rbac.rs`), wasm and upstream_codec upstream.

use std::path::PathBuf;

use super::dns_cache::{parse_dns_cache, DnsCacheConfig};
use super::node::{At, Fields};
use super::rbac::{parse_rbac, RbacConfig};
use super::{typed_config, ConfigError};

const WASM_TYPE: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const DFP_TYPE: &str = "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig";
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
const RBAC_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
const UPSTREAM_CODEC_TYPE: &str = "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec";
const STRING_VALUE_TYPE: &str = "google.protobuf.StringValue";
const WASM_SERVICE_TYPE: &str = "envoy.extensions.wasm.v3.WasmService";

/// Where a filter chain runs: in the HTTP connection manager, or in a cluster's upstream filter chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterStage {
    Downstream,
    Upstream,
}

#[derive(Debug, Clone)]
pub enum HttpFilter {
    Wasm(WasmPlugin),
    DynamicForwardProxy(DfpFilterConfig),
    Rbac(RbacConfig),
    Router(RouterConfig),
    UpstreamCodec,
}

/// `envoy.extensions.filters.http.router.v3.Router`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterConfig {
    /// `suppress_envoy_headers`: the router adds no `x-envoy-*` header — router.cc `Filter::onUpstreamHeaders` skips
    /// `x-envoy-upstream-service-time`, and `Filter::decodeHeaders` passes it to `FilterUtility::finalTimeout`,
    /// which then leaves out `x-envoy-expected-rq-timeout-ms`.
    pub suppress_envoy_headers: bool,
}

/// A wasm plugin: `envoy.extensions.wasm.v3.PluginConfig` with a local code file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmPlugin {
    /// The plugin's `name` (the `plugin_name` property); Envoy's filter name when the plugin has none.
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    /// Envoy's runtime name as written (`envoy.wasm.runtime.v8`, ...); host-sim runs every one on wasmtime.
    pub runtime: String,
    /// `vm_config.code.local.filename`, relative to the working directory as in Envoy.
    pub code: PathBuf,
    /// The plugin configuration (`configuration` StringValue), given to the guest in `proxy_on_configure`.
    pub configuration: String,
    /// The VM configuration (`vm_config.configuration` StringValue), given in `proxy_on_vm_start`.
    pub vm_configuration: String,
    pub failure_policy: FailurePolicy,
    /// `reload_config.backoff.base_interval` (Envoy's default 1 s): the least time between reloads of a failed VM
    /// under `FAIL_RELOAD`. Envoy reads only the base interval.
    pub reload_backoff: std::time::Duration,
}

/// A wasm service (`bootstrap_extensions`, `envoy.extensions.wasm.v3.WasmService`): a plugin with a root context
/// and no streams, started once the server is up (`WasmServiceExtension::onServerInitialized`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmService {
    pub plugin: WasmPlugin,
    /// One VM on the main thread only; otherwise one on the main thread and one per worker, as for a filter
    /// (`PluginConfig` with `is_singleton`).
    pub singleton: bool,
}

/// One entry of `bootstrap_extensions`; host-sim runs wasm services only.
pub(crate) fn parse_wasm_service(at: &At<'_>) -> Result<WasmService, ConfigError> {
    let mut fields = at.map()?;
    // A TypedExtensionConfig: its name is required.
    fields.required_label("name")?;
    let typed = fields.req("typed_config")?;
    fields.finish()?;
    let (_, mut config) = typed_config(&typed, &[WASM_SERVICE_TYPE])?;
    let singleton = config
        .opt("singleton")
        .map(|s| s.bool())
        .transpose()?
        .unwrap_or(false);
    let plugin = config.req("config")?;
    config.finish()?;
    // Envoy names the plugin by its own `name` only (no filter name to fall back on).
    let plugin = parse_plugin(&plugin, "")?;
    Ok(WasmService { plugin, singleton })
}

/// What happens to requests after the plugin failed (trap, or a failed `on_configure` at load is fatal anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Every later request gets 503 (Envoy's default).
    FailClosed,
    /// The VM is rebuilt after a backoff; requests in between get 503.
    FailReload,
    /// The filter is skipped.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfpFilterConfig {
    pub dns_cache: DnsCacheConfig,
}

pub(crate) fn parse_http_filters(
    at: &At<'_>,
    stage: FilterStage,
) -> Result<Vec<HttpFilter>, ConfigError> {
    let items = at.list()?;
    let mut filters = Vec::with_capacity(items.len());
    for item in &items {
        filters.push(parse_http_filter(item, stage)?);
    }
    let terminal_ok = matches!(
        (stage, filters.last()),
        (FilterStage::Downstream, Some(HttpFilter::Router(_)))
            | (FilterStage::Upstream, Some(HttpFilter::UpstreamCodec))
    );
    if !terminal_ok {
        let terminal = match stage {
            FilterStage::Downstream => "envoy.filters.http.router",
            FilterStage::Upstream => "envoy.filters.http.upstream_codec",
        };
        return Err(at.error(format!("the last HTTP filter must be {terminal}")));
    }
    let terminals = filters
        .iter()
        .filter(|f| matches!(f, HttpFilter::Router(_) | HttpFilter::UpstreamCodec))
        .count();
    if terminals != 1 {
        return Err(at.error("a terminal filter (router, upstream_codec) may appear only last"));
    }
    Ok(filters)
}

fn parse_http_filter(at: &At<'_>, stage: FilterStage) -> Result<HttpFilter, ConfigError> {
    let mut fields = at.map()?;
    let name = fields.req("name")?.non_empty_string()?;
    let typed = fields.req("typed_config")?;
    if let Some(disabled) = fields.opt("disabled") {
        if disabled.bool()? {
            return Err(disabled.error("disabled filters are not supported by host-sim"));
        }
    }
    if let Some(optional) = fields.opt("is_optional") {
        optional.bool()?;
    }
    fields.finish()?;

    let allowed: &[&str] = match stage {
        FilterStage::Downstream => &[WASM_TYPE, DFP_TYPE, ROUTER_TYPE],
        // In a cluster's chain the RBAC type is Envoy's upstream RBAC filter.
        FilterStage::Upstream => &[WASM_TYPE, RBAC_TYPE, UPSTREAM_CODEC_TYPE],
    };
    let (type_name, mut config) = typed_config(&typed, allowed)?;
    let filter = match type_name.as_str() {
        WASM_TYPE => {
            let plugin = config.req("config")?;
            config.finish()?;
            HttpFilter::Wasm(parse_plugin(&plugin, &name)?)
        }
        DFP_TYPE => {
            let dns_cache = parse_dns_cache(&config.req("dns_cache_config")?)?;
            // Cosmetic here: host-sim always records the upstream address it used.
            config.cosmetic("save_upstream_address");
            config.finish()?;
            HttpFilter::DynamicForwardProxy(DfpFilterConfig { dns_cache })
        }
        RBAC_TYPE => HttpFilter::Rbac(parse_rbac(config)?),
        ROUTER_TYPE => {
            let suppress_envoy_headers = config
                .opt("suppress_envoy_headers")
                .map(|v| v.bool())
                .transpose()?
                .unwrap_or(false);
            config.finish()?;
            HttpFilter::Router(RouterConfig {
                suppress_envoy_headers,
            })
        }
        _ => {
            config.finish()?;
            HttpFilter::UpstreamCodec
        }
    };
    Ok(filter)
}

fn parse_plugin(at: &At<'_>, filter_name: &str) -> Result<WasmPlugin, ConfigError> {
    let mut fields = at.map()?;
    let name = fields
        .opt("name")
        .map(|n| n.string())
        .transpose()?
        .unwrap_or_else(|| filter_name.to_string());
    let root_id = fields
        .opt("root_id")
        .map(|r| r.string())
        .transpose()?
        .unwrap_or_default();
    let vm = fields.req("vm_config")?;
    let configuration = match fields.opt("configuration") {
        Some(value) => string_value(&value)?,
        None => String::new(),
    };
    let fail_open = fields.opt("fail_open").map(|f| f.bool()).transpose()?;
    let policy = fields
        .opt("failure_policy")
        .map(|p| p.enum_name(&["UNSPECIFIED", "FAIL_CLOSED", "FAIL_RELOAD", "FAIL_OPEN"]))
        .transpose()?;
    if fail_open == Some(true) && policy.as_deref().is_some_and(|p| p != "UNSPECIFIED") {
        return Err(at.error("only one of fail_open or failure_policy can be set"));
    }
    let failure_policy = match (policy.as_deref(), fail_open) {
        (Some("FAIL_OPEN"), _) => FailurePolicy::FailOpen,
        (Some("FAIL_RELOAD"), _) => FailurePolicy::FailReload,
        (Some("FAIL_CLOSED"), _) => FailurePolicy::FailClosed,
        (_, Some(true)) => FailurePolicy::FailOpen,
        _ => FailurePolicy::FailClosed,
    };
    let reload_backoff = match fields.opt("reload_config") {
        Some(reload) => parse_reload_backoff(&reload)?,
        None => crate::vm::DEFAULT_RELOAD_BACKOFF,
    };
    fields.finish()?;

    let mut vm_fields = vm.map()?;
    let vm_id = vm_fields
        .opt("vm_id")
        .map(|v| v.string())
        .transpose()?
        .unwrap_or_default();
    // An empty or absent runtime is Envoy's default one (measured: both load in Envoy 1.40).
    let runtime_at = vm_fields.opt("runtime");
    let runtime = match &runtime_at {
        None => String::new(),
        Some(at) => at.enum_name(&[
            "",
            "envoy.wasm.runtime.v8",
            "envoy.wasm.runtime.wasmtime",
            "envoy.wasm.runtime.wamr",
            "envoy.wasm.runtime.null",
        ])?,
    };
    if runtime == "envoy.wasm.runtime.null" {
        return Err(vm_fields.error(
            "the null runtime runs plugins compiled into Envoy; host-sim needs a .wasm file",
        ));
    }
    let code = parse_local_code(&mut vm_fields)?;
    let vm_configuration = match vm_fields.opt("configuration") {
        Some(value) => string_value(&value)?,
        None => String::new(),
    };
    // Cosmetic: precompiled code caches only change load time.
    vm_fields.cosmetic("allow_precompiled");
    vm_fields.cosmetic("nack_on_code_cache_miss");
    vm_fields.finish()?;
    Ok(WasmPlugin {
        name,
        root_id,
        vm_id,
        runtime,
        code,
        configuration,
        vm_configuration,
        failure_policy,
        reload_backoff,
    })
}

/// `reload_config: { backoff: { base_interval, max_interval } }`. Envoy uses only `base_interval` (at least 1 ms);
/// `max_interval` is accepted and, as in Envoy, has no effect.
fn parse_reload_backoff(at: &At<'_>) -> Result<std::time::Duration, ConfigError> {
    let mut fields = at.map()?;
    let Some(backoff) = fields.opt("backoff") else {
        fields.finish()?;
        return Ok(crate::vm::DEFAULT_RELOAD_BACKOFF);
    };
    fields.finish()?;
    let mut backoff_fields = backoff.map()?;
    let base = backoff_fields.req("base_interval")?;
    let interval = base.duration()?;
    if interval < std::time::Duration::from_millis(1) {
        return Err(base.error("base_interval must be at least 1ms"));
    }
    backoff_fields.cosmetic("max_interval");
    backoff_fields.finish()?;
    Ok(interval)
}

/// `code: { local: { filename: ... } }`; remote code and inline bytes are not supported.
fn parse_local_code(vm_fields: &mut Fields<'_>) -> Result<PathBuf, ConfigError> {
    let code = vm_fields.req("code")?;
    let mut code_fields = code.map()?;
    let local = code_fields.req("local")?;
    code_fields.finish()?;
    let mut local_fields = local.map()?;
    let filename = local_fields.req("filename")?.string()?;
    local_fields.finish()?;
    Ok(PathBuf::from(filename))
}

/// A `google.protobuf.StringValue` in Any form: `{"@type": ".../google.protobuf.StringValue", value: "..."}`.
fn string_value(at: &At<'_>) -> Result<String, ConfigError> {
    let (_, mut fields) = typed_config(at, &[STRING_VALUE_TYPE])?;
    let value = fields
        .opt("value")
        .map(|v| v.string())
        .transpose()?
        .unwrap_or_default();
    fields.finish()?;
    Ok(value)
}
