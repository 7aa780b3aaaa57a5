//! The redb backend: the shared conformance suite, plus what only a durable store can show —
//! values, replay and replay floors surviving a reopen, exact counts under concurrent writers,
//! and clear errors for databases it cannot open.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use kvcore::storage::{
    Mismatch, RedbStorage, RequestId, Storage, StorageError, Versioned, Write, Written,
    redb::RedbOptions,
};
use tempfile::TempDir;

/// A store in a temporary directory that lives exactly as long as the store.
#[derive(Debug)]
struct TempRedb {
    store: RedbStorage,
    _dir: TempDir,
}

fn make() -> TempRedb {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStorage::open(dir.path().join("kv.redb")).expect("open a fresh database");
    TempRedb { store, _dir: dir }
}

#[async_trait]
impl Storage for TempRedb {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        self.store.get(key).await
    }
    async fn put(&self, write: Write) -> Result<Written, StorageError> {
        self.store.put(write).await
    }
    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        self.store.entries().await
    }
    async fn flush(&self) -> Result<(), StorageError> {
        self.store.flush().await
    }
}

kvcore::conformance_tests!(redb, make);

fn open(path: &Path) -> RedbStorage {
    RedbStorage::open(path).expect("open database")
}

fn open_with_capacity(path: &Path, capacity: usize) -> RedbStorage {
    RedbStorage::open_with(path, RedbOptions::default().replay_capacity(capacity))
        .expect("open database")
}

fn replayed(version: u64) -> Result<Written, StorageError> {
    Ok(Written {
        version,
        replayed: true,
    })
}

fn fresh(version: u64) -> Result<Written, StorageError> {
    Ok(Written {
        version,
        replayed: false,
    })
}

fn conflict(result: Result<Written, StorageError>) -> Mismatch {
    match result {
        Err(StorageError::Conflict(m)) => m,
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

fn open_error(result: Result<RedbStorage, StorageError>) -> String {
    match result {
        Err(StorageError::Internal(message)) => message,
        other => panic!("expected an open error, got {other:?}"),
    }
}

/// Acknowledged values and versions, odd bytes included, are all there after drop and reopen.
#[tokio::test]
async fn values_and_versions_survive_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.redb");
    let odd = "line one\nline,two\0end 🦀";
    let big = "y".repeat(1 << 20);
    let before = {
        let store = open(&path);
        for version in 0..3 {
            let value = format!("v{}", version + 1);
            assert_eq!(
                store.put(Write::new("counter", value, version)).await,
                fresh(version + 1)
            );
        }
        assert_eq!(store.put(Write::new("odd\nkey\0", odd, 0)).await, fresh(1));
        assert_eq!(store.put(Write::new("big", big.clone(), 0)).await, fresh(1));
        store.flush().await.expect("flush");
        store.entries().await.expect("entries")
    };
    let store = open(&path);
    assert_eq!(store.entries().await.expect("entries after reopen"), before);
    assert_eq!(
        store.get("counter").await,
        Ok(Versioned {
            value: "v3".into(),
            version: 3
        })
    );
    assert_eq!(store.get("odd\nkey\0").await.expect("odd key").value, odd);
    assert_eq!(store.get("big").await.expect("big key").value, big);
    assert_eq!(
        store.put(Write::new("counter", "v4", 3)).await,
        fresh(4),
        "versions continue where they stopped"
    );
}

/// Both the current writer's id and an overwritten id replay after a reopen.
#[tokio::test]
async fn replay_survives_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.redb");
    let (a, b) = ([0xA; 16], [0xB; 16]);
    {
        let store = open(&path);
        let first = store.put(Write::new("k", "a", 0).with_request_id(a)).await;
        assert_eq!(first, fresh(1));
        let second = store.put(Write::new("k", "b", 1).with_request_id(b)).await;
        assert_eq!(second, fresh(2));
    }
    let store = open(&path);
    let current = store.put(Write::new("k", "b", 1).with_request_id(b)).await;
    assert_eq!(current, replayed(2), "current writer");
    let overwritten = store.put(Write::new("k", "a", 0).with_request_id(a)).await;
    assert_eq!(overwritten, replayed(1), "overwritten writer");
    assert_eq!(
        store.get("k").await,
        Ok(Versioned {
            value: "b".into(),
            version: 2
        }),
        "replays wrote nothing"
    );
}

