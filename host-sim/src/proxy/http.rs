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

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response};

use crate::config::{ClusterKind, RouteTarget};
use crate::dfp::dns_cache::Addresses;
use crate::dfp::upstream::{ConnectError, PoolKey, PooledBody};
use crate::headers::{HeaderMap, MapKind};
use crate::properties::{Properties, RouteNames, StreamFacts};
use crate::stream::LocalReply;

use super::body::{
    EarlyReply, FilteredRequest, FilteredResponse, NotesEnd, SharedChains, Side, StreamChains,
    TrailerCodecs,
};
use super::local_reply::EnvoyReply;
use super::route::{self, Selected};
use super::wasm_chain::{Outcome, Phase, WasmChain};
use super::worker::Worker;
use super::{ClusterRuntime, DownstreamFilter, ListenerRuntime};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies live on one worker (they may hold the worker's wasm contexts), so they need not be `Send`.
pub(crate) type LocalBody = std::pin::Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>;
pub(crate) type UpstreamBody = LocalBody;
pub(crate) type DownstreamBody = LocalBody;

pub(crate) fn local_body<B>(body: B) -> LocalBody
where
    B: Body<Data = Bytes, Error = BoxError> + 'static,
{
    Box::pin(body)
}

/// What the worker knows about the downstream connection.
pub(crate) struct ConnectionInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener: usize,
}

/// `x-envoy-*` request headers Envoy removes before they can steer retries, timeouts, tracing or stats (host-sim
/// interprets none of them; a client must not pass them to the upstream either).
const ENVOY_CONTROL_HEADERS: &[&str] = &[
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-upstream-alt-stat-name",
];

/// What Envoy's connection manager removes from a (non-upgrade) response as it encodes it to an HTTP/1 client
/// (`ConnectionManagerUtility::mutateResponseHeaders`: `keep-alive` stays, by `preserve_downstream_keepalive`).
const RESPONSE_HOP_BY_HOP: &[&str] = &[
    "connection",
    "upgrade",
    "transfer-encoding",
    "proxy-connection",
];

