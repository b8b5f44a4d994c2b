//! The admin endpoint on its own address, as Envoy's: `/stats` (text), `/stats/prometheus`, `/ready`.
//! Wasm custom metrics appear under `wasmcustom.` as in Envoy.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::shared::{MetricSnapshot, MetricsStore, SharedState};
use crate::types::MetricKind;

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    stats: Arc<MetricsStore>,
    wasm: SharedState,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                continue;
            }
        };
        let (stats, wasm) = (stats.clone(), wasm.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = route(&stats, &wasm, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn route(
    stats: &MetricsStore,
    wasm: &SharedState,
    request: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let filter = request
        .uri()
        .query()
        .and_then(|query| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("filter="))
        })
        .map(percent_decode);
    match request.uri().path() {
        "/ready" => text(StatusCode::OK, "LIVE\n".to_string()),
        "/stats" => text(
            StatusCode::OK,
            stats_text(&all_stats(stats, wasm), filter.as_deref()),
        ),
        "/stats/prometheus" => text(StatusCode::OK, prometheus(&all_stats(stats, wasm))),
        _ => text(
            StatusCode::NOT_FOUND,
            "invalid path. admin commands are: /ready, /stats, /stats/prometheus\n".to_string(),
        ),
    }
}

/// Native stats and wasm custom metrics (prefixed `wasmcustom.`), sorted by name.
fn all_stats(native: &MetricsStore, wasm: &SharedState) -> Vec<MetricSnapshot> {
    let mut stats = native.snapshot();
    stats.extend(wasm.metrics.snapshot().into_iter().map(|mut metric| {
        metric.name = format!("wasmcustom.{}", metric.name);
        metric
    }));
    stats.sort_by(|a, b| a.name.cmp(&b.name));
    stats
}

/// Envoy's text form: `name: value`, one per line; `filter` keeps names containing it.
fn stats_text(stats: &[MetricSnapshot], filter: Option<&str>) -> String {
    let mut out = String::new();
    for metric in stats {
        if filter.is_some_and(|f| !metric.name.contains(f)) {
            continue;
        }
        match metric.kind {
            MetricKind::Histogram => {
                out.push_str(&format!(
                    "{}: count={} sum={}\n",
                    metric.name, metric.count, metric.value
                ));
            }
            _ => out.push_str(&format!("{}: {}\n", metric.name, metric.value)),
        }
    }
    out
}

