//! The Rust SDK's examples as one module, written in their style: one root context, and the
//! request path picks what a stream does.
//!
//! - `/headers`: logs the request headers, adds a request header and two response headers.
//! - `/body`: upper-cases the request body and prefixes the response body.
//! - `/replace-start`: replaces the request body's first two bytes with `ZZ` (`set_http_request_body(0, 2, ..)`).
//! - `/config`: answers locally with a header whose value is the plugin configuration.
//! - `/auth`: asks cluster `echo` (`GET /auth`, forwarding `x-user`), then resumes or answers 403.
//! - `/shared`: answers with the tick count the root writes and a CAS-incremented request counter.
//! - `/queue`: enqueues the request path; the root dequeues it and keeps the last one.
//! - `/queue-last`: answers with the last path the root dequeued.
//!
//! Anything else goes on untouched. Every request counts in the counter `sdk_examples.requests`
//! (Envoy shows it as `wasmcustom.sdk_examples.requests`).
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

const QUEUE_NAME: &str = "sdk_examples_paths";
const TICK_PERIOD: Duration = Duration::from_millis(100);
/// The root stops its ticker after this many ticks, so `/shared` answers the same once it has.
const MAX_TICKS: u64 = 10;
/// Attempts at a compare-and-swap increment before giving up.
const CAS_ATTEMPTS: u32 = 16;

const KEY_TICKS: &str = "sdk_examples.ticks";
const KEY_TICK_TOTAL: &str = "sdk_examples.tick_total";
const KEY_REQUESTS: &str = "sdk_examples.requests";
const KEY_QUEUE_LAST: &str = "sdk_examples.queue_last";
const REQUESTS_METRIC: &str = "sdk_examples.requests";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ExamplesRoot {
            config: String::new(),
            queue_id: None,
            requests_metric: None,
            ticks: 0,
        })
    });
}}

/// Reads a shared-data value as a decimal counter: absent is 0.
fn read_counter<C: Context + ?Sized>(ctx: &C, key: &str) -> (u64, Option<u32>) {
    match ctx.get_shared_data(key) {
        (Some(bytes), cas) => {
            let value = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse::<u64>().ok());
            match value {
                Some(value) => (value, cas),
                None => {
                    warn!("shared data {key} is not a counter, starting again at 0");
                    (0, cas)
                }
            }
        }
        (None, cas) => (0, cas),
    }
}

/// Adds one to a shared counter with compare-and-swap, retrying when another VM wrote first.
fn increment_counter<C: Context + ?Sized>(ctx: &C, key: &str) -> Result<u64, Status> {
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = read_counter(ctx, key);
        let next = value + 1;
        match ctx.set_shared_data(key, Some(next.to_string().as_bytes()), cas) {
            Ok(()) => return Ok(next),
            Err(Status::CasMismatch) => continue,
            Err(status) => return Err(status),
        }
    }
    Err(Status::CasMismatch)
}

struct ExamplesRoot {
    config: String,
    queue_id: Option<u32>,
    requests_metric: Option<u32>,
    ticks: u64,
}

impl Context for ExamplesRoot {}

