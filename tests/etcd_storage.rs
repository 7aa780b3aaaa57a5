//! `etcd:` storage against a real etcd cluster: the shared conformance suite, the exact replay
//! window across frontends, paging, and refusals.
//!
//! Needs the cluster at `KV_TEST_ETCD`, which `scripts/test.sh` starts (see
//! `common::etcd_endpoints`). Every test works under a prefix of its own, so each starts from an
//! empty store and reruns never meet old data.

mod common;

use std::sync::Arc;

use common::{etcd_endpoints, fresh_prefix};
use kvcore::{
    Storage,
    etcd::{EtcdClient, EtcdOptions, ops::put, proto::TxnRequest},
    storage::{EtcdSpec, EtcdStorage, StorageError, StorageSpec, Write, conformance as c},
};

fn spec(test: &str) -> Option<EtcdSpec> {
    let endpoints = etcd_endpoints()?;
    let prefix = fresh_prefix(test);
    Some(EtcdSpec {
        endpoints,
        prefix: prefix.trim_end_matches('/').to_owned(),
    })
}

async fn store(test: &str) -> Option<EtcdStorage> {
    let spec = spec(test)?;
    Some(
        EtcdStorage::open(&spec)
            .await
            .expect("opening etcd storage"),
    )
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $check() {
            let Some(store) = store(stringify!($check)).await else { return };
            c::$check(&store).await;
        }
    )*};
}

conformance!(
    absent_key_is_not_found,
    versions_count_writes,
    mismatches_report_versions,
    odd_content_survives,
    replays_current_write,
    replays_overwritten_write,
    replay_is_per_key_and_exact,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_has_one_winner_per_version() {
    let Some(store) = store("concurrent").await else {
        return;
    };
    c::concurrent_cas_has_one_winner_per_version(Arc::new(store)).await;
}

/// Two frontends on one prefix: a write's retry reaching the other frontend is replayed for
/// the last `depth` versions of the key, and refused beyond them with a floor that says its
/// fate is unknown; the depth is the one stored at creation, whatever the second asks for.
#[tokio::test]
async fn replay_window_is_exact_across_frontends() {
    let Some(spec) = spec("window") else { return };
    let one = EtcdStorage::open_with(&spec, EtcdOptions::default(), 4)
        .await
        .expect("first frontend");
    let two = EtcdStorage::open_with(&spec, EtcdOptions::default(), 99)
        .await
        .expect("second frontend");
    assert_eq!(two.replay_depth(), 4, "the stored depth wins");
    let id = |v: u64| [v as u8; 16];
    for version in 1..=6u64 {
        let written = one
            .put(Write::new("k", format!("v{version}"), version - 1).with_request_id(id(version)))
            .await
            .expect("write");
        assert_eq!(written.version, version);
    }
    for version in 3..=6u64 {
        let retry = Write::new("k", "again", version - 1).with_request_id(id(version));
        let replayed = two
            .put(retry)
            .await
            .expect("replayed on the other frontend");
        assert!(replayed.replayed, "version {version}: {replayed:?}");
        assert_eq!(replayed.version, version);
    }
    for version in 1..=2u64 {
        let retry = Write::new("k", "again", version - 1).with_request_id(id(version));
        let Err(StorageError::Conflict(m)) = two.put(retry).await else {
            panic!("version {version}: forgotten ids are refused")
        };
        assert_eq!((m.actual, m.replayable_from), (6, 3), "{m:?}");
        assert!(
            !m.proves_not_applied(),
            "fate unknown beyond the window: {m:?}"
        );
    }
    let fresh = Write::new("k", "late", 4).with_request_id([42; 16]);
    let Err(StorageError::Conflict(m)) = two.put(fresh).await else {
        panic!("a stale write with a new id conflicts")
    };
    assert!(m.proves_not_applied(), "inside the window: {m:?}");
    assert_eq!(two.get("k").await.expect("key").value, "v6");
}

/// `entries` pages through more keys than one page holds, in key order.
#[tokio::test]
async fn entries_pages_through_many_keys() {
    let Some(store) = store("entries").await else {
        return;
    };
    for n in 0..150 {
        store
            .put(Write::new(format!("key{n:03}"), n.to_string(), 0))
            .await
            .expect("create");
    }
    let all = store.entries().await.expect("entries");
    assert_eq!(all.len(), 150);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    assert_eq!(all[149].0, "key149");
    assert_eq!(all[149].1.value, "149");
}

/// A prefix whose meta key holds something other than a kvcore store is refused, not
/// written over.
#[tokio::test]
async fn a_foreign_prefix_is_refused() {
    let Some(spec) = spec("foreign") else { return };
    let client = EtcdClient::new(&spec.endpoints, EtcdOptions::default()).expect("valid");
    let meta = format!("{}:meta", spec.prefix).into_bytes();
    let written = client
        .txn(TxnRequest {
            success: vec![put(meta, "somebody else's")],
            ..TxnRequest::default()
        })
        .await
        .expect("a foreign key");
    assert!(written.succeeded);
    let err = EtcdStorage::open(&spec)
        .await
        .expect_err("a foreign meta key");
    assert!(err.to_string().contains("choose another prefix"), "{err}");
}

/// A prefix nested in another (`P` and `P/d`) is a store of its own: neither sees the other's
/// keys, whatever the keys are called.
#[tokio::test]
async fn nested_prefixes_do_not_share_keys() {
    let Some(outer) = spec("nested") else { return };
    let inner = EtcdSpec {
        prefix: format!("{}/d", outer.prefix),
        ..outer.clone()
    };
    let (outer, inner) = (
        EtcdStorage::open(&outer).await.expect("outer"),
        EtcdStorage::open(&inner).await.expect("inner"),
    );
    for key in ["meta", "x", "d/x", ":d/x"] {
        outer
            .put(Write::new(key, "outer", 0))
            .await
            .expect("outer write");
        inner
            .put(Write::new(key, "inner", 0))
            .await
            .expect("inner write");
    }
    for (store, name) in [(&outer, "outer"), (&inner, "inner")] {
        let all = store.entries().await.expect("entries");
        assert_eq!(all.len(), 4, "{name}: {all:?}");
        assert!(
            all.iter().all(|(_, v)| v.value == name && v.version == 1),
            "{all:?}"
        );
    }
}

/// A spec whose members are all unreachable fails to open with the reason, quickly.
#[tokio::test]
async fn unreachable_cluster_is_refused_at_open() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let spec: StorageSpec = format!("etcd:{addr}").parse().expect("valid spec");
    let Err(err) = spec.open().await else {
        panic!("nothing listens at {addr}")
    };
    assert!(err.to_string().contains("cannot reach etcd"), "{err}");
}

/// The largest write the wire contract allows (1 KiB key, 1 MiB value, a request id) fits in
/// etcd's default request limit, with its id record, and is replayed.
#[tokio::test]
async fn the_largest_valid_write_fits_etcd() {
    let Some(store) = store("largest").await else {
        return;
    };
    let key = "k".repeat(kvcore::limits::MAX_KEY_BYTES);
    let value = "v".repeat(kvcore::limits::MAX_VALUE_BYTES);
    let write = Write::new(&key, value.clone(), 0).with_request_id([9; 16]);
    let first = store.put(write.clone()).await.expect("the largest write");
    assert!(!first.replayed);
    let again = store.put(write).await.expect("its retry");
    assert!(again.replayed, "{again:?}");
    assert_eq!(store.get(&key).await.expect("read back").value, value);
}
