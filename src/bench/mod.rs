//! `kvctl bench`: a closed-loop load generator for a KvService server or etcd.
//!
//! Each of `clients` connections runs `concurrency` workers that issue one operation at a time
//! for `duration`, recording every operation's latency. The report gives throughput, median and
//! 99th percentile latency, and errors. Version conflicts in the `cas` workload are the workload
//! working as intended, so they are counted apart from errors.
//!
//! Both targets run the same loop and are measured the same way: a `Target` only knows how to
//! do one operation of each workload. On etcd the operations keep our
//! semantics, so the numbers compare like for like: a create is a transaction
//! `version(key) == 0 → put`, and a cas reads the key, then puts it in a transaction comparing
//! etcd's per-key `version` (its count of writes since creation, as ours) with the one read.

use std::{
    error::Error,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::runner::report::percentile;

mod etcd;
mod kv;

use kv::KvTarget;

type BoxError = Box<dyn Error + Send + Sync>;

/// What each call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWorkload {
    /// Reads of preloaded keys.
    Get,
    /// Creates of fresh keys (version 0): raw write throughput.
    Put,
    /// Read-modify-write of shared keys: a Get, then a Put naming the version read.
    Cas,
}

/// The system under load, parsed from `kv://HOST:PORT[,HOST:PORT…]` or
/// `etcd://HOST:PORT[,HOST:PORT…]`. With several addresses (frontends of one store, members of
/// one cluster), connection `i` goes to address `i mod n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchTarget {
    /// KvService servers at these URLs, e.g. `http://127.0.0.1:50051`.
    Kv(Vec<String>),
    /// etcd members at `HOST:PORT`.
    Etcd(Vec<String>),
}

impl FromStr for BenchTarget {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let addrs = |list: &str| -> Result<Vec<String>, String> {
            list.split(',')
                .map(|addr| match addr {
                    "" => Err(format!("target {spec:?} has an empty HOST:PORT")),
                    addr => Ok(addr.to_owned()),
                })
                .collect()
        };
        match spec.split_once("://") {
            Some((_, "")) => Err(format!("target {spec:?} has no HOST:PORT")),
            Some(("kv", list)) => Ok(Self::Kv(
                addrs(list)?
                    .into_iter()
                    .map(|a| format!("http://{a}"))
                    .collect(),
            )),
            Some(("etcd", list)) => Ok(Self::Etcd(addrs(list)?)),
            _ => Err(format!(
                "unknown target {spec:?} (expected kv://HOST:PORT or etcd://HOST:PORT)"
            )),
        }
    }
}

/// A benchmark run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The system under load.
    pub target: BenchTarget,
    /// What each call does.
    pub workload: BenchWorkload,
    /// Connections.
    pub clients: usize,
    /// Calls in flight per connection.
    pub concurrency: usize,
    /// Distinct keys (get and cas workloads).
    pub keys: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// How long to run.
    pub duration: Duration,
    /// Prefix of every key the run touches: get and cas use `{prefix}{n}`, put uses
    /// `{prefix}{random run id}-{n}` so that every run creates keys nobody wrote before.
    pub key_prefix: String,
    /// etcd target only: reads are serializable (member-local, possibly stale) instead of
    /// linearizable.
    pub serializable: bool,
}

/// The result of a run (`kvctl bench --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Completed operations per second (a cas operation is one Get plus one Put).
    pub ops_per_sec: f64,
    /// Median latency of one operation, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// Calls that failed for a reason other than a version conflict.
    pub errors: u64,
    /// Completed operations, conflicts included.
    pub ops: u64,
    /// Version conflicts (cas workload) and missing keys; `ops - conflicts` operations wrote
    /// (put, cas) or found (get) their key.
    pub conflicts: u64,
    /// Seconds measured.
    pub seconds: f64,
}

/// Runs the benchmark.
pub async fn run(config: BenchConfig) -> Result<BenchReport, BoxError> {
    match &config.target {
        BenchTarget::Kv(urls) => drive::<KvTarget>(urls, &config).await,
        BenchTarget::Etcd(addrs) => drive::<etcd::EtcdTarget>(addrs, &config).await,
    }
}

