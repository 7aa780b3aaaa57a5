//! The `file:` backend: the conformance suite, reopening, and crash tests in redb's style —
//! fail every I/O step of a workload in turn, cut the log at every byte of its tail, flip bytes
//! in the middle — each checking that every acknowledged write survives reopening.
//!
//! Crash tests run on [`SimFs`], which knows what fsync made durable. Sizes are short for CI;
//! `KV_CRASH_SEEDS=N` replays each failed step with N power-cut seeds (default 2).

use std::{collections::HashMap, path::Path, sync::Arc};

use kvcore::storage::{
    FileStorage, Storage, StorageError, Versioned, Write, Written,
    file::{FileOptions, OsFs, SimFs},
};

const LOG: &str = "/data/kv.log";

fn small() -> FileOptions {
    FileOptions::default()
        .compact_min_bytes(512)
        .replay_capacity(8)
}

fn open_sim(fs: &SimFs, options: FileOptions) -> Result<FileStorage, StorageError> {
    FileStorage::open_with(LOG, options, Arc::new(fs.clone()))
}

fn fresh() -> FileStorage {
    open_sim(&SimFs::new(), FileOptions::default()).expect("opening an empty simulated log")
}

kvcore::conformance_tests!(file_sim, fresh);

fn id(key: &str, version: u64) -> [u8; 16] {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&version.to_le_bytes());
    for (slot, byte) in id[8..].iter_mut().zip(key.bytes()) {
        *slot = byte;
    }
    id
}

/// The value every workload writes as `version` of `key`, so a read proves which write it saw.
fn value(key: &str, version: u64) -> String {
    format!(
        "{key}@{version}:{}",
        "x".repeat((version % 7) as usize * 40)
    )
}

/// What a workload knows: per key the last acknowledged version, and the highest version some
/// write may have produced (an attempt whose answer never came).
#[derive(Debug, Default)]
struct Model {
    acked: HashMap<String, u64>,
    attempted: HashMap<String, u64>,
}

/// Writes `writes` versions of `key` in sequence; stops at the first failure.
async fn write_key(store: &FileStorage, key: &str, writes: u64) -> (u64, u64) {
    let mut acked = 0;
    for version in 1..=writes {
        let write =
            Write::new(key, value(key, version), version - 1).with_request_id(id(key, version));
        match store.put(write).await {
            Ok(written) => {
                assert_eq!(written.version, version);
                acked = version;
                if version % 5 == 0 {
                    let got = store.get(key).await.expect("reading an acknowledged write");
                    assert_eq!(got.version, version);
                }
            }
            Err(_) => return (acked, version),
        }
    }
    (acked, acked)
}

