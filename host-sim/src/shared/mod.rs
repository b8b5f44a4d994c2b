//! State shared by every VM instance of a host: metrics, shared data and shared queues.
//! Each is its own `Arc`-shared store passed in explicitly — no globals, so independent hosts
//! (and tests) never see each other's state.

pub mod metrics;
pub mod queues;
pub mod shared_data;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use metrics::{MetricSnapshot, MetricsStore};
pub use queues::SharedQueues;
pub use shared_data::SharedData;

/// The bundle of shared stores one host (one proxy process, or one test) uses.
#[derive(Debug, Clone, Default)]
pub struct SharedState {
    pub metrics: Arc<MetricsStore>,
    pub data: Arc<SharedData>,
    pub queues: Arc<SharedQueues>,
    /// HTTP contexts alive in every VM instance of this host (a leak check for soak tests).
    pub live_streams: Arc<LiveStreams>,
}

/// A count of live HTTP contexts.
#[derive(Debug, Default)]
pub struct LiveStreams(AtomicUsize);

impl LiveStreams {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn opened(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}

impl SharedState {
    pub fn new() -> Self {
        Self::default()
    }
}
