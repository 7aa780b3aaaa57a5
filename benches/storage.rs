//! The backends side by side, called directly (no gRPC): one get, one put, an update, and 64
//! concurrent puts, on `memory`, `file` and `redb` (both durable backends on a real disk, in a
//! temp dir).
//!
//! Run with `cargo bench --bench storage`. A durable put waits for its fsync, so `put` shows the
//! disk's sync latency, and `64 concurrent puts` shows what group commit makes of it: compare
//! its time with 64 × `put`. `update` is the steady state of `kvctl bench --workload update`:
//! 256 keys rewritten in turn, each with a fresh request id and the version it last got, so
//! every write also remembers the id it overwrites and, once the replay cache is full (within
//! the warm-up), forgets the oldest. Its working set is the whole replay cache, so this is
//! where its cache misses show (an instruction count does not).

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
/// Keys the update bench rewrites in turn (as `kvctl bench --workload update` at 4 x 64).
const UPDATE_KEYS: usize = 256;

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
        let updated: Vec<AtomicU64> = (0..UPDATE_KEYS).map(|_| AtomicU64::new(0)).collect();
        let turn = AtomicU64::new(0);
        // Ids differ from run to run, so a rerun on the same store never replays.
        let salt: [u8; 8] = std::array::from_fn(|_| rand::random());
        group.bench_function("update", |b| {
            b.to_async(&runtime).iter(|| async {
                let n = turn.fetch_add(1, Ordering::Relaxed);
                let slot = n as usize % UPDATE_KEYS;
                let mut id = [0; 16];
                id[..8].copy_from_slice(&n.to_le_bytes());
                id[8..].copy_from_slice(&salt);
                let expected = updated[slot].load(Ordering::Relaxed);
                let write = Write::new(format!("update{slot}"), value.clone(), expected);
                let written = store.put(write.with_request_id(id)).await.unwrap();
                assert!(!written.replayed);
                updated[slot].store(written.version, Ordering::Relaxed);
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