/// Hop-by-hop headers: never forwarded (RFC 9110 §7.6.1, and what Envoy's codecs drop). `Proxy-Authorization` is
/// not among them: Envoy forwards it unless the route or a filter removes it (measured, `faults_security.rs`); nor
/// is `Trailer`, which `ConnectionManagerUtility::mutateRequestHeaders` leaves (the filters see it, the upstream
/// gets it; found by the ABI fuzzer).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "proxy-authenticate",
];

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
        let connect = parts.method == Method::CONNECT;
        let generate_request_id = self.listener.config.http.generate_request_id;
        let mut headers = match request_header_map(&parts, generate_request_id) {
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
                        .settle(&mut downstream, outcome, wasm_index - 1, &mut headers)
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
        if let (Some(timeout), false) = (timeout, connect) {
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
                .settle(&mut upstream, outcome, index, &mut headers)
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
            mtls: false,
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

    /// Waits out a pause: http calls dispatched by the plugin are sent, answers and ticks delivered, until the
    /// filter resumes the stream or replies.
    async fn settle(
        &self,
        chain: &mut WasmChain,
        outcome: Outcome,
        index: usize,
        headers: &mut HeaderMap,
    ) -> Settled {
        match outcome {
            Outcome::Continue { clear_route_cache } => Settled::Continue { clear_route_cache },
            Outcome::LocalReply(reply) => Settled::Reply(Reply::Wasm(reply)),
            Outcome::Failed(reply) => Settled::Reply(Reply::Envoy(reply)),
            Outcome::Reset => Settled::Reply(Reply::Reset),
            Outcome::Paused => loop {
                chain.dispatch_http_calls(index);
                let notified = self.worker.wasm_progress.notified();
                match chain.resumed(index, Phase::RequestHeaders, headers) {
                    Some(Outcome::Continue { clear_route_cache }) => {
                        return Settled::Continue { clear_route_cache }
                    }
                    Some(Outcome::LocalReply(reply)) => return Settled::Reply(Reply::Wasm(reply)),
                    Some(Outcome::Failed(reply)) => return Settled::Reply(Reply::Envoy(reply)),
                    Some(Outcome::Reset) => return Settled::Reply(Reply::Reset),
                    Some(Outcome::Paused) | None => notified.await,
                }
            },
        }
    }

    /// One chain's response-headers phase, waiting out each pause (http calls sent, answers delivered) until the
    /// filter continues, as Envoy holds the response for a filter that returned StopIteration.
    async fn response_headers_phase(
        &self,
        chains: &SharedChains,
        side: Side,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Outcome {
        let mut below = usize::MAX;
        loop {
            let (outcome, index) = {
                let mut chains = chains.borrow_mut();
                chains
                    .side(side)
                    .response_headers_below(below, headers, end_of_stream)
            };
            if !matches!(outcome, Outcome::Paused) {
                return outcome;
            }
            loop {
                let notified = self.worker.wasm_progress.notified();
                let resumed = {
                    let mut chains = chains.borrow_mut();
                    let chain = chains.side(side);
                    chain.dispatch_http_calls(index);
                    chain.resumed(index, Phase::ResponseHeaders, headers)
                };
                match resumed {
                    Some(Outcome::Continue { .. }) => break,
                    Some(Outcome::Paused) | None => notified.await,
                    Some(other) => return other,
                }
            }
            below = index;
        }
    }

    /// Sends a local reply through the wasm response phase (upstream chain first when there is one), then ends the
    /// wasm streams.
    fn local_reply(
        &self,
        downstream: &mut WasmChain,
        upstream: Option<&mut WasmChain>,
        reply: Reply,
    ) -> Response<DownstreamBody> {
        self.local_reply_via(downstream, upstream, reply, true)
    }

    /// A local reply; `through_filters` false sends it straight to the client, as Envoy does for a reply made
    /// once the response headers are going through the filters (`DownstreamFilterManager::sendLocalReply` →
    /// `sendDirectLocalReply`): no response callback runs for it.
    fn local_reply_via(
        &self,
        downstream: &mut WasmChain,
        upstream: Option<&mut WasmChain>,
        reply: Reply,
        through_filters: bool,
    ) -> Response<DownstreamBody> {
        if matches!(reply, Reply::Reset) {
            let mut chains: Vec<&mut WasmChain> = upstream.into_iter().collect();
            chains.push(downstream);
            for chain in chains {
                chain.finish(None, None, CLOSE_STREAM_DETAILS);
            }
            self.log.borrow_mut().details = Some(CLOSE_STREAM_DETAILS.to_string());
            return reset_response();
        }
        let (mut headers, mut body, details) = match reply {
            Reply::Wasm(reply) => (
                reply.response_headers(),
                reply.body.clone(),
                reply.details.clone(),
            ),
            Reply::Envoy(reply) => (
                envoy_reply_headers(&reply),
                reply.body.clone().into_bytes(),
                reply.details.clone(),
            ),
            Reply::Reset => unreachable!("answered above"),
        };
        let end_of_stream = body.is_empty();
        let mut chains: Vec<&mut WasmChain> = Vec::new();
        if let Some(upstream) = upstream {
            chains.push(upstream);
        }
        chains.push(downstream);
        let replaces_upstream_head = !through_filters;
        let mut through_filters = through_filters;
        let mut details = details;
        // `sendLocalReply` records the details (and the code goes with the headers) before any encoder filter.
        let code = headers
            .get_str(":status")
            .and_then(|s| s.parse::<i64>().ok());
        for chain in chains.iter_mut() {
            chain.for_each_state(|state| {
                state.properties.set_response_code_details(&details);
                if let Some(code) = code {
                    state.properties.set_response_code(code);
                }
            });
        }
        for chain in chains.iter_mut() {
            if !through_filters {
                break;
            }
            let outcome = chain.response_headers(&mut headers, end_of_stream);
            if matches!(outcome, Outcome::Reset) {
                for chain in chains.iter_mut() {
                    chain.finish(None, None, CLOSE_STREAM_DETAILS);
                }
                self.log.borrow_mut().details = Some(CLOSE_STREAM_DETAILS.to_string());
                return reset_response();
            }
            if let Outcome::LocalReply(second) = outcome {
                // A filter replied while a reply was going out: Envoy sends the second one, straight to the client
                // (response headers exist now: `sendDirectLocalReply`), with its own body and no more callbacks.
                headers = second.response_headers();
                body = second.body.clone();
                details = second.details.clone();
                through_filters = false;
            }
        }
        if through_filters && !status_is_valid(&headers) {
            // FilterManager::encodeHeaders checks `:status` after the filters, and replies 502 directly.
            let broken = EnvoyReply::removed_response_status();
            headers = envoy_reply_headers(&broken);
            body = broken.body.clone().into_bytes();
            details = broken.details.clone();
            through_filters = false;
        }
        if !end_of_stream && through_filters {
            // The reply's body goes through the filters' response body callbacks too, as Envoy encodes a local reply
            // through the filter chain. A filter that changes its length without fixing `content-length` gets what
            // Envoy's codec sends: the declared number of bytes.
            for chain in chains.iter_mut() {
                match chain.body(Phase::ResponseHeaders, &body, true) {
                    Ok(Some(filtered)) => body = filtered,
                    Ok(None) => {}
                    // A reply or failure once the reply's head is encoded: Envoy can only reset the stream.
                    Err(_) => {
                        for chain in chains.iter_mut() {
                            chain.finish(None, None, &details);
                        }
                        self.log.borrow_mut().details = Some(details);
                        return reset_response();
                    }
                }
            }
            let declared = headers
                .get_str("content-length")
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(declared) = declared {
                body.truncate(declared);
            }
        }
        let status = headers
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(500);
        // A local reply is encoded like any response: the connection manager drops the hop-by-hop headers a
        // filter put in it and sets `server` (`ConnectionManagerUtility::mutateResponseHeaders`), before the
        // access-log phase.
        for name in RESPONSE_HOP_BY_HOP {
            headers.remove(name);
        }
        // `ActiveStream::encodeHeaders` also stamps `date` (the date provider), which the access-log phase sees.
        headers.set_in_place("date", httpdate::fmt_http_date(SystemTime::now()));
        headers.replace("server", self.server_name());
        // A reply before the request's last byte ends the connection, and says so before the access-log phase
        // (`ActiveStream::encodeHeaders`).
        if !self.request_complete.get() {
            headers.replace("connection", "close");
        }
        // `response.size` is what the codec sent (`StreamInfo::bytesSent`), and the access-log phase comes after the
        // reply's body went out.
        let sent = body.len() as u64;
        for chain in chains.iter_mut() {
            chain.for_each_state(|state| {
                state.response_body_bytes = sent;
                // A reply after the upstream's head replaced it (`FilterManager::sendDirectLocalReply` sets the
                // stream's response headers): the access-log phase reads the reply's.
                if replaces_upstream_head {
                    state.logged_response_headers = Some(headers.clone());
                }
            });
            chain.finish(Some(&headers), Some(status), &details);
        }
        self.log.borrow_mut().details = Some(details);
        build_response(&headers, full_body(body))
    }

    async fn forward(
        &self,
        headers: HeaderMap,
        body: Incoming,
        downstream: WasmChain,
        upstream: WasmChain,
        target: Target,
        timeout: Option<Duration>,
    ) -> Response<DownstreamBody> {
        let cluster = target.cluster.clone();
        cluster.stats.upstream_rq_total.add(1);

        let host = headers
            .get_str(":authority")
            .unwrap_or_default()
            .to_string();
        let tls_name = cluster
            .tls
            .as_ref()
            .map(|_| host_without_port(&host).to_string());
        let key = PoolKey {
            cluster: cluster.name.clone(),
            address: target.address,
            tls_name,
        };
        let request_trailers = TrailerCodecs {
            read: self.listener.config.http.enable_trailers,
            write: cluster.config.upstream.enable_trailers,
        };
        let response_trailers = TrailerCodecs {
            read: cluster.config.upstream.enable_trailers,
            write: self.listener.config.http.enable_trailers,
        };
        // A request without a body gets no body callback, as in Envoy (its headers carried end of stream). Trailers
        // the codec reads go through the filters' trailer callbacks.
        let filter_body = !body.is_end_stream()
            && (downstream.filters_request_body()
                || upstream.filters_request_body()
                || request_trailers.read && !(downstream.is_empty() && upstream.is_empty()));
        let chains: SharedChains = Rc::new(RefCell::new(StreamChains {
            downstream,
            upstream,
        }));
        let early_reply: EarlyReply = Rc::default();
        let request_body: UpstreamBody = if filter_body {
            // The headers go up as they are, `content-length` included, as from Envoy: a filter that changes the
            // body's length removes it in its request-headers callback.
            local_body(
                FilteredRequest::new(
                    body,
                    chains.clone(),
                    early_reply.clone(),
                    self.listener.config.buffer_limit,
                )
                .noting_end_in(self.request_complete.clone())
                .with_trailers(request_trailers),
            )
        } else {
            local_body(NotesEnd::new(
                body.map_err(|error| Box::new(error) as BoxError),
                self.request_complete.clone(),
                request_trailers,
            ))
        };
        let reply_on = |reply: Reply| {
            let mut chains = chains.borrow_mut();
            let chains = &mut *chains;
            self.local_reply(&mut chains.downstream, Some(&mut chains.upstream), reply)
        };
        {
            let mut chains = chains.borrow_mut();
            chains.downstream.note_final_request_headers(&headers);
            chains.upstream.note_final_request_headers(&headers);
        }
        let pool = self.worker.pool.clone();
        let mut request_body = request_body;
        let upstream_request = match upstream_request(&headers, request_body.is_end_stream()) {
            Ok(request) => request.map(|()| request_body),
            Err(reply) => {
                // Envoy's upstream codec checks the head once the pool hands the stream a connection
                // (`UpstreamCodecFilter::decodeHeaders`): the body the client sent before then has gone through the
                // filters, and a connection that does not come up answers instead.
                let connect_options = cluster.connect_options();
                let connected = drain_until_connected(
                    &mut request_body,
                    pool.get(&key, &target.addresses, &connect_options),
                )
                .await;
                if let Some(reply) = early_reply.borrow_mut().take() {
                    return reply_on(reply);
                }
                return match connected {
                    Ok(_) => reply_on(Reply::Envoy(reply)),
                    Err(error) => {
                        cluster.stats.upstream_cx_connect_fail.add(1);
                        reply_on(Reply::Envoy(EnvoyReply::upstream_failure(&error)))
                    }
                };
            }
        };

        let mut sender = match pool
            .get(&key, &target.addresses, &cluster.connect_options())
            .await
        {
            Ok(sender) => sender,
            Err(error) => {
                cluster.stats.upstream_cx_connect_fail.add(1);
                return reply_on(Reply::Envoy(EnvoyReply::upstream_failure(&error)));
            }
        };
        let sent = sender.send_request(upstream_request);
        let response = match timeout {
            Some(timeout) => match tokio::time::timeout(timeout, sent).await {
                Ok(result) => result,
                Err(_) => {
                    cluster.stats.upstream_rq_timeout.add(1);
                    return reply_on(Reply::Envoy(EnvoyReply::upstream_timeout()));
                }
            },
            None => sent.await,
        };
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                // The request body ended the request (a filter replied, failed, or held too much): that reply
                // goes to the client.
                if let Some(reply) = early_reply.borrow_mut().take() {
                    return reply_on(reply);
                }
                tracing::debug!(%error, "upstream reset before response headers");
                let reply = if error.is_parse() {
                    EnvoyReply::upstream_protocol_error()
                } else if error.is_canceled() || error.is_closed() || error.is_incomplete_message()
                {
                    EnvoyReply::upstream_reset()
                } else {
                    EnvoyReply::upstream_failure(&ConnectError::Http(error.to_string()))
                };
                return reply_on(Reply::Envoy(reply));
            }
        };

        let (parts, body) = response.into_parts();
        let mut response_headers = HeaderMap::new();
        response_headers.add(":status", parts.status.as_u16().to_string());
        // The upstream's head as Envoy's codec hands it to the filters: `server`, `connection` and the rest as sent.
        for (name, value) in &parts.headers {
            response_headers.add_as(MapKind::ResponseHeaders, name.as_str(), value.as_bytes());
        }
        let end_of_stream = body.is_end_stream();
        // The router records the upstream's status and `via_upstream` when the head arrives, before any response
        // filter runs (`response.code`, `response.code_details` read so in on_response_headers).
        {
            let mut chains = chains.borrow_mut();
            let status = i64::from(parts.status.as_u16());
            for side in [Side::Upstream, Side::Downstream] {
                chains.side(side).for_each_state(|state| {
                    state
                        .properties
                        .set_response_code(status)
                        .set_response_code_details("via_upstream");
                });
            }
        }
        let mut outcome = self
            .response_headers_phase(
                &chains,
                Side::Upstream,
                &mut response_headers,
                end_of_stream,
            )
            .await;
        if matches!(outcome, Outcome::Continue { .. }) {
            // The router between the upstream filters and the downstream ones (`Filter::onUpstreamHeaders`):
            // it drops the upstream's `keep-alive` (HTTP/1 downstream) and adds its service time.
            response_headers.remove("keep-alive");
            response_headers.add(
                "x-envoy-upstream-service-time",
                self.started.elapsed().as_millis().to_string(),
            );
            outcome = self
                .response_headers_phase(
                    &chains,
                    Side::Downstream,
                    &mut response_headers,
                    end_of_stream,
                )
                .await;
        }
        let reply = match outcome {
            Outcome::LocalReply(reply) => Some(Reply::Wasm(reply)),
            Outcome::Failed(reply) => Some(Reply::Envoy(reply)),
            Outcome::Reset => Some(Reply::Reset),
            Outcome::Continue { .. } | Outcome::Paused if !status_is_valid(&response_headers) => {
                Some(Reply::Envoy(EnvoyReply::removed_response_status()))
            }
            Outcome::Continue { .. } | Outcome::Paused => None,
        };
        if let Some(reply) = reply {
            let mut chains = chains.borrow_mut();
            let chains = &mut *chains;
            if matches!(reply, Reply::Reset) {
                // `Context::closeStream` resets after the callback: the contexts end still pointing at the
                // upstream's head, which on_done and on_log read (found by the ABI fuzzer).
                for chain in [&mut chains.upstream, &mut chains.downstream] {
                    chain.finish(Some(&response_headers), None, CLOSE_STREAM_DETAILS);
                }
            }
            return self.local_reply_via(
                &mut chains.downstream,
                Some(&mut chains.upstream),
                reply,
                false,
            );
        }
        // Only when encoding to the client does the connection manager drop the hop-by-hop headers
        // (`ConnectionManagerUtility::mutateResponseHeaders`).
        for name in RESPONSE_HOP_BY_HOP {
            response_headers.remove(name);
        }
        // ... and sets `date` and `server`, which the filters' access-log phase then sees too.
        response_headers.set_in_place("date", httpdate::fmt_http_date(SystemTime::now()));
        response_headers.replace("server", self.server_name());
        // A filter may have changed `:status`; what goes to the client is what counts.
        let status = response_headers
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or_else(|| parts.status.as_u16());
        self.log.borrow_mut().details = Some("via_upstream".to_string());
        let log = self.pending_log(&response_headers, status);
        let pooled = PooledBody::new(body, pool, key, sender);
        let body = FilteredResponse::new(pooled, chains, response_headers.clone(), status, log)
            .with_trailers(response_trailers);
        build_response(&response_headers, local_body(body))
    }

    async fn tunnel(
        &self,
        mut downstream: WasmChain,
        mut upstream: WasmChain,
        target: &Target,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<DownstreamBody> {
        let connected = crate::dfp::upstream::tcp_connect(
            &target.addresses,
            target.cluster.config.bind,
            target.cluster.config.connect_timeout,
        )
        .await;
        let stream = match connected {
            Ok(stream) => stream,
            Err(error) => {
                return self.local_reply(
                    &mut downstream,
                    Some(&mut upstream),
                    Reply::Envoy(EnvoyReply::upstream_failure(&error)),
                )
            }
        };
        let mut headers = HeaderMap::new();
        headers.add(":status", "200");
        let mut replied = None;
        if let Outcome::LocalReply(reply) = upstream.response_headers(&mut headers, false) {
            replied = Some(reply);
        } else if let Outcome::LocalReply(reply) = downstream.response_headers(&mut headers, false)
        {
            replied = Some(reply);
        }
        if let Some(reply) = replied {
            return self.local_reply(&mut downstream, Some(&mut upstream), Reply::Wasm(reply));
        }
        let Some(upgrade) = upgrade else {
            return self.local_reply(
                &mut downstream,
                Some(&mut upstream),
                Reply::Envoy(EnvoyReply::bad_request("missing_upgrade")),
            );
        };
        self.log.borrow_mut().details = Some("via_upstream".to_string());
        let log = self.pending_log(&headers, 200);
        tokio::task::spawn_local(super::tunnel::relay(
            upgrade,
            stream,
            downstream,
            upstream,
            headers.clone(),
            log,
        ));
        build_response(
            &headers,
            local_body(Empty::new().map_err(|never| match never {})),
        )
    }
}

enum Settled {
    Continue { clear_route_cache: bool },
    Reply(Reply),
}

/// A reply from a wasm filter (with its own headers) or from the proxy itself.
pub(crate) enum Reply {
    Wasm(LocalReply),
    Envoy(EnvoyReply),
    /// No reply: the stream is reset (a filter closed it), so the client sees the connection end.
    Reset,
}

/// The request as Envoy's HTTP/1 codec presents it to filters: `:authority` (from the absolute URI or `Host`),
/// `:path`, `:method`, `:scheme`, then the request's headers without `Host` and hop-by-hop headers, then the
/// headers the connection manager adds (`x-forwarded-proto`, `x-request-id` unless `generate_request_id: false`).
fn request_header_map(
    parts: &hyper::http::request::Parts,
    generate_request_id: bool,
) -> Result<HeaderMap, EnvoyReply> {
    let connect = parts.method == Method::CONNECT;
    check_request_shape(parts)?;
    let authority = match parts.uri.authority() {
        // An absolute-form URI's authority without its userinfo (`http://user@host/` → `host`), as Envoy takes it.
        Some(authority) if parts.uri.scheme().is_some() => {
            let text = authority.as_str();
            let host = text.rsplit_once('@').map_or(text, |(_, host)| host);
            host.as_bytes().to_vec()
        }
        Some(authority) => authority.as_str().as_bytes().to_vec(),
        None => {
            // Envoy's HTTP/1 codec folds repeated Host headers into one value joined by commas; the filters
            // then see (and reject) that.
            let hosts: Vec<&[u8]> = parts
                .headers
                .get_all(hyper::header::HOST)
                .iter()
                .map(|value| value.as_bytes())
                .collect();
            if hosts.is_empty() {
                return Err(EnvoyReply::missing_host());
            }
            hosts.join(&b","[..])
        }
    };
    if !authority_is_valid(&authority, connect) {
        return Err(EnvoyReply::bad_request("http1.codec_error"));
    }
    let mut headers = HeaderMap::new();
    headers.add(":authority", &authority);
    if !connect {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = if path.is_empty() { "/" } else { path };
        // `OPTIONS *`, or an absolute URI with a query and no path: Envoy's connection manager refuses a path
        // that does not start with a slash before any filter.
        if !path.starts_with('/') {
            return Err(EnvoyReply::absolute_path_rejected());
        }
        headers.add(":path", path);
    }
    headers.add(":method", parts.method.as_str());
    if !connect {
        headers.add(":scheme", "http");
    }
    let nominated = connection_nominated(&parts.headers);
    for (name, value) in &parts.headers {
        if name == hyper::header::EXPECT && value.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            // Envoy answers `100 Continue` itself and does not pass the expectation on.
            continue;
        }
        if name == hyper::header::TE {
            // Envoy passes `TE: trailers` on (gRPC needs it) and drops any other TE.
            if has_token(value.as_bytes(), "trailers") {
                headers.add("te", "trailers");
            }
            continue;
        }
        if name == hyper::header::HOST
            || HOP_BY_HOP.contains(&name.as_str())
            || nominated.iter().any(|n| n == name.as_str())
            || (name.as_str().starts_with("x-envoy-")
                && ENVOY_CONTROL_HEADERS.contains(&name.as_str()))
        {
            continue;
        }
        // The codec adds each line with addViaMove: repeated inline headers join with a comma.
        headers.add_as(MapKind::RequestHeaders, name.as_str(), value.as_bytes());
    }
    if headers.get("x-forwarded-proto").is_none() {
        headers.add("x-forwarded-proto", "http");
    }
    if generate_request_id && headers.get("x-request-id").is_none() {
        headers.add("x-request-id", super::request_id::new_uuid());
    }
    Ok(headers)
}

