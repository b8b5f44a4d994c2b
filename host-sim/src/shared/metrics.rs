//! The metrics store: name → metric, shared by all VM instances, queryable by an admin
//! endpoint. Guests see per-instance ids (Envoy encodes the kind in the low two bits).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::types::MetricKind;

/// One metric cell. Counters and gauges are single atomics; histograms keep count, sum and
/// the recorded values (bounded) so tests and `/stats` can inspect them.
#[derive(Debug)]
pub struct Metric {
    kind: MetricKind,
    value: AtomicI64,
    count: AtomicU64,
    samples: Mutex<Vec<u64>>,
}

/// Histograms keep at most this many raw samples; count and sum stay exact.
const MAX_SAMPLES: usize = 4096;

impl Metric {
    fn new(kind: MetricKind) -> Self {
        Metric {
            kind,
            value: AtomicI64::new(0),
            count: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
        }
    }

    pub fn kind(&self) -> MetricKind {
        self.kind
    }

    /// Counter or gauge value; for histograms the sum of recorded values.
    pub fn value(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, delta: i64) {
        self.value.fetch_add(delta, Ordering::Relaxed);
    }

    pub(crate) fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, v: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.value.fetch_add(v as i64, Ordering::Relaxed);
        let mut samples = lock(&self.samples);
        if samples.len() < MAX_SAMPLES {
            samples.push(v);
        }
    }
}

/// A point-in-time view of one metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSnapshot {
    pub name: String,
    pub kind: MetricKind,
    /// Counter/gauge value, or the histogram's sum.
    pub value: i64,
    /// Number of histogram samples (0 for counters and gauges).
    pub count: u64,
    /// Recorded histogram samples (at most 4096 kept).
    pub samples: Vec<u64>,
}

/// Name → metric. Defining an existing name returns the same cell, as Envoy's stats scope
/// does, so every worker's VM counts into one metric.
#[derive(Debug, Default)]
pub struct MetricsStore {
    metrics: Mutex<BTreeMap<String, Arc<Metric>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of plain data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MetricsStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the metric named `name`, creating it with `kind`. A name already defined with
    /// another kind gets its own cell under `name` suffixed by the kind, so kinds never mix.
    pub(crate) fn define(&self, kind: MetricKind, name: &str) -> Arc<Metric> {
        let mut metrics = lock(&self.metrics);
        let key = match metrics.get(name) {
            Some(m) if m.kind != kind => format!("{name}.{kind:?}").to_lowercase(),
            _ => name.to_string(),
        };
        metrics
            .entry(key)
            .or_insert_with(|| Arc::new(Metric::new(kind)))
            .clone()
    }

    /// The value of a counter or gauge (or a histogram's sum) by name.
    pub fn get(&self, name: &str) -> Option<i64> {
        lock(&self.metrics).get(name).map(|m| m.value())
    }

    /// One metric's snapshot.
    pub fn snapshot_of(&self, name: &str) -> Option<MetricSnapshot> {
        lock(&self.metrics).get(name).map(|m| snap(name, m))
    }

    /// Every metric, sorted by name.
    pub fn snapshot(&self) -> Vec<MetricSnapshot> {
        lock(&self.metrics)
            .iter()
            .map(|(name, m)| snap(name, m))
            .collect()
    }
}

fn snap(name: &str, m: &Metric) -> MetricSnapshot {
    MetricSnapshot {
        name: name.to_string(),
        kind: m.kind,
        value: m.value(),
        count: m.count.load(Ordering::Relaxed),
        samples: lock(&m.samples).clone(),
    }
}
