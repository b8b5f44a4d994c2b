//! The proxy-wasm glue: the module's exports, the root contexts (one per plugin: the compiled
//! configuration and the counter ids) and the HTTP contexts, which read what the decision needs
//! through as few hostcalls as they can and act on the decision.
//!
//! The module exports only the callbacks it uses — `proxy_on_context_create`,
//! `proxy_on_configure`, `proxy_on_request_headers` and `proxy_on_delete` (plus `proxy_on_vm_start`
//! and the allocator) — rather than linking the SDK's dispatcher, which exports every callback.
//! Envoy (and host-sim) skip a callback the module does not export; each one exported costs every
//! request an entry into the wasm VM, and in Envoy's V8 that entry is the expensive part.
//!
//! Hot-path budget (downstream, allowed, authority already canonical with a port): one read of
//! the whole request header map (`:authority`, `:method`, the destination and cluster headers all
//! come from it) and one counter increment. With cluster routing, one header replace and the
//! `clear_route_cache` call — unless `clusters.default` says the route table already picks the
//! chosen cluster and the client sent no cluster header of its own.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::abi;
use crate::config::{FilterConfig, Stage};
use crate::destination::{self, InvalidReason, Target};
use crate::header_pairs::HeaderPairs;
use crate::host_limit::{Admit, HostSet};
use crate::net;
use crate::policy::{DenyReason, HostLimit, MethodSource, Outcome, Policy, Route};
use crate::response;

const AUTHORITY: &str = ":authority";
const PROXY_AUTHORIZATION: &str = "proxy-authorization";

/// `proxy_action_t`.
const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

/// The policy and counter ids, shared by every HTTP context of one plugin instance.
struct Shared {
    policy: Policy,
    metrics: Metrics,
    /// Set once the host says it lacks `clear_route_cache`, so we stop asking (and logging).
    no_clear_route_cache: Cell<bool>,
    /// Per rule with `max_hosts`: what this worker last read of the rule's shared set.
    seen: RefCell<Vec<(u32, SeenSet)>>,
}

/// This worker's copy of one rule's shared destination set.
#[derive(Default)]
struct SeenSet {
    /// The destinations admitted when it was read (sorted), so a known destination costs no hostcall. Stale ones stay
    /// admitted here until this worker reads the set again, which bounds a rule's live destinations by `max_hosts`
    /// times (workers + 1).
    hosts: Vec<String>,
    /// Until when (seconds) the set was full: no slot frees before its earliest expiry, so a new destination until
    /// then is denied without reading the set (measured: reading and parsing a full set of 256 costs ~75 µs per
    /// request, the clock alone a hostcall). 0 when it was not full.
    full_until: u64,
}

/// The live contexts of this VM (one per worker thread in Envoy, so no locking).
#[derive(Default)]
struct Contexts {
    /// Root contexts (one per plugin sharing this VM), configured or not yet.
    roots: Vec<(u32, Option<Rc<Shared>>)>,
    /// HTTP contexts and their root. Ids only grow, so appending keeps this sorted.
    streams: Vec<(u32, u32)>,
}

impl Contexts {
    fn root(&self, id: u32) -> Option<&Option<Rc<Shared>>> {
        self.roots.iter().find(|(r, _)| *r == id).map(|(_, s)| s)
    }

