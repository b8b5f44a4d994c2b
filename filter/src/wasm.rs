//! The proxy-wasm glue: the root context compiles the configuration once and defines the
//! counters; each HTTP context reads what the decision needs through as few hostcalls as it can
//! and acts on the decision.
//!
//! Hot-path budget (downstream, allowed, authority already canonical with a port): one header
//! read; with cluster routing, one header replace and the `clear_route_cache` call; one counter
//! increment. `:method` is read only when the decision asks for it.

use std::cell::Cell;
use std::ptr::null_mut;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::{FilterConfig, Stage};
use crate::destination::{self, InvalidReason};
use crate::net;
use crate::policy::{DenyReason, MethodSource, Outcome, Policy, Route};
use crate::response;

const AUTHORITY: &str = ":authority";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None }) });
}}

/// The policy and counter ids, shared by every HTTP context of one plugin instance.
struct Shared {
    policy: Policy,
    metrics: Metrics,
    /// Set once the host says it lacks `clear_route_cache`, so we stop asking (and logging).
    no_clear_route_cache: Cell<bool>,
}

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        follow_host_log_level();
        let bytes = match hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        ) {
            Ok(b) => b.unwrap_or_default(),
            Err(status) => {
                log::error!(
                    "dfp-filter: cannot read the plugin configuration (status {})",
                    status as u32
                );
                return false;
            }
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            log::error!("dfp-filter: configuration: not UTF-8");
            return false;
        };
        let config = match FilterConfig::from_json(text) {
            Ok(c) => c,
            Err(e) => {
                log::error!("dfp-filter: invalid configuration: {e}");
                return false;
            }
        };
        let Some(metrics) = Metrics::define(config.stage) else {
            log::error!("dfp-filter: the host refused to define the filter's counters");
            return false;
        };
        let policy = Policy::compile(&config);
        log::info!(
            "dfp-filter: configured stage={} mode={} allow={} deny={}",
            config.stage.as_str(),
            config.mode.as_str(),
            config.allow.len(),
            config.deny.len()
        );
        self.shared = Some(Rc::new(Shared {
            policy,
            metrics,
            no_clear_route_cache: Cell::new(false),
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            shared: self.shared.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    /// `None` only if the host created a context without a successful `on_configure`.
    shared: Option<Rc<Shared>>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            // Fail closed.
            send_local_response(
                503,
                "dfp_unconfigured",
                b"",
                &[(response::REASON_HEADER, "unconfigured")],
            );
            return Action::Pause;
        };
        match shared.policy.stage() {
            Stage::Downstream => downstream(&shared),
            Stage::Upstream => upstream(&shared),
        }
    }
}

fn downstream(shared: &Shared) -> Action {
    let policy = &shared.policy;
    let mut source = AUTHORITY;
    let mut raw = None;
    if let Some(name) = policy.destination_header() {
        raw = request_header(name);
        if raw.is_some() {
            source = name;
        }
    }
    let from_header = raw.is_some();
    if raw.is_none() {
        raw = request_header(AUTHORITY);
    }
    let Some(raw) = raw else {
        return invalid(shared, InvalidReason::MissingDestination, source);
    };
    let mut dest = match destination::parse(raw) {
        Ok(d) => d,
        Err(reason) => return invalid(shared, reason, source),
    };
    let mut method = LazyMethod::default();
    let decision = match policy.decide(&mut dest, &mut method) {
        Ok(d) => d,
        Err(reason) => return invalid(shared, reason, source),
    };
    match decision.outcome {
        Outcome::Allow => shared.metrics.bump(shared.metrics.allowed),
        Outcome::ReportOnly(reason) => {
            shared
                .metrics
                .bump(shared.metrics.report_only[reason as usize]);
            log::info!(
                "dfp-filter: report-only: would deny {} ({reason})",
                dest.authority()
            );
        }
        Outcome::Deny(reason) => {
            shared.metrics.bump(shared.metrics.denied[reason as usize]);
            log::info!("dfp-filter: denied {} ({reason})", dest.authority());
            let body = response::deny_body(reason, Some(dest.authority()), None);
            deny(reason, &body);
            return Action::Pause;
        }
    }
    let authority_changed = from_header || dest.is_rewritten();
    if authority_changed {
        set_request_header(AUTHORITY, dest.authority());
    }
    if from_header {
        if let Some(name) = policy.destination_header() {
            let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
        }
    }
    let mut clear = authority_changed;
    if let (Some(routing), Some(route)) = (policy.routing(), decision.route) {
        let cluster = match route {
            Route::Plain => &routing.plain,
            Route::Tls => &routing.tls,
        };
        // Replace removes every client-sent value of the header before writing ours.
        set_request_header(&routing.header, cluster);
        clear = true;
    }
    if clear {
        clear_route_cache(shared);
    }
    Action::Continue
}

