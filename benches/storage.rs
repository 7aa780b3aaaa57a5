//! The backends side by side, called directly (no gRPC): one get, one put, and 64 concurrent
//! puts, on `memory`, `file` and `redb` (both durable backends on a real disk, in a temp dir).
//!
//! Run with `cargo bench --bench storage`. A durable put waits for its fsync, so `put` shows the
//! disk's sync latency, and `64 concurrent puts` shows what group commit makes of it: compare
//! its time with 64 × `put`.

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kvcore::storage::{FileStorage, MemoryStorage, RedbStorage, Storage, Write};
use tokio::{runtime::Runtime, task::JoinSet};

const CONCURRENCY: u64 = 64;

fn backends(dir: &std::path::Path) -> Vec<(&'static str, Arc<dyn Storage>)> {
    vec![
        ("memory", Arc::new(MemoryStorage::new())),
        (
            "file",
            Arc::new(FileStorage::open(dir.join("bench.log")).expect("opening the log")),
        ),
        (
            "redb",
            Arc::new(RedbStorage::open(dir.join("bench.redb")).expect("opening redb")),
        ),
    ]
}

fn storage(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let value = "v".repeat(100);
    for (name, store) in backends(dir.path()) {
        let mut group = c.benchmark_group(format!("storage/{name}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        runtime
            .block_on(store.put(Write::new("hot", value.clone(), 0)))
            .unwrap();
        let fresh = Arc::new(AtomicU64::new(0));
        let next_key = move || format!("key{}", fresh.fetch_add(1, Ordering::Relaxed));

        group.throughput(Throughput::Elements(1));
        group.bench_function("get", |b| {
            b.to_async(&runtime)
                .iter(|| async { store.get("hot").await.unwrap() })
        });
        group.bench_function("put", |b| {
            b.to_async(&runtime).iter(|| async {
                store
                    .put(Write::new(next_key(), value.clone(), 0))
                    .await
                    .unwrap()
            })
        });
        group.throughput(Throughput::Elements(CONCURRENCY));
        group.bench_function("64 concurrent puts", |b| {
            b.to_async(&runtime).iter(|| async {
                let mut puts = JoinSet::new();
                for _ in 0..CONCURRENCY {
                    let store = store.clone();
                    let write = Write::new(next_key(), value.clone(), 0);
                    puts.spawn(async move { store.put(write).await.unwrap() });
                }
                puts.join_all().await
            })
        });
        group.finish();
    }
}

criterion_group!(benches, storage);
criterion_main!(benches);
