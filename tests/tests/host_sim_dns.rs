//! The dynamic forward proxy's DNS cache, checked where it shows: at the DNS server (queries per name), in the
//! answers clients get, and in the `dns_cache.<name>.*` stats. Every scenario runs against real Envoy 1.40 and
//! against host-sim from the same bootstrap, and host-sim must answer exactly as Envoy does.
//!
//! Each proxy asks for names of its own (`<scenario>-<proxy>.dns.dfp.test`), so the shared DNS server's
//! per-name counts belong to one proxy and one scenario.

mod host_sim_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use host_sim_support::{assert_same, get, start, Outcome, Subject, Tweaks, KINDS};
use serde_json::json;
use tests::dns::Answer;
use tests::rt::block_on;
use tests::suite::{self, ProxyKind};
use tests::world::World;

const CACHE: &str = "dns_cache.dfp_dns_cache.";

/// Starts `kind` with an allowlist of `*.dns.dfp.test` on the plain echo's port.
async fn subject(kind: ProxyKind, world: &World, tweaks: &Tweaks) -> Subject {
    let downstream = host_sim_support::downstream_config(json!([
        { "host": "*.dns.dfp.test", "ports": [world.plain.port()] }
    ]));
    start(
        kind,
        world,
        &downstream,
        &host_sim_support::upstream_config(),
        tweaks,
    )
    .await
    .unwrap_or_else(|e| panic!("starting {kind:?}: {e:#}"))
}

fn name(scenario: &str, subject: &Subject) -> String {
    format!("{scenario}-{}.dns.dfp.test", subject.label())
}

fn authority(name: &str, world: &World) -> String {
    format!("{name}:{}", world.plain.port())
}

/// The cache stats without the scope prefix; only the ones both proxies define are compared.
async fn cache_stats(subject: &Subject) -> BTreeMap<String, u64> {
    subject
        .stats(CACHE)
        .await
        .unwrap_or_else(|e| panic!("{}: /stats: {e:#}", subject.label()))
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches(CACHE).to_string(), v))
        .collect()
}

/// The named stats, 0 when absent.
fn pick(stats: &BTreeMap<String, u64>, names: &[&str]) -> BTreeMap<String, u64> {
    names
        .iter()
        .map(|n| (n.to_string(), stats.get(*n).copied().unwrap_or(0)))
        .collect()
}

const CORE_STATS: [&str; 8] = [
    "dns_query_attempt",
    "dns_query_success",
    "dns_query_failure",
    "host_added",
    "host_removed",
    "num_hosts",
    "dns_rq_pending_overflow",
    "host_overflow",
];

/// Waits (up to 5 s) until `f` holds for the stats; returns the last stats read.
async fn stats_until(
    subject: &Subject,
    f: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = cache_stats(subject).await;
        if f(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Observed {
    outcomes: Vec<Outcome>,
    queries: Vec<usize>,
    stats: BTreeMap<String, u64>,
}

/// 200 concurrent requests for a host nobody asked for before: every one succeeds and the DNS server sees one query.
#[test]
fn concurrent_requests_for_a_cold_host_share_one_query() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let mut observed = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &Tweaks::default()).await;
            let host = name("cold", &subject);
            let target = authority(&host, &world);
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..200 {
                let subject_listener = subject.proxy.listener();
                let request = get(&target, &format!("/cold/{i}"));
                tasks.spawn(async move {
                    tests::client::exchange(subject_listener, &request.to_bytes(), false)
                        .await
                        .map(|r| r.status)
                });
            }
            let mut statuses = BTreeMap::new();
            while let Some(done) = tasks.join_next().await {
                let status = done
                    .expect("task")
                    .unwrap_or_else(|e| panic!("{}: {e}", subject.label()));
                *statuses.entry(status).or_insert(0) += 1;
            }
            let stats = stats_until(&subject, |s| s.get("dns_query_success") == Some(&1)).await;
            let queries = world.dns.queries(&host);
            assert_eq!(
                statuses,
                BTreeMap::from([(200, 200)]),
                "{}: statuses\n{}",
                subject.label(),
                subject.log_tail()
            );
            assert_eq!(queries, 1, "{}: DNS queries for {host}", subject.label());
            observed.push((statuses, queries, pick(&stats, &CORE_STATS)));
        }
        assert_same("cold host", &observed[0], &observed[1]);
    });
}