/// The methods Envoy's HTTP/1 codec accepts (the list http-parser knew; sorted). Any other token — an extension
/// method, a lower-case `get` — is a codec error there, though hyper accepts it.
const ENVOY_METHODS: [&str; 34] = [
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// What Envoy's codec and connection manager refuse before any filter: a method outside [`ENVOY_METHODS`], a
/// CONNECT whose target is not `host:port`, a fragment in the request target.
fn check_request_shape(parts: &hyper::http::request::Parts) -> Result<(), EnvoyReply> {
    if ENVOY_METHODS.binary_search(&parts.method.as_str()).is_err() {
        return Err(EnvoyReply::bad_request("http1.codec_error"));
    }
    if parts.method == Method::CONNECT {
        if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_some() {
            return Err(EnvoyReply::bad_request("http1.codec_error"));
        }
        return Ok(());
    }
    if parts
        .uri
        .path_and_query()
        .is_some_and(|target| target.as_str().contains('#'))
    {
        return Err(EnvoyReply::path_normalization_failed());
    }
    Ok(())
}

/// Headers the client named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1); Envoy drops them.
/// What Envoy's HTTP/1 codec accepts as an authority (`Host`, or a CONNECT target): only the URI authority
/// characters (unreserved, percent, sub-delims, `:`, `@`, brackets), and for CONNECT a `host:port` without
/// userinfo. Anything else is a codec error there, before any filter sees it.
fn authority_is_valid(authority: &[u8], connect: bool) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@[]".contains(&b);
    if !authority.iter().all(|&b| allowed(b)) {
        return false;
    }
    if connect {
        let has_port = authority
            .iter()
            .rposition(|&b| b == b':')
            .is_some_and(|colon| !authority[colon + 1..].is_empty() && !authority.ends_with(b"]"));
        return has_port && !authority.contains(&b'@');
    }
    true
}

