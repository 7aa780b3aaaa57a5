//! The conformance suite every [`Storage`] backend must pass, written once.
//!
//! Each check is a public async function taking a fresh, empty store; panics describe the
//! broken promise. [`conformance_tests!`](crate::conformance_tests) expands to one
//! `#[tokio::test]` per check, so a backend (yours too) is covered by one line:
//!
//! ```ignore
//! kvcore::conformance_tests!(memory, || kvcore::storage::MemoryStorage::new());
//! ```

use std::sync::Arc;

use crate::storage::{Mismatch, Storage, StorageError, Versioned, Write, Written};

fn written(version: u64) -> Written {
    Written {
        version,
        replayed: false,
    }
}

fn conflict(err: StorageError) -> Mismatch {
    match err {
        StorageError::Conflict(m) => m,
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

/// A key that was never written is not found, and `entries` is empty.
pub async fn absent_key_is_not_found(store: &impl Storage) {
    assert_eq!(store.get("missing").await, Err(StorageError::NotFound));
    assert_eq!(
        store.entries().await.expect("entries of an empty store"),
        vec![]
    );
}

/// Version 0 creates at version 1; each update names the current version and produces the next.
pub async fn versions_count_writes(store: &impl Storage) {
    assert_eq!(store.put(Write::new("k", "a", 0)).await, Ok(written(1)));
    assert_eq!(store.put(Write::new("k", "b", 1)).await, Ok(written(2)));
    assert_eq!(store.put(Write::new("k", "c", 2)).await, Ok(written(3)));
    let got = store.get("k").await.expect("written key");
    assert_eq!(
        got,
        Versioned {
            value: "c".into(),
            version: 3
        }
    );
}

/// Every kind of refused write reports both versions and changes nothing.
pub async fn mismatches_report_versions(store: &impl Storage) {
    let m = conflict(store.put(Write::new("k", "x", 4)).await.unwrap_err());
    assert_eq!((m.expected, m.actual), (4, 0), "update of an absent key");
    store.put(Write::new("k", "a", 0)).await.expect("create");
    store.put(Write::new("k", "b", 1)).await.expect("update");
    let m = conflict(store.put(Write::new("k", "x", 0)).await.unwrap_err());
    assert_eq!((m.expected, m.actual), (0, 2), "create of an existing key");
    let m = conflict(store.put(Write::new("k", "x", 1)).await.unwrap_err());
    assert_eq!((m.expected, m.actual), (1, 2), "stale update");
    let m = conflict(store.put(Write::new("k", "x", 9)).await.unwrap_err());
    assert_eq!((m.expected, m.actual), (9, 2), "update from the future");
    let got = store.get("k").await.expect("key survives refused writes");
    assert_eq!(
        got,
        Versioned {
            value: "b".into(),
            version: 2
        }
    );
}

/// Keys and values come back byte for byte, whatever they contain.
pub async fn odd_content_survives(store: &impl Storage) {
    let cases = [
        ("comma,key", "a,b,,c"),
        ("line\nkey", "line one\nline two\r\n"),
        ("nul\0key", "before\0after"),
        ("emoji 🔑", "value 🦀 ✓ ü"),
        ("quote\"key'", "{\"json\": [1, 2]}"),
        ("k", ""),
    ];
    for (key, value) in cases {
        store
            .put(Write::new(key, value, 0))
            .await
            .expect("create odd key");
    }
    let big = "x".repeat(1 << 20);
    store
        .put(Write::new("big", big.clone(), 0))
        .await
        .expect("1 MiB value");
    for (key, value) in cases {
        assert_eq!(
            store.get(key).await.expect("odd key").value,
            value,
            "key {key:?}"
        );
    }
    assert_eq!(store.get("big").await.expect("big key").value, big);
    let keys: Vec<_> = store
        .entries()
        .await
        .expect("entries")
        .into_iter()
        .map(|e| e.0)
        .collect();
    let mut expected: Vec<_> = cases
        .iter()
        .map(|c| c.0.to_owned())
        .chain(["big".into()])
        .collect();
    expected.sort();
    assert_eq!(keys, expected, "entries lists every key once, sorted");
}

/// A retried write whose id produced the current version is answered, not applied again.
pub async fn replays_current_write(store: &impl Storage) {
    let id = [7; 16];
    let first = store.put(Write::new("k", "v", 0).with_request_id(id)).await;
    assert_eq!(first, Ok(written(1)));
    let again = store.put(Write::new("k", "v", 0).with_request_id(id)).await;
    assert_eq!(
        again,
        Ok(Written {
            version: 1,
            replayed: true
        })
    );
    assert_eq!(
        store.get("k").await.expect("key").version,
        1,
        "replay wrote nothing"
    );
}

/// A retried write that was since overwritten still gets its original version.
pub async fn replays_overwritten_write(store: &impl Storage) {
    let (a, b) = ([1; 16], [2; 16]);
    store
        .put(Write::new("k", "a", 0).with_request_id(a))
        .await
        .expect("first");
    store
        .put(Write::new("k", "b", 1).with_request_id(b))
        .await
        .expect("second");
    store
        .put(Write::new("k", "c", 2))
        .await
        .expect("third, without id");
    let replay = store.put(Write::new("k", "a", 0).with_request_id(a)).await;
    assert_eq!(
        replay,
        Ok(Written {
            version: 1,
            replayed: true
        })
    );
    let got = store.get("k").await.expect("key");
    assert_eq!(
        got,
        Versioned {
            value: "c".into(),
            version: 3
        },
        "replay wrote nothing"
    );
}

/// An id is never replayed for another key, and an unknown id with a stale version conflicts.
pub async fn replay_is_per_key_and_exact(store: &impl Storage) {
    let id = [3; 16];
    store
        .put(Write::new("a", "1", 0).with_request_id(id))
        .await
        .expect("create a");
    let other = store.put(Write::new("b", "1", 0).with_request_id(id)).await;
    assert_eq!(
        other,
        Ok(written(1)),
        "same id on another key is a new write"
    );
    let stale = store
        .put(Write::new("a", "2", 0).with_request_id([4; 16]))
        .await;
    let m = conflict(stale.unwrap_err());
    assert_eq!((m.expected, m.actual), (0, 1));
    assert!(
        m.proves_not_applied(),
        "the writer of version 1 is remembered: {m:?}"
    );
}

/// Many tasks racing compare-and-set on one key: exactly one winner per version.
pub async fn concurrent_cas_has_one_winner_per_version<S: Storage>(store: Arc<S>) {
    const TASKS: usize = 16;
    const ROUNDS: u64 = 50;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for round in 0..ROUNDS {
                let current = match store.get("hot").await {
                    Ok(v) => v.version,
                    Err(StorageError::NotFound) => 0,
                    Err(e) => panic!("get failed: {e}"),
                };
                let value = format!("{task}:{round}");
                match store.put(Write::new("hot", value, current)).await {
                    Ok(w) => wins.push(w.version),
                    Err(StorageError::Conflict(m)) => assert_ne!(m.actual, current),
                    Err(e) => panic!("put failed: {e}"),
                }
                tokio::task::yield_now().await;
            }
            wins
        }));
    }
    let mut versions = Vec::new();
    for handle in handles {
        versions.extend(handle.await.expect("writer task panicked"));
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (1..=versions.len() as u64).collect();
    assert_eq!(
        versions, expected,
        "each version won exactly once, none skipped"
    );
    let last = store.get("hot").await.expect("hot key").version;
    assert_eq!(
        last,
        versions.len() as u64,
        "final version equals successful writes"
    );
}

/// Expands to one `#[tokio::test]` per conformance check for the store that `$make` builds.
///
/// `$make` is called once per test and must return a fresh, empty store.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::storage::conformance as c;

            #[tokio::test]
            async fn absent_key_is_not_found() {
                c::absent_key_is_not_found(&($make)()).await;
            }
            #[tokio::test]
            async fn versions_count_writes() {
                c::versions_count_writes(&($make)()).await;
            }
            #[tokio::test]
            async fn mismatches_report_versions() {
                c::mismatches_report_versions(&($make)()).await;
            }
            #[tokio::test]
            async fn odd_content_survives() {
                c::odd_content_survives(&($make)()).await;
            }
            #[tokio::test]
            async fn replays_current_write() {
                c::replays_current_write(&($make)()).await;
            }
            #[tokio::test]
            async fn replays_overwritten_write() {
                c::replays_overwritten_write(&($make)()).await;
            }
            #[tokio::test]
            async fn replay_is_per_key_and_exact() {
                c::replay_is_per_key_and_exact(&($make)()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_cas_has_one_winner_per_version() {
                c::concurrent_cas_has_one_winner_per_version(::std::sync::Arc::new(($make)()))
                    .await;
            }
        }
    };
}
