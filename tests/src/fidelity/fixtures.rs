//! What the fidelity table needs beyond the e2e [`World`]: the scripted upstream, a port that
//! refuses connections, TLS upstreams with other certificates (another CA, a wildcard name,
//! several names, an IP address), and the ABI probe guest.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio::sync::OnceCell;

use super::scripted::{Scripted, Sink};
use crate::pki::Pki;
use crate::template::Vars;
use crate::upstream::RefusedPort;
use crate::upstream::{EchoServer, Seen};
use crate::world::World;

/// The extra fixtures, next to the shared world.
pub struct Fixtures {
    pub world: Arc<World>,
    pub scripted: Scripted,
    pub refused: RefusedPort,
    /// Reads requests and never answers.
    pub sink: Sink,
    /// A CA the proxies do not trust, and its server.
    pub other_pki: Pki,
    /// Certificate for `untrusted.dfp.test` from `other_pki`.
    pub untrusted: EchoServer,
    /// Certificate for `*.wild.dfp.test` from the trusted CA.
    pub wildcard: EchoServer,
    /// Certificate for `multi-a.dfp.test` and `multi-b.dfp.test` from the trusted CA.
    pub multi: EchoServer,
    /// Certificate for the IP address `127.0.0.1` from the trusted CA.
    pub ip: EchoServer,
    /// The ABI probe (`guests/abi-probe`) built for wasm32-unknown-unknown.
    pub probe_wasm: PathBuf,
}

impl Fixtures {
    /// Started once per test process, on the fixtures' runtime.
    pub async fn shared() -> anyhow::Result<Arc<Fixtures>> {
        static FIXTURES: OnceCell<Arc<Fixtures>> = OnceCell::const_new();
        FIXTURES
            .get_or_try_init(|| async {
                let world = crate::suite::shared_world().await?;
                let probe_wasm = tokio::task::spawn_blocking(probe_wasm).await??;
                let other_pki = Pki::new()?;
                let untrusted = other_pki.leaf("untrusted", &["untrusted.dfp.test"])?;
                let wildcard = world.pki.leaf("wildcard", &["*.wild.dfp.test"])?;
                let multi = world
                    .pki
                    .leaf("multi", &["multi-a.dfp.test", "multi-b.dfp.test"])?;
                let ip = world.pki.leaf("ip", &["127.0.0.1"])?;
                Ok::<_, anyhow::Error>(Arc::new(Fixtures {
                    scripted: Scripted::start().await?,
                    refused: RefusedPort::new()?,
                    sink: Sink::start().await?,
                    untrusted: EchoServer::tls("untrusted", untrusted.server_config()?).await?,
                    wildcard: EchoServer::tls("wildcard", wildcard.server_config()?).await?,
                    multi: EchoServer::tls("multi", multi.server_config()?).await?,
                    ip: EchoServer::tls("ip", ip.server_config()?).await?,
                    other_pki,
                    probe_wasm,
                    world,
                }))
            })
            .await
            .cloned()
    }

    /// The world's placeholders plus this module's: `SCRIPTED_PORT`, `REFUSED_PORT`, `SINK_PORT`,
    /// `UNTRUSTED_TLS_PORT`, `WILDCARD_TLS_PORT`, `MULTI_TLS_PORT`, `IP_TLS_PORT`, `PROBE_WASM`,
    /// and long texts for size limits: `BIG_HEADER` (40 000 bytes), `HUGE_HEADER` (70 000),
    /// `LONG_PATH` (8 000).
    pub fn vars(&self) -> Vars {
        let mut vars = self.world.vars();
        for (name, value) in [
            ("SCRIPTED_PORT", self.scripted.port().to_string()),
            ("REFUSED_PORT", self.refused.port().to_string()),
            ("SINK_PORT", self.sink.port().to_string()),
            ("UNTRUSTED_TLS_PORT", self.untrusted.port().to_string()),
            ("WILDCARD_TLS_PORT", self.wildcard.port().to_string()),
            ("MULTI_TLS_PORT", self.multi.port().to_string()),
            ("IP_TLS_PORT", self.ip.port().to_string()),
            ("PROBE_WASM", self.probe_wasm.to_string_lossy().into_owned()),
            // Sizes around Envoy's default request header limit (max_request_headers_kb: 60).
            ("BIG_HEADER", "b".repeat(40_000)),
            ("HUGE_HEADER", "h".repeat(70_000)),
            ("LONG_PATH", "p".repeat(8_000)),
        ] {
            vars.insert(name.to_string(), value);
        }
        vars
    }

    /// Every request any upstream received with `x-case-id: <case_id>`.
    pub fn seen_for_case(&self, case_id: &str) -> Vec<Seen> {
        let echoes = self.world.echoes().into_iter().chain([
            &self.untrusted,
            &self.wildcard,
            &self.multi,
            &self.ip,
        ]);
        let mut seen: Vec<Seen> = echoes.flat_map(|s| s.seen_for_case(case_id)).collect();
        seen.extend(self.scripted.seen_for_case(case_id));
        seen
    }
}

/// Builds `guests/abi-probe` once per process (into `target/wasm-fixtures`, like the filter).
pub fn probe_wasm() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_probe().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn build_probe() -> anyhow::Result<PathBuf> {
    crate::wasm::build_guest("abi-probe")
}
