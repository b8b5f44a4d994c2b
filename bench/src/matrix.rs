//! What gets measured: the setups (rows), the worker counts, the scale points, and the order of runs.

use serde::{Deserialize, Serialize};

/// One way of serving the same request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// The load generator talks to the upstream directly: the limit every proxy row is under.
    Upstream,
    /// Envoy: dynamic_forward_proxy + router, route straight to the DFP cluster.
    EnvoyDfp,
    /// Envoy: the empty proxy-wasm filter in front of the DFP (the price of wasm itself).
    EnvoyNoop,
    /// Envoy: `dfp_filter.wasm` (downstream stage, cluster routing as shipped: `x-dfp-cluster`
    /// written only for a cluster other than `clusters.default`, so never for this load).
    EnvoyFilter,
    /// Envoy: the filter writing `x-dfp-cluster` and calling `clear_route_cache` on every request
    /// (no `clusters.default`): what a destination on the non-default cluster (TLS) pays.
    EnvoyFilterWrite,
    /// Envoy: native RBAC matching `:authority` against the same allowlist (the alternative).
    EnvoyRbac,
    /// host-sim running the same bootstrap as `EnvoyFilter`.
    HostSimFilter,
    /// host-sim with the bootstrap of `EnvoyDfp` (no filter): its own DFP's cost, so the filter's
    /// share of `HostSimFilter` shows.
    HostSimDfp,
    /// Envoy: the shipped shape, the filter downstream and again as an upstream filter.
    EnvoyFilterBoth,
    /// host-sim running the same bootstrap as `EnvoyFilterBoth`.
    HostSimFilterBoth,
}

/// Which process serves a setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Upstream,
    Envoy,
    HostSim,
}

/// The HTTP filter in front of the DFP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    None,
    NoopWasm,
    Filter {
        upstream_stage: bool,
        routing: Routing,
    },
    Rbac,
}

/// How the filter and the route table pick the DFP cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// As shipped: a route reads `x-dfp-cluster` when present, else falls back to the plain
    /// cluster (`"clusters.default": "plain"`); the filter writes the header only for TLS.
    Fallback,
    /// The filter writes `x-dfp-cluster` on every request and re-picks the route (no default).
    EveryRequest,
}

impl Setup {
    pub const ALL: [Setup; 10] = [
        Setup::Upstream,
        Setup::EnvoyDfp,
        Setup::EnvoyNoop,
        Setup::EnvoyFilter,
        Setup::EnvoyFilterWrite,
        Setup::EnvoyRbac,
        Setup::HostSimFilter,
        Setup::HostSimDfp,
        Setup::EnvoyFilterBoth,
        Setup::HostSimFilterBoth,
    ];

    /// The short name used on the command line and in the JSON.
    pub fn id(self) -> &'static str {
        match self {
            Setup::Upstream => "upstream",
            Setup::EnvoyDfp => "envoy-dfp",
            Setup::EnvoyNoop => "envoy-noop",
            Setup::EnvoyFilter => "envoy-filter",
            Setup::EnvoyRbac => "envoy-rbac",
            Setup::HostSimFilter => "host-sim-filter",
            Setup::HostSimDfp => "host-sim-dfp",
            Setup::EnvoyFilterBoth => "envoy-filter-both",
            Setup::HostSimFilterBoth => "host-sim-filter-both",
            Setup::EnvoyFilterWrite => "envoy-filter-write",
        }
    }

    /// What a reader sees in the table and the chart.
    pub fn label(self) -> &'static str {
        match self {
            Setup::Upstream => "upstream alone",
            Setup::EnvoyDfp => "Envoy, DFP only",
            Setup::EnvoyNoop => "Envoy + no-op wasm",
            Setup::EnvoyFilter => "Envoy + dfp_filter.wasm",
            Setup::EnvoyRbac => "Envoy + RBAC on :authority",
            Setup::HostSimFilter => "host-sim + dfp_filter.wasm",
            Setup::HostSimDfp => "host-sim, DFP only",
            Setup::EnvoyFilterBoth => "Envoy + filter, both stages",
            Setup::HostSimFilterBoth => "host-sim + filter, both stages",
            Setup::EnvoyFilterWrite => "Envoy + filter, header every request",
        }
    }

    pub fn from_id(id: &str) -> Option<Setup> {
        Setup::ALL.into_iter().find(|s| s.id() == id)
    }

    pub fn server(self) -> Server {
        match self {
            Setup::Upstream => Server::Upstream,
            Setup::HostSimFilter | Setup::HostSimFilterBoth | Setup::HostSimDfp => Server::HostSim,
            _ => Server::Envoy,
        }
    }

    pub fn policy(self) -> Policy {
        match self {
            Setup::Upstream | Setup::EnvoyDfp | Setup::HostSimDfp => Policy::None,
            Setup::EnvoyNoop => Policy::NoopWasm,
            Setup::EnvoyFilter | Setup::HostSimFilter => Policy::Filter {
                upstream_stage: false,
                routing: Routing::Fallback,
            },
            Setup::EnvoyFilterBoth | Setup::HostSimFilterBoth => Policy::Filter {
                upstream_stage: true,
                routing: Routing::Fallback,
            },
            Setup::EnvoyFilterWrite => Policy::Filter {
                upstream_stage: false,
                routing: Routing::EveryRequest,
            },
            Setup::EnvoyRbac => Policy::Rbac,
        }
    }

    /// Setups whose cost may depend on the number of distinct destination hosts.
    pub fn scales_with_hosts(self) -> bool {
        matches!(
            self,
            Setup::EnvoyDfp | Setup::EnvoyFilter | Setup::HostSimFilter | Setup::HostSimDfp
        )
    }

    /// Setups whose cost may depend on the number of allowlist rules.
    pub fn scales_with_rules(self) -> bool {
        matches!(
            self,
            Setup::EnvoyFilter | Setup::EnvoyRbac | Setup::HostSimFilter
        )
    }
}

