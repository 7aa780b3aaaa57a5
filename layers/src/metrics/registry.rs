//! The in-process registry: per-method atomic counters and a fixed-bucket latency histogram.
//!
//! Each call looks its method up once under a read lock and then only touches atomics of that
//! method, so concurrent calls never wait on each other; the write lock is taken once per new
//! method. The number of distinct methods is capped because on a server the path comes from the
//! client: past the cap, calls are counted under `unknown`/`unknown` rather than growing the map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use super::GrpcType;
use crate::grpc::{OnStatus, split_path};

/// Upper bounds (seconds) of the latency buckets; a final `+Inf` bucket catches the rest.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Most distinct methods tracked before new ones are counted as `unknown`.
const MAX_METHODS: usize = 1024;

/// Which end of the call the layer sits on; it picks the metric name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `grpc_server_…` metrics.
    Server,
    /// `grpc_client_…` metrics.
    Client,
}

/// Metric names for one side, following go-grpc-prometheus.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Names {
    pub(crate) started: &'static str,
    pub(crate) handled: &'static str,
    pub(crate) handling_seconds: &'static str,
    pub(crate) in_flight: &'static str,
}

impl Side {
    pub(crate) fn names(self) -> Names {
        match self {
            Side::Server => Names {
                started: "grpc_server_started_total",
                handled: "grpc_server_handled_total",
                handling_seconds: "grpc_server_handling_seconds",
                in_flight: "grpc_server_in_flight",
            },
            Side::Client => Names {
                started: "grpc_client_started_total",
                handled: "grpc_client_handled_total",
                handling_seconds: "grpc_client_handling_seconds",
                in_flight: "grpc_client_in_flight",
            },
        }
    }
}

/// Counters of one method.
#[derive(Debug)]
pub(crate) struct MethodStats {
    pub(crate) service: String,
    pub(crate) method: String,
    pub(crate) grpc_type: GrpcType,
    pub(crate) started: AtomicU64,
    pub(crate) in_flight: AtomicI64,
    pub(crate) handled: [AtomicU64; 17],
    /// Non-cumulative counts; the last slot is `+Inf`.
    pub(crate) buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub(crate) latency_sum_nanos: AtomicU64,
}

impl MethodStats {
    fn new(service: &str, method: &str, grpc_type: GrpcType) -> Self {
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
            grpc_type,
            started: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            handled: Default::default(),
            buckets: Default::default(),
            latency_sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn handled(&self, code: Code) -> u64 {
        self.handled[code as usize].load(Ordering::Relaxed)
    }

    /// Cumulative bucket counts, `+Inf` last (its count is the total).
    pub(crate) fn cumulative_buckets(&self) -> Vec<u64> {
        let mut total = 0;
        self.buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    /// Estimates a latency quantile by linear interpolation inside its bucket, like
    /// Prometheus' `histogram_quantile`; `None` before the first observation.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let cumulative = self.cumulative_buckets();
        let total = *cumulative.last()?;
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let index = cumulative.iter().position(|&c| c as f64 >= rank)?;
        let Some(&upper) = LATENCY_BUCKETS.get(index) else {
            // In `+Inf`: the best bound known is the largest finite one.
            return Some(Duration::from_secs_f64(
                LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1],
            ));
        };
        let lower = if index == 0 {
            0.0
        } else {
            LATENCY_BUCKETS[index - 1]
        };
        let below = if index == 0 { 0 } else { cumulative[index - 1] };
        let in_bucket = (cumulative[index] - below) as f64;
        let fraction = if in_bucket == 0.0 {
            1.0
        } else {
            (rank - below as f64) / in_bucket
        };
        Some(Duration::from_secs_f64(lower + (upper - lower) * fraction))
    }
}

/// All methods seen by one metrics layer.
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) side: Side,
    types: HashMap<String, GrpcType>,
    methods: RwLock<HashMap<String, Arc<MethodStats>, foldhash::fast::RandomState>>,
}

impl Registry {
    pub(crate) fn new(side: Side, types: HashMap<String, GrpcType>) -> Self {
        Self {
            side,
            types,
            methods: RwLock::default(),
        }
    }

    pub(crate) fn types(&self) -> &HashMap<String, GrpcType> {
        &self.types
    }

    /// The stats of the method at `path`, if it has been called.
    pub(crate) fn get(&self, path: &str) -> Option<Arc<MethodStats>> {
        let methods = self.methods.read().unwrap_or_else(|p| p.into_inner());
        methods.get(path).cloned()
    }

    /// Every method's stats, sorted by path.
    pub(crate) fn all(&self) -> Vec<Arc<MethodStats>> {
        let methods = self.methods.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = methods.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(_, stats)| stats.clone()).collect()
    }

    fn lookup(&self, path: &str) -> Arc<MethodStats> {
        // Counters are plain atomics, so a panic elsewhere cannot leave the map inconsistent.
        if let Some(stats) = self.get(path) {
            return stats;
        }
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        let (key, service, method) = match split_path(path) {
            Some((service, method)) if methods.len() < MAX_METHODS => (path, service, method),
            _ => ("/unknown/unknown", "unknown", "unknown"),
        };
        let grpc_type = self.types.get(key).copied().unwrap_or_default();
        methods
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(MethodStats::new(service, method, grpc_type)))
            .clone()
    }

    /// Counts the start of a call; the returned record counts its end exactly once.
    pub(crate) fn start(&self, path: &str) -> CallRecord {
        let stats = self.lookup(path);
        stats.started.fetch_add(1, Ordering::Relaxed);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics-facade")]
        super::facade::started(self.side.names(), &stats);
        CallRecord {
            stats: Some(stats),
            side: self.side,
            start: Instant::now(),
        }
    }
}

/// One call in flight: counted as handled once, when its code is known or when it is dropped
/// (as `CANCELLED`: the caller or the connection went away before the call finished).
#[derive(Debug)]
pub(crate) struct CallRecord {
    stats: Option<Arc<MethodStats>>,
    #[cfg_attr(not(feature = "metrics-facade"), allow(dead_code))]
    side: Side,
    start: Instant,
}

impl CallRecord {
    pub(crate) fn finish(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        let Some(stats) = self.stats.take() else {
            return;
        };
        let elapsed = self.start.elapsed();
        stats.handled[code as usize].fetch_add(1, Ordering::Relaxed);
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        stats.latency_sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        #[cfg(feature = "metrics-facade")]
        super::facade::handled(self.side.names(), &stats, code, secs);
    }
}

impl OnStatus for CallRecord {
    fn on_status(self, code: Code) {
        self.finish(code);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}
