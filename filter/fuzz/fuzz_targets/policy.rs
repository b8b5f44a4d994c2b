//! A destination and method against a few fixed configurations: the indexed policy decides
//! exactly like the naive reference model, and nothing a deny rule or the address policy covers
//! is ever allowed. Input: one byte picks the configuration and method, the rest is the authority.

#![no_main]

#[path = "../../tests/reference/mod.rs"]
mod reference;

use std::sync::OnceLock;

use dfp_filter::config::FilterConfig;
use dfp_filter::destination::{self, Target};
use dfp_filter::policy::{Outcome, Policy};
use libfuzzer_sys::fuzz_target;

const CONFIGS: &[&str] = &[
    // Every IP allowed on common ports: only the default address policy stands in the way.
    r#"{"allow":[{"host":"0.0.0.0/0","ports":[80,443,8080]},{"host":"::/0","ports":[80,443,8080]}]}"#,
    // Names and wildcards with deny rules inside them, and carve-outs.
    r#"{"allow":[{"host":"*.example.org","tls":true},{"host":"example.org","ports":[80,443]},
        {"host":"api.example.test","ports":[8081],"methods":["GET","HEAD"]},{"host":"203.0.113.0/24","ports":[80]},
        {"host":"10.0.0.0/8","ports":[80]}],
       "deny":[{"host":"admin.example.org"},{"host":"*.internal.example.org"},{"host":"10.1.0.0/16"}],
       "addresses":{"allow":["10.0.0.0/8"]}}"#,
    // Report mode with cluster routing.
    r#"{"mode":"report","allow":[{"host":"*.org"},{"host":"::/0"}],"deny":[{"host":"evil.org"}],
       "cluster_header":"x-c","clusters":{"plain":"p","tls":"t"}}"#,
];
const METHODS: &[&str] = &["GET", "POST", "CONNECT", "HEAD"];

fn policies() -> &'static [(FilterConfig, Policy)] {
    static P: OnceLock<Vec<(FilterConfig, Policy)>> = OnceLock::new();
    P.get_or_init(|| {
        CONFIGS
            .iter()
            .map(|json| {
                let config = FilterConfig::from_json(json).expect("valid config");
                let policy = Policy::compile(&config);
                (config, policy)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, authority)) = data.split_first() else {
        return;
    };
    let (config, policy) = &policies()[usize::from(pick) % CONFIGS.len()];
    let method = METHODS[usize::from(pick / 16) % METHODS.len()];
    let Ok(text) = std::str::from_utf8(authority) else {
        // Non-UTF-8 never parses (non-ASCII is refused); check that on the way.
        assert!(destination::parse(authority.to_vec()).is_err());
        return;
    };
    let fast = reference::fast_decide(policy, text, method);
    assert_eq!(
        fast,
        reference::naive_decide(config, text, method),
        "{method} {text:?}"
    );
    let Ok((outcome, _, canonical)) = fast else {
        return;
    };
    let dest = destination::parse(canonical.into_bytes()).expect("canonical parses");
    let port = dest.port().expect("decided destinations have a port");
    let covered = reference::naive_deny_rule_covers(config, dest.target(), port, method)
        || matches!(dest.target(), Target::Ip(ip) if reference::naive_address_denied(config, ip));
    if covered {
        assert_ne!(outcome, Outcome::Allow, "{method} {text:?}");
    }
});