/// After the record's TTL (bounded below by dns_min_refresh_rate) the cache asks again, without any request.
#[test]
fn ttl_expiry_re_queries_bounded_by_min_refresh_rate() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        // TTL 1 s, refresh no sooner than every 2 s.
        let tweaks = Tweaks::default().dns("dns_min_refresh_rate", "2s");
        for kind in KINDS {
            let subject = subject(kind, &world, &tweaks).await;
            let host = name("ttl", &subject);
            world.dns.set(
                &host,
                Answer::Ips {
                    addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                    ttl: 1,
                },
            );
            let first = subject
                .send("ttl-1", &get(&authority(&host, &world), "/"))
                .await
                .expect("request");
            assert_eq!(first.status, 200, "{}: {first:?}", subject.label());
            let started = Instant::now();
            assert_eq!(world.dns.queries(&host), 1, "{}", subject.label());
            // At 1.2 s the TTL has run out but the 2 s floor has not.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert_eq!(
                world.dns.queries(&host),
                1,
                "{}: re-queried before dns_min_refresh_rate",
                subject.label()
            );
            // By 4.8 s the refresh ran (at ~2 s and ~4 s): 2 or 3 queries in all.
            tokio::time::sleep(Duration::from_millis(4800).saturating_sub(started.elapsed())).await;
            let queries = world.dns.queries(&host);
            assert!(
                (2..=3).contains(&queries),
                "{}: {queries} queries after 4.8 s",
                subject.label()
            );
            // The request path did not wait for any of it: the host is still cached and used.
            let again = subject
                .send("ttl-2", &get(&authority(&host, &world), "/"))
                .await
                .expect("request");
            assert_eq!(again.status, 200, "{}: {again:?}", subject.label());
            let stats = cache_stats(&subject).await;
            assert_eq!(
                stats.get("host_added"),
                Some(&1),
                "{}: {stats:?}",
                subject.label()
            );
            assert_eq!(stats.get("dns_query_attempt"), Some(&(queries as u64)));
        }
    });
}

/// `max_hosts: 2`: a third host is refused with Envoy's 503 "DNS cache overflow".
#[test]
fn max_hosts_overflow_is_503_dns_cache_overflow() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let tweaks = Tweaks::default().dns("max_hosts", 2);
        let mut observed = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &tweaks).await;
            let mut outcomes = Vec::new();
            let mut queries = Vec::new();
            for (i, scenario) in ["full-a", "full-b", "full-c"].iter().enumerate() {
                let host = name(scenario, &subject);
                let mut outcome = subject
                    .send(
                        &format!("overflow-{i}"),
                        &get(&authority(&host, &world), "/"),
                    )
                    .await
                    .expect("request");
                if outcome.status == 200 {
                    // The echo names the host and a request id: different by design.
                    outcome.body.clear();
                }
                outcomes.push(outcome);
                queries.push(world.dns.queries(&host));
            }
            let stats = cache_stats(&subject).await;
            let observation = Observed {
                outcomes,
                queries,
                stats: pick(&stats, &CORE_STATS),
            };
            assert_eq!(
                observation.outcomes[2],
                Outcome {
                    status: 503,
                    body: "DNS cache overflow".into(),
                    details: "dns_cache_overflow".into(),
                    content_type: Some("text/plain".into()),
                    connection: None,
                },
                "{}",
                subject.label()
            );
            assert_eq!(observation.queries, vec![1, 1, 0], "{}", subject.label());
            assert_eq!(observation.stats["host_overflow"], 1, "{}", subject.label());
            observed.push(observation);
        }
        assert_same("max_hosts", &observed[0], &observed[1]);
    });
}

/// Resolution failures, one host each: 503 "DNS resolution failure" with the resolver's reason in the details,
/// the same reason on a second request (the failed entry stays cached until its refresh), and the same
/// success/failure accounting (c-ares counts NXDOMAIN and NODATA as completed queries).
#[test]
fn resolution_failures_are_503_with_the_resolvers_reason() {
    let table: [(&str, Answer); 3] = [
        ("nx", Answer::NxDomain),
        // An IPv6-only name asked for with V4_ONLY: NODATA.
        (
            "nodata",
            Answer::Ips {
                addrs: vec![IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)],
                ttl: 60,
            },
        ),
        ("servfail", Answer::ServFail),
    ];
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let mut observed = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &Tweaks::default()).await;
            let mut rows = Vec::new();
            for (scenario, answer) in &table {
                let host = name(scenario, &subject);
                world.dns.set(&host, answer.clone());
                let mut outcomes = Vec::new();
                for i in 0..2 {
                    let outcome = subject
                        .send(
                            &format!("{scenario}-{i}"),
                            &get(&authority(&host, &world), "/"),
                        )
                        .await
                        .expect("request");
                    assert_eq!(
                        (outcome.status, outcome.body.as_str()),
                        (503, "DNS resolution failure"),
                        "{} {scenario}: {outcome:?}",
                        subject.label()
                    );
                    outcomes.push(outcome);
                }
                rows.push((scenario.to_string(), outcomes, world.dns.queries(&host) > 0));
            }
            let stats = cache_stats(&subject).await;
            let observation = (rows, pick(&stats, &CORE_STATS));
            eprintln!("{}: {observation:#?}", subject.label());
            observed.push(observation);
        }
        assert_same("resolution failures", &observed[0], &observed[1]);
        // The reasons, as Envoy 1.40 words them (c-ares' ares_strerror texts).
        let details: Vec<&str> = observed[1]
            .0
            .iter()
            .map(|(_, outcomes, _)| outcomes[0].details.as_str())
            .collect();
        assert_eq!(
            details,
            [
                "dns_resolution_failure{cares_norecords:Domain_name_not_found}",
                "dns_resolution_failure{cares_norecords:DNS_server_returned_answer_with_no_data}",
                "dns_resolution_failure{cares_failure:DNS_server_returned_general_failure}",
            ]
        );
    });
}