/// An upgrade other than CONNECT (`Upgrade` nominated by `Connection`): no configuration host-sim runs accepts one.
fn is_upgrade(headers: &hyper::HeaderMap) -> bool {
    headers.contains_key(hyper::header::UPGRADE)
        && headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|value| has_token(value.as_bytes(), "upgrade"))
}

fn connection_nominated(headers: &hyper::HeaderMap) -> Vec<String> {
    headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter_map(|token| std::str::from_utf8(token).ok())
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .filter_map(|t| std::str::from_utf8(t).ok())
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split(']')
            .next()
            .map_or(authority, |h| &authority[..h.len() + 1]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// Runs the request body through the filters while the upstream connection comes up, and returns the connection's
/// outcome: a pooled connection is handed over at once, before any body callback (Envoy's pool calls `onPoolReady`
/// inline); a new one after the body that had arrived, including what was ready when it came up (Envoy dispatches
/// a whole read before the connect event).
async fn drain_until_connected<T>(
    body: &mut UpstreamBody,
    connect: impl std::future::Future<Output = T>,
) -> T {
    let mut connect = std::pin::pin!(connect);
    let mut waited = false;
    let mut body_open = !body.is_end_stream();
    let drain = |body: &mut UpstreamBody, open: &mut bool, cx: &mut std::task::Context<'_>| {
        while *open {
            match body.as_mut().poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(_))) => {}
                std::task::Poll::Ready(_) => *open = false,
                std::task::Poll::Pending => break,
            }
        }
    };
    let connected = std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(done) = connect.as_mut().poll(cx) {
            return std::task::Poll::Ready(done);
        }
        waited = true;
        drain(body, &mut body_open, cx);
        std::task::Poll::Pending
    })
    .await;
    if waited {
        std::future::poll_fn(|cx| {
            drain(body, &mut body_open, cx);
            std::task::Poll::Ready(())
        })
        .await;
    }
    connected
}

