//! `proxy_http_call`: send a plugin's call to the named cluster from the worker that owns the plugin instance, and
//! deliver the answer (or the failure: no headers, no body) with `proxy_on_http_call_response`, as Envoy does.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;

use crate::config::ClusterKind;
use crate::dfp::upstream::PoolKey;
use crate::headers::{HeaderMap, MapKind};
use crate::vm::{HttpCallRequest, HttpCallResponse};

use super::message::{local_body, BoxError, UpstreamBody};
use super::worker::Worker;

/// Sends every http call the plugin in `slot` dispatched since the last look.
pub(crate) fn dispatch(worker: &Rc<Worker>, slot: usize) {
    let calls = worker.plugin(slot).borrow_mut().take_http_calls();
    for call in calls {
        tokio::task::spawn_local(perform(worker.clone(), slot, call));
    }
}

async fn perform(worker: Rc<Worker>, slot: usize, call: HttpCallRequest) {
    let send = send(&worker, &call);
    let response = match call.timeout_ms {
        0 => send.await,
        ms => tokio::time::timeout(Duration::from_millis(u64::from(ms)), send)
            .await
            .ok()
            .flatten(),
    };
    let delivered = worker
        .plugin(slot)
        .borrow_mut()
        .deliver_http_call_response(call.token, response);
    if let Err(error) = delivered {
        tracing::warn!(plugin = %worker.shared.plugins[slot].name, %error, "proxy_on_http_call_response failed");
    }
    // The callback may have dispatched more calls, resumed a stream or replied.
    dispatch(&worker, slot);
    worker.wasm_progress.notify_waiters();
}

/// One call to its cluster; `None` on any failure (unknown host, connect error, reset).
async fn send(worker: &Rc<Worker>, call: &HttpCallRequest) -> Option<HttpCallResponse> {
    let cluster = worker.shared.clusters.get(&call.cluster)?.clone();
    let authority = call
        .headers
        .get_str(":authority")
        .unwrap_or_default()
        .to_string();
    let addresses: crate::dfp::dns_cache::Addresses = match &cluster.config.kind {
        ClusterKind::Static { endpoints } => {
            std::sync::Arc::from([cluster.next_static_endpoint(endpoints)?])
        }
        ClusterKind::DynamicForwardProxy { .. } => {
            let cache = cluster.dns_cache.as_ref()?;
            cache.load(&authority, cluster.default_port()).await.ok()?
        }
    };
    let address = *addresses.first()?;
    if addresses.iter().any(|a| worker.shared.is_own_address(*a)) {
        return None;
    }
    let key = PoolKey {
        cluster: cluster.name.clone(),
        address,
        tls_name: cluster.tls.as_ref().map(|_| {
            authority
                .rsplit_once(':')
                .map_or(authority.as_str(), |(host, _)| host)
                .to_string()
        }),
    };
    let mut builder = Request::builder()
        .method(call.headers.get_str(":method").unwrap_or("GET"))
        .uri(call.headers.get_str(":path").unwrap_or("/"));
    if !authority.is_empty() {
        builder = builder.header(hyper::header::HOST, authority.as_str());
    }
    for (name, value) in call.headers.iter() {
        if name.first() != Some(&b':') {
            builder = builder.header(name, value);
        }
    }
    // Envoy's async client marks its requests internal (`AsyncStreamImpl::sendHeaders`, send_internal defaults to
    // true; wasm turns off only x-forwarded-for), and its router announces a timeout it was given.
    builder = builder.header("x-envoy-internal", "true");
    if call.timeout_ms > 0 && call.headers.get("x-envoy-expected-rq-timeout-ms").is_none() {
        builder = builder.header(
            "x-envoy-expected-rq-timeout-ms",
            call.timeout_ms.to_string(),
        );
    }
    let body: UpstreamBody = local_body(
        Full::new(Bytes::from(call.body.clone())).map_err(|never| -> BoxError { match never {} }),
    );
    let request = builder.body(body).ok()?;
    let mut sender = worker
        .pool
        .get(&key, &addresses, &cluster.connect_options())
        .await
        .ok()?;
    let started = std::time::Instant::now();
    let response = sender.send_request(request).await.ok()?;
    let service_time = started.elapsed().as_millis();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.ok()?;
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes().to_vec();
    worker.pool.checkin(key, sender);
    let mut headers = HeaderMap::new();
    headers.add(":status", parts.status.as_u16().to_string());
    for (name, value) in &parts.headers {
        headers.add_as(MapKind::ResponseHeaders, name.as_str(), value.as_bytes());
    }
    // The router's `onUpstreamHeaders`, as for any routed response.
    headers.add("x-envoy-upstream-service-time", service_time.to_string());
    let mut trailer_map = HeaderMap::new();
    for (name, value) in trailers.iter().flatten() {
        trailer_map.add(name.as_str(), value.as_bytes());
    }
    Some(HttpCallResponse {
        headers,
        body,
        trailers: trailer_map,
    })
}