/// Evicting an id from a small replay cache raises its key's floor, durably, while ids still
/// in the cache keep replaying.
#[tokio::test]
async fn evictions_raise_the_floor_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.redb");
    let ids: [RequestId; 4] = [[1; 16], [2; 16], [3; 16], [4; 16]];
    {
        let store = open_with_capacity(&path, 1);
        for (version, id) in (0..3).zip(ids) {
            let put = store.put(Write::new("k", "v", version).with_request_id(id));
            assert_eq!(put.await, fresh(version + 1));
        }
        // Overwriting ids[2] remembers it and evicts ids[1], the writer of version 2.
        let put = store.put(Write::new("k", "v", 3).with_request_id(ids[3]));
        assert_eq!(put.await, fresh(4));
        let m = conflict(
            store
                .put(Write::new("k", "v", 1).with_request_id(ids[1]))
                .await,
        );
        assert_eq!((m.actual, m.replayable_from), (4, 3));
        assert!(!m.proves_not_applied(), "version 2's writer is forgotten");
    }
    let store = open_with_capacity(&path, 1);
    let m = conflict(
        store
            .put(Write::new("k", "v", 0).with_request_id(ids[0]))
            .await,
    );
    assert_eq!((m.expected, m.actual, m.replayable_from), (0, 4, 3));
    assert!(!m.proves_not_applied(), "the floor survived the reopen");
    let remembered = store
        .put(Write::new("k", "v", 2).with_request_id(ids[2]))
        .await;
    assert_eq!(remembered, replayed(3), "the id still cached replays");
    let late = conflict(
        store
            .put(Write::new("k", "x", 2).with_request_id([9; 16]))
            .await,
    );
    assert!(
        late.proves_not_applied(),
        "version 3's writer is known: {late:?}"
    );

    // The cache is shared by all keys: remembering an id of another key evicts ids[2].
    store
        .put(Write::new("other", "1", 0).with_request_id([5; 16]))
        .await
        .expect("create other");
    store
        .put(Write::new("other", "2", 1).with_request_id([6; 16]))
        .await
        .expect("overwrite other");
    drop(store);
    let store = open_with_capacity(&path, 1);
    let m = conflict(
        store
            .put(Write::new("k", "v", 2).with_request_id(ids[2]))
            .await,
    );
    assert_eq!(
        (m.actual, m.replayable_from),
        (4, 4),
        "evicted by another key"
    );
    let other = store
        .put(Write::new("other", "1", 0).with_request_id([5; 16]))
        .await;
    assert_eq!(other, replayed(1));
}

/// Reopening with a smaller replay capacity evicts the surplus at the next overwrite, raising
/// the floor past every forgotten writer.
#[tokio::test]
async fn lowered_capacity_evicts_the_surplus() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.redb");
    let ids: Vec<RequestId> = (1..=5).map(|n| [n; 16]).collect();
    {
        let store = open(&path);
        for (version, id) in (0..4).zip(&ids) {
            let put = store.put(Write::new("k", "v", version).with_request_id(*id));
            assert_eq!(put.await, fresh(version + 1));
        }
        let oldest = store
            .put(Write::new("k", "v", 0).with_request_id(ids[0]))
            .await;
        assert_eq!(oldest, replayed(1), "default capacity remembers all three");
    }
    let store = open_with_capacity(&path, 1);
    let put = store.put(Write::new("k", "v", 4).with_request_id(ids[4]));
    assert_eq!(put.await, fresh(5));
    let m = conflict(
        store
            .put(Write::new("k", "v", 2).with_request_id(ids[2]))
            .await,
    );
    assert_eq!(
        (m.actual, m.replayable_from),
        (5, 4),
        "writers of 1..=3 forgotten"
    );
    let kept = store
        .put(Write::new("k", "v", 3).with_request_id(ids[3]))
        .await;
    assert_eq!(kept, replayed(4), "the newest overwritten id is kept");
}