fn upstream(shared: &Shared) -> Action {
    let address = upstream_address().and_then(|b| net::parse_socket_address(&b));
    let mut method = LazyMethod::default();
    let outcome = shared.policy.decide_upstream(address, &mut method);
    // Only denials and reports describe the address, so only they format it.
    let shown = || {
        let mut s = String::with_capacity(48);
        match address {
            Some((ip, port)) => net::push_socket_address(&mut s, ip, port),
            None => s.push_str("unknown"),
        }
        s
    };
    match outcome {
        Outcome::Allow => shared.metrics.bump(shared.metrics.allowed),
        Outcome::ReportOnly(reason) => {
            shared
                .metrics
                .bump(shared.metrics.report_only[reason as usize]);
            log::info!(
                "dfp-filter: report-only: would deny upstream address {} ({reason})",
                shown()
            );
        }
        Outcome::Deny(reason) => {
            shared.metrics.bump(shared.metrics.denied[reason as usize]);
            let shown = shown();
            // The authority was canonicalised downstream; re-validate before echoing it.
            let authority = request_header(AUTHORITY)
                .and_then(|a| destination::parse(a).ok())
                .map(|d| d.authority().to_owned());
            log::info!(
                "dfp-filter: denied upstream address {shown} for {} ({reason})",
                authority.as_deref().unwrap_or("-")
            );
            let body = response::deny_body(
                reason,
                authority.as_deref(),
                address.is_some().then_some(shown.as_str()),
            );
            deny(reason, &body);
            return Action::Pause;
        }
    }
    Action::Continue
}

fn invalid(shared: &Shared, reason: InvalidReason, source: &str) -> Action {
    shared.metrics.bump(shared.metrics.invalid[reason as usize]);
    log::info!("dfp-filter: invalid destination in {source} ({reason})");
    let body = response::invalid_body(reason, source);
    send_local_response(
        400,
        &response::invalid_details(reason),
        body.as_bytes(),
        &[
            (response::REASON_HEADER, reason.as_str()),
            ("content-type", "application/json"),
        ],
    );
    Action::Pause
}

fn deny(reason: DenyReason, body: &str) {
    send_local_response(
        403,
        &response::deny_details(reason),
        body.as_bytes(),
        &[
            (response::REASON_HEADER, reason.as_str()),
            ("content-type", "application/json"),
        ],
    );
}

/// Counter ids, indexed by reason discriminant.
struct Metrics {
    allowed: u32,
    denied: [u32; DenyReason::ALL.len()],
    report_only: [u32; DenyReason::ALL.len()],
    invalid: [u32; InvalidReason::ALL.len()],
}

impl Metrics {
    fn define(stage: Stage) -> Option<Metrics> {
        let counter = |name: String| hostcalls::define_metric(MetricType::Counter, &name).ok();
        let mut m = Metrics {
            allowed: counter(response::allowed_metric(stage))?,
            denied: [0; DenyReason::ALL.len()],
            report_only: [0; DenyReason::ALL.len()],
            invalid: [0; InvalidReason::ALL.len()],
        };
        for r in DenyReason::ALL {
            m.denied[r as usize] = counter(response::denied_metric(stage, r))?;
            m.report_only[r as usize] = counter(response::report_only_metric(stage, r))?;
        }
        for r in InvalidReason::ALL {
            m.invalid[r as usize] = counter(response::invalid_metric(stage, r))?;
        }
        Some(m)
    }

    fn bump(&self, id: u32) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// `:method`, read from the host the first time the decision asks.
#[derive(Default)]
struct LazyMethod {
    value: Option<Vec<u8>>,
}

impl MethodSource for LazyMethod {
    fn method(&mut self) -> &[u8] {
        self.value
            .get_or_insert_with(|| request_header(":method").unwrap_or_default())
    }
}

fn request_header(name: &str) -> Option<Vec<u8>> {
    // The bytes variant: a header value that is not UTF-8 must not trap the VM.
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

fn set_request_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
}

fn clear_route_cache(shared: &Shared) {
    if shared.no_clear_route_cache.get() {
        return;
    }
    if let Err(status) = hostcalls::call_foreign_function("clear_route_cache", Some(&[])) {
        log::debug!(
            "dfp-filter: clear_route_cache unavailable (status {}); the route is not re-picked",
            status as u32
        );
        if status == Status::NotFound {
            shared.no_clear_route_cache.set(true);
        }
    }
}

// Hostcalls the SDK wraps in ways we cannot use: its local reply has no details argument, its
// property read takes a Vec path, and its log-level read trusts the host's value as an enum.
// Results are read as plain integers: a status outside the SDK's enum must not be UB.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;

    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;

    fn proxy_get_log_level(return_level: *mut u32) -> u32;
}

const STATUS_OK: u32 = 0;

fn send_local_response(status: u32, details: &str, body: &[u8], headers: &[(&str, &str)]) {
    let headers = response::serialize_headers(headers);
    // SAFETY: every pointer/length pair describes a live buffer that outlives the call.
    let result = unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    if result != STATUS_OK {
        log::warn!("dfp-filter: the host refused the local reply (status {result})");
    }
}

/// The `upstream.address` property (path segments are NUL-separated in the ABI).
fn upstream_address() -> Option<Vec<u8>> {
    const PATH: &[u8] = b"upstream\0address";
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through our exported allocator, which
    // hands out boxed slices of exactly `size` bytes; we take ownership of it once.
    let status = unsafe { proxy_get_property(PATH.as_ptr(), PATH.len(), &mut data, &mut size) };
    if status != STATUS_OK || data.is_null() {
        return None;
    }
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Debug logging per request is affordable only when the host would print it: follow its level.
fn follow_host_log_level() {
    let mut raw: u32 = u32::MAX;
    // SAFETY: the host writes one u32.
    let status = unsafe { proxy_get_log_level(&mut raw) };
    if status != STATUS_OK {
        return;
    }
    let level = match raw {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        _ => LogLevel::Critical,
    };
    proxy_wasm::set_log_level(level);
}