impl RootContext for ExamplesRoot {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        let queue_id = self.register_shared_queue(QUEUE_NAME);
        self.queue_id = Some(queue_id);
        self.set_tick_period(TICK_PERIOD);
        info!("on_vm_start: {vm_configuration_size} vm configuration bytes, queue {queue_id}");
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        match self.get_plugin_configuration() {
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(config) => self.config = config,
                Err(_) => {
                    warn!("on_configure: the plugin configuration is not UTF-8");
                    return false;
                }
            },
            None => self.config = String::from("none"),
        }
        match hostcalls::define_metric(MetricType::Counter, REQUESTS_METRIC) {
            Ok(id) => self.requests_metric = Some(id),
            Err(status) => {
                warn!("on_configure: define_metric({REQUESTS_METRIC}) failed: {status:?}")
            }
        }
        info!(
            "on_configure: {plugin_configuration_size} bytes, header value {:?}",
            self.config
        );
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        if let Err(status) =
            self.set_shared_data(KEY_TICKS, Some(self.ticks.to_string().as_bytes()), None)
        {
            warn!("on_tick: set_shared_data({KEY_TICKS}) failed: {status:?}");
        }
        match increment_counter(self, KEY_TICK_TOTAL) {
            Ok(total) => info!("on_tick {} (all VMs: {total})", self.ticks),
            Err(status) => warn!(
                "on_tick {}: {KEY_TICK_TOTAL} failed: {status:?}",
                self.ticks
            ),
        }
        if self.ticks >= MAX_TICKS {
            self.set_tick_period(Duration::ZERO);
            info!("on_tick: stopped after {} ticks", self.ticks);
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let mut count = 0;
        let mut last = None;
        loop {
            match self.dequeue_shared_queue(queue_id) {
                Ok(Some(item)) => {
                    count += 1;
                    last = Some(item);
                }
                Ok(None) => break,
                Err(status) => {
                    warn!("on_queue_ready: dequeue from queue {queue_id} failed: {status:?}");
                    break;
                }
            }
        }
        if let Some(item) = last {
            if let Err(status) = self.set_shared_data(KEY_QUEUE_LAST, Some(&item), None) {
                warn!("on_queue_ready: set_shared_data({KEY_QUEUE_LAST}) failed: {status:?}");
            }
            info!(
                "on_queue_ready: queue {queue_id}, {count} item(s), last {:?}",
                String::from_utf8_lossy(&item)
            );
        } else {
            info!("on_queue_ready: queue {queue_id}, nothing to dequeue");
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ExamplesHttp {
            context_id,
            config: self.config.clone(),
            queue_id: self.queue_id,
            requests_metric: self.requests_metric,
            route: Route::Pass,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Headers,
    Body,
    ReplaceStart,
    Config,
    Auth,
    Shared,
    Queue,
    QueueLast,
    Pass,
}

impl Route {
    fn from_path(path: &str) -> Route {
        let path = path.split_once('?').map_or(path, |(path, _query)| path);
        match path {
            "/headers" => Route::Headers,
            "/body" => Route::Body,
            "/replace-start" => Route::ReplaceStart,
            "/config" => Route::Config,
            "/auth" => Route::Auth,
            "/shared" => Route::Shared,
            "/queue" => Route::Queue,
            "/queue-last" => Route::QueueLast,
            _ => Route::Pass,
        }
    }
}

struct ExamplesHttp {
    context_id: u32,
    config: String,
    queue_id: Option<u32>,
    requests_metric: Option<u32>,
    route: Route,
}

impl ExamplesHttp {
    fn headers_request(&self) -> Action {
        for (name, value) in &self.get_http_request_headers() {
            info!("#{} -> {name}: {value}", self.context_id);
        }
        self.add_http_request_header("x-sdk-example", "headers");
        Action::Continue
    }

    fn config_reply(&self) -> Action {
        self.send_http_response(
            200,
            vec![("x-config", self.config.as_str())],
            Some(b"configured\n"),
        );
        Action::Pause
    }

    fn auth_request(&self) -> Action {
        let user = self.get_http_request_header("x-user").unwrap_or_default();
        let call = self.dispatch_http_call(
            "echo",
            vec![
                (":method", "GET"),
                (":path", "/auth"),
                (":authority", "echo"),
                ("x-user", user.as_str()),
            ],
            None,
            vec![],
            Duration::from_secs(5),
        );
        match call {
            Ok(token) => {
                info!("#{} auth: dispatched call {token}", self.context_id);
                Action::Pause
            }
            Err(status) => {
                warn!("#{} auth: dispatch failed: {status:?}", self.context_id);
                self.send_http_response(503, vec![("x-auth", "unavailable")], None);
                Action::Pause
            }
        }
    }

    fn shared_reply(&self) -> Action {
        let (ticks, _) = read_counter(self, KEY_TICKS);
        let (tick_total, _) = read_counter(self, KEY_TICK_TOTAL);
        match increment_counter(self, KEY_REQUESTS) {
            Ok(requests) => {
                let body = format!("requests={requests} ticks={ticks} tick_total={tick_total}\n");
                self.send_http_response(
                    200,
                    vec![
                        ("x-shared-counter", requests.to_string().as_str()),
                        ("x-ticks", ticks.to_string().as_str()),
                        ("x-tick-total", tick_total.to_string().as_str()),
                    ],
                    Some(body.as_bytes()),
                );
            }
            Err(status) => {
                warn!("#{} shared: increment failed: {status:?}", self.context_id);
                self.send_http_response(503, vec![], Some(b"shared data unavailable\n"));
            }
        }
        Action::Pause
    }

    fn queue_request(&self, path: &str) -> Action {
        let Some(queue_id) = self.queue_id else {
            self.send_http_response(503, vec![], Some(b"no queue\n"));
            return Action::Pause;
        };
        match self.enqueue_shared_queue(queue_id, Some(path.as_bytes())) {
            Ok(()) => self.send_http_response(
                200,
                vec![("x-queue-id", queue_id.to_string().as_str())],
                Some(b"queued\n"),
            ),
            Err(status) => {
                warn!("#{} queue: enqueue failed: {status:?}", self.context_id);
                self.send_http_response(503, vec![], Some(b"enqueue failed\n"));
            }
        }
        Action::Pause
    }

    fn queue_last_reply(&self) -> Action {
        match self.get_shared_data(KEY_QUEUE_LAST) {
            (Some(last), _) => {
                let last = String::from_utf8_lossy(&last).into_owned();
                self.send_http_response(
                    200,
                    vec![("x-queue-last", last.as_str())],
                    Some(format!("{last}\n").as_bytes()),
                );
            }
            (None, _) => self.send_http_response(404, vec![], Some(b"nothing dequeued yet\n")),
        }
        Action::Pause
    }
}

impl Context for ExamplesHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let status = self.get_http_call_response_header(":status");
        let verdict = self.get_http_call_response_header("x-auth");
        info!(
            "#{} auth: call {token_id} answered {num_headers} headers, {body_size} body bytes, \
             status {status:?}, x-auth {verdict:?}",
            self.context_id
        );
        if status.as_deref() == Some("200") && verdict.as_deref() == Some("allow") {
            self.set_http_request_header("x-auth-checked", Some("allow"));
            self.resume_http_request();
        } else {
            self.send_http_response(403, vec![("x-auth", "deny")], Some(b"Access forbidden.\n"));
        }
    }
}

