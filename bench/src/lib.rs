//! Side-by-side benchmarks of the forward proxies this project ships and compares with: the upstream
//! alone, Envoy with its dynamic forward proxy (DFP) only, Envoy + a no-op wasm filter, Envoy +
//! `dfp_filter.wasm`, Envoy + native RBAC on `:authority`, and host-sim + `dfp_filter.wasm`.
//!
//! `just bench` runs the `bench` binary; see `docs/benchmarks.md` for what is measured and why.

pub mod chart;
pub mod configs;
pub mod load;
pub mod machine;
pub mod matrix;
pub mod process;
pub mod report;
pub mod runner;
pub mod upstream;
