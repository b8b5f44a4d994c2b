//! host-sim: a proxy-wasm host on wasmtime, and a small Envoy.