/// The HTTP/1.1 request head the upstream receives: origin-form path, `Host` from `:authority`, no pseudo-headers
/// (`body_ends`: the request has no body).
fn upstream_request(headers: &HeaderMap, body_ends: bool) -> Result<Request<()>, EnvoyReply> {
    // What the filters left is what goes: `:method` from the map (the upstream codec's
    // checkRequiredRequestHeaders refuses a request without it, or without `:path`).
    let method = match headers.get(":method") {
        None => return Err(EnvoyReply::removed_request_header(":method")),
        Some(name) => Method::from_bytes(name)
            .map_err(|_| EnvoyReply::bad_request("invalid_header_after_filters"))?,
    };
    let Some(path) = headers.get_str(":path") else {
        return Err(EnvoyReply::removed_request_header(":path"));
    };
    let mut builder = Request::builder().method(method.clone()).uri(path);
    for (name, value) in headers.iter() {
        // As Envoy's HTTP/1 encoder: `:a...` (`:authority`) goes as `host`, other pseudo-headers
        // not at all (StreamEncoderImpl::encodeHeadersBase).
        builder = match name {
            [b':', b'a', ..] => builder.header(hyper::header::HOST, value),
            [b':', ..] => continue,
            _ => builder.header(name, value),
        };
    }
    // Envoy's HTTP/1 encoder announces an empty body (`content-length: 0`) for methods that anticipate one.
    let bodiless_method = matches!(
        method,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT | Method::TRACE
    );
    if body_ends
        && !bodiless_method
        && headers.get("content-length").is_none()
        && headers.get("transfer-encoding").is_none()
    {
        builder = builder.header(hyper::header::CONTENT_LENGTH, "0");
    }
    // A body of unknown length goes chunked whatever the method, as Envoy's encoder sends it
    // (StreamEncoderImpl::encodeHeadersBase); hyper's client would send a GET's body as empty.
    if !body_ends
        && headers.get("content-length").is_none()
        && headers.get("transfer-encoding").is_none()
    {
        builder = builder.header(hyper::header::TRANSFER_ENCODING, "chunked");
    }
    builder
        .body(())
        .map_err(|_| EnvoyReply::bad_request("invalid_header_after_filters"))
}

