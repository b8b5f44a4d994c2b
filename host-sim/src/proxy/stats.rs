//! The connection manager's and clusters' stats, defined once when a configuration loads (as Envoy creates them
//! with the listener and the cluster, so they read 0 before any traffic) and counted on the request path without
//! formatting names or looking them up.

use std::sync::Arc;

use crate::shared::metrics::{Metric, MetricsStore};
use crate::types::MetricKind;

/// `http.<stat_prefix>.*`
pub(crate) struct ListenerStats {
    pub downstream_cx_total: Arc<Metric>,
    pub downstream_rq_total: Arc<Metric>,
    /// `downstream_rq_1xx` … `downstream_rq_5xx`.
    downstream_rq_xx: [Arc<Metric>; 5],
}

impl ListenerStats {
    pub fn new(store: &MetricsStore, stat_prefix: &str) -> Self {
        let counter =
            |name: &str| store.define(MetricKind::Counter, &format!("http.{stat_prefix}.{name}"));
        ListenerStats {
            downstream_cx_total: counter("downstream_cx_total"),
            downstream_rq_total: counter("downstream_rq_total"),
            downstream_rq_xx: [1, 2, 3, 4, 5]
                .map(|class| counter(&format!("downstream_rq_{class}xx"))),
        }
    }

    /// Counts a finished request by its status class (statuses outside 100..=599 count as 5xx, as Envoy's do).
    pub fn count_response(&self, status: u16) {
        self.downstream_rq_total.add(1);
        let class = usize::from(status / 100).clamp(1, 5);
        self.downstream_rq_xx[class - 1].add(1);
    }
}

/// `cluster.<name>.*`
pub(crate) struct ClusterStats {
    pub upstream_rq_total: Arc<Metric>,
    pub upstream_cx_connect_fail: Arc<Metric>,
    pub upstream_rq_timeout: Arc<Metric>,
}

impl ClusterStats {
    pub fn new(store: &MetricsStore, cluster: &str) -> Self {
        let counter =
            |name: &str| store.define(MetricKind::Counter, &format!("cluster.{cluster}.{name}"));
        ClusterStats {
            upstream_rq_total: counter("upstream_rq_total"),
            upstream_cx_connect_fail: counter("upstream_cx_connect_fail"),
            upstream_rq_timeout: counter("upstream_rq_timeout"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_count_by_class() {
        let store = MetricsStore::new();
        let stats = ListenerStats::new(&store, "ingress");
        for status in [200, 204, 403, 503, 101] {
            stats.count_response(status);
        }
        assert_eq!(store.get("http.ingress.downstream_rq_total"), Some(5));
        assert_eq!(store.get("http.ingress.downstream_rq_1xx"), Some(1));
        assert_eq!(store.get("http.ingress.downstream_rq_2xx"), Some(2));
        assert_eq!(store.get("http.ingress.downstream_rq_3xx"), Some(0));
        assert_eq!(store.get("http.ingress.downstream_rq_4xx"), Some(1));
        assert_eq!(store.get("http.ingress.downstream_rq_5xx"), Some(1));
    }
}
