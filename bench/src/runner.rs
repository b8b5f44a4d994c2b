//! One benchmark: the DNS server and the upstream start once; then, round after round, every row
//! gets its own fresh proxy process, a warm-up and a measured window of load.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::configs::{self, Inputs, HOST_ZONE};
use crate::load::{self, Generator};
use crate::matrix::{self, MatrixSpec, Policy, Row, Server};
use crate::process::{self, ServerProcess};
use crate::upstream;

/// How hard and how long to load each row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub rounds: usize,
    pub connections: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub generator_threads: usize,
    pub upstream_threads: usize,
    pub max_hosts: u32,
}

/// The programs and modules a run uses.
#[derive(Clone, Debug)]
pub struct Tools {
    /// This binary (it is also the upstream).
    pub bench: PathBuf,
    pub envoy: Option<PathBuf>,
    pub host_sim: Option<PathBuf>,
    pub filter_wasm: PathBuf,
    pub noop_wasm: PathBuf,
}

/// What one round of one row measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub row: Row,
    pub round: usize,
    /// Why the row could not be measured this round (then the numbers are zero).
    pub failure: Option<String>,
    pub requests: u64,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub non_2xx: u64,
    pub errors: u64,
    pub warmup_requests: u64,
    pub warmup_failures: u64,
    pub first_failure: Option<String>,
    /// CPU seconds (user + system) of the measured process during the window.
    pub cpu_s: f64,
    pub cpu_s_per_10k: f64,
    /// CPU of this benchmark process (the load generator) per 10k requests, for context.
    pub generator_cpu_s_per_10k: f64,
    pub peak_rss_kib: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Requests the upstream served during the window: proof the load went all the way through.
    pub upstream_served: u64,
    /// The policy's own count of allowed requests since start (filter or RBAC stats), if any.
    pub policy_allowed: Option<u64>,
    pub startup_s: f64,
    #[serde(skip)]
    pub latency_us: Option<Histogram<u64>>,
}

impl Sample {
    fn failed(row: Row, round: usize, failure: String) -> Sample {
        Sample {
            row,
            round,
            failure: Some(failure),
            requests: 0,
            elapsed_s: 0.0,
            requests_per_s: 0.0,
            non_2xx: 0,
            errors: 0,
            warmup_requests: 0,
            warmup_failures: 0,
            first_failure: None,
            cpu_s: 0.0,
            cpu_s_per_10k: 0.0,
            generator_cpu_s_per_10k: 0.0,
            peak_rss_kib: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            upstream_served: 0,
            policy_allowed: None,
            startup_s: 0.0,
            latency_us: None,
        }
    }

    /// Measured cleanly: no failure, no error, only 2xx answers, and the upstream saw the load.
    pub fn is_clean(&self, connections: usize) -> bool {
        self.failure.is_none()
            && self.requests > 0
            && self.errors == 0
            && self.non_2xx == 0
            && self.upstream_served + connections as u64 >= self.requests
    }
}

/// Everything that lives for the whole benchmark.
struct Environment {
    load_runtime: tokio::runtime::Runtime,
    // Kept alive for the run; the DNS server stops when dropped.
    _dns_runtime: tokio::runtime::Runtime,
    _dns: ::tests::dns::DnsServer,
    upstream: ServerProcess,
    inputs: Inputs,
}

