//! The end-to-end case table against host-sim: the same YAML template, the same wasm, the same fixtures and
//! requests as `envoy_e2e.rs`. A case that passes in Envoy and fails here is a host-sim bug unless README lists
//! the difference as intentional.

mod multi_address;
mod resolved_probe;
mod streaming_probe;

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

/// A request body streams through a wasm filter with a body callback: the upstream gets the first chunk before the
/// client sends the rest.
#[test]
fn request_body_streams_through_a_body_filter() {
    block_on(streaming_probe::first_chunk_arrives_before_the_body_ends(
        ProxyKind::HostSim,
    ));
}

/// As in `envoy_e2e.rs`: a name with several addresses gives the denied ones no connection.
#[test]
fn denied_addresses_of_a_name_get_no_connection() {
    block_on(multi_address::denied_addresses_get_nothing(
        ProxyKind::HostSim,
    ));
}

/// As in Envoy, without the DNS cache's filter the connection goes on to the host's next address.
#[test]
fn without_the_dns_filter_host_sim_reaches_the_second_address() {
    block_on(
        multi_address::without_the_filter_the_pool_reaches_the_second_address(ProxyKind::HostSim),
    );
}
