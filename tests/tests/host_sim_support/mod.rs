//! Shared by the `host_sim_*` suites that run one table against both proxies: start real Envoy and host-sim on
//! the same rendered test bootstrap (with a suite's changes to DNS cache and route settings), send a request,
//! and read what came back — status, body and the response code details from the access log — so the two
//! answers can be compared field by field.

#![allow(dead_code)] // Each suite uses its own part of this module.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use tempfile::TempDir;
use tests::client::{self, Request};
use tests::envoy::Envoy;
use tests::host_sim::HostSim;
use tests::proxy::{self, Proxy};
use tests::suite::{self, ProxyKind};
use tests::upstream::CASE_ID_HEADER;
use tests::world::World;

/// Both proxies, Envoy (the reference) first.
pub const KINDS: [ProxyKind; 2] = [ProxyKind::Envoy, ProxyKind::HostSim];

/// A DNS-label-safe name for a proxy kind, so each proxy asks the shared DNS server for names of its own.
pub fn label(kind: ProxyKind) -> &'static str {
    match kind {
        ProxyKind::Envoy => "envoy",
        ProxyKind::HostSim => "hostsim",
    }
}

/// Changes to `tests/config/envoy.template.yaml` for one suite.
#[derive(Default, Clone)]
pub struct Tweaks {
    /// Fields set on every `dns_cache_config` (the filter's and both DFP clusters', which must stay equal).
    pub dns_cache: Vec<(&'static str, Yaml)>,
    /// The `timeout` of the `prefix: /` route.
    pub route_timeout: Option<&'static str>,
    /// The `connect_timeout` of every cluster.
    pub connect_timeout: Option<&'static str>,
    /// Fields set on the HTTP connection manager.
    pub hcm: Vec<(&'static str, Yaml)>,
}

impl Tweaks {
    pub fn dns(mut self, field: &'static str, value: impl Into<Yaml>) -> Self {
        self.dns_cache.push((field, value.into()));
        self
    }
}

/// A started proxy with its own access log.
pub struct Subject {
    pub kind: ProxyKind,
    pub proxy: Box<dyn Proxy>,
    pub access_log: PathBuf,
    _dir: TempDir,
}

/// What a client and the access log saw for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub body: String,
    /// `%RESPONSE_CODE_DETAILS%`
    pub details: String,
    pub content_type: Option<String>,
    /// The `connection` response header (`close` when the proxy ends the connection).
    pub connection: Option<String>,
}

/// The downstream filter config the suites use: `allow` rules plus cluster selection through `x-dfp-cluster`.
pub fn downstream_config(allow: Json) -> Json {
    serde_json::json!({
        "stage": "downstream",
        "allow": allow,
        "cluster_header": "x-dfp-cluster",
        "clusters": { "plain": "dfp_plain", "tls": "dfp_tls" }
    })
}

/// The upstream stage with loopback carved out, since every test address is loopback, and 10.0.0.6, which
/// the failure suite resolves a name to (the kernel refuses the connect: clusters bind to 127.0.0.1).
pub fn upstream_config() -> Json {
    serde_json::json!({
        "stage": "upstream",
        "addresses": { "allow": ["127.0.0.0/8", "10.0.0.6/32"] }
    })
}

/// Starts a proxy of `kind` on the test bootstrap with these filter configs and tweaks.
pub async fn start(
    kind: ProxyKind,
    world: &World,
    downstream: &Json,
    upstream: &Json,
    tweaks: &Tweaks,
) -> anyhow::Result<Subject> {
    let dir = tempfile::Builder::new().prefix("dfp-compare-").tempdir()?;
    let access_log = dir.path().join("access.log");
    let rendered = world.render_bootstrap(
        &suite::bootstrap_template()?,
        downstream,
        upstream,
        (0, 0),
        &access_log,
    )?;
    let bootstrap = apply(&rendered, tweaks)?;
    let proxy: Box<dyn Proxy> = match kind {
        ProxyKind::Envoy => Box::new(Envoy::start(&bootstrap).await?),
        ProxyKind::HostSim => Box::new(HostSim::start(&bootstrap)?),
    };
    Ok(Subject {
        kind,
        proxy,
        access_log,
        _dir: dir,
    })
}

/// Applies `tweaks` to a rendered bootstrap by editing its YAML tree (indentation-proof, unlike text edits).
pub fn apply(bootstrap: &str, tweaks: &Tweaks) -> anyhow::Result<String> {
    let mut document: Yaml = serde_yaml_ng::from_str(bootstrap)?;
    visit(&mut document, &mut |map| {
        if let Some(Yaml::Mapping(cache)) = map.get_mut("dns_cache_config") {
            for (field, value) in &tweaks.dns_cache {
                cache.insert(Yaml::from(*field), value.clone());
            }
        }
        let prefix_route = map.get("match").and_then(|m| m.get("prefix")).is_some();
        if let (true, Some(timeout), Some(Yaml::Mapping(route))) =
            (prefix_route, tweaks.route_timeout, map.get_mut("route"))
        {
            route.insert(Yaml::from("timeout"), Yaml::from(timeout));
        }
        if map.contains_key("stat_prefix") && map.contains_key("route_config") {
            for (field, value) in &tweaks.hcm {
                map.insert(Yaml::from(*field), value.clone());
            }
        }
        if let (Some(timeout), true) = (tweaks.connect_timeout, map.contains_key("connect_timeout"))
        {
            map.insert(Yaml::from("connect_timeout"), Yaml::from(timeout));
        }
    });
    Ok(serde_yaml_ng::to_string(&document)?)
}

fn visit(node: &mut Yaml, f: &mut dyn FnMut(&mut serde_yaml_ng::Mapping)) {
    match node {
        Yaml::Mapping(map) => {
            f(map);
            for (_, value) in map.iter_mut() {
                visit(value, f);
            }
        }
        Yaml::Sequence(items) => items.iter_mut().for_each(|item| visit(item, f)),
        _ => {}
    }
}

/// An origin-form GET to `host` (`Host: host`).
pub fn get(host: &str, path: &str) -> Request {
    Request {
        method: "GET".into(),
        target: path.into(),
        headers: vec![("host".into(), host.into())],
        body: Vec::new(),
    }
}

impl Subject {
    pub fn label(&self) -> &'static str {
        label(self.kind)
    }

