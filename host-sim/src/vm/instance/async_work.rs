//! A VM's asynchronous work, delivered by the thread that owns it: http call answers, ticks, queue
//! notifications, and the signals that say when there is some.

use super::*;

impl PluginInstance {
    /// Http calls dispatched since the last call of this method. The proxy routes each to
    /// its cluster and answers with [`PluginInstance::deliver_http_call_response`].
    pub fn take_http_calls(&mut self) -> Vec<HttpCallRequest> {
        std::mem::take(&mut self.store.data_mut().dispatched)
    }

    /// Http calls still waiting for an answer.
    pub fn pending_http_calls(&self) -> Vec<&HttpCallRequest> {
        self.store.data().pending_calls.values().collect()
    }

    /// Answers an http call: runs `proxy_on_http_call_response(root, token, headers, body
    /// size, trailers)` with the response readable through the HttpCallResponse* maps and
    /// buffer. `None` reports a failure (reset, timeout, no healthy upstream): Envoy then
    /// calls back with zero headers, body and trailers, no response maps (reading them is
    /// BadArgument), and `proxy_get_status` answering (BrokenConnection, "reset").
    pub fn deliver_http_call_response(
        &mut self,
        token: u32,
        response: Option<HttpCallResponse>,
    ) -> Result<(), CallbackError> {
        self.check_alive()?;
        if self.store.data_mut().pending_calls.remove(&token).is_none() {
            return Err(CallbackError::UnknownCallToken(token));
        }
        let root = self.root_context_id();
        let (h, b, t) = response.as_ref().map_or((0, 0, 0), |r| {
            (
                r.headers.len() as u32,
                r.body.len() as u32,
                r.trailers.len() as u32,
            )
        });
        if response.is_none() {
            // Envoy reports the failure through proxy_get_status: BrokenConnection, "reset".
            self.store.data_mut().status = (Status::BrokenConnection.code(), b"reset".to_vec());
        }
        self.store.data_mut().call_response = response;
        let r = match self.exports.on_http_call_response.clone() {
            Some(f) => self
                .invoke(root, &f, (root, token, h, b, t))
                .map_err(self.trap("proxy_on_http_call_response")),
            None => Ok(()),
        };
        let st = self.store.data_mut();
        st.call_response = None;
        st.status = (0, Vec::new());
        r
    }

    /// The tick period the root context asked for (`None` when ticks are off, or the VM
    /// failed: a failed VM gets no more ticks).
    pub fn tick_period(&self) -> Option<std::time::Duration> {
        if self.failed.is_some() {
            return None;
        }
        match self.store.data().tick_period_ms {
            0 => None,
            ms => Some(std::time::Duration::from_millis(u64::from(ms))),
        }
    }

    /// Runs `proxy_on_tick(root)` when a tick period is set. Returns whether it ran.
    pub fn tick(&mut self) -> Result<bool, CallbackError> {
        self.check_alive()?;
        if self.store.data().tick_period_ms == 0 {
            return Ok(false);
        }
        let Some(f) = self.exports.on_tick.clone() else {
            return Ok(false);
        };
        let root = self.root_context_id();
        self.invoke(root, &f, root)
            .map_err(self.trap("proxy_on_tick"))?;
        Ok(true)
    }

    /// Delivers `proxy_on_queue_ready(root, token)` for every enqueue on a queue this
    /// instance registered since the last delivery. Returns how many were delivered.
    pub fn deliver_queue_ready(&mut self) -> Result<usize, CallbackError> {
        self.check_alive()?;
        let ready = self.store.data().inbox.drain();
        let Some(f) = self.exports.on_queue_ready.clone() else {
            return Ok(0);
        };
        for (root, token) in &ready {
            self.invoke(*root, &f, (*root, *token))
                .map_err(self.trap("proxy_on_queue_ready"))?;
        }
        Ok(ready.len())
    }

    /// True when some queue registered by this instance has items to announce.
    pub fn has_queue_ready(&self) -> bool {
        !self.store.data().inbox.is_empty()
    }

    /// Where this instance's queue notifications land; its `arrived()` wakes an event loop.
    pub fn queue_inbox(&self) -> std::sync::Arc<crate::shared::queues::QueueInbox> {
        self.store.data().inbox.clone()
    }

    /// Woken whenever the guest makes an http call (in any callback, root or stream).
    pub fn calls_dispatched(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.store.data().calls_dispatched.clone()
    }

    /// Woken whenever the guest sets its tick period.
    pub fn tick_period_set(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.store.data().tick_period_set.clone()
    }
}