/// Four keys, 24 versions each, sequentially or from four concurrent tasks (group commit).
async fn workload(fs: &SimFs, concurrent: bool) -> Model {
    let mut model = Model::default();
    let Ok(store) = open_sim(fs, small()) else {
        return model;
    };
    let store = Arc::new(store);
    let keys = ["a", "b", "c", "d"];
    let results: Vec<(u64, u64)> = if concurrent {
        let tasks: Vec<_> = keys
            .into_iter()
            .map(|key| {
                let store = store.clone();
                tokio::spawn(async move { write_key(&store, key, 24).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("writer task"));
        }
        results
    } else {
        let mut results = Vec::new();
        for key in keys {
            results.push(write_key(&store, key, 24).await);
        }
        results
    };
    for (key, (acked, attempted)) in keys.iter().zip(results) {
        model.acked.insert(key.to_string(), acked);
        model.attempted.insert(key.to_string(), attempted);
    }
    model
}

/// Reopens after a crash and checks every key against the model: no acknowledged write lost,
/// nothing invented, values whole, and retries of acknowledged writes never applied twice.
async fn verify(fs: &SimFs, model: &Model, context: &str) {
    let store = open_sim(fs, small())
        .unwrap_or_else(|e| panic!("{context}: the log must reopen after a crash: {e}"));
    for (key, &acked) in &model.acked {
        let attempted = model.attempted[key];
        let version = match store.get(key).await {
            Ok(Versioned { value: v, version }) => {
                assert_eq!(
                    v,
                    value(key, version),
                    "{context}: key {key} value is damaged"
                );
                version
            }
            Err(StorageError::NotFound) => 0,
            Err(e) => panic!("{context}: reading {key}: {e}"),
        };
        assert!(
            version >= acked,
            "{context}: key {key} lost acknowledged version {acked} (found {version})"
        );
        assert!(
            version <= attempted,
            "{context}: key {key} has version {version}, never written (last attempt {attempted})"
        );
        if acked > 0 {
            let retry =
                Write::new(key, value(key, acked), acked - 1).with_request_id(id(key, acked));
            match store.put(retry).await {
                Ok(Written { version, replayed }) => {
                    assert!(
                        replayed,
                        "{context}: a retry of {key}@{acked} was applied twice"
                    );
                    assert_eq!(version, acked, "{context}: replay of {key}@{acked}");
                }
                Err(StorageError::Conflict(m)) => assert!(
                    !m.proves_not_applied(),
                    "{context}: {key}@{acked} was applied, but its retry is told it was not: {m:?}"
                ),
                Err(e) => panic!("{context}: retrying {key}@{acked}: {e}"),
            }
        }
    }
}

fn crash_seeds() -> u64 {
    std::env::var("KV_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

/// Fails each I/O step of the workload in turn (writes, fsyncs, compaction's create, rename and
/// directory sync), cuts the power, and checks every acknowledged write survives.
async fn fail_every_step(concurrent: bool) {
    let counting = SimFs::new();
    let model = workload(&counting, concurrent).await;
    assert!(model.acked.values().all(|&v| v == 24), "{model:?}");
    let steps = counting.steps();
    assert!(
        steps > 100,
        "the workload should do real I/O, did {steps} steps"
    );
    for step in 0..steps {
        for seed in 0..crash_seeds() {
            let fs = SimFs::new();
            fs.fail_at(step);
            let model = workload(&fs, concurrent).await;
            fs.crash(step * 1000 + seed);
            verify(
                &fs,
                &model,
                &format!("fail at step {step}, crash seed {seed}"),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn every_failed_step_keeps_acknowledged_writes() {
    fail_every_step(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_failed_step_keeps_acknowledged_writes_under_group_commit() {
    fail_every_step(true).await;
}

/// Power cuts with no I/O error at all, at random points of a concurrent workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_cut_mid_workload_keeps_acknowledged_writes() {
    for seed in 0..20 {
        let fs = SimFs::new();
        let model = workload(&fs, true).await;
        fs.crash(seed);
        verify(&fs, &model, &format!("power cut, seed {seed}")).await;
    }
}

/// A log of single-write frames, with the file length after each acknowledged write.
async fn log_with_frame_ends(writes: u64) -> (Vec<u8>, Vec<usize>) {
    let fs = SimFs::new();
    let store = open_sim(&fs, FileOptions::default()).unwrap();
    let mut ends = Vec::new();
    for version in 1..=writes {
        let key = ["a", "b"][version as usize % 2];
        let current = store.get(key).await.map_or(0, |v| v.version);
        store
            .put(Write::new(key, value(key, current + 1), current))
            .await
            .unwrap();
        ends.push(fs.contents(Path::new(LOG)).unwrap().len());
    }
    drop(store);
    (fs.contents(Path::new(LOG)).unwrap(), ends)
}

/// Cutting the log at every byte of its last frames opens cleanly, keeps every whole frame,
/// and makes the cut durable.
#[tokio::test]
async fn truncation_at_every_tail_offset_keeps_whole_frames() {
    let (log, ends) = log_with_frame_ends(12).await;
    let tail_start = ends[ends.len() - 4];
    for cut in tail_start..=log.len() {
        let fs = SimFs::new();
        fs.put_file(Path::new(LOG), &log[..cut]);
        let store =
            open_sim(&fs, FileOptions::default()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = ends.iter().filter(|&&end| end <= cut).count() as u64;
        let entries = store.entries().await.unwrap();
        let total: u64 = entries.iter().map(|(_, v)| v.version).sum();
        assert_eq!(
            total, whole,
            "cut at {cut}: exactly the whole frames survive"
        );
        for (key, v) in &entries {
            assert_eq!(v.value, value(key, v.version), "cut at {cut}");
        }
        drop(store);
        let kept = fs.contents(Path::new(LOG)).unwrap().len();
        fs.crash(cut as u64);
        assert_eq!(
            fs.contents(Path::new(LOG)).unwrap().len(),
            kept,
            "cut at {cut}: the truncation was synced"
        );
    }
}

/// Flipping any byte of a frame that has valid frames after it makes open refuse, naming the
/// file and the frame's offset; nothing is dropped silently.
#[tokio::test]
async fn a_flipped_byte_mid_log_refuses_to_open() {
    let (log, ends) = log_with_frame_ends(6).await;
    let (start, end) = (ends[1], ends[2]);
    for at in start..end {
        let mut damaged = log.clone();
        damaged[at] ^= 0x01;
        let fs = SimFs::new();
        fs.put_file(Path::new(LOG), &damaged);
        let err = open_sim(&fs, FileOptions::default())
            .expect_err("a damaged middle frame must be refused")
            .to_string();
        assert!(
            err.contains(LOG) && err.contains(&format!("corrupt at byte offset {start}")),
            "flip at {at}: {err}"
        );
        assert_eq!(
            fs.contents(Path::new(LOG)).unwrap(),
            damaged,
            "flip at {at}: file untouched"
        );
    }
}

/// An fsync error is fatal: the write fails, later writes are refused, and the unsynced value is
/// never served.
#[tokio::test]
async fn a_failed_fsync_stops_writes() {
    let fs = SimFs::new();
    let store = open_sim(&fs, FileOptions::default()).unwrap();
    store.put(Write::new("k", "1", 0)).await.unwrap();
    // The next frame is a write step then a sync step; fail the sync.
    fs.fail_at(fs.steps() + 1);
    let err = store.put(Write::new("k", "2", 1)).await.unwrap_err();
    assert!(matches!(err, StorageError::Internal(_)), "{err:?}");
    let again = store.put(Write::new("other", "x", 0)).await.unwrap_err();
    assert!(
        again
            .to_string()
            .contains("refused until the store is reopened"),
        "{again}"
    );
    assert!(
        store.get("k").await.is_err(),
        "version 2 was never durable and must not be served"
    );
    drop(store);
    fs.crash(7);
    let store = open_sim(&fs, FileOptions::default()).unwrap();
    let got = store.get("k").await.unwrap();
    assert_eq!((got.value.as_str(), got.version), ("1", 1));
}

/// After a failed fsync the frame is cut off again: the page cache may still hold it (Linux marks
/// pages whose writeback failed clean), so a reopen without a power cut must not serve it.
#[tokio::test]
async fn a_failed_fsync_is_not_served_after_a_reopen_without_a_crash() {
    let fs = SimFs::new();
    let store = open_sim(&fs, FileOptions::default()).unwrap();
    store.put(Write::new("k", "1", 0)).await.unwrap();
    // The next frame is a write step then a sync step; only the sync fails.
    fs.fail_once(fs.steps() + 1);
    let err = store.put(Write::new("k", "2", 1)).await.unwrap_err();
    assert!(
        err.to_string().contains("the unsynced frame was cut off"),
        "{err}"
    );
    drop(store);
    let store = open_sim(&fs, FileOptions::default()).unwrap();
    let got = store.get("k").await.unwrap();
    assert_eq!((got.value.as_str(), got.version), ("1", 1));
    let written = store.put(Write::new("k", "2", 1)).await.unwrap();
    assert_eq!(written.version, 2);
}

/// A record too large for the log's 32-bit length fields is refused before anything is written,
/// and the store goes on.
#[tokio::test]
async fn an_oversized_record_is_refused() {
    let fs = SimFs::new();
    let store = open_sim(&fs, FileOptions::default()).unwrap();
    let huge = "x".repeat(1 << 30);
    let err = store.put(Write::new("k", huge, 0)).await.unwrap_err();
    assert!(err.to_string().contains("over the log's limit"), "{err}");
    assert!(matches!(store.get("k").await, Err(StorageError::NotFound)));
    assert_eq!(
        store
            .put(Write::new("k", "small", 0))
            .await
            .unwrap()
            .version,
        1
    );
}

/// A compaction that cannot create its file is abandoned, the log stays in use, and it is not
/// retried after every batch: only each time the garbage has doubled.
#[tokio::test]
async fn a_failing_compaction_backs_off() {
    let fs = SimFs::new();
    fs.refuse_creating(format!("{LOG}.compact"));
    let options = FileOptions::default().compact_min_bytes(1024);
    let store = open_sim(&fs, options.clone()).unwrap();
    let value = "v".repeat(100);
    for version in 1..=300u64 {
        store
            .put(Write::new("k", value.clone(), version - 1))
            .await
            .unwrap();
    }
    // About 42 KB of garbage past a 1 KiB threshold: attempts at roughly 1, 2, 4, … 32 KB.
    let attempts = fs.create_failures();
    assert!(
        (1..=8).contains(&attempts),
        "{attempts} compaction attempts for 300 writes"
    );
    drop(store);
    let store = open_sim(&fs, options).unwrap();
    assert_eq!(store.get("k").await.unwrap().version, 300);
}

/// Compaction shrinks the log; everything, including the current writers' request ids, survives
/// reopening, and forgotten overwritten ids raise the replay floor instead of being refused.
#[tokio::test]
async fn compaction_keeps_live_data_and_replay() {
    let fs = SimFs::new();
    let options = FileOptions::default().compact_min_bytes(4096);
    let store = open_sim(&fs, options.clone()).unwrap();
    for version in 1..=400u64 {
        for key in ["a", "b"] {
            store
                .put(
                    Write::new(key, value(key, version), version - 1)
                        .with_request_id(id(key, version)),
                )
                .await
                .unwrap();
        }
    }
    let len = fs.contents(Path::new(LOG)).unwrap().len();
    assert!(len < 16 * 1024, "the log was compacted (it is {len} bytes)");
    drop(store);
    let store = open_sim(&fs, options).unwrap();
    for key in ["a", "b"] {
        assert_eq!(
            store.get(key).await.unwrap(),
            Versioned {
                value: value(key, 400),
                version: 400
            }
        );
        let replay = store
            .put(Write::new(key, value(key, 400), 399).with_request_id(id(key, 400)))
            .await
            .unwrap();
        assert_eq!(
            replay,
            Written {
                version: 400,
                replayed: true
            }
        );
        let forgotten = store
            .put(Write::new(key, value(key, 2), 1).with_request_id(id(key, 2)))
            .await
            .unwrap_err();
        match forgotten {
            StorageError::Conflict(m) => assert!(!m.proves_not_applied(), "{m:?}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
}

/// On a real disk: data, versions and both kinds of replay survive closing and reopening.
#[tokio::test]
async fn reopen_on_disk_keeps_data_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.log");
    {
        let store = FileStorage::open(&path).unwrap();
        store
            .put(Write::new("k", "one", 0).with_request_id([1; 16]))
            .await
            .unwrap();
        store
            .put(Write::new("k", "two", 1).with_request_id([2; 16]))
            .await
            .unwrap();
        store
            .put(Write::new("odd", "a,b\n\"c\"\0é", 0))
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let store = FileStorage::open(&path).unwrap();
    assert_eq!(
        store.get("k").await.unwrap(),
        Versioned {
            value: "two".into(),
            version: 2
        }
    );
    assert_eq!(store.get("odd").await.unwrap().value, "a,b\n\"c\"\0é");
    let current = store
        .put(Write::new("k", "two", 1).with_request_id([2; 16]))
        .await
        .unwrap();
    let overwritten = store
        .put(Write::new("k", "one", 0).with_request_id([1; 16]))
        .await
        .unwrap();
    assert_eq!(
        current,
        Written {
            version: 2,
            replayed: true
        }
    );
    assert_eq!(
        overwritten,
        Written {
            version: 1,
            replayed: true
        }
    );
}

/// A second store on the same log is refused while the first is open, and allowed after.
#[tokio::test]
async fn the_lock_file_keeps_a_second_store_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.log");
    let first = FileStorage::open(&path).unwrap();
    let err = FileStorage::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("already open") && err.contains("kv.log.lock"),
        "{err}"
    );
    drop(first);
    FileStorage::open_with(&path, FileOptions::default(), Arc::new(OsFs)).expect("lock released");
}

/// A file that is not a log is refused with a clear error, and left alone.
#[tokio::test]
async fn a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "key,value\nhello,world\n").unwrap();
    let err = FileStorage::open(&path).unwrap_err().to_string();
    assert!(err.contains("is not a kvcore log file"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "key,value\nhello,world\n"
    );
}

/// A log in another format version is named as such and left untouched.
#[tokio::test]
async fn another_log_format_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.log");
    let old = b"KVCLOG\x00\x01\x2a\x00\x00\x00frames of format 1";
    std::fs::write(&path, old).unwrap();
    let err = FileStorage::open(&path).unwrap_err().to_string();
    assert!(err.contains("is in log format 1"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), old);
}

/// Many concurrent writers on shared keys: versions equal acknowledged writes, before and after
/// reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.log");
    let store = Arc::new(FileStorage::open(&path).unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = format!("counter{}", t % 3);
                let mut acked = 0;
                while acked < 40 {
                    let current = store.get(&key).await.map_or(0, |v| v.version);
                    match store
                        .put(Write::new(&key, (current + 1).to_string(), current))
                        .await
                    {
                        Ok(_) => acked += 1,
                        Err(StorageError::Conflict(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                (key, acked)
            })
        })
        .collect();
    let mut expected: HashMap<String, u64> = HashMap::new();
    for task in tasks {
        let (key, acked) = task.await.unwrap();
        *expected.entry(key).or_default() += acked;
    }
    drop(Arc::into_inner(store).expect("the only handle"));
    let store = FileStorage::open(&path).unwrap();
    for (key, acked) in expected {
        let got = store.get(&key).await.unwrap();
        assert_eq!(
            (got.version, got.value),
            (acked, acked.to_string()),
            "{key}"
        );
    }
}