/// Whether the response still has the `:status` Envoy's `checkRequiredResponseHeaders` requires after the filters.
/// (A present but malformed one, e.g. `200,v` after a filter added a second `:status`, is measured to pass in some
/// paths and not in others; host-sim checks presence only, and the fuzzer's `status-header` tag documents the rest.)
fn status_is_valid(headers: &HeaderMap) -> bool {
    headers.get(":status").is_some()
}

/// The `server` header host-sim writes without an HCM `server_name`, where Envoy writes `envoy`.
const SERVER_NAME: &str = "host-sim";

/// Envoy's response code details for a stream a filter closed (`CloseStreamDetails` in the wasm context).
const CLOSE_STREAM_DETAILS: &str = "wasm_close_stream";

/// A response that is never written: its body fails at once, so hyper closes the connection before the head.
fn reset_response() -> Response<DownstreamBody> {
    Response::new(local_body(super::body::ResetBody))
}

/// A body held whole in memory (local replies, a request body the filters have read).
/// A body whose length hyper does not learn (see [`build_response`]).
struct LengthForgotten(LocalBody);

impl Body for LengthForgotten {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.0.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

fn full_body(bytes: impl Into<Bytes>) -> LocalBody {
    local_body(Full::new(bytes.into()).map_err(|never| match never {}))
}

fn envoy_reply_headers(reply: &EnvoyReply) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.add(":status", reply.status.to_string());
    if !reply.body.is_empty() {
        headers.add("content-length", reply.body.len().to_string());
        headers.add("content-type", "text/plain");
    }
    headers
}