/// How one operation ended; an `Err` counts as an error.
enum Outcome {
    Done,
    /// The version did not match (or the key was missing).
    Conflict,
}

type OpResult = Result<Outcome, BoxError>;

/// One connection to the system under load, cloned by each of its workers.
trait Target: Clone + Send + Sync + 'static {
    /// Opens a connection, failing if the system cannot be reached.
    fn connect(
        addr: &str,
        config: &BenchConfig,
    ) -> impl Future<Output = Result<Self, BoxError>> + Send;
    /// Reads `key`; a missing key is a conflict.
    fn get(&mut self, key: String) -> impl Future<Output = OpResult> + Send;
    /// Creates `key`; an existing key is a conflict.
    fn create(&mut self, key: String, value: String) -> impl Future<Output = OpResult> + Send;
    /// Reads `key` (absent: version 0), then writes it if its version is still the one read.
    fn cas(&mut self, key: String, value: String) -> impl Future<Output = OpResult> + Send;
}

/// The measurement loop both targets share.
async fn drive<T: Target>(addrs: &[String], config: &BenchConfig) -> Result<BenchReport, BoxError> {
    let value = "x".repeat(config.value_size);
    let mut connections = Vec::new();
    for c in 0..config.clients.max(1) {
        connections.push(T::connect(&addrs[c % addrs.len()], config).await?);
    }
    let keys = config.keys.max(1) as u64;
    let prefix: Arc<str> = config.key_prefix.as_str().into();
    if config.workload == BenchWorkload::Get {
        let mut target = connections[0].clone();
        for k in 0..keys {
            // Conflict: the key is there from an earlier run, which is as good.
            target
                .create(format!("{prefix}{k}"), value.clone())
                .await
                .map_err(|e| format!("preloading keys failed: {e}"))?;
        }
    }
    let run_id: u64 = rand::random();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + config.duration;
    let mut workers = Vec::new();
    for connection in &connections {
        for _ in 0..config.concurrency.max(1) {
            let mut target = connection.clone();
            let (next, errors, conflicts, value, prefix) = (
                next.clone(),
                errors.clone(),
                conflicts.clone(),
                value.clone(),
                prefix.clone(),
            );
            let workload = config.workload;
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let key = match workload {
                        BenchWorkload::Put => format!("{prefix}{run_id:x}-{n}"),
                        _ => format!("{prefix}{}", n % keys),
                    };
                    let began = Instant::now();
                    let result = match workload {
                        BenchWorkload::Get => target.get(key).await,
                        BenchWorkload::Put => target.create(key, value.clone()).await,
                        BenchWorkload::Cas => target.cas(key, value.clone()).await,
                    };
                    match result {
                        Ok(Outcome::Done) => {}
                        Ok(Outcome::Conflict) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    latencies.push(began.elapsed().as_micros() as u64);
                }
                latencies
            }));
        }
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await?);
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(BenchReport {
        ops_per_sec: latencies.len() as f64 / seconds,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        errors: errors.load(Ordering::Relaxed),
        ops: latencies.len() as u64,
        conflicts: conflicts.load(Ordering::Relaxed),
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--target` specs parse to the target they name, and bad ones are refused with a reason.
    #[test]
    fn parses_targets() {
        assert_eq!(
            "kv://127.0.0.1:50051".parse(),
            Ok(BenchTarget::Kv(vec!["http://127.0.0.1:50051".into()]))
        );
        assert_eq!(
            "kv://a:1,b:2".parse(),
            Ok(BenchTarget::Kv(vec![
                "http://a:1".into(),
                "http://b:2".into()
            ]))
        );
        assert_eq!(
            "etcd://127.0.0.1:2379,h:2".parse(),
            Ok(BenchTarget::Etcd(vec![
                "127.0.0.1:2379".into(),
                "h:2".into()
            ]))
        );
        assert!("kv://a:1,".parse::<BenchTarget>().is_err());
        let unknown = "redis://127.0.0.1:6379".parse::<BenchTarget>();
        assert!(unknown.unwrap_err().contains("unknown target"));
        assert!("kv://".parse::<BenchTarget>().is_err());
    }
}
