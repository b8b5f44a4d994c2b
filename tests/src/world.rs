//! Everything a proxy under test talks to, started together: the DNS server with the test
//! zone, the CA, the upstreams, and the filter wasm.
//!
//! Test zone (`*.dfp.test`): every name resolves to 127.0.0.1, where the upstreams listen,
//! except `nxdomain.dfp.test` (NXDOMAIN) and `never.dfp.test` (no answer at all). The TLS
//! upstream's certificate names `secure.dfp.test` only, so any other name reaching it fails
//! certificate validation. The shipped config's hosts (`httpbin.org`, `gateway.envoyproxy.io`)
//! resolve to 127.0.0.1 too: nothing leaves the machine.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dns::{Answer, DnsServer};
use crate::pki::Pki;
use crate::template::{self, Vars};
use crate::upstream::{EchoServer, TcpEcho};
use crate::wasm;

/// The hosts the shipped envoy-config/envoy.yaml allows (the seed's examples).
pub const SEED_HOSTS: [&str; 2] = ["gateway.envoyproxy.io", "httpbin.org"];

/// The name the TLS upstream's certificate is issued for.
pub const TLS_NAME: &str = "secure.dfp.test";

pub struct World {
    pub dns: DnsServer,
    pub pki: Pki,
    /// Plain HTTP echo, the usual destination.
    pub plain: EchoServer,
    /// TLS echo with a certificate for [`TLS_NAME`].
    pub tls: EchoServer,
    /// Behind the static cluster `forbidden`; nothing may ever reach it.
    pub forbidden: EchoServer,
    /// Raw TCP echo, the far end of CONNECT tunnels.
    pub tcp: TcpEcho,
    /// The filter under test.
    pub wasm: PathBuf,
}

impl World {
    /// Builds the filter (once per process) and starts every fixture on the current runtime.
    pub async fn start() -> anyhow::Result<Arc<World>> {
        let wasm = tokio::task::spawn_blocking(wasm::filter_wasm).await??;
        let dns = DnsServer::start().await?;
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        dns.set("*.dfp.test", Answer::ips(&[loopback]));
        dns.set("nxdomain.dfp.test", Answer::NxDomain);
        dns.set("never.dfp.test", Answer::NeverAnswer);
        // The hosts envoy-config/envoy.yaml allows, pointed at loopback like everything else.
        for seed in SEED_HOSTS {
            dns.set(seed, Answer::ips(&[loopback]));
        }

        let pki = Pki::new()?;
        let leaf = pki.leaf("secure", &[TLS_NAME])?;
        let tls = EchoServer::tls("tls", leaf.server_config()?).await?;
        Ok(Arc::new(World {
            dns,
            pki,
            plain: EchoServer::plain("plain").await?,
            tls,
            forbidden: EchoServer::plain("forbidden").await?,
            tcp: TcpEcho::start().await?,
            wasm,
        }))
    }

    /// Placeholder values for case files and config templates.
    pub fn vars(&self) -> Vars {
        let mut vars = Vars::new();
        let mut set = |k: &str, v: String| {
            vars.insert(k.to_string(), v);
        };
        set("PLAIN_PORT", self.plain.port().to_string());
        set("TLS_PORT", self.tls.port().to_string());
        set("TCP_PORT", self.tcp.port().to_string());
        set("FORBIDDEN_PORT", self.forbidden.port().to_string());
        set("DNS_PORT", self.dns.addr().port().to_string());
        set("CA_FILE", path_text(&self.pki.ca_file()));
        set("WASM", path_text(&self.wasm));
        // The resolved-address stage, inert unless a variant configures it.
        set("RESOLVED_RULES", crate::rbac::neutral_rules().to_string());
        vars
    }

    /// The HTTP echo server called `name` in case files.
    pub fn echo(&self, name: &str) -> Option<&EchoServer> {
        [&self.plain, &self.tls, &self.forbidden]
            .into_iter()
            .find(|s| s.name() == name)
    }

    /// Every HTTP echo server.
    pub fn echoes(&self) -> [&EchoServer; 3] {
        [&self.plain, &self.tls, &self.forbidden]
    }

    /// Renders a bootstrap template with this world's addresses, the given filter configs
    /// (JSON values), listener/admin ports (0: let the proxy pick) and access log file.
    pub fn render_bootstrap(
        &self,
        template_text: &str,
        downstream: &serde_json::Value,
        upstream: &serde_json::Value,
        ports: (u16, u16),
        access_log: &Path,
    ) -> anyhow::Result<String> {
        self.render_bootstrap_with(template_text, downstream, upstream, None, ports, access_log)
    }

    /// [`World::render_bootstrap`] with the resolved-address stage's RBAC rules (`None`: inert).
    pub fn render_bootstrap_with(
        &self,
        template_text: &str,
        downstream: &serde_json::Value,
        upstream: &serde_json::Value,
        resolved_rules: Option<&serde_json::Value>,
        ports: (u16, u16),
        access_log: &Path,
    ) -> anyhow::Result<String> {
        let (listener_port, admin_port) = ports;
        let mut vars = self.vars();
        if let Some(rules) = resolved_rules {
            vars.insert("RESOLVED_RULES".into(), rules.to_string());
        }
        vars.insert("ACCESS_LOG".into(), path_text(access_log));
        // A JSON string is a valid YAML double-quoted scalar: the config goes in verbatim.
        vars.insert(
            "DOWNSTREAM_CONFIG".into(),
            serde_json::to_string(&downstream.to_string())?,
        );
        vars.insert(
            "UPSTREAM_CONFIG".into(),
            serde_json::to_string(&upstream.to_string())?,
        );
        vars.insert("LISTENER_PORT".into(), listener_port.to_string());
        vars.insert("ADMIN_PORT".into(), admin_port.to_string());
        Ok(template::render(template_text, &vars)?)
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `tests/` inside the workspace: where `config/` and `cases/` live.
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
