//! Reading the metrics in-process: point queries, a plain snapshot, and Prometheus text.
//!
//! A server can serve `/metrics` from [`MetricsHandle::render_prometheus`] with no exporter
//! dependency, and tests can assert on exact counts without parsing text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tonic::Code;

use super::GrpcType;
use super::registry::{LATENCY_BUCKETS, MethodStats, Registry};
use crate::grpc::code_name;

/// A cloneable reader of one metrics layer's registry. Methods are named by full path,
/// `/kv.v1.KvService/Put`.
#[derive(Clone, Debug)]
pub struct MetricsHandle {
    pub(crate) registry: Arc<Registry>,
}

/// Every method's metrics at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// One entry per method seen, sorted by path.
    pub methods: Vec<MethodSnapshot>,
}

/// One method's metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodSnapshot {
    /// Fully qualified service, `kv.v1.KvService`.
    pub service: String,
    /// Bare method name, `Put`.
    pub method: String,
    /// The `grpc_type` label.
    pub grpc_type: GrpcType,
    /// Calls started.
    pub started: u64,
    /// Calls not yet handled.
    pub in_flight: i64,
    /// Calls handled, by canonical code name (`"OK"`), codes never seen left out.
    pub handled: BTreeMap<&'static str, u64>,
    /// Latency observations.
    pub latency_count: u64,
    /// Sum of all latencies.
    pub latency_sum: Duration,
}

impl MetricsHandle {
    fn with<T>(&self, path: &str, read: impl FnOnce(&MethodStats) -> T) -> Option<T> {
        self.registry.get(path).map(|stats| read(&stats))
    }

    /// Calls started for the method at `path`.
    pub fn started(&self, path: &str) -> u64 {
        self.with(path, |s| s.started.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Calls of the method at `path` handled with `code`.
    pub fn handled(&self, path: &str, code: Code) -> u64 {
        self.with(path, |s| s.handled(code)).unwrap_or(0)
    }

    /// Calls of the method at `path` started and not yet handled.
    pub fn in_flight(&self, path: &str) -> i64 {
        self.with(path, |s| s.in_flight.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Estimated latency quantile `q` (0.0..=1.0) for the method at `path`, from the histogram
    /// buckets; `None` before the first handled call.
    pub fn latency_quantile(&self, path: &str, q: f64) -> Option<Duration> {
        self.with(path, |s| s.quantile(q)).flatten()
    }

    /// Every method's metrics.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let methods = self.registry.all().iter().map(|s| snapshot(s)).collect();
        MetricsSnapshot { methods }
    }

    /// All metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let names = self.registry.side.names();
        let all = self.registry.all();
        let mut out = String::new();
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        header(
            &mut out,
            names.started,
            "counter",
            "Total number of RPCs started.",
        );
        for s in &all {
            let v = s.started.load(Ordering::Relaxed);
            let _ = writeln!(out, "{}{{{}}} {v}", names.started, labels(s));
        }
        header(
            &mut out,
            names.handled,
            "counter",
            "Total number of RPCs completed, by code.",
        );
        for s in &all {
            for (code, v) in handled(s) {
                let _ = writeln!(
                    out,
                    "{}{{{},grpc_code=\"{code}\"}} {v}",
                    names.handled,
                    labels(s)
                );
            }
        }
        header(
            &mut out,
            names.in_flight,
            "gauge",
            "Number of RPCs started and not completed.",
        );
        for s in &all {
            let v = s.in_flight.load(Ordering::Relaxed);
            let _ = writeln!(out, "{}{{{}}} {v}", names.in_flight, labels(s));
        }
        let name = names.handling_seconds;
        header(
            &mut out,
            name,
            "histogram",
            "Latency (seconds) of RPCs until completion.",
        );
        for s in &all {
            let labels = labels(s);
            let cumulative = s.cumulative_buckets();
            for (le, count) in LATENCY_BUCKETS.iter().zip(&cumulative) {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
            }
            let total = cumulative.last().copied().unwrap_or(0);
            let sum = Duration::from_nanos(s.latency_sum_nanos.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum.as_secs_f64());
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
        out
    }
}

fn handled(stats: &MethodStats) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    (0..17)
        .map(|i| {
            (
                code_name(Code::from_i32(i)),
                stats.handled[i as usize].load(Ordering::Relaxed),
            )
        })
        .filter(|&(_, v)| v > 0)
}

fn snapshot(stats: &MethodStats) -> MethodSnapshot {
    MethodSnapshot {
        service: stats.service.clone(),
        method: stats.method.clone(),
        grpc_type: stats.grpc_type,
        started: stats.started.load(Ordering::Relaxed),
        in_flight: stats.in_flight.load(Ordering::Relaxed),
        handled: handled(stats).collect(),
        latency_count: stats.cumulative_buckets().last().copied().unwrap_or(0),
        latency_sum: Duration::from_nanos(stats.latency_sum_nanos.load(Ordering::Relaxed)),
    }
}

/// `grpc_type="unary",grpc_service="…",grpc_method="…"`, values escaped for Prometheus.
fn labels(stats: &MethodStats) -> String {
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    format!(
        "grpc_type=\"{}\",grpc_service=\"{}\",grpc_method=\"{}\"",
        stats.grpc_type.as_str(),
        escape(&stats.service),
        escape(&stats.method)
    )
}
