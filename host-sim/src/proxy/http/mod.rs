//! One request through the connection manager, as Envoy runs it:
//!
//! ```text
//! downstream request → header map (:authority from Host or the absolute URI) → route
//!   → downstream filters: wasm (may reply, pause, clear the route cache) → dynamic_forward_proxy (DNS cache)
//!   → router: cluster (by name or cluster_header) → host (DFP cache / static endpoint)
//!   → upstream RBAC (judges the selected host before connecting)
//!   → upstream filters: wasm (sees upstream.address) → upstream connection (pooled, TLS) → response
//! response → upstream wasm → downstream wasm (reverse order) → client; then on_done / on_log / on_delete
//! ```
//!
//! Local replies (Envoy's own and the filters') pass through the wasm response phase like any response.
//!
//! The parts: this file the stream's flow; `request_head.rs` what the codec refuses and the map filters see;
//! `pause.rs` waiting out a filter's pause; `forward.rs` the upstream and CONNECT; `response_head.rs` and
//! `reply.rs` what the client gets.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response};

use crate::config::{ClusterKind, RouteTarget};
use crate::dfp::dns_cache::Addresses;
use crate::dfp::upstream::{ConnectError, PoolKey, PooledBody};
use crate::headers::{HeaderMap, MapKind};
use crate::properties::{Properties, RouteNames, StreamFacts};

use super::body::{
    EarlyReply, FilteredRequest, FilteredResponse, NotesEnd, ReadAhead, ReadStep, SharedChains,
    Side, StreamChains, TrailerCodecs,
};
use super::local_reply::EnvoyReply;
use super::message::{local_body, BoxError, ConnectionInfo, DownstreamBody, Reply, UpstreamBody};
use super::route::{self, Selected};
use super::wasm_chain::{Outcome, Phase, WasmChain};
use super::worker::Worker;
use super::{ClusterRuntime, DownstreamFilter, ListenerRuntime};

mod forward;
mod pause;
mod reply;
mod request_head;
mod response_head;

use reply::CLOSE_STREAM_DETAILS;

use request_head::{host_without_port, is_upgrade, request_header_map};
use response_head::{
    build_response, envoy_reply_headers, full_body, plain_reply, status_is_valid,
    RESPONSE_HOP_BY_HOP,
};

pub(crate) async fn handle(
    worker: Rc<Worker>,
    connection: Rc<ConnectionInfo>,
    mut request: Request<Incoming>,
) -> Result<Response<DownstreamBody>, Infallible> {
    let upgrade = (request.method() == Method::CONNECT).then(|| hyper::upgrade::on(&mut request));
    let listener = &worker.shared.listeners[connection.listener];
    let exchange = Exchange {
        listener,
        worker: worker.clone(),
        connection: connection.clone(),
        started: Instant::now(),
        start_time: SystemTime::now(),
        log: RefCell::new(LogState::default()),
        request_complete: Rc::new(std::cell::Cell::new(request.body().is_end_stream())),
        read_ahead_bytes: std::cell::Cell::new(0),
    };
    let connect = request.method() == Method::CONNECT;
    let mut response = exchange.run(request, upgrade).await;
    let status = response.status().as_u16();
    // A refused CONNECT ends the connection, as in Envoy (the client cannot tell what follows apart), and so does a
    // request the connection manager refused outright.
    let (refused, codec_error) = {
        let log = exchange.log.borrow();
        let details = log.details.as_deref().unwrap_or_default();
        let codec_error = details.starts_with("http1.");
        let refused = matches!(
            details,
            "missing_host_header" | "upgrade_failed" | "path_normalization_failed"
        );
        (codec_error || refused, codec_error)
    };
    response
        .extensions_mut()
        .insert(super::reason::reason_phrase(status));
    // Every response names the proxy (`ConnectionManagerUtility::mutateResponseHeaders`, OVERWRITE).
    let server = exchange.server_name();
    if let Ok(value) = hyper::header::HeaderValue::from_str(server) {
        response.headers_mut().insert(hyper::header::SERVER, value);
    }
    // A response before the whole request arrived ends an HTTP/1 connection (`ActiveStream::encodeHeaders`: the
    // last downstream byte not received; a direct_response or a filter's reply to a request with a body).
    let early = !connect && !exchange.request_complete.get();
    if refused || early || (connect && !(200..300).contains(&status)) {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    // A request the codec refused never became a stream Envoy logs.
    if !listener.access_logs.is_empty() && !exchange.log.borrow().deferred && !codec_error {
        exchange.write_access_logs(&response);
    }
    listener.stats.count_response(status);
    Ok(response)
}

struct Exchange<'a> {
    worker: Rc<Worker>,
    listener: &'a ListenerRuntime,
    connection: Rc<ConnectionInfo>,
    started: Instant,
    start_time: SystemTime,
    log: RefCell<LogState>,
    /// The request's last byte has been received (at once for a request without a body).
    request_complete: Rc<std::cell::Cell<bool>>,
    /// Body bytes read while a filter held the headers that no body callback has seen yet: the codec received
    /// them (`request.size`, `request.total_size`), so a reply before the body goes on counts them.
    read_ahead_bytes: std::cell::Cell<u64>,
}

