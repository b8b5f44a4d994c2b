//! The admin interface against Envoy 1.40's: after the same requests through the same bootstrap, every stat
//! host-sim reports in `/stats` (the families it implements: HTTP connection manager, clusters, DNS cache, wasm
//! plugins and their custom metrics) has the name and value Envoy reports, and every line of host-sim's
//! `/stats/prometheus` is a line of Envoy's. Plus `/ready`.

mod host_sim_support;

use std::collections::BTreeMap;

use host_sim_support::{get, start, Subject, Tweaks, KINDS};
use serde_json::json;
use tests::client;
use tests::dns::Answer;
use tests::rt::block_on;
use tests::suite;
use tests::world::World;

/// The same traffic for both proxies: allowed (200), denied by the filter (403), NXDOMAIN (503).
async fn traffic(subject: &Subject, world: &World) {
    let nx = format!("nx-{}.adm.dfp.test", subject.label());
    world.dns.set(&nx, Answer::NxDomain);
    for (case, host, want) in [
        ("ok", format!("ok.adm.dfp.test:{}", world.plain.port()), 200),
        ("denied", "elsewhere.example:80".to_string(), 403),
        ("nx", format!("{nx}:{}", world.plain.port()), 503),
    ] {
        let outcome = subject.send(case, &get(&host, "/")).await.expect(case);
        assert_eq!(
            outcome.status,
            want,
            "{} {case}: {outcome:?}",
            subject.label()
        );
    }
}

/// Stats whose values depend on timing or on connection reuse, not on behaviour.
fn comparable(name: &str) -> bool {
    // `*_rq_time` histograms and their `_bucket`/`_sum`/`_count` lines; not `dns_query_timeout`.
    !name.ends_with("_time")
        && !name.contains("_time_")
        && !name.contains("_time{")
        && !name.contains("bytes")
        && !name.contains("_active")
        && !name.starts_with("http.admin.")
}

#[test]
fn stats_and_prometheus_match_envoys() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let downstream = host_sim_support::downstream_config(json!([
            { "host": "*.adm.dfp.test", "ports": [world.plain.port()] }
        ]));
        let mut text = Vec::new();
        let mut prometheus = Vec::new();
        for kind in KINDS {
            let subject = start(
                kind,
                &world,
                &downstream,
                &host_sim_support::upstream_config(),
                &Tweaks::default(),
            )
            .await
            .expect("proxy");
            traffic(&subject, &world).await;
            let ready = client::get(subject.proxy.admin(), "/ready")
                .await
                .expect("ready");
            assert_eq!((ready.status, ready.body_text().trim()), (200, "LIVE"));
            let stats: BTreeMap<String, u64> = tests::proxy::stats(subject.proxy.admin())
                .await
                .expect("/stats")
                .into_iter()
                .filter(|(name, _)| comparable(name))
                .collect();
            text.push(stats);
            let prom = client::get(subject.proxy.admin(), "/stats/prometheus")
                .await
                .expect("/stats/prometheus");
            assert_eq!(prom.status, 200);
            prometheus.push(prom.body_text());
        }
        let (envoy, host_sim) = (&text[0], &text[1]);
        assert!(
            host_sim.len() > 20,
            "host-sim reports few stats: {host_sim:?}"
        );
        let differences: Vec<String> = host_sim
            .iter()
            .filter(|(name, value)| envoy.get(*name) != Some(value))
            .map(|(name, value)| format!("{name}: host-sim {value}, Envoy {:?}", envoy.get(name)))
            .collect();
        assert!(
            differences.is_empty(),
            "/stats differ from Envoy's:\n{}",
            differences.join("\n")
        );
        // The DNS cache and filter counters moved, so the comparison above compared something.
        for name in [
            "dns_cache.dfp_dns_cache.dns_query_attempt",
            "dns_cache.dfp_dns_cache.host_address_changed",
            "wasmcustom.dfp.downstream.allowed",
            "http.forward_proxy.downstream_rq_4xx",
        ] {
            assert!(
                host_sim.get(name).is_some_and(|v| *v > 0),
                "{name}: {host_sim:?}"
            );
        }

        let envoy_lines: std::collections::HashSet<&str> = prometheus[0].lines().collect();
        let missing: Vec<&str> = prometheus[1]
            .lines()
            .filter(|line| {
                let name = line.trim_start_matches("# TYPE ");
                comparable(name) && !line.contains("\"admin\"") && !envoy_lines.contains(line)
            })
            .collect();
        assert!(
            missing.is_empty(),
            "host-sim /stats/prometheus lines Envoy does not have:\n{}",
            missing.join("\n")
        );
    });
}