    /// Sends `request` tagged with `case` and returns the response with its access-log details.
    pub async fn send(&self, case: &str, request: &Request) -> anyhow::Result<Outcome> {
        let mut request = request.clone();
        request
            .headers
            .push((CASE_ID_HEADER.to_string(), case.to_string()));
        let head_only = request.method.eq_ignore_ascii_case("HEAD");
        // Interim responses (`100 Continue`) are skipped on the way to the final one.
        let response =
            client::exchange_streaming(self.proxy.listener(), request.to_bytes(), head_only)
                .await
                .map_err(|e| anyhow::anyhow!("{} case {case}: {e}", self.label()))?
                .response;
        // A request the codec refused has no access log line, in Envoy as in host-sim.
        let details = self
            .logged_details(case, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| "<no access log line>".to_string());
        Ok(Outcome {
            status: response.status,
            body: response.body_text(),
            details,
            content_type: response.header("content-type").map(str::to_string),
            connection: response.header("connection").map(str::to_string),
        })
    }

    /// The response code details the access log has for `case` (waits for the line: Envoy flushes every 100 ms).
    pub async fn details(&self, case: &str) -> anyhow::Result<String> {
        self.logged_details(case, Duration::from_secs(10))
            .await
            .ok_or_else(|| anyhow::anyhow!("{}: no access log line for {case}", self.label()))
    }

    /// The details of `case`'s access log line, waiting up to `wait` for it to appear.
    pub async fn logged_details(&self, case: &str, wait: Duration) -> Option<String> {
        let prefix = format!("{case} ");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let text = tokio::fs::read_to_string(&self.access_log)
                .await
                .unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with(&prefix)) {
                // `<id> <status> <cluster> <details>`; only the details may contain spaces.
                return Some(line.splitn(4, ' ').nth(3).unwrap_or_default().to_string());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin `/stats` counters and gauges whose names start with `prefix`.
    pub async fn stats(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        Ok(proxy::stats(self.proxy.admin())
            .await?
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .collect())
    }

    /// The last lines of the proxy's log, for failure messages.
    pub fn log_tail(&self) -> String {
        suite::tail(&self.proxy.log(), 60)
    }
}

/// Asserts that host-sim answered as Envoy did, naming the case.
pub fn assert_same<T: PartialEq + std::fmt::Debug>(case: &str, envoy: &T, host_sim: &T) {
    assert_eq!(
        host_sim, envoy,
        "{case}: host-sim (left) differs from Envoy 1.40 (right)"
    );
}
