//! A minimal proxy-wasm HTTP filter on the Rust SDK, the shape most filters start from.
//!
//! Its plugin configuration is a path prefix (plain text, default `/admin`). A request under that prefix is answered
//! `403` by the filter itself; any other request goes on with `x-my-filter: passed` added, and its response carries
//! `x-my-filter-response: <status>`. Each decision is logged at info. `tests/` drives it through host-sim.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

const DEFAULT_PREFIX: &str = "/admin";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { prefix: DEFAULT_PREFIX.to_string() })
    });
}}

struct Root {
    prefix: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) = self.get_plugin_configuration() else {
            return true; // no configuration: the default prefix
        };
        match String::from_utf8(config) {
            Ok(prefix) if prefix.starts_with('/') => {
                self.prefix = prefix;
                true
            }
            // Returning false makes the proxy refuse the configuration (Envoy: the listener fails to load).
            _ => {
                log::error!(
                    "my-filter: the plugin configuration must be a path prefix starting with '/'"
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            prefix: self.prefix.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    prefix: String,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path.starts_with(&self.prefix) {
            log::info!("my-filter: blocked {path}");
            self.send_http_response(403, vec![("x-blocked-by", "my-filter")], Some(b"blocked\n"));
            return Action::Pause;
        }
        log::info!("my-filter: passed {path}");
        self.set_http_request_header("x-my-filter", Some("passed"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.set_http_response_header("x-my-filter-response", Some(&status));
        Action::Continue
    }
}
