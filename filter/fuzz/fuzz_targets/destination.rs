//! Any bytes as a destination: the parser never panics; what it accepts is canonical
//! (idempotent, lower case, no trailing dot) and a name it passes is never an IPv4 address in
//! disguise (as an `inet_aton`-style resolver would read it).

#![no_main]

#[path = "../../tests/reference/mod.rs"]
mod reference;

use dfp_filter::destination::{self, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dest) = destination::parse(data.to_vec()) else {
        return;
    };
    let again = destination::parse(dest.authority().as_bytes().to_vec())
        .expect("a canonical destination parses");
    assert_eq!(again.authority(), dest.authority());
    assert!(!again.is_rewritten());
    assert_eq!(again.target(), dest.target());
    assert!(!dest.authority().bytes().any(|b| b.is_ascii_uppercase()));
    assert!(!dest.host().ends_with('.'));
    if let Target::Name(name) = dest.target() {
        assert!(reference::permissive_ipv4(name).is_none(), "{name}");
        assert!(name.parse::<std::net::IpAddr>().is_err(), "{name}");
    }
});
