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

/// The Prometheus exposition format with Envoy's naming (`envoy_` prefix, dots to underscores).
fn prometheus(stats: &[MetricSnapshot]) -> String {
    let mut out = String::new();
    for metric in stats {
        let name: String = format!("envoy_{}", metric.name)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let kind = match metric.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "summary",
        };
        out.push_str(&format!("# TYPE {name} {kind}\n"));
        match metric.kind {
            MetricKind::Histogram => {
                out.push_str(&format!(
                    "{name}_sum {}\n{name}_count {}\n",
                    metric.value, metric.count
                ));
            }
            _ => out.push_str(&format!("{name} {}\n", metric.value)),
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
        assert!(
            prom.contains(
                "# TYPE envoy_dns_cache_c_num_hosts gauge\nenvoy_dns_cache_c_num_hosts 2\n"
            ),
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
