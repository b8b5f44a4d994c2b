//! Sending a request on: to an upstream through the connection pool (the request body filtered while the
//! connection comes up), or as a CONNECT tunnel.

use super::*;

impl Exchange<'_> {
    pub(super) async fn forward(
        &self,
        headers: HeaderMap,
        body: ReadAhead<Incoming>,
        downstream: WasmChain,
        upstream: WasmChain,
        target: Target,
        timeout: Option<Duration>,
    ) -> Response<DownstreamBody> {
        let cluster = target.cluster.clone();
        cluster.stats.upstream_rq_total.add(1);
        // The request body's callbacks count what was read ahead as they see it.
        self.read_ahead_bytes.set(0);

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
            if !self.listener.config.http.router().suppress_envoy_headers {
                response_headers.add(
                    "x-envoy-upstream-service-time",
                    self.started.elapsed().as_millis().to_string(),
                );
            }
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
        {
            let mut chains = chains.borrow_mut();
            for side in [Side::Upstream, Side::Downstream] {
                chains
                    .side(side)
                    .note_encoded_response_headers(&response_headers);
            }
        }
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

    pub(super) async fn tunnel(
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
        tokio::task::spawn_local(crate::proxy::tunnel::relay(
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

/// Runs the request body through the filters while the upstream connection comes up, and returns the connection's
/// outcome: a pooled connection is handed over at once, before any body callback (Envoy's pool calls `onPoolReady`
/// inline); a new one after the body that had arrived, including what was ready when it came up (Envoy dispatches
/// a whole read before the connect event).
pub(super) async fn drain_until_connected<T>(
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
pub(super) fn upstream_request(
    headers: &HeaderMap,
    body_ends: bool,
) -> Result<Request<()>, EnvoyReply> {
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
