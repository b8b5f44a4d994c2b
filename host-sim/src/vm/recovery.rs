//! A worker's handle on one plugin's VM, and what it does once the VM failed — Envoy 1.40's
//! `failure_policy` (`PluginConfig::createContext` and `maybeReloadHandleIfNeeded` in
//! `source/extensions/common/wasm/wasm.cc`), per plugin per worker:
//!
//! - `FAIL_CLOSED` (the default): the VM stays failed; every later stream fails (503).
//! - `FAIL_RELOAD`: a new stream on a failed VM reloads it when a jittered backoff (the base,
//!   1 s by default, up to 1.5 times that) has passed since the last load; until then, and when
//!   the reload fails, streams fail. Reloads count as `vm_reload_backoff` / `_success` /
//!   `_failure`.
//! - `FAIL_OPEN`: the filter is left out of every stream while the VM is failed (no reload).
//!
//! Only runtime failures (traps, deadline interruptions, memory limits) get here: a plugin that
//! fails to start is refused at load, as Envoy refuses the configuration.

use std::time::{Duration, Instant};

use crate::config::FailurePolicy;
use crate::properties::Properties;
use crate::vm::{HttpStream, PluginInstance};

/// Envoy's default `reload_config.backoff.base_interval`.
pub const DEFAULT_RELOAD_BACKOFF: Duration = Duration::from_secs(1);

/// What a new stream gets from a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A context was created for the stream.
    Stream(HttpStream),
    /// The VM is failed and the policy is fail-open: the filter is skipped for this stream.
    Skip,
    /// The VM is failed (and was not, or could not be, reloaded): the stream fails with 503.
    Fail,
}

/// A reload decision, for the `wasm.<plugin>.vm_reload_*` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadEvent {
    /// The VM is failed but the backoff since the last load has not passed.
    Backoff,
    /// A fresh VM replaced the failed one.
    Success,
    /// Starting a fresh VM failed; the failed one stays.
    Failure,
}

impl ReloadEvent {
    /// The counter Envoy increments for this event (after `wasm.<plugin>.`).
    pub fn stat_name(self) -> &'static str {
        match self {
            ReloadEvent::Backoff => "vm_reload_backoff",
            ReloadEvent::Success => "vm_reload_success",
            ReloadEvent::Failure => "vm_reload_failure",
        }
    }
}

/// One plugin's VM on one worker, with its failure policy. Dereferences to the
/// [`PluginInstance`] for everything but stream admission.
pub struct PluginHandle {
    instance: PluginInstance,
    policy: FailurePolicy,
    backoff: Duration,
    /// When the VM was last (re)loaded, or a reload last attempted: the backoff runs from here.
    last_load: Instant,
    jitter: Jitter,
}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandle")
            .field("instance", &self.instance)
            .field("policy", &self.policy)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for PluginHandle {
    type Target = PluginInstance;
    fn deref(&self) -> &PluginInstance {
        &self.instance
    }
}

impl std::ops::DerefMut for PluginHandle {
    fn deref_mut(&mut self) -> &mut PluginInstance {
        &mut self.instance
    }
}

impl PluginHandle {
    /// Wraps a freshly started instance. `backoff` is the reload base interval (Envoy: at least
    /// 1 ms; only used by `FAIL_RELOAD`).
    pub fn new(instance: PluginInstance, policy: FailurePolicy, backoff: Duration) -> Self {
        PluginHandle {
            instance,
            policy,
            backoff: backoff.max(Duration::from_millis(2)),
            last_load: Instant::now(),
            jitter: Jitter::seeded(),
        }
    }

    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }

    /// Creates the stream's context, after applying the failure policy to a failed VM
    /// (which may reload it). Returns the admission and, when a reload was considered, what
    /// happened to it.
    pub fn admit(&mut self, properties: Properties) -> (Admission, Option<ReloadEvent>) {
        let event = self.maybe_reload();
        if self.instance.failure().is_some() {
            return (self.failed_admission(), event);
        }
        match self.instance.create_stream(properties) {
            Ok(stream) => (Admission::Stream(stream), event),
            Err(error) => {
                // A trap in proxy_on_context_create fails the VM: the stream is treated as every
                // stream on a failed VM is.
                tracing::warn!(plugin = %self.instance.factory().config().name, %error, "wasm context creation failed");
                (self.failed_admission(), event)
            }
        }
    }

    fn failed_admission(&self) -> Admission {
        match self.policy {
            FailurePolicy::FailOpen => Admission::Skip,
            FailurePolicy::FailClosed | FailurePolicy::FailReload => Admission::Fail,
        }
    }

    /// `FAIL_RELOAD` on a failed VM: reload once the jittered backoff since the last load passed.
    fn maybe_reload(&mut self) -> Option<ReloadEvent> {
        if self.policy != FailurePolicy::FailReload || self.instance.failure().is_none() {
            return None;
        }
        let interval = self.jitter.lower_bound(self.backoff);
        let now = Instant::now();
        if now.duration_since(self.last_load) < interval {
            return Some(ReloadEvent::Backoff);
        }
        self.last_load = now;
        match self.instance.restart() {
            Ok(()) => {
                tracing::info!(plugin = %self.instance.factory().config().name, "reloaded the failed wasm VM");
                Some(ReloadEvent::Success)
            }
            Err(error) => {
                tracing::warn!(plugin = %self.instance.factory().config().name, %error, "reloading the failed wasm VM failed");
                Some(ReloadEvent::Failure)
            }
        }
    }
}

/// Envoy's `JitteredLowerBoundBackOffStrategy`: a random interval in `[base, 1.5 * base)`.
/// The randomness only spreads reloads out; xorshift is plenty.
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let here = &nanos as *const u64 as u64;
        Jitter((nanos ^ here.rotate_left(32)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn lower_bound(&mut self, base: Duration) -> Duration {
        let base_ms = u64::try_from(base.as_millis())
            .unwrap_or(u64::MAX / 2)
            .max(2);
        Duration::from_millis(base_ms + self.next() % (base_ms / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_backoff_stays_within_envoys_bounds() {
        let mut jitter = Jitter::seeded();
        let base = Duration::from_millis(1000);
        let samples: Vec<Duration> = (0..1000).map(|_| jitter.lower_bound(base)).collect();
        assert!(samples.iter().all(|d| *d >= base && *d < base * 3 / 2));
        // It does jitter: not every sample is the same.
        assert!(samples.iter().any(|d| *d != samples[0]));
    }
}
