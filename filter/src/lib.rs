//! dfp-filter: an allowlisting dynamic forward proxy filter for Envoy (proxy-wasm).
//!
//! Per request the downstream stage finds the destination (the configured destination header,
//! else `:authority`, which also carries CONNECT targets and absolute-form URIs), canonicalises it
//! ([`destination`]), decides it against the allowlist ([`policy`]), rewrites `:authority` to the
//! canonical `host:port` and picks the plain or TLS dynamic-forward-proxy cluster. Configured with
//! `"stage": "upstream"`, the same module runs as an upstream HTTP filter and denies connections
//! to the special-purpose addresses a name resolved to.
//!
//! Everything except the proxy-wasm glue compiles natively, so tools and tests can validate a
//! configuration ([`config::FilterConfig::from_json`]) and run decisions without a host.

#[macro_use]
mod names;

pub mod config;
pub mod destination;
pub mod header_pairs;
pub mod host_limit;
mod index;
pub mod json;
pub mod net;
pub mod policy;
pub mod response;
mod sort;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod wasm;
