//! Local replies: a filter's, or the proxy's own (a refused request, a failed upstream), sent through the wasm
//! response phase as Envoy's `sendLocalReply` does, or straight to the client once the response had started.

use super::*;

impl Exchange<'_> {
    /// Sends a local reply through the wasm response phase (upstream chain first when there is one), then ends the
    /// wasm streams.
    pub(super) fn local_reply(
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
    pub(super) fn local_reply_via(
        &self,
        downstream: &mut WasmChain,
        mut upstream: Option<&mut WasmChain>,
        reply: Reply,
        through_filters: bool,
    ) -> Response<DownstreamBody> {
        let unfiltered = self.read_ahead_bytes.replace(0);
        if unfiltered > 0 {
            downstream.for_each_state(|state| state.request_body_bytes += unfiltered);
            if let Some(upstream) = upstream.as_mut() {
                upstream.for_each_state(|state| state.request_body_bytes += unfiltered);
            }
        }
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
}

/// Envoy's response code details for a stream a filter closed (`CloseStreamDetails` in the wasm context).
pub(super) const CLOSE_STREAM_DETAILS: &str = "wasm_close_stream";

/// A response that is never written: its body fails at once, so hyper closes the connection before the head.
fn reset_response() -> Response<DownstreamBody> {
    Response::new(local_body(crate::proxy::body::ResetBody))
}
