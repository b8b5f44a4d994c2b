//! dfp-filter: an allowlisting dynamic forward proxy filter for Envoy (proxy-wasm).
