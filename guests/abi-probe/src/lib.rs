//! A proxy-wasm guest that exercises each hostcall family through the Rust SDK, so host-sim's
//! ABI tests see exactly what a real SDK guest sends and accepts. The request header
//! `x-probe` picks a scenario; results come back as request/response headers, logs, metrics,
//! or (the `report*` and `local-reply*` scenarios of [`report`]) as a JSON local reply.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

mod report;

thread_local! {
    // Streams parked until the next tick (root context resumes them).
    static WAITING_FOR_TICK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static METRICS: RefCell<Option<Metrics>> = const { RefCell::new(None) };
}

#[derive(Clone, Copy)]
struct Metrics {
    requests: u32,
    inflight: u32,
    sizes: u32,
    dequeued: u32,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| Box::new(Root { id, queue: 0, ticks: 0, config: String::new() }));
}}

struct Root {
    id: u32,
    queue: u32,
    ticks: u32,
    config: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let vm = self.get_vm_configuration().unwrap_or_default();
        if vm == b"refuse" {
            return false;
        }
        self.queue = hostcalls::register_shared_queue("probe_q").unwrap_or(0);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.config = String::from_utf8_lossy(&config).into_owned();
        if self.config == "refuse" {
            proxy_wasm::hostcalls::log(LogLevel::Error, "probe: configuration refused").ok();
            return false;
        }
        if let Some(ms) = self.config.strip_prefix("tick=") {
            let ms: u64 = ms.parse().unwrap_or(10);
            self.set_tick_period(Duration::from_millis(ms));
        }
        let m = Metrics {
            requests: hostcalls::define_metric(MetricType::Counter, "probe.requests").unwrap_or(0),
            inflight: hostcalls::define_metric(MetricType::Gauge, "probe.inflight").unwrap_or(0),
            sizes: hostcalls::define_metric(MetricType::Histogram, "probe.sizes").unwrap_or(0),
            dequeued: hostcalls::define_metric(MetricType::Counter, "probe.dequeued").unwrap_or(0),
        };
        METRICS.with(|x| *x.borrow_mut() = Some(m));
        hostcalls::log(
            LogLevel::Info,
            &format!("probe: configured root {} with {:?}", self.id, self.config),
        )
        .ok();
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        hostcalls::log(LogLevel::Info, &format!("probe: tick {}", self.ticks)).ok();
        let waiting = WAITING_FOR_TICK.with(|w| std::mem::take(&mut *w.borrow_mut()));
        for id in waiting {
            if hostcalls::set_effective_context(id).is_ok() {
                hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    "x-ticked",
                    Some(&self.ticks.to_string()),
                )
                .ok();
                hostcalls::resume_http_request().ok();
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            hostcalls::log(
                LogLevel::Info,
                &format!("probe: dequeued {}", String::from_utf8_lossy(&item)),
            )
            .ok();
            if let Some(m) = METRICS.with(|x| *x.borrow()) {
                hostcalls::increment_metric(m.dequeued, 1).ok();
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            id,
            scenario: String::new(),
            queue: self.queue,
            splice_status: None,
            splice_spec: None,
        }))
    }
}

struct Probe {
    id: u32,
    scenario: String,
    queue: u32,
    /// `splice-body`: the status `proxy_set_buffer_bytes` answered, sent back as `x-splice-status`.
    splice_status: Option<String>,
    /// `splice-body`: the request's `x-splice: start,size,data`, read with the request headers.
    splice_spec: Option<String>,
}

fn show(v: Option<Vec<u8>>) -> String {
    match v {
        None => "absent".to_string(),
        Some(b) if b.len() == 8 && b.iter().any(|c| !c.is_ascii_graphic()) => {
            format!(
                "int:{}",
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            )
        }
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
    }
}

fn status_name(s: Status) -> String {
    format!("{s:?}")
}

impl Probe {
    fn set(&self, key: &str, value: &str) {
        self.set_http_request_header(key, Some(value));
    }
}

