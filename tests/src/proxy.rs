//! "A proxy under test": anything that runs the bootstrap YAML and exposes a listener and an
//! Envoy-style admin interface. Real Envoy implements it now; host-sim will too, so every
//! case table runs against both.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::client;

pub trait Proxy: Send + Sync {
    /// Short name for reports ("envoy", "host-sim").
    fn kind(&self) -> &'static str;
    /// The HTTP listener clients send requests to.
    fn listener(&self) -> SocketAddr;
    /// The admin interface (`/ready`, `/stats`).
    fn admin(&self) -> SocketAddr;
    /// The proxy's log so far, for failure reports.
    fn log(&self) -> String;
}

/// Counters and gauges from the admin `/stats` text format (`name: value` lines); histogram
/// lines, which are not plain integers, are skipped.
pub async fn stats(admin: SocketAddr) -> anyhow::Result<HashMap<String, u64>> {
    let response = client::get(admin, "/stats").await?;
    anyhow::ensure!(
        response.status == 200,
        "admin /stats answered {}",
        response.status
    );
    Ok(parse_stats(&response.body_text()))
}

/// One counter's value; a counter never incremented may be absent, which reads as 0.
pub async fn counter(admin: SocketAddr, name: &str) -> anyhow::Result<u64> {
    Ok(stats(admin).await?.get(name).copied().unwrap_or(0))
}

fn parse_stats(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(": ")?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_stats;

    #[test]
    fn parses_counters_and_skips_histograms() {
        let stats = parse_stats(
            "wasmcustom.dfp.downstream.allowed: 3\n\
             cluster.dfp_plain.upstream_cx_total: 12\n\
             http.ingress.downstream_rq_time: P0(nan,1) P25(nan,1.025)\n",
        );
        assert_eq!(stats.get("wasmcustom.dfp.downstream.allowed"), Some(&3));
        assert_eq!(stats.get("cluster.dfp_plain.upstream_cx_total"), Some(&12));
        assert!(!stats.contains_key("http.ingress.downstream_rq_time"));
    }
}
