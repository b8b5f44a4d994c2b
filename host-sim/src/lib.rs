//! host-sim: a proxy-wasm host on wasmtime, and (later) a small Envoy around it.
//!
//! The host runs any proxy-wasm module built for ABI 0.2.x the way Envoy does: a
//! [`vm::Runtime`] compiles modules once, a [`vm::PluginFactory`] pairs a module with its
//! plugin configuration and is shared by worker threads, each worker owns a
//! [`vm::PluginInstance`] (one VM and root context), and each request is an
//! [`vm::HttpStream`] whose [`StreamState`] the proxy fills and reads. The
//! [`harness`] drives the same core in-process for tests.
//!
//! ```
//! use host_sim::harness::{Harness, Request};
//!
//! // A tiny proxy-wasm guest in WAT: it pauses request headers and sends a 418 local reply.
//! let guest = r#"(module
//!   (import "env" "proxy_send_local_response"
//!     (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
//!   (memory (export "memory") 1)
//!   (data (i32.const 16) "teapot")
//!   (func (export "malloc") (param i32) (result i32) (i32.const 1024))
//!   (func (export "proxy_abi_version_0_2_1"))
//!   (func (export "proxy_on_context_create") (param i32 i32))
//!   (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
//!     (drop (call $reply (i32.const 418) (i32.const 16) (i32.const 6)
//!                        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
//!     (i32.const 0)))"#;
//! let mut h = Harness::builder(guest.as_bytes()).build().expect("loads");
//! let out = h.run(Request::get("http://example.test/")).expect("runs");
//! assert_eq!(out.status(), 418);
//! assert_eq!(out.local_reply.as_ref().map(|r| r.details.as_str()), Some("teapot"));
//! assert!(!out.reached_upstream);
//! ```

pub mod abi;
pub(crate) mod admin;
pub mod config;
pub mod dfp;
pub mod guest_build;
pub mod harness;
pub mod headers;
pub(crate) mod host_state;
pub mod properties;
pub mod proxy;
pub mod run_config;
pub mod shared;
pub mod stream;
pub mod types;
pub mod vm;

pub use headers::HeaderMap;
pub use properties::{Properties, PropertyValue};
pub use shared::SharedState;
pub use stream::{LocalReply, StreamEffects, StreamState};
pub use types::{Action, LogLevel, Status};