impl Context for Probe {
    fn on_http_call_response(&mut self, token: u32, nh: usize, body_size: usize, _nt: usize) {
        if nh == 0 {
            // A failed call: Envoy has no response maps then, only a status.
            let (code, msg) = hostcalls::get_grpc_status().unwrap_or((0, None));
            let code = code.to_string();
            let msg = msg.unwrap_or_default();
            self.send_http_response(
                502,
                vec![
                    ("x-call-status", code.as_str()),
                    ("x-call-message", msg.as_str()),
                ],
                Some(b"call failed"),
            );
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        hostcalls::log(
            LogLevel::Info,
            &format!("probe: call {token} answered {status} with {nh} headers"),
        )
        .ok();
        if status == "200" {
            self.set("x-auth", &String::from_utf8_lossy(&body));
            self.resume_http_request();
        } else {
            self.send_http_response(
                401,
                vec![("x-call-status", status.as_str())],
                Some(b"call failed"),
            );
        }
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, n: usize, eos: bool) -> Action {
        self.scenario = self.get_http_request_header("x-probe").unwrap_or_default();
        if self.scenario == "splice-body" {
            self.splice_spec = self.get_http_request_header("x-splice");
        }
        if let Some(m) = METRICS.with(|x| *x.borrow()) {
            hostcalls::increment_metric(m.requests, 1).ok();
            hostcalls::increment_metric(m.inflight, 1).ok();
        }
        match self.scenario.as_str() {
            "headers" => {
                let pairs = self.get_http_request_headers();
                self.set("x-count", &format!("{n}/{}", pairs.len()));
                self.set("x-eos", if eos { "true" } else { "false" });
                self.add_http_request_header("x-added", "1");
                self.add_http_request_header("x-added", "2");
                self.set_http_request_header("x-replace", Some("new"));
                self.set_http_request_header("x-remove", None);
                let path = self.get_http_request_header(":path").unwrap_or_default();
                self.set("x-path-seen", &path);
                let missing = self.get_http_request_header("x-missing");
                self.set(
                    "x-missing-is",
                    if missing.is_none() { "none" } else { "some" },
                );
                Action::Continue
            }
            "set-pairs" => {
                self.set_http_request_headers(vec![
                    (":method", "GET"),
                    (":path", "/rewritten"),
                    (":authority", "new.test"),
                    ("x-only", "1"),
                ]);
                Action::Continue
            }
            "local" => {
                self.send_http_response(
                    403,
                    vec![("x-why", "probe"), ("content-type", "application/json")],
                    Some(b"{\"denied\":true}"),
                );
                Action::Continue
            }
            "local-details" => {
                hostcalls::send_http_response(451, vec![], Some(b"x")).ok();
                Action::Pause
            }
            "http-call" => {
                let r = self.dispatch_http_call(
                    "auth",
                    vec![
                        (":method", "POST"),
                        (":path", "/check"),
                        (":authority", "auth.test"),
                    ],
                    Some(b"who"),
                    vec![("x-trailer", "t")],
                    Duration::from_millis(1500),
                );
                match r {
                    Ok(_) => Action::Pause,
                    Err(s) => {
                        self.set("x-call-error", &status_name(s));
                        Action::Continue
                    }
                }
            }
            "http-call-bad-cluster" => {
                let r = self.dispatch_http_call(
                    "nope",
                    vec![(":method", "GET"), (":path", "/"), (":authority", "a")],
                    None,
                    vec![],
                    Duration::from_secs(1),
                );
                self.set(
                    "x-call-error",
                    &r.err().map(status_name).unwrap_or_default(),
                );
                let r = self.dispatch_http_call(
                    "auth",
                    vec![(":method", "GET")],
                    None,
                    vec![],
                    Duration::from_secs(1),
                );
                self.set(
                    "x-call-error-headers",
                    &r.err().map(status_name).unwrap_or_default(),
                );
                Action::Continue
            }
            "props" => {
                for (name, path) in [
                    ("source", vec!["source", "address"]),
                    ("source-port", vec!["source", "port"]),
                    ("plugin", vec!["plugin_name"]),
                    ("root", vec!["plugin_root_id"]),
                    ("vm", vec!["plugin_vm_id"]),
                    ("route", vec!["xds", "route_name"]),
                    ("node", vec!["xds", "node"]),
                    ("path", vec!["request", "path"]),
                    ("method", vec!["request", "method"]),
                    ("header", vec!["request", "headers", "x-probe"]),
                    ("conn", vec!["connection_id"]),
                    ("upstream", vec!["upstream", "address"]),
                ] {
                    self.set(&format!("x-prop-{name}"), &show(self.get_property(path)));
                }
                self.set_property(vec!["probe_state"], Some(b"v1"));
                self.set(
                    "x-prop-state",
                    &show(self.get_property(vec!["probe_state"])),
                );
                let bare = hostcalls::get_property(vec!["request"]);
                self.set(
                    "x-prop-bare",
                    &match bare {
                        Err(s) => status_name(s),
                        Ok(v) => show(v),
                    },
                );
                Action::Continue
            }
            "metrics" => {
                if let Some(m) = METRICS.with(|x| *x.borrow()) {
                    hostcalls::record_metric(m.sizes, 7).ok();
                    hostcalls::record_metric(m.sizes, 5).ok();
                    self.set(
                        "x-requests",
                        &hostcalls::get_metric(m.requests)
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    );
                    self.set(
                        "x-inflight",
                        &hostcalls::get_metric(m.inflight)
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    );
                    self.set(
                        "x-hist-get",
                        &hostcalls::get_metric(m.sizes)
                            .err()
                            .map(status_name)
                            .unwrap_or_default(),
                    );
                    self.set(
                        "x-counter-dec",
                        &hostcalls::increment_metric(m.requests, -1)
                            .err()
                            .map(status_name)
                            .unwrap_or_default(),
                    );
                    self.set(
                        "x-unknown",
                        &hostcalls::increment_metric(4000, 1)
                            .err()
                            .map(status_name)
                            .unwrap_or_default(),
                    );
                    hostcalls::increment_metric(m.inflight, -1).ok();
                }
                Action::Continue
            }
            "shared" => {
                let (value, cas) = self.get_shared_data("counter");
                let n: u64 = value
                    .map(|v| String::from_utf8_lossy(&v).parse().unwrap_or(0))
                    .unwrap_or(0);
                let r = self.set_shared_data("counter", Some((n + 1).to_string().as_bytes()), cas);
                self.set("x-shared-set", if r.is_ok() { "ok" } else { "err" });
                let stale = self.set_shared_data(
                    "counter",
                    Some(b"stale"),
                    Some(cas.unwrap_or(0).wrapping_add(1000)),
                );
                self.set(
                    "x-shared-stale",
                    &stale.err().map(status_name).unwrap_or_else(|| "ok".into()),
                );
                let (after, _) = self.get_shared_data("counter");
                self.set("x-shared-value", &show(after));
                Action::Continue
            }
            "queue" => {
                let path = self.get_http_request_header(":path").unwrap_or_default();
                self.enqueue_shared_queue(self.queue, Some(path.as_bytes()))
                    .ok();
                let vm_id = show(self.get_property(vec!["plugin_vm_id"]));
                let resolved = hostcalls::resolve_shared_queue(&vm_id, "probe_q")
                    .ok()
                    .flatten();
                self.set(
                    "x-queue-resolved",
                    &format!("{}", resolved == Some(self.queue)),
                );
                let missing = hostcalls::resolve_shared_queue(&vm_id, "nope")
                    .ok()
                    .flatten();
                self.set(
                    "x-queue-missing",
                    if missing.is_none() { "none" } else { "some" },
                );
                let bad = hostcalls::enqueue_shared_queue(9999, Some(b"x"));
                self.set(
                    "x-queue-bad",
                    &bad.err().map(status_name).unwrap_or_default(),
                );
                Action::Continue
            }
            "tick-wait" => {
                WAITING_FOR_TICK.with(|w| w.borrow_mut().push(self.id));
                Action::Pause
            }
            "foreign" => {
                let r = hostcalls::call_foreign_function("clear_route_cache", None);
                self.set("x-clear", if r.is_ok() { "ok" } else { "err" });
                let r = hostcalls::call_foreign_function("no_such_function", Some(b"x"));
                self.set(
                    "x-unknown-fn",
                    &r.err().map(status_name).unwrap_or_default(),
                );
                Action::Continue
            }
            "grpc" => {
                let r = hostcalls::dispatch_grpc_call(
                    "auth",
                    "svc",
                    "M",
                    vec![],
                    None,
                    Duration::from_secs(1),
                );
                self.set("x-grpc", &r.err().map(status_name).unwrap_or_default());
                let r = hostcalls::dispatch_grpc_call(
                    "nowhere",
                    "svc",
                    "M",
                    vec![],
                    None,
                    Duration::from_secs(1),
                );
                self.set(
                    "x-grpc-unknown",
                    &r.err().map(status_name).unwrap_or_default(),
                );
                Action::Continue
            }
            "log" => {
                for (lvl, name) in [
                    (LogLevel::Trace, "trace"),
                    (LogLevel::Debug, "debug"),
                    (LogLevel::Info, "info"),
                    (LogLevel::Warn, "warn"),
                    (LogLevel::Error, "error"),
                    (LogLevel::Critical, "critical"),
                ] {
                    hostcalls::log(lvl, &format!("probe: level {name}")).ok();
                }
                let level = hostcalls::get_log_level().map(|l| l as u32).unwrap_or(99);
                self.set("x-log-level", &level.to_string());
                let now = hostcalls::get_current_time()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                self.set(
                    "x-now-secs",
                    &now.map(|d| d.as_secs().to_string()).unwrap_or_default(),
                );
                Action::Continue
            }
            "report" => report::on_request_headers(self.id, eos),
            "local-reply" => report::local_reply(false),
            "local-reply-empty" => report::local_reply(true),
            "trap-headers" => panic!("probe: trap in request headers"),
            "body" | "trap-body" | "trap-log" | "response" | "close" => Action::Continue,
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        match self.scenario.as_str() {
            "body" => {
                if !eos {
                    return Action::Pause;
                }
                let body = self.get_http_request_body(0, size).unwrap_or_default();
                let upper = String::from_utf8_lossy(&body).to_uppercase();
                self.set_http_request_body(0, size, upper.as_bytes());
                // Request headers are still reachable: the headers were not continued yet?
                hostcalls::log(LogLevel::Info, &format!("probe: body {size} bytes")).ok();
                Action::Continue
            }
            "splice-body" => {
                // `x-splice: start,size,data`: one proxy_set_buffer_bytes on the whole buffered body.
                if !eos {
                    return Action::Pause;
                }
                // The request headers are gone once their callback continued (Envoy clears its pointer): the spec was
                // kept then.
                let spec = self.splice_spec.take().unwrap_or_default();
                let mut parts = spec.splitn(3, ',');
                let start = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let size = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let data = parts.next().unwrap_or_default();
                self.splice_status =
                    Some(report::splice_request_body(start, size, data.as_bytes()));
                Action::Continue
            }
            "trap-body" => panic!("probe: trap in request body"),
            "report" => report::on_request_body(self.id, size, eos),
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> Action {
        if self.scenario == "report-response" {
            return report::on_response_headers(self.id, eos);
        }
        if self.scenario == "response" || self.scenario == "local" {
            self.set_http_response_header("x-resp", Some(&self.scenario));
        }
        if self.scenario == "close" {
            hostcalls::reset_http_response().ok();
        }
        if let Some(status) = &self.splice_status {
            self.set_http_response_header("x-splice-status", Some(status));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if self.scenario == "report-response" {
            return report::on_response_body(self.id, size, eos);
        }
        if self.scenario == "response" {
            if !eos {
                return Action::Pause;
            }
            let body = self.get_http_response_body(0, size).unwrap_or_default();
            let mut out = b"wrapped:".to_vec();
            out.extend_from_slice(&body);
            self.set_http_response_body(0, size, &out);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.scenario == "trap-log" {
            panic!("probe: trap in on_log");
        }
        let status = self.get_http_response_header(":status").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        hostcalls::log(
            LogLevel::Info,
            &format!("probe: log {} {} {}", self.scenario, path, status),
        )
        .ok();
        if let Some(m) = METRICS.with(|x| *x.borrow()) {
            if self.scenario != "metrics" {
                hostcalls::increment_metric(m.inflight, -1).ok();
            }
        }
    }
}