/// Runs every row `settings.rounds` times, interleaved; `progress` hears one line per run.
pub fn run(
    spec: &MatrixSpec,
    settings: &Settings,
    tools: &Tools,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Vec<Sample>> {
    let rows = matrix::rows(spec);
    let env = Environment::start(settings, tools)?;
    let mut samples = Vec::new();
    let total = rows.len() * settings.rounds;
    for round in 0..settings.rounds {
        for row in matrix::round_order(&rows, round) {
            let sample = match env.measure(&row, round, settings, tools) {
                Ok(sample) => sample,
                Err(error) => Sample::failed(row, round, format!("{error:#}")),
            };
            progress(&format!(
                "[{}/{total}] round {} {:<44} {}",
                samples.len() + 1,
                round + 1,
                row.key(),
                describe(&sample)
            ));
            samples.push(sample);
        }
    }
    Ok(samples)
}

fn describe(sample: &Sample) -> String {
    if let Some(failure) = &sample.failure {
        let first = failure.lines().next().unwrap_or("");
        return format!("FAILED: {first}");
    }
    let mut text = format!(
        "{:>8.0} req/s  p99 {:>6.2} ms  cpu {:.3} s/10k  rss {:>6.1} MiB",
        sample.requests_per_s,
        sample.p99_ms,
        sample.cpu_s_per_10k,
        sample.peak_rss_kib as f64 / 1024.0
    );
    if sample.errors + sample.non_2xx > 0 {
        text.push_str(&format!(
            "  errors {} non-2xx {} ({})",
            sample.errors,
            sample.non_2xx,
            sample.first_failure.as_deref().unwrap_or("-")
        ));
    }
    text
}

impl Environment {
    fn start(settings: &Settings, tools: &Tools) -> anyhow::Result<Environment> {
        let dns_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-dns")
            .enable_all()
            .build()?;
        let dns = dns_runtime.block_on(::tests::dns::DnsServer::start())?;
        // Every destination host resolves to the upstream's address; a long TTL keeps the DNS
        // out of the measured window.
        dns.set(
            &format!("*.{HOST_ZONE}"),
            ::tests::dns::Answer::Ips {
                addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                ttl: 3600,
            },
        );
        let upstream = ServerProcess::upstream(&tools.bench, settings.upstream_threads)
            .context("starting the upstream")?;
        let load_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.generator_threads.max(1))
            .thread_name("bench-load")
            .enable_all()
            .build()?;
        let inputs = Inputs {
            filter_wasm: tools.filter_wasm.clone(),
            noop_wasm: tools.noop_wasm.clone(),
            dns_port: dns.addr().port(),
            upstream_port: upstream.listener.port(),
            max_hosts: settings.max_hosts,
        };
        Ok(Environment {
            load_runtime,
            _dns_runtime: dns_runtime,
            _dns: dns,
            upstream,
            inputs,
        })
    }

    fn measure(
        &self,
        row: &Row,
        round: usize,
        settings: &Settings,
        tools: &Tools,
    ) -> anyhow::Result<Sample> {
        let workers = row.workers.unwrap_or(1);
        let server = match row.setup.server() {
            Server::Upstream => None,
            Server::Envoy => {
                let bin = tools.envoy.as_ref().context("no Envoy binary")?;
                let yaml = configs::bootstrap_yaml(row, &self.inputs)?;
                Some(
                    self.load_runtime
                        .block_on(ServerProcess::envoy(bin, &yaml, workers))?,
                )
            }
            Server::HostSim => {
                let bin = tools.host_sim.as_ref().context("no host-sim binary")?;
                let yaml = configs::bootstrap_yaml(row, &self.inputs)?;
                Some(
                    self.load_runtime
                        .block_on(ServerProcess::host_sim(bin, &yaml, workers))?,
                )
            }
        };
        let (target, pid, startup) = match &server {
            Some(s) => (s.listener, s.pid(), s.startup),
            None => {
                // The upstream lives all run long: its peak must cover this row only.
                process::reset_peak_rss(self.upstream.pid());
                (
                    self.upstream.listener,
                    self.upstream.pid(),
                    self.upstream.startup,
                )
            }
        };
        let measured = self.load_once(row, target, pid, settings);
        let mut sample = match measured {
            Ok(sample) => sample,
            Err(error) => {
                let log = server.as_ref().map(ServerProcess::log).unwrap_or_default();
                return Err(error.context(format!("log of the proxy:\n{log}")));
            }
        };
        sample.round = round;
        sample.startup_s = startup.as_secs_f64();
        if let (Some(server), Some(stat)) = (&server, allowed_stat(row)) {
            if let Some(admin) = server.admin {
                sample.policy_allowed = self
                    .load_runtime
                    .block_on(::tests::proxy::counter(admin, stat))
                    .ok();
            }
        }
        if let Some(server) = server {
            server.stop();
        }
        Ok(sample)
    }

    fn load_once(
        &self,
        row: &Row,
        target: SocketAddr,
        pid: u32,
        settings: &Settings,
    ) -> anyhow::Result<Sample> {
        let requests = load::requests_for_hosts(row.scale.hosts, self.inputs.upstream_port);
        let mut generator = Generator::start(
            self.load_runtime.handle(),
            target,
            requests,
            settings.connections,
        )?;
        // Every host once (DNS resolved, upstream connected), then the timed warm-up.
        let sweep_deadline = Instant::now() + process::START_TIMEOUT;
        while !generator.swept() {
            anyhow::ensure!(
                Instant::now() < sweep_deadline,
                "the warm-up did not reach every host within {:?}",
                process::START_TIMEOUT
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_secs_f64(settings.warmup_s));

        let served_before = self.upstream_served()?;
        let cpu_before = process::cpu_seconds(pid)?;
        let own_before = process::cpu_seconds(std::process::id())?;
        generator.begin_measure();
        std::thread::sleep(Duration::from_secs_f64(settings.duration_s));
        generator.end_measure();
        let cpu_after = process::cpu_seconds(pid)?;
        let own_after = process::cpu_seconds(std::process::id())?;
        let result = self.load_runtime.block_on(generator.finish())?;
        let served_after = self.upstream_served()?;
        let peak_rss_kib = process::peak_rss_kib(pid)?;

        let per_10k = |cpu: f64| {
            if result.requests > 0 {
                cpu * 10_000.0 / result.requests as f64
            } else {
                0.0
            }
        };
        Ok(Sample {
            row: *row,
            round: 0,
            failure: None,
            requests: result.requests,
            elapsed_s: result.elapsed.as_secs_f64(),
            requests_per_s: result.requests_per_second(),
            non_2xx: result.non_2xx,
            errors: result.errors,
            warmup_requests: result.warmup_requests,
            warmup_failures: result.warmup_failures,
            first_failure: result.first_failure.clone(),
            cpu_s: cpu_after - cpu_before,
            cpu_s_per_10k: per_10k(cpu_after - cpu_before),
            generator_cpu_s_per_10k: per_10k(own_after - own_before),
            peak_rss_kib,
            p50_ms: result.latency_ms(0.5),
            p99_ms: result.latency_ms(0.99),
            p999_ms: result.latency_ms(0.999),
            upstream_served: served_after.saturating_sub(served_before),
            policy_allowed: None,
            startup_s: 0.0,
            latency_us: Some(result.latency_us),
        })
    }

    /// The upstream's own count of requests served.
    fn upstream_served(&self) -> anyhow::Result<u64> {
        let response = self.load_runtime.block_on(::tests::client::get(
            self.upstream.listener,
            upstream::COUNT_PATH,
        ))?;
        response
            .body_text()
            .trim()
            .parse()
            .context("the upstream's request count")
    }
}

/// The stat in which the row's policy counts allowed requests.
fn allowed_stat(row: &Row) -> Option<&'static str> {
    match row.setup.policy() {
        Policy::Filter { .. } => Some("wasmcustom.dfp.downstream.allowed"),
        Policy::Rbac => Some("http.bench.rbac.allowed"),
        Policy::None | Policy::NoopWasm => None,
    }
}
