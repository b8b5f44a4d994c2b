//! host-sim as a proxy under test: the same bootstrap YAML, run in this process (ports 0 are bound by host-sim and
//! read back), so suites need no second build of the binary.

use std::net::SocketAddr;
use std::sync::Mutex;

use host_sim::config::Bootstrap;
use host_sim::proxy::{self, ProxyOptions, RunningProxy};

use crate::proxy::Proxy;

pub struct HostSim {
    running: Mutex<Option<RunningProxy>>,
    listener: SocketAddr,
    admin: SocketAddr,
}

impl HostSim {
    /// Parses and starts `bootstrap_yaml` with two workers (the concurrency the Envoy launcher uses).
    pub fn start(bootstrap_yaml: &str) -> anyhow::Result<HostSim> {
        HostSim::start_with_workers(bootstrap_yaml, 2)
    }

    /// [`HostSim::start`] with `workers` workers.
    pub fn start_with_workers(bootstrap_yaml: &str, workers: usize) -> anyhow::Result<HostSim> {
        let bootstrap = Bootstrap::from_yaml(bootstrap_yaml)?;
        let options = ProxyOptions {
            concurrency: workers,
            ..ProxyOptions::default()
        };
        let running = proxy::start(&bootstrap, &options)?;
        let listener = *running
            .listeners
            .first()
            .ok_or_else(|| anyhow::anyhow!("the bootstrap has no listener"))?;
        let admin = running
            .admin
            .ok_or_else(|| anyhow::anyhow!("the bootstrap has no admin address"))?;
        Ok(HostSim {
            running: Mutex::new(Some(running)),
            listener,
            admin,
        })
    }
}

impl Proxy for HostSim {
    fn kind(&self) -> &'static str {
        "host-sim"
    }

    fn listener(&self) -> SocketAddr {
        self.listener
    }

    fn admin(&self) -> SocketAddr {
        self.admin
    }

    fn log(&self) -> String {
        "(host-sim runs in the test process: run with RUST_LOG=debug and --nocapture to see its log)".to_string()
    }
}

impl Drop for HostSim {
    fn drop(&mut self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(running) = running {
            running.stop();
        }
    }
}
