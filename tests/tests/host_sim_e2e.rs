//! The end-to-end case table against host-sim: the same YAML template, the same wasm, the same fixtures and
//! requests as `envoy_e2e.rs`. A case that passes in Envoy and fails here is a host-sim bug unless README lists
//! the difference as intentional.

mod resolved_probe;

use tests::rt::block_on;
use tests::suite::{self, ProxyKind};

fn run_variant(name: &str) {
    let failures = block_on(suite::run_variant(ProxyKind::HostSim, name))
        .unwrap_or_else(|e| panic!("variant {name}: {e:#}"));
    assert!(
        failures.is_empty(),
        "variant {name}: failing cases against host-sim:\n{}",
        failures.join("\n")
    );
}

#[test]
fn enforce_variant_cases() {
    run_variant("enforce");
}

#[test]
fn strict_variant_cases() {
    run_variant("strict");
}

#[test]
fn report_variant_cases() {
    run_variant("report");
}

#[test]
fn header_variant_cases() {
    run_variant("header");
}

#[test]
fn shipped_variant_cases() {
    run_variant(suite::SHIPPED);
}

#[test]
fn resolved_variant_cases() {
    run_variant("resolved");
}

#[test]
fn resolved_carve_out_variant_cases() {
    run_variant("resolved_carve_out");
}

/// As in `envoy_e2e.rs`: a denied resolved address gets no connection and no handshake.
#[test]
fn resolved_stage_refuses_before_connecting() {
    block_on(resolved_probe::refused_before_connecting(
        ProxyKind::HostSim,
    ));
}