/// Envoy's default histogram buckets (`supported_buckets` in its stats config).
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A stat as Envoy's Prometheus output names it: a family name and the tags its default tag extractors pull
/// out of the stat name, in the order Envoy prints them.
#[derive(Debug, PartialEq, Eq)]
struct Family {
    name: String,
    labels: Vec<(&'static str, String)>,
}

/// Envoy's tag extraction for the stats host-sim has: `cluster.<name>.`, `http.<stat_prefix>.`, response codes
/// and classes at the end of a name. Custom wasm metrics (`wasmcustom.`) lose the namespace and get no `envoy_`
/// prefix, as Envoy exports custom stat namespaces.
fn family(stat: &str) -> Family {
    if let Some(custom) = stat.strip_prefix("wasmcustom.") {
        return Family {
            name: sanitize(custom),
            labels: Vec::new(),
        };
    }
    let mut labels = Vec::new();
    let mut rest = stat.to_string();
    let mut scope = None;
    for (prefix, tag) in [
        ("cluster.", "envoy_cluster_name"),
        ("http.", "envoy_http_conn_manager_prefix"),
    ] {
        if let Some((value, tail)) = stat
            .strip_prefix(prefix)
            .and_then(|after| after.split_once('.'))
        {
            scope = Some((tag, value.to_string()));
            rest = format!("{prefix}{tail}");
            break;
        }
    }
    // `..._200` → response code; `..._2xx` → response code class.
    if let Some((head, code)) = rest.rsplit_once('_') {
        let bytes = code.as_bytes();
        if code.len() == 3 && bytes.iter().all(u8::is_ascii_digit) && head.ends_with("upstream_rq")
        {
            labels.push(("envoy_response_code", code.to_string()));
            rest = head.to_string();
        } else if code.len() == 3 && bytes[0].is_ascii_digit() && &code[1..] == "xx" {
            labels.push(("envoy_response_code_class", code[..1].to_string()));
            rest = format!("{head}_xx");
        }
    }
    labels.extend(scope);
    Family {
        name: format!("envoy_{}", sanitize(&rest)),
        labels,
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn label_text(labels: &[(&'static str, String)], extra: Option<(&str, &str)>) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra)
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

/// The Prometheus exposition format as Envoy's `/stats/prometheus` writes it: one `# TYPE` line per family,
/// tags as labels, histograms with Envoy's default buckets.
fn prometheus(stats: &[MetricSnapshot]) -> String {
    // Envoy writes counters, then gauges, then histograms; families in the order of their first stat's name,
    // each family's stats together (`stats` is sorted by name, and the sort is stable).
    let rank = |kind: MetricKind| match kind {
        MetricKind::Counter => 0,
        MetricKind::Gauge => 1,
        MetricKind::Histogram => 2,
    };
    let mut first_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut families: Vec<(Family, &MetricSnapshot)> = stats
        .iter()
        .enumerate()
        .map(|(index, m)| {
            let family = family(&m.name);
            first_of.entry(family.name.clone()).or_insert(index);
            (family, m)
        })
        .collect();
    families.sort_by_key(|(family, m)| (rank(m.kind), first_of[&family.name]));
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for (family, metric) in &families {
        if current != Some(family.name.as_str()) {
            let kind = match metric.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Histogram => "histogram",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", family.name));
            current = Some(family.name.as_str());
        }
        let name = &family.name;
        match metric.kind {
            MetricKind::Histogram => {
                for bound in BUCKETS {
                    let below = metric
                        .samples
                        .iter()
                        .filter(|&&sample| (sample as f64) <= bound)
                        .count();
                    let le = bound.to_string();
                    out.push_str(&format!(
                        "{name}_bucket{} {below}\n",
                        label_text(&family.labels, Some(("le", &le)))
                    ));
                }
                let labels = label_text(&family.labels, None);
                out.push_str(&format!(
                    "{name}_bucket{} {}\n{name}_sum{labels} {}\n{name}_count{labels} {}\n",
                    label_text(&family.labels, Some(("le", "+Inf"))),
                    metric.count,
                    metric.value,
                    metric.count
                ));
            }
            _ => out.push_str(&format!(
                "{name}{} {}\n",
                label_text(&family.labels, None),
                metric.value
            )),
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(byte) => {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, kind: MetricKind, value: i64) -> MetricSnapshot {
        MetricSnapshot {
            name: name.to_string(),
            kind,
            value,
            count: 0,
            samples: Vec::new(),
        }
    }

    #[test]
    fn text_and_prometheus_forms() {
        let stats = vec![
            metric("dns_cache.c.num_hosts", MetricKind::Gauge, 2),
            metric("wasmcustom.dfp.downstream.allowed", MetricKind::Counter, 5),
        ];
        assert_eq!(
            stats_text(&stats, None),
            "dns_cache.c.num_hosts: 2\nwasmcustom.dfp.downstream.allowed: 5\n"
        );
        assert_eq!(
            stats_text(&stats, Some("allowed")),
            "wasmcustom.dfp.downstream.allowed: 5\n"
        );
        let prom = prometheus(&stats);
        assert_eq!(
            prom,
            "# TYPE dfp_downstream_allowed counter\ndfp_downstream_allowed{} 5\n\
             # TYPE envoy_dns_cache_c_num_hosts gauge\nenvoy_dns_cache_c_num_hosts{} 2\n"
        );
    }

    #[test]
    fn prometheus_tags_as_envoys_default_extractors() {
        let stats = vec![
            metric("cluster.dfp_plain.upstream_rq_200", MetricKind::Counter, 3),
            metric(
                "cluster.dfp_plain.upstream_rq_total",
                MetricKind::Counter,
                4,
            ),
            metric("http.ingress.downstream_rq_2xx", MetricKind::Counter, 1),
            metric("http.ingress.downstream_rq_5xx", MetricKind::Counter, 2),
            metric("wasm.dfp.vm_reload", MetricKind::Counter, 0),
        ];
        let prom = prometheus(&stats);
        for line in [
            "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"dfp_plain\"} 3",
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"dfp_plain\"} 4",
            "# TYPE envoy_http_downstream_rq_xx counter",
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"ingress\"} 1",
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"5\",envoy_http_conn_manager_prefix=\"ingress\"} 2",
            "envoy_wasm_dfp_vm_reload{} 0",
        ] {
            assert!(prom.lines().any(|l| l == line), "{line} missing in\n{prom}");
        }
        assert_eq!(
            prom.matches("# TYPE envoy_http_downstream_rq_xx").count(),
            1
        );
    }

    #[test]
    fn histograms_have_envoys_buckets() {
        let mut histogram = metric("wasmcustom.latency", MetricKind::Histogram, 12);
        histogram.count = 2;
        histogram.samples = vec![2, 10];
        let prom = prometheus(&[histogram]);
        assert!(prom.contains("latency_bucket{le=\"1\"} 0\n"), "{prom}");
        assert!(prom.contains("latency_bucket{le=\"5\"} 1\n"), "{prom}");
        assert!(prom.contains("latency_bucket{le=\"10\"} 2\n"), "{prom}");
        assert!(
            prom.contains("latency_bucket{le=\"+Inf\"} 2\nlatency_sum{} 12\nlatency_count{} 2\n"),
            "{prom}"
        );
    }

    #[test]
    fn filter_values_are_percent_decoded() {
        assert_eq!(percent_decode("dfp%2Edownstream"), "dfp.downstream");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("tail%2"), "tail%2");
    }
}