impl HttpContext for ExamplesHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(id) = self.requests_metric {
            if let Err(status) = hostcalls::increment_metric(id, 1) {
                warn!("#{} increment_metric failed: {status:?}", self.context_id);
            }
        }
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.route = Route::from_path(&path);
        info!("#{} {path} -> {:?}", self.context_id, self.route);
        match self.route {
            Route::Headers => self.headers_request(),
            Route::Config => self.config_reply(),
            Route::Auth => self.auth_request(),
            Route::Shared => self.shared_reply(),
            Route::Queue => self.queue_request(&path),
            Route::QueueLast => self.queue_last_reply(),
            Route::Body | Route::ReplaceStart | Route::Pass => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.route == Route::ReplaceStart {
            if !end_of_stream {
                return Action::Pause;
            }
            // Envoy drains `size` bytes at start 0 and prepends, whatever the body's length.
            self.set_http_request_body(0, 2, b"ZZ");
            return Action::Continue;
        }
        if self.route != Route::Body {
            return Action::Continue;
        }
        if !end_of_stream {
            // Buffer until the whole body is here.
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size) {
            let upper = body.to_ascii_uppercase();
            self.set_http_request_body(0, body_size, &upper);
            info!(
                "#{} body: request body of {body_size} bytes upper-cased",
                self.context_id
            );
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.route {
            Route::Headers => {
                self.set_http_response_header("x-powered-by", Some("proxy-wasm-rust-sdk"));
                self.add_http_response_header("x-sdk-route", "headers");
            }
            Route::Body => {
                // The body changes length.
                self.set_http_response_header("content-length", None);
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.route != Route::Body {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let mut replaced = format!("[sdk-examples: {body_size} upstream bytes] ").into_bytes();
        replaced.extend_from_slice(&body);
        self.set_http_response_body(0, body_size, &replaced);
        info!(
            "#{} body: response body of {body_size} bytes replaced",
            self.context_id
        );
        Action::Continue
    }
}