fn plain_reply(reply: &EnvoyReply) -> Response<DownstreamBody> {
    build_response(&envoy_reply_headers(reply), full_body(reply.body.clone()))
}

/// A hyper response from a header map (`:status` plus regular headers); invalid entries a filter wrote are dropped.
fn build_response(headers: &HeaderMap, body: DownstreamBody) -> Response<DownstreamBody> {
    // A filter may leave a `content-length` that is not the body's: Envoy's HTTP/1 encoder writes the header as it
    // is and the body as it is. hyper trusts a body of known length over the header (and asserts they agree in a
    // debug build), so the length is forgotten and hyper frames by the header, as Envoy's codec does. A filter
    // may also remove it: Envoy then chunk-encodes a body that follows the head (`encodeHeadersBase`), where hyper
    // would write the known length back.
    let claimed = headers
        .get_str("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = match (body.size_hint().exact(), claimed) {
        (Some(exact), Some(claimed)) if exact != claimed => local_body(LengthForgotten(body)),
        (Some(exact), None) if exact > 0 && headers.get("content-length").is_none() => {
            local_body(LengthForgotten(body))
        }
        _ => body,
    };
    let status = headers
        .get_str(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| hyper::StatusCode::from_u16(s).ok())
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (name, value) in headers.iter() {
        // Envoy's HTTP/1 encoder writes a pseudo-header starting `:a` (`:authority`) as `host` and
        // drops every other one (StreamEncoderImpl::encodeHeadersBase).
        let name: &[u8] = match name {
            [b':', b'a', ..] => b"host",
            [b':', ..] => continue,
            _ => name,
        };
        if !append_wire_field(map, name, value) {
            tracing::debug!("dropping a response header a filter set with invalid bytes");
        }
    }
    response
}

