//! The end-to-end case table against host-sim: the same YAML template, the same wasm, the same fixtures and
//! requests as `envoy_e2e.rs`. A case that passes in Envoy and fails here is a host-sim bug unless README lists
//! the difference as intentional.

mod resolved_probe;

use tests::rt::block_on;
use tests::suite::ProxyKind;

tests::variant_tests!(ProxyKind::HostSim);

/// As in `envoy_e2e.rs`: a denied resolved address gets no connection and no handshake.
#[test]
fn resolved_stage_refuses_before_connecting() {
    block_on(resolved_probe::refused_before_connecting(
        ProxyKind::HostSim,
    ));
}