/// Distinct destination hosts the load spreads over, and allowlist rules the policy holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scale {
    pub hosts: u32,
    pub rules: u32,
}

impl Scale {
    /// The reference point every scale row is compared with.
    pub const BASE: Scale = Scale {
        hosts: 1,
        rules: 10,
    };
}

/// One row of the table: a setup at a worker count and scale point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Row {
    pub setup: Setup,
    /// Proxy worker threads (Envoy's `--concurrency`); `None` for the upstream alone.
    pub workers: Option<u32>,
    pub scale: Scale,
}

impl Row {
    pub fn key(&self) -> String {
        format!(
            "{} w={} hosts={} rules={}",
            self.setup.id(),
            self.workers.map_or("-".to_string(), |w| w.to_string()),
            self.scale.hosts,
            self.scale.rules
        )
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct MatrixSpec {
    pub setups: Vec<Setup>,
    /// Worker counts of the base rows.
    pub workers: Vec<u32>,
    /// Extra host counts (beyond 1) for the setups that scale with hosts.
    pub hosts: Vec<u32>,
    /// Extra rule counts (beyond 10) for the setups that scale with rules.
    pub rules: Vec<u32>,
    /// The worker count of the scale rows.
    pub scale_workers: u32,
}

/// Every row, base rows first; no duplicates.
pub fn rows(spec: &MatrixSpec) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |row: Row| {
        if !rows.contains(&row) {
            rows.push(row);
        }
    };
    for &setup in &spec.setups {
        if setup == Setup::Upstream {
            push(Row {
                setup,
                workers: None,
                scale: Scale::BASE,
            });
            continue;
        }
        for &workers in &spec.workers {
            push(Row {
                setup,
                workers: Some(workers),
                scale: Scale::BASE,
            });
        }
    }
    let scaled = spec.setups.iter().copied();
    let reference = |setup| Row {
        setup,
        workers: Some(spec.scale_workers),
        scale: Scale::BASE,
    };
    for setup in scaled.clone().filter(|s| s.scales_with_hosts()) {
        if spec.hosts.is_empty() {
            break;
        }
        push(reference(setup));
        for &hosts in &spec.hosts {
            push(Row {
                setup,
                workers: Some(spec.scale_workers),
                scale: Scale {
                    hosts,
                    rules: Scale::BASE.rules,
                },
            });
        }
    }
    for setup in scaled.filter(|s| s.scales_with_rules()) {
        if spec.rules.is_empty() {
            break;
        }
        push(reference(setup));
        for &rules in &spec.rules {
            push(Row {
                setup,
                workers: Some(spec.scale_workers),
                scale: Scale {
                    hosts: Scale::BASE.hosts,
                    rules,
                },
            });
        }
    }
    rows
}

/// The order of round `round`: every row once, rotated by the round number so that no row always
/// runs first (right after a quiet start) or last, and the machine's drift hits every row alike.
pub fn round_order(rows: &[Row], round: usize) -> Vec<Row> {
    let mut order = rows.to_vec();
    if !order.is_empty() {
        let shift = (round * order.len().div_ceil(3).max(1)) % order.len();
        order.rotate_left(shift);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MatrixSpec {
        MatrixSpec {
            setups: vec![
                Setup::Upstream,
                Setup::EnvoyDfp,
                Setup::EnvoyFilter,
                Setup::EnvoyRbac,
                Setup::HostSimFilter,
            ],
            workers: vec![1, 2],
            hosts: vec![100, 10_000],
            rules: vec![1_000, 100_000],
            scale_workers: 1,
        }
    }

    #[test]
    fn rows_cover_base_and_scale_without_duplicates() {
        let rows = rows(&spec());
        // upstream once; 4 proxies x 2 workers; hosts: 3 setups x 2; rules: 3 setups x 2.
        assert_eq!(rows.len(), 1 + 8 + 6 + 6);
        let mut keys: Vec<String> = rows.iter().map(Row::key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), rows.len());
        assert!(rows.iter().any(|r| r.setup == Setup::EnvoyRbac
            && r.scale.rules == 100_000
            && r.workers == Some(1)));
        assert!(!rows
            .iter()
            .any(|r| r.setup == Setup::EnvoyRbac && r.scale.hosts != 1));
    }

    #[test]
    fn scale_rows_bring_their_reference() {
        let mut spec = spec();
        spec.workers = vec![2];
        let rows = rows(&spec);
        assert!(rows.contains(&Row {
            setup: Setup::EnvoyFilter,
            workers: Some(1),
            scale: Scale::BASE
        }));
    }

    #[test]
    fn rounds_rotate_every_row_once() {
        let rows = rows(&spec());
        let first = round_order(&rows, 0);
        let second = round_order(&rows, 1);
        assert_eq!(first, rows);
        assert_ne!(first[0], second[0]);
        let mut a = second.clone();
        a.sort();
        let mut b = rows.clone();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn ids_round_trip() {
        for setup in Setup::ALL {
            assert_eq!(Setup::from_id(setup.id()), Some(setup));
        }
        assert_eq!(Setup::from_id("nginx"), None);
    }
}