/// A resolver that never answers: the request fails at `dns_query_timeout`, not at the client's patience.
#[test]
fn never_answering_resolver_hits_the_query_timeout() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let tweaks = Tweaks::default().dns("dns_query_timeout", "1s");
        let mut observed = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &tweaks).await;
            let host = name("silent", &subject);
            world.dns.set(&host, Answer::NeverAnswer);
            let started = Instant::now();
            let outcome = subject
                .send("silent", &get(&authority(&host, &world), "/"))
                .await
                .expect("request");
            let elapsed = started.elapsed();
            let stats = cache_stats(&subject).await;
            eprintln!(
                "{}: {outcome:?} after {elapsed:?}; {stats:?}",
                subject.label()
            );
            assert_eq!(outcome.status, 503, "{}: {outcome:?}", subject.label());
            assert!(
                elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
                "{}: answered after {elapsed:?}",
                subject.label()
            );
            assert_eq!(
                stats.get("dns_query_timeout"),
                Some(&1),
                "{}",
                subject.label()
            );
            observed.push((
                outcome,
                pick(&stats, &["dns_query_timeout", "dns_query_failure"]),
            ));
        }
        assert_same("query timeout", &observed[0], &observed[1]);
    });
}

/// `dns_cache_circuit_breaker.max_pending_requests: 1`: while one request waits for DNS, a second one is refused.
#[test]
fn pending_request_circuit_breaker() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let tweaks = Tweaks::default().dns("dns_query_timeout", "2s").dns(
            "dns_cache_circuit_breaker",
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>("{max_pending_requests: 1}")
                .expect("yaml"),
        );
        let mut observed = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &tweaks).await;
            let slow = name("pending-slow", &subject);
            world.dns.set(&slow, Answer::NeverAnswer);
            let other = name("pending-other", &subject);
            let first = {
                let listener = subject.proxy.listener();
                let request = get(&authority(&slow, &world), "/");
                tokio::spawn(async move {
                    tests::client::exchange(listener, &request.to_bytes(), false).await
                })
            };
            // Let the first request reach the cache and start waiting.
            let deadline = Instant::now() + Duration::from_secs(2);
            while world.dns.queries(&slow) == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let second = subject
                .send("pending-2", &get(&authority(&other, &world), "/"))
                .await
                .expect("request");
            let first = first.await.expect("task").expect("first request");
            let stats = cache_stats(&subject).await;
            assert_eq!(
                second.body,
                "Dynamic forward proxy pending request overflow",
                "{}: {second:?}",
                subject.label()
            );
            assert_eq!(first.status, 503, "{}", subject.label());
            observed.push((
                second,
                first.status,
                world.dns.queries(&other),
                pick(&stats, &CORE_STATS),
            ));
        }
        assert_same("pending overflow", &observed[0], &observed[1]);
    });
}

/// `host_ttl`: a host nobody uses is dropped at its next refresh; the next request starts over.
#[test]
fn unused_hosts_are_evicted_after_host_ttl() {
    block_on(async {
        let world = suite::shared_world().await.expect("fixtures");
        let tweaks = Tweaks::default()
            .dns("host_ttl", "1s")
            .dns("dns_min_refresh_rate", "1s");
        let mut observed = Vec::new();
        for kind in KINDS {
            let subject = subject(kind, &world, &tweaks).await;
            let host = name("evict", &subject);
            world.dns.set(
                &host,
                Answer::Ips {
                    addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                    ttl: 1,
                },
            );
            let first = subject
                .send("evict-1", &get(&authority(&host, &world), "/"))
                .await
                .expect("request");
            let removed = stats_until(&subject, |s| s.get("host_removed") == Some(&1)).await;
            let second = subject
                .send("evict-2", &get(&authority(&host, &world), "/"))
                .await
                .expect("request");
            let after = cache_stats(&subject).await;
            assert_eq!(first.status, 200);
            assert_eq!(second.status, 200);
            assert_eq!(
                (removed.get("host_removed"), removed.get("num_hosts")),
                (Some(&1), Some(&0)),
                "{}: {removed:?}",
                subject.label()
            );
            assert_eq!(
                after.get("host_added"),
                Some(&2),
                "{}: {after:?}",
                subject.label()
            );
            observed.push((
                pick(&removed, &["host_added", "host_removed", "num_hosts"]),
                pick(&after, &["host_added", "host_removed", "num_hosts"]),
            ));
        }
        assert_same("host_ttl", &observed[0], &observed[1]);
    });
}