/// Appends a header (or trailer) field as hyper writes it; `false`, and nothing appended, when the name or value a
/// filter set is not valid on the wire.
pub(crate) fn append_wire_field(map: &mut hyper::HeaderMap, name: &[u8], value: &[u8]) -> bool {
    match (
        hyper::header::HeaderName::from_bytes(name),
        hyper::header::HeaderValue::from_bytes(value),
    ) {
        (Ok(name), Ok(value)) => {
            map.append(name, value);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{authority_is_valid, ENVOY_METHODS};

    #[test]
    fn authorities_as_envoys_codec_takes_them() {
        for good in [
            "a.test",
            "a.test:80",
            "[::1]:80",
            "a-b_c~d.test",
            "a,b",
            "user@a.test",
        ] {
            assert!(authority_is_valid(good.as_bytes(), false), "{good}");
        }
        for bad in [
            "a.test :80",
            "a\tb",
            "a\\b",
            "a/b",
            "a?b",
            "a#b",
            "b\u{fc}cher.test",
            "a\"b",
        ] {
            assert!(!authority_is_valid(bad.as_bytes(), false), "{bad:?}");
        }
        for good in ["a.test:443", "[::1]:443", "10.0.0.1:22"] {
            assert!(authority_is_valid(good.as_bytes(), true), "CONNECT {good}");
        }
        for bad in ["a.test", "a.test:", "[::1]", "user@a.test:443"] {
            assert!(!authority_is_valid(bad.as_bytes(), true), "CONNECT {bad}");
        }
    }

    #[test]
    fn envoy_methods_are_sorted_for_binary_search() {
        assert!(ENVOY_METHODS.windows(2).all(|w| w[0] < w[1]));
    }
}
