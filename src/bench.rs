//! `kvctl bench`: a closed-loop load generator for a KvService server.
//!
//! Each of `clients` connections runs `concurrency` workers that issue one call at a time for
//! `duration`, recording every call's latency. The report gives throughput, median and 99th
//! percentile latency, and errors. Version conflicts in the `cas` workload are the workload
//! working as intended, so they are counted apart from errors.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tonic::{Code, transport::Endpoint};

use crate::{
    proto::{GetRequest, PutRequest, kv_service_client::KvServiceClient},
    runner::report::percentile,
};

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

/// A benchmark run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Server URL, e.g. `http://127.0.0.1:50051`.
    pub endpoint: String,
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
    /// Completed operations.
    pub ops: u64,
    /// Version conflicts (cas workload).
    pub conflicts: u64,
    /// Seconds measured.
    pub seconds: f64,
}

/// Runs the benchmark against a KvService server.
pub async fn run(config: BenchConfig) -> Result<BenchReport, Box<dyn std::error::Error>> {
    let endpoint = Endpoint::from_shared(config.endpoint.clone())?;
    let value = "x".repeat(config.value_size);
    let mut connections = Vec::new();
    for _ in 0..config.clients.max(1) {
        connections.push(KvServiceClient::new(endpoint.connect().await?));
    }
    let keys = config.keys.max(1);
    if config.workload == BenchWorkload::Get {
        let mut client = connections[0].clone();
        for k in 0..keys {
            let put = PutRequest {
                key: format!("bench-{k}"),
                value: value.clone(),
                version: 0,
                request_id: vec![],
            };
            match client.put(put).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => {}
                Err(s) => return Err(format!("preloading keys failed: {s}").into()),
            }
        }
    }
    let run_id: u64 = rand::random();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + config.duration;
    let mut workers = Vec::new();
    for client in &connections {
        for _ in 0..config.concurrency.max(1) {
            let mut client = client.clone();
            let (next, errors, conflicts, value) = (
                next.clone(),
                errors.clone(),
                conflicts.clone(),
                value.clone(),
            );
            let workload = config.workload;
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let key = match workload {
                        BenchWorkload::Put => format!("bench-{run_id:x}-{n}"),
                        _ => format!("bench-{}", n % keys as u64),
                    };
                    let began = Instant::now();
                    let result = match workload {
                        BenchWorkload::Get => client.get(GetRequest { key }).await.map(drop),
                        BenchWorkload::Put => {
                            let put = PutRequest {
                                key,
                                value: value.clone(),
                                version: 0,
                                request_id: vec![],
                            };
                            client.put(put).await.map(drop)
                        }
                        BenchWorkload::Cas => {
                            let version = match client.get(GetRequest { key: key.clone() }).await {
                                Ok(found) => Ok(found.into_inner().version),
                                Err(s) if s.code() == Code::NotFound => Ok(0),
                                Err(s) => Err(s),
                            };
                            match version {
                                Ok(version) => {
                                    let put = PutRequest {
                                        key,
                                        value: value.clone(),
                                        version,
                                        request_id: rand::random::<[u8; 16]>().to_vec(),
                                    };
                                    client.put(put).await.map(drop)
                                }
                                Err(s) => Err(s),
                            }
                        }
                    };
                    match result {
                        Ok(()) => latencies.push(began.elapsed().as_micros() as u64),
                        Err(s)
                            if matches!(
                                s.code(),
                                Code::Aborted | Code::AlreadyExists | Code::NotFound
                            ) =>
                        {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                            latencies.push(began.elapsed().as_micros() as u64);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
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