/// Reopening with capacity 0 forgets the ids remembered before, at the next overwrite.
#[tokio::test]
async fn capacity_lowered_to_zero_forgets_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.redb");
    let (a, b, c) = ([0xA; 16], [0xB; 16], [0xC; 16]);
    {
        let store = open(&path);
        for (version, id) in [(0, a), (1, b)] {
            let put = store.put(Write::new("k", "v", version).with_request_id(id));
            assert_eq!(put.await, fresh(version + 1));
        }
    }
    let store = open_with_capacity(&path, 0);
    let put = store.put(Write::new("k", "v", 2).with_request_id(c));
    assert_eq!(put.await, fresh(3));
    let m = conflict(store.put(Write::new("k", "v", 0).with_request_id(a)).await);
    assert_eq!(
        (m.actual, m.replayable_from),
        (3, 3),
        "the writers of 1 and 2 are forgotten"
    );
}

/// A damaged row fails only the calls that touch it, with an error naming the key; writes batched
/// with it, and the rest of the store, go on.
#[tokio::test]
async fn a_damaged_row_fails_only_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.redb");
    {
        let store = open(&path);
        for key in ["good", "bad"] {
            assert_eq!(store.put(Write::new(key, "v", 0)).await, fresh(1));
        }
    }
    {
        // Overwrite one row with bytes too short to be a row, behind the store's back.
        let db = ::redb::Database::open(&path).expect("open with redb itself");
        let txn = db.begin_write().unwrap();
        {
            let entries: ::redb::TableDefinition<'_, &str, &[u8]> =
                ::redb::TableDefinition::new("entries");
            let mut table = txn.open_table(entries).unwrap();
            table.insert("bad", b"xx".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = open(&path);
    // Queued together, so the committer takes them into one write transaction.
    let (bad, others) = tokio::join!(store.put(Write::new("bad", "w", 1)), async {
        tokio::join!(
            store.put(Write::new("new1", "v", 0)),
            store.put(Write::new("new2", "v", 0)),
            store.put(Write::new("new3", "v", 0)),
        )
    });
    assert_eq!(
        others,
        (fresh(1), fresh(1), fresh(1)),
        "the batch's other writes land"
    );
    let err = bad.unwrap_err();
    assert!(
        err.to_string().contains(r#"row of key "bad" is damaged"#),
        "{err}"
    );
    assert!(matches!(
        store.get("bad").await,
        Err(StorageError::Internal(_))
    ));
    assert_eq!(store.put(Write::new("good", "w", 1)).await, fresh(2));
    assert_eq!(store.get("good").await.unwrap().version, 2);
}

/// With no replay cache, only the current writer replays and every overwrite raises the floor.
#[tokio::test]
async fn zero_capacity_remembers_only_the_current_writer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_with_capacity(&dir.path().join("kv.redb"), 0);
    let (a, b) = ([0xA; 16], [0xB; 16]);
    store
        .put(Write::new("k", "1", 0).with_request_id(a))
        .await
        .expect("first");
    store
        .put(Write::new("k", "2", 1).with_request_id(b))
        .await
        .expect("second");
    let m = conflict(store.put(Write::new("k", "1", 0).with_request_id(a)).await);
    assert_eq!((m.actual, m.replayable_from), (2, 2));
    assert_eq!(
        store.put(Write::new("k", "2", 1).with_request_id(b)).await,
        replayed(2)
    );
}

/// Writes queued back to back, without waiting, apply in arrival order and each sees the ones
/// before it: a chain of compare-and-sets all succeed and a duplicate id is a replay.
#[tokio::test]
async fn queued_writes_apply_in_arrival_order() {
    let store = make();
    let id = [0xC; 16];
    let (first, duplicate, second, third) = tokio::join!(
        store.put(Write::new("k", "1", 0).with_request_id(id)),
        store.put(Write::new("k", "1", 0).with_request_id(id)),
        store.put(Write::new("k", "2", 1)),
        store.put(Write::new("k", "3", 2)),
    );
    assert_eq!(first, fresh(1));
    assert_eq!(duplicate, replayed(1));
    assert_eq!((second, third), (fresh(2), fresh(3)));
    assert_eq!(store.get("k").await.expect("k").value, "3");
}

/// Concurrent increments with retries on conflict: every key's version equals the writes
/// acknowledged for it, before and after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_count_exactly() {
    const TASKS: u8 = 8;
    const INCREMENTS: u8 = 50;
    const KEYS: [&str; 3] = ["a", "b", "c"];
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.redb");
    let store = Arc::new(open(&path));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut acked = [0u64; KEYS.len()];
            for round in 0..INCREMENTS {
                let slot = usize::from(round) % KEYS.len();
                // One id per logical increment, reused by its retries: a conflict proves it
                // was not applied, so a retry that succeeds is its only application.
                let mut id = [0; 16];
                (id[0], id[1]) = (task, round);
                loop {
                    let current = match store.get(KEYS[slot]).await {
                        Ok(v) => v.version,
                        Err(StorageError::NotFound) => 0,
                        Err(e) => panic!("get failed: {e}"),
                    };
                    let write = Write::new(KEYS[slot], format!("{task}:{round}"), current);
                    match store.put(write.with_request_id(id)).await {
                        Ok(w) => {
                            assert!(!w.replayed, "a fresh increment cannot be a replay");
                            assert_eq!(w.version, current + 1);
                            acked[slot] += 1;
                            break;
                        }
                        Err(StorageError::Conflict(m)) => assert!(m.proves_not_applied()),
                        Err(e) => panic!("put failed: {e}"),
                    }
                }
            }
            acked
        }));
    }
    let mut acked = [0u64; KEYS.len()];
    for task in tasks {
        let counts = task.await.expect("writer task panicked");
        for (total, count) in acked.iter_mut().zip(counts) {
            *total += count;
        }
    }
    assert_eq!(
        acked.iter().sum::<u64>(),
        u64::from(TASKS) * u64::from(INCREMENTS)
    );
    let versions = |entries: Vec<(String, Versioned)>| -> Vec<(String, u64)> {
        entries.into_iter().map(|(k, v)| (k, v.version)).collect()
    };
    let expected: Vec<(String, u64)> = KEYS.iter().map(|k| k.to_string()).zip(acked).collect();
    assert_eq!(versions(store.entries().await.expect("entries")), expected);

    let store = Arc::into_inner(store).expect("every writer task is done");
    drop(store);
    let store = open(&path);
    assert_eq!(
        versions(store.entries().await.expect("entries after reopen")),
        expected
    );
}

