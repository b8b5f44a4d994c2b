//! The proxy-wasm glue: the root context compiles the configuration once and defines the
//! counters; each HTTP context reads what the decision needs through as few hostcalls as it can
//! and acts on the decision.
//!
//! Hot-path budget (downstream, allowed, authority already canonical with a port): one read of
//! the whole request header map (`:authority`, `:method`, the destination and cluster headers all
//! come from it) and one counter increment. With cluster routing, one header replace and the
//! `clear_route_cache` call — unless `clusters.default` says the route table already picks the
//! chosen cluster and the client sent no cluster header of its own.

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::abi;
use crate::config::{FilterConfig, Stage};
use crate::destination::{self, InvalidReason};
use crate::header_pairs::HeaderPairs;
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
        let bytes = match abi::plugin_configuration() {
            Ok(b) => b,
            Err(status) => {
                log::error!("dfp-filter: cannot read the plugin configuration (status {status})");
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
    // One hostcall reads every header the decision may need.
    let Some(buf) = abi::request_header_pairs() else {
        return invalid(shared, InvalidReason::MissingDestination, AUTHORITY);
    };
    let headers = HeaderPairs::new(&buf);
    let mut source = AUTHORITY;
    let mut raw = None;
    if let Some(name) = policy.destination_header() {
        raw = headers.get(name);
        if raw.is_some() {
            source = name;
        }
    }
    let from_header = raw.is_some();
    if raw.is_none() {
        raw = headers.get(AUTHORITY);
    }
    let Some(raw) = raw else {
        return invalid(shared, InvalidReason::MissingDestination, source);
    };
    let mut dest = match destination::parse(raw.to_vec()) {
        Ok(d) => d,
        Err(reason) => return invalid(shared, reason, source),
    };
    let mut method = headers.get(":method").unwrap_or_default();
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
            abi::remove_request_header(name);
        }
    }
    let mut clear = authority_changed;
    if let (Some(routing), Some(route)) = (policy.routing(), decision.route) {
        let cluster = match route {
            Route::Plain => &routing.plain,
            Route::Tls => &routing.tls,
        };
        let sent = headers.get(&routing.header).is_some();
        if routing.default.as_deref() == Some(cluster.as_str()) {
            // The route table's fallback is already right, unless the client sent the header.
            if sent {
                abi::remove_request_header(&routing.header);
                clear = true;
            }
        } else {
            // Replace removes every client-sent value of the header before writing ours.
            set_request_header(&routing.header, cluster);
            clear = true;
        }
    }
    if clear {
        clear_route_cache(shared);
    }
    Action::Continue
}

fn upstream(shared: &Shared) -> Action {
    let address = abi::upstream_address().and_then(|b| net::parse_socket_address(&b));
    let mut headers = LazyHeaders::default();
    let outcome = shared.policy.decide_upstream(address, &mut headers);
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
            let authority = headers
                .get(AUTHORITY)
                .and_then(|a| destination::parse(a.to_vec()).ok())
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
        let counter = |name: String| abi::define_counter(&name);
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
        abi::increment_counter(id);
    }
}

/// The request headers, read from the host the first time something asks: the upstream stage
/// needs them only for rules with methods and for the body of a denial.
#[derive(Default)]
struct LazyHeaders {
    buf: Option<Vec<u8>>,
}

impl LazyHeaders {
    fn get(&mut self, name: &str) -> Option<&[u8]> {
        let buf = self
            .buf
            .get_or_insert_with(|| abi::request_header_pairs().unwrap_or_default());
        HeaderPairs::new(buf).get(name)
    }
}

impl MethodSource for LazyHeaders {
    fn method(&mut self) -> &[u8] {
        self.get(":method").unwrap_or_default()
    }
}

fn set_request_header(name: &str, value: &str) {
    abi::replace_request_header(name, value);
}

fn clear_route_cache(shared: &Shared) {
    if shared.no_clear_route_cache.get() {
        return;
    }
    let status = abi::call_foreign_function("clear_route_cache");
    if status != abi::OK {
        log::debug!(
            "dfp-filter: clear_route_cache unavailable (status {status}); the route is not re-picked"
        );
        if status == abi::NOT_FOUND {
            shared.no_clear_route_cache.set(true);
        }
    }
}

fn send_local_response(status: u32, details: &str, body: &[u8], headers: &[(&str, &str)]) {
    let headers = response::serialize_headers(headers);
    let result = abi::send_local_response(status, details, body, &headers);
    if result != abi::OK {
        log::warn!("dfp-filter: the host refused the local reply (status {result})");
    }
}

/// Debug logging per request is affordable only when the host would print it: follow its level.
fn follow_host_log_level() {
    let Some(raw) = abi::log_level() else {
        return;
    };
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