/// What the access log needs to know about how the request ended.
#[derive(Default)]
struct LogState {
    request: HeaderMap,
    /// `%RESPONSE_CODE_DETAILS%`: `None` (logged `-`) until something sets it; a wasm local reply may set it empty.
    details: Option<String>,
    cluster: Option<std::sync::Arc<str>>,
    upstream: Option<SocketAddr>,
    /// The line is written when the stream ends (by the response body or the tunnel), not with the head.
    deferred: bool,
}

/// Where the router sends the request.
struct Target {
    cluster: std::sync::Arc<ClusterRuntime>,
    /// The host's address: what the upstream RBAC matcher, `upstream.address` and the pool key see.
    address: SocketAddr,
    /// Every address of the host, `address` first: where the connection may go (Envoy's happy eyeballs).
    addresses: Addresses,
}

impl Exchange<'_> {
    /// The `server` header this listener writes: HCM `server_name`, or host-sim's own name.
    fn server_name(&self) -> &str {
        self.listener
            .config
            .http
            .server_name
            .as_deref()
            .unwrap_or(SERVER_NAME)
    }

    async fn run(
        &self,
        request: Request<Incoming>,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<DownstreamBody> {
        let (parts, body) = request.into_parts();
        let mut body = ReadAhead::new(body);
        let connect = parts.method == Method::CONNECT;
        let generate_request_id = self.listener.config.http.generate_request_id;
        let tls = self.connection.tls.is_some();
        let mut headers = match request_header_map(&parts, generate_request_id, tls) {
            Ok(headers) => headers,
            Err(reply) => {
                let mut log = self.log.borrow_mut();
                log.details = Some(reply.details.clone());
                // The access log still names what the client sent.
                for (name, value) in &parts.headers {
                    log.request.add(name.as_str(), value.as_bytes());
                }
                return plain_reply(&reply);
            }
        };
        let end_of_stream = connect || body.is_end_stream();
        self.note_request(&headers);

        let mut selected = self.select_route(&headers, connect);
        self.note_route_cluster(selected.as_ref(), &headers);
        // Envoy refuses an upgrade it has no config for once the route is picked, so its log names the cluster.
        if !connect && is_upgrade(&parts.headers) {
            let reply = EnvoyReply::upgrade_failed();
            self.log.borrow_mut().details = Some(reply.details.clone());
            return plain_reply(&reply);
        }
        let properties = self.stream_properties(selected.as_ref(), &headers);
        let mut downstream =
            match WasmChain::new(&self.worker, &self.listener.wasm_slots, &properties) {
                Ok(chain) => chain,
                Err(reply) => {
                    self.log.borrow_mut().details = Some(reply.details.clone());
                    return plain_reply(&reply);
                }
            };

        // Downstream filters, in order. Wasm filters are members of `downstream` in the same order.
        let mut wasm_index = 0;
        let mut resolved: Option<Addresses> = None;
        for filter in &self.listener.filters {
            match filter {
                DownstreamFilter::Wasm => {
                    let outcome =
                        downstream.request_headers(wasm_index, &mut headers, end_of_stream);
                    wasm_index += 1;
                    match self
                        .settle(
                            &mut downstream,
                            outcome,
                            wasm_index - 1,
                            &mut headers,
                            &mut body,
                        )
                        .await
                    {
                        Settled::Continue { clear_route_cache } => {
                            if clear_route_cache {
                                selected = self.select_route(&headers, connect);
                                self.note_route_cluster(selected.as_ref(), &headers);
                                downstream
                                    .set_route(&self.route_names(selected.as_ref(), &headers));
                            }
                        }
                        Settled::Reply(reply) => {
                            // The reply is logged with the route of the headers as the filter left them (a header
                            // change cleared Envoy's route cache; unchanged headers pick the same route).
                            if !self.listener.access_logs.is_empty() {
                                let selected = self.select_route(&headers, connect);
                                self.note_route_cluster(selected.as_ref(), &headers);
                            }
                            return self.local_reply(&mut downstream, None, reply);
                        }
                    }
                }
                DownstreamFilter::DynamicForwardProxy(cache) => {
                    let Some(cluster) = self.route_cluster(selected.as_ref(), &headers) else {
                        continue;
                    };
                    let same_cache = cluster
                        .dns_cache
                        .as_ref()
                        .is_some_and(|c| c.name() == cache.name());
                    if !same_cache {
                        continue;
                    }
                    let authority = headers
                        .get_str(":authority")
                        .unwrap_or_default()
                        .to_string();
                    if authority.is_empty() {
                        return self.local_reply(
                            &mut downstream,
                            None,
                            Reply::Envoy(EnvoyReply::empty_host()),
                        );
                    }
                    match cache.load(&authority, cluster.default_port()).await {
                        Ok(addresses) => resolved = Some(addresses),
                        Err(error) => {
                            return self.local_reply(
                                &mut downstream,
                                None,
                                Reply::Envoy(EnvoyReply::dns(&error)),
                            )
                        }
                    }
                }
            }
        }

        // Router.
        let Some(route) = selected else {
            return self.local_reply(
                &mut downstream,
                None,
                Reply::Envoy(EnvoyReply::route_not_found()),
            );
        };
        if let RouteTarget::Direct(direct) = &route.route.action.target {
            // Envoy's router answers a direct_response route with a local reply (details `direct_response`).
            let reply = EnvoyReply {
                status: direct.status,
                body: direct.body.clone().unwrap_or_default(),
                details: "direct_response".to_string(),
            };
            return self.local_reply(&mut downstream, None, Reply::Envoy(reply));
        }
        let Some(cluster) = self.route_cluster(Some(&route), &headers) else {
            return self.local_reply(
                &mut downstream,
                None,
                Reply::Envoy(EnvoyReply::cluster_not_found()),
            );
        };
        downstream.set_cluster_name(&cluster.name);
        self.log.borrow_mut().cluster = Some(cluster.name.clone());
        let target = match self.pick_host(&cluster, &headers, resolved) {
            Ok(target) => target,
            Err(reply) => return self.local_reply(&mut downstream, None, Reply::Envoy(reply)),
        };
        // Envoy's upstream RBAC filter acts when the host is selected, before the connection.
        if !cluster.upstream_rbac.is_empty() {
            let stats = &self.worker.shared.stats;
            let stat_prefix = format!("cluster.{}", cluster.name);
            for rbac in &cluster.upstream_rbac {
                if let Err(reply) = super::rbac::run(rbac, target.address, stats, &stat_prefix) {
                    return self.local_reply(&mut downstream, None, Reply::Envoy(reply));
                }
            }
        }
        if target
            .addresses
            .iter()
            .any(|address| self.worker.shared.is_own_address(*address))
        {
            // Proxying to host-sim's own listener or admin would loop or expose the admin API.
            return self.local_reply(
                &mut downstream,
                None,
                Reply::Envoy(EnvoyReply {
                    status: 403,
                    body: "host-sim does not proxy to its own addresses".to_string(),
                    details: "host_sim_own_address".to_string(),
                }),
            );
        }

        // The router finishes the request headers before the upstream filters see them: the route's removals, and the
        // timeout it will enforce.
        for name in route
            .virtual_host
            .request_headers_to_remove
            .iter()
            .chain(&route.route.request_headers_to_remove)
        {
            headers.remove(name);
        }
        let timeout = route.route.action.timeout;
        let suppress = self.listener.config.http.router().suppress_envoy_headers;
        if let (Some(timeout), false, false) = (timeout, connect, suppress) {
            headers.replace(
                "x-envoy-expected-rq-timeout-ms",
                timeout.as_millis().to_string(),
            );
        }
        self.log.borrow_mut().upstream = Some(target.address);
        // The downstream filters' response phase sees the host the router used, as in Envoy.
        downstream.for_each_state(|state| {
            state.properties.set_upstream_address(target.address);
        });
        // Upstream filters see the address the router is about to use.
        let mut upstream_properties = properties;
        upstream_properties.set_cluster_name(cluster.name.clone());
        upstream_properties.set_upstream_address(target.address);
        let mut upstream =
            match WasmChain::new(&self.worker, &cluster.upstream_slots, &upstream_properties) {
                Ok(chain) => chain,
                Err(reply) => return self.local_reply(&mut downstream, None, Reply::Envoy(reply)),
            };
        for index in 0..cluster.upstream_slots.len() {
            let outcome = upstream.request_headers(index, &mut headers, end_of_stream);
            match self
                .settle(&mut upstream, outcome, index, &mut headers, &mut body)
                .await
            {
                Settled::Continue { .. } => {}
                Settled::Reply(reply) => {
                    return self.local_reply(&mut downstream, Some(&mut upstream), reply)
                }
            }
        }

        self.note_request(&headers);
        if connect {
            return self.tunnel(downstream, upstream, &target, upgrade).await;
        }
        self.forward(headers, body, downstream, upstream, target, timeout)
            .await
    }

    fn write_access_logs(&self, response: &Response<DownstreamBody>) {
        let log = self.log.borrow();
        let mut response_headers = HeaderMap::new();
        for (name, value) in response.headers() {
            response_headers.add(name.as_str(), value.as_bytes());
        }
        let entry = super::access_log::Entry {
            request: &log.request,
            response: Some(&response_headers),
            code: response.status().as_u16(),
            details: log.details.as_deref().unwrap_or("-"),
            cluster: log.cluster.as_deref(),
            upstream: log.upstream,
            downstream_remote: self.connection.peer,
            downstream_local: self.connection.local,
            start: self.start_time,
            duration: self.started.elapsed(),
        };
        for writer in &self.listener.access_logs {
            writer.write(&entry);
        }
    }

    /// The access-log line to write when the stream ends; `None` without access logs.
    fn pending_log(
        &self,
        response: &HeaderMap,
        code: u16,
    ) -> Option<super::access_log::PendingEntry> {
        if self.listener.access_logs.is_empty() {
            return None;
        }
        let mut log = self.log.borrow_mut();
        log.deferred = true;
        let mut response = response.clone();
        response.replace("server", self.server_name());
        Some(super::access_log::PendingEntry {
            shared: self.worker.shared.clone(),
            listener: self.connection.listener,
            request: std::mem::take(&mut log.request),
            response,
            code,
            cluster: log.cluster.clone(),
            upstream: log.upstream,
            downstream_remote: self.connection.peer,
            downstream_local: self.connection.local,
            start: self.start_time,
            started: self.started,
        })
    }

    fn select_route(&self, headers: &HeaderMap, connect: bool) -> Option<Selected<'_>> {
        let authority = headers.get(":authority").map(String::from_utf8_lossy);
        route::select(
            &self.listener.config.http.route_config,
            authority.as_deref(),
            headers.get_str(":path"),
            connect,
            headers,
        )
    }

    /// The request headers as the access log reports them (kept only when there is an access log to write).
    fn note_request(&self, headers: &HeaderMap) {
        if !self.listener.access_logs.is_empty() {
            self.log.borrow_mut().request.clone_from(headers);
        }
    }

    /// Envoy records the cluster of the route it picked (`%UPSTREAM_CLUSTER%`) whenever it (re-)picks one, so even
    /// a reply before the router names it.
    fn note_route_cluster(&self, selected: Option<&Selected<'_>>, headers: &HeaderMap) {
        if self.listener.access_logs.is_empty() {
            return;
        }
        self.log.borrow_mut().cluster = self
            .route_cluster(selected, headers)
            .map(|cluster| cluster.name.clone());
    }

    /// The route's cluster: by name, or by the `cluster_header` value (first value) when it names a cluster.
    fn route_cluster(
        &self,
        selected: Option<&Selected<'_>>,
        headers: &HeaderMap,
    ) -> Option<std::sync::Arc<ClusterRuntime>> {
        let name = match &selected?.route.action.target {
            RouteTarget::Cluster(name) => name.as_str(),
            RouteTarget::ClusterHeader(header) => headers.get_str(header)?,
            RouteTarget::Direct(_) => return None,
        };
        self.worker.shared.clusters.get(name).cloned()
    }

    /// The host to connect to: a DFP cluster's host comes from its DNS cache (resolved by the DFP filter); a
    /// STATIC cluster's endpoints take turns.
    fn pick_host(
        &self,
        cluster: &std::sync::Arc<ClusterRuntime>,
        headers: &HeaderMap,
        resolved: Option<Addresses>,
    ) -> Result<Target, EnvoyReply> {
        let addresses = match &cluster.config.kind {
            ClusterKind::DynamicForwardProxy { .. } => {
                let _ = headers;
                resolved.ok_or_else(EnvoyReply::no_healthy_upstream)?
            }
            ClusterKind::Static { endpoints } => Addresses::from(
                cluster
                    .next_static_endpoint(endpoints)
                    .into_iter()
                    .collect::<Vec<_>>(),
            ),
        };
        let address = *addresses
            .first()
            .ok_or_else(EnvoyReply::no_healthy_upstream)?;
        Ok(Target {
            cluster: cluster.clone(),
            address,
            addresses,
        })
    }

    /// Properties Envoy has for the stream at request-headers time. Only the facts are gathered here; a value is
    /// formatted when a filter reads it, and every context of the stream shares the facts.
    fn stream_properties(
        &self,
        selected: Option<&Selected<'_>>,
        headers: &HeaderMap,
    ) -> Properties {
        let route = self.route_names(selected, headers);
        Properties::from_facts(StreamFacts {
            source: self.connection.peer,
            destination: self.connection.local,
            connection_id: self.connection.id,
            tls: self.connection.tls.clone(),
            request_time: SystemTime::now(),
            protocol: "HTTP/1.1",
            route_configuration_name: self.listener.config.http.route_config.name.clone(),
            virtual_host_name: route.virtual_host_name,
            route_name: route.route_name,
            cluster_name: route.cluster_name,
            listener_direction: 0,
        })
    }

    /// The `xds.*` names of a picked route (none when nothing matched).
    fn route_names(&self, selected: Option<&Selected<'_>>, headers: &HeaderMap) -> RouteNames {
        RouteNames {
            virtual_host_name: selected.map(|selected| selected.virtual_host.name.clone()),
            route_name: selected.and_then(|selected| selected.route.name.clone()),
            cluster_name: selected
                .and_then(|selected| self.route_cluster(Some(selected), headers))
                .map(|cluster| cluster.name.clone()),
        }
    }
}

enum Settled {
    Continue { clear_route_cache: bool },
    Reply(Reply),
}

/// The `server` header host-sim writes without an HCM `server_name`, where Envoy writes `envoy`.
const SERVER_NAME: &str = "host-sim";
