//! Fixtures shared by the end-to-end suites: a DNS server, upstream servers, a CA, the filter
//! wasm, a raw HTTP client, and launchers for the proxies under test.

pub mod abi_fuzz;
pub mod cases;
pub mod cel;
pub mod client;
pub mod config_parity;
pub mod crd_schema;
pub mod dns;
pub mod envoy;
pub mod fidelity;
pub mod host_sim;
pub mod pki;
pub mod proxy;
pub mod rbac;
pub mod rt;
pub mod suite;
pub mod template;
pub mod upstream;
pub mod wasm;
pub mod world;
