//! my-filter driven in-process through host-sim's harness: the module is built for wasm32 once per test process,
//! loaded with a plugin configuration, and each test sends a whole request through it (the harness plays the
//! upstream) and checks what the filter did.

use std::sync::OnceLock;

use host_sim::harness::{Harness, Request, Response, Stage};
use host_sim::vm::LoadError;

/// The filter's `.wasm`, built once for all tests of this binary.
fn module() -> &'static [u8] {
    static MODULE: OnceLock<Vec<u8>> = OnceLock::new();
    MODULE.get_or_init(|| {
        let path = host_sim::guest_build::build_wasm("my-filter")
            .unwrap_or_else(|e| panic!("building my-filter for wasm32: {e}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    })
}

fn harness(plugin_config: &str) -> Harness {
    Harness::builder(module())
        .plugin_config(plugin_config)
        .build()
        .expect("my-filter loads and accepts its configuration")
}

#[test]
fn a_request_outside_the_prefix_reaches_the_upstream_with_the_header_added() {
    let mut h = harness("/private");
    let out = h
        .run(Request::get("http://example.test/public/page"))
        .expect("the request runs");
    assert_eq!(out.stage, Stage::Finished);
    assert!(out.reached_upstream);
    assert_eq!(out.status(), 200);
    let upstream = out.upstream_request.expect("the upstream got the request");
    assert_eq!(upstream.headers.get_str("x-my-filter"), Some("passed"));
    assert!(h.logged("my-filter: passed /public/page"));
}

#[test]
fn a_request_under_the_prefix_is_answered_403_by_the_filter() {
    let mut h = harness("/private");
    let out = h
        .run(Request::get("http://example.test/private/keys"))
        .expect("the request runs");
    assert!(!out.reached_upstream);
    assert_eq!(out.status(), 403);
    assert_eq!(
        out.response_headers.get_str("x-blocked-by"),
        Some("my-filter")
    );
    assert_eq!(out.response_body, b"blocked\n");
}

#[test]
fn the_response_carries_the_upstream_status() {
    let mut h = harness("/private");
    let out = h
        .run(Request::get("http://example.test/").upstream_response(Response::new(404)))
        .expect("the request runs");
    assert_eq!(out.status(), 404);
    assert_eq!(
        out.response_headers.get_str("x-my-filter-response"),
        Some("404")
    );
}

#[test]
fn without_configuration_the_default_prefix_applies() {
    let mut h = Harness::builder(module()).build().expect("loads");
    let out = h
        .run(Request::get("http://example.test/admin"))
        .expect("the request runs");
    assert_eq!(out.status(), 403);
}

#[test]
fn a_configuration_that_is_not_a_path_is_refused() {
    let refused = Harness::builder(module())
        .plugin_config("not-a-path")
        .build()
        .expect_err("the filter refuses it");
    assert!(
        matches!(refused, LoadError::ConfigureFailed { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("must be a path prefix"),
        "the refusal repeats the filter's error log: {refused}"
    );
}