/// While one store has the database open, a second open fails naming the path; once the first
/// is dropped, the path opens again.
#[tokio::test]
async fn second_open_fails_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.redb");
    let first = open(&path);
    first.put(Write::new("k", "v", 0)).await.expect("put");
    let message = open_error(RedbStorage::open(&path));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("already open"), "{message}");
    drop(first);
    let again = open(&path);
    assert_eq!(again.get("k").await.expect("k").version, 1);
}

/// A file that is not a redb database is refused, named, and left untouched.
#[tokio::test]
async fn garbage_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notes.txt");
    let garbage = "this is not a database, just text\n".repeat(200);
    std::fs::write(&path, &garbage).expect("write garbage");
    let message = open_error(RedbStorage::open(&path));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("not a redb database"), "{message}");
    let after = std::fs::read_to_string(&path).expect("read garbage back");
    assert!(after == garbage, "the file was modified");
}

/// Paths that cannot hold a database (a directory, a missing parent) fail naming the path.
#[tokio::test]
async fn unusable_paths_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing_parent = dir.path().join("no/such/dir/kv.redb");
    for path in [dir.path(), missing_parent.as_path()] {
        let message = open_error(RedbStorage::open(path));
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}

/// An id reused on a second key is a new write there, and each key keeps replaying its own
/// overwritten use of the id.
#[tokio::test]
async fn reused_id_replays_on_each_key() {
    let store = make();
    let id = [0xD; 16];
    for key in ["a", "b"] {
        let create = store.put(Write::new(key, "1", 0).with_request_id(id)).await;
        assert_eq!(create, fresh(1));
        let overwrite = store.put(Write::new(key, "2", 1)).await;
        assert_eq!(overwrite, fresh(2));
    }
    for key in ["a", "b"] {
        let retry = store.put(Write::new(key, "1", 0).with_request_id(id)).await;
        assert_eq!(retry, replayed(1), "key {key}");
    }
}
