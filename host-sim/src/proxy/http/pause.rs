//! Waiting out a filter's pause: the http calls it made are sent and their answers delivered until it resumes the
//! stream or replies, as Envoy holds a stream whose filter returned StopIteration.

use super::*;

impl Exchange<'_> {
    /// Waits out a pause: http calls dispatched by the plugin are sent, answers and ticks delivered, until the
    /// filter resumes the stream or replies. Meanwhile the client's body is read on, as Envoy's codec reads it
    /// (see [`ReadAhead`]).
    pub(super) async fn settle(
        &self,
        chain: &mut WasmChain,
        outcome: Outcome,
        index: usize,
        headers: &mut HeaderMap,
        body: &mut ReadAhead<Incoming>,
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
                    Some(Outcome::Paused) | None => {}
                }
                let limit = self.listener.config.buffer_limit;
                tokio::select! {
                    () = notified => {}
                    step = body.read_on(), if body.can_read_on(limit) => {
                        self.read_ahead_bytes.set(body.buffered() as u64);
                        if let ReadStep::Ended = step {
                            self.request_complete.set(true);
                        }
                    }
                }
            },
        }
    }

    /// One chain's response-headers phase, waiting out each pause (http calls sent, answers delivered) until the
    /// filter continues, as Envoy holds the response for a filter that returned StopIteration.
    pub(super) async fn response_headers_phase(
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
}