    fn stream_root(&self, id: u32) -> Option<u32> {
        let at = self.streams.binary_search_by_key(&id, |(s, _)| *s).ok()?;
        Some(self.streams[at].1)
    }
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// The ABI version this module speaks (hosts look for this export).
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: u32) -> u32 {
    abi::install_logger();
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    CONTEXTS.with_borrow_mut(|c| {
        if parent_context_id == 0 {
            c.roots.push((context_id, None));
        } else {
            let at = c.streams.partition_point(|(s, _)| *s < context_id);
            c.streams.insert(at, (context_id, parent_context_id));
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    CONTEXTS.with_borrow_mut(|c| {
        if let Ok(at) = c.streams.binary_search_by_key(&context_id, |(s, _)| *s) {
            c.streams.remove(at);
        } else {
            c.roots.retain(|(r, _)| *r != context_id);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context_id: u32, _plugin_configuration_size: u32) -> u32 {
    abi::install_logger();
    let shared = configure();
    let ok = shared.is_some();
    CONTEXTS.with_borrow_mut(
        |c| match c.roots.iter_mut().find(|(r, _)| *r == root_context_id) {
            Some((_, slot)) => *slot = shared,
            None => c.roots.push((root_context_id, shared)),
        },
    );
    ok as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _headers: u32,
    _end_of_stream: u32,
) -> u32 {
    let shared = CONTEXTS.with_borrow(|c| {
        c.stream_root(context_id)
            .and_then(|root| c.root(root))
            .and_then(Option::clone)
    });
    let Some(shared) = shared else {
        // A context of a plugin whose configuration failed (or of no known plugin): fail closed.
        send_local_response(
            503,
            "dfp_unconfigured",
            b"",
            &[(response::REASON_HEADER, "unconfigured")],
        );
        return PAUSE;
    };
    match shared.policy.stage() {
        Stage::Downstream => downstream(&shared),
        Stage::Upstream => upstream(&shared),
    }
}

/// Reads, validates and compiles the plugin configuration; `None` (logged) when it is unusable.
fn configure() -> Option<Rc<Shared>> {
    let bytes = match abi::plugin_configuration() {
        Ok(b) => b,
        Err(status) => {
            log::error!("dfp-filter: cannot read the plugin configuration (status {status})");
            return None;
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        log::error!("dfp-filter: configuration: not UTF-8");
        return None;
    };
    let config = match FilterConfig::from_json(text) {
        Ok(c) => c,
        Err(e) => {
            log::error!("dfp-filter: invalid configuration: {e}");
            return None;
        }
    };
    let Some(metrics) = Metrics::define(config.stage) else {
        log::error!("dfp-filter: the host refused to define the filter's counters");
        return None;
    };
    let policy = Policy::compile(&config);
    log::info!(
        "dfp-filter: configured stage={} mode={} allow={} deny={}",
        config.stage.as_str(),
        config.mode.as_str(),
        config.allow.len(),
        config.deny.len()
    );
    Some(Rc::new(Shared {
        policy,
        metrics,
        no_clear_route_cache: Cell::new(false),
        seen: RefCell::new(Vec::new()),
    }))
}

fn downstream(shared: &Shared) -> u32 {
    let policy = &shared.policy;
    // One hostcall reads every header the decision may need.
    let Some(buf) = abi::request_header_pairs() else {
        return invalid(shared, InvalidReason::MissingDestination, AUTHORITY);
    };
    let mut headers = HeaderPairs::new(&buf);
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
    // Only an IP literal can name the listener itself: names never pay for reading its address.
    let listener = match dest.target() {
        Target::Ip(_) => abi::destination_address().and_then(|b| net::parse_socket_address(&b)),
        Target::Name(_) => None,
    };
    let decision = match policy.decide(&mut dest, &mut headers, listener) {
        Ok(d) => d,
        Err(reason) => return invalid(shared, reason, source),
    };
    let mut outcome = decision.outcome;
    if let (Outcome::Allow, Some(limit)) = (outcome, decision.host_limit) {
        if !admit_host(shared, &limit, dest.authority()) {
            outcome = policy.verdict(Some(DenyReason::HostLimit));
        }
    }
    shared.metrics.count(outcome);
    match outcome {
        Outcome::Allow => {}
        Outcome::ReportOnly(reason) => {
            log::info!(
                "dfp-filter: report-only: would deny {} ({reason})",
                dest.authority()
            );
        }
        Outcome::Deny(reason) => {
            log::info!("dfp-filter: denied {} ({reason})", dest.authority());
            let body = response::deny_body(reason, Some(dest.authority()), None);
            deny(reason, &body);
            return PAUSE;
        }
    }
    // The client's credential for this proxy is not the destination's to see; the header map read above says
    // whether there is one, so a request without it costs no hostcall.
    if policy.removes_proxy_authorization() && headers.get(PROXY_AUTHORIZATION).is_some() {
        abi::remove_request_header(PROXY_AUTHORIZATION);
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
    CONTINUE
}

/// Whether `limit`'s rule admits `host`: known to this worker, or admitted by the rule's shared set
/// (compare-and-swap; see [`crate::host_limit`]). Fails closed when the host's shared data refuses.
fn admit_host(shared: &Shared, limit: &HostLimit, host: &str) -> bool {
    // `None`: this worker has not read the rule's set yet. The borrow ends before the slow path writes `seen`.
    let seen = shared
        .seen
        .borrow()
        .iter()
        .find(|(rule, _)| *rule == limit.rule)
        .map(|(_, seen)| {
            let known = seen
                .hosts
                .binary_search_by(|h| h.as_str().cmp(host))
                .is_ok();
            (known, seen.full_until)
        });
    let now = match seen {
        Some((true, _)) => return true,
        Some((false, until)) => {
            let now = abi::now_seconds().unwrap_or_default();
            if now < until {
                return false;
            }
            now
        }
        None => abi::now_seconds().unwrap_or_default(),
    };
    admit_from_shared(shared, limit, host, now)
}

/// The slow path of [`admit_host`]: read the rule's shared set, admit `host` if there is room, write it back.
fn admit_from_shared(shared: &Shared, limit: &HostLimit, host: &str, now: u64) -> bool {
    let key = shared.policy.host_limit_key(limit.rule);
    for _ in 0..8 {
        let Ok((value, cas)) = abi::get_shared_data(key) else {
            log::warn!("dfp-filter: shared data unavailable; denying {host} (host_limit)");
            return false;
        };
        let mut set = HostSet::parse(&value);
        if set.admit(host, now, u64::from(limit.ttl_seconds), limit.max) == Admit::Full {
            // Until its earliest expiry the set's members cannot change: remember them and the time.
            remember(
                shared,
                limit.rule,
                &set,
                set.earliest_expiry().unwrap_or(now),
            );
            return false;
        }
        match abi::set_shared_data(key, &set.serialize(), cas) {
            abi::OK => {
                remember(shared, limit.rule, &set, 0);
                return true;
            }
            abi::CAS_MISMATCH => continue,
            status => {
                log::warn!("dfp-filter: shared data refused a write (status {status}); denying {host} (host_limit)");
                return false;
            }
        }
    }
    false
}

/// This worker's copy of `rule`'s set, from the shared value just read (`full_until`: see [`SeenSet`]).
fn remember(shared: &Shared, rule: u32, set: &HostSet, full_until: u64) {
    let mut hosts: Vec<String> = set.hosts().map(str::to_owned).collect();
    hosts.sort_unstable();
    let fresh = SeenSet { hosts, full_until };
    let mut seen = shared.seen.borrow_mut();
    match seen.iter_mut().find(|(r, _)| *r == rule) {
        Some((_, known)) => *known = fresh,
        None => seen.push((rule, fresh)),
    }
}

fn upstream(shared: &Shared) -> u32 {
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
    shared.metrics.count(outcome);
    match outcome {
        Outcome::Allow => {}
        Outcome::ReportOnly(reason) => {
            log::info!(
                "dfp-filter: report-only: would deny upstream address {} ({reason})",
                shown()
            );
        }
        Outcome::Deny(reason) => {
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
            return PAUSE;
        }
    }
    CONTINUE
}

fn invalid(shared: &Shared, reason: InvalidReason, source: &str) -> u32 {
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
    PAUSE
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

    /// One decision's counter, for either stage.
    fn count(&self, outcome: Outcome) {
        self.bump(match outcome {
            Outcome::Allow => self.allowed,
            Outcome::ReportOnly(reason) => self.report_only[reason as usize],
            Outcome::Deny(reason) => self.denied[reason as usize],
        });
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
