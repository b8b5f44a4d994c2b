//! A guest built for `wasm32-wasip1`: it uses WASI through std (stdout/stderr, the clocks,
//! environment variables, randomness behind HashMap) to prove such modules load and run.
#![cfg(target_arch = "wasm32")]

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        println!("wasi-probe: started");
        eprintln!("wasi-probe: stderr works");
        true
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe))
    }
}

struct Probe;
impl Context for Probe {}
impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let t = Instant::now();
        let greeting = std::env::var("PROBE_GREETING").unwrap_or_else(|_| "unset".into());
        // HashMap's RandomState asks WASI random_get for its keys.
        let mut m = HashMap::new();
        m.insert("k", greeting.clone());
        let elapsed_ok = t.elapsed().as_secs() < 60;
        self.set_http_request_header("x-wasi-epoch-secs", Some(&since_epoch.to_string()));
        self.set_http_request_header("x-wasi-env", m.get("k").map(String::as_str));
        self.set_http_request_header(
            "x-wasi-monotonic",
            Some(if elapsed_ok { "ok" } else { "bad" }),
        );
        println!("wasi-probe: request seen");
        Action::Continue
    }
}
