//! `kvctl bench --target etcd://` against a real etcd: each workload runs without errors, and
//! what the report counts matches what etcd holds afterwards.
//!
//! Needs an etcd at `KV_TEST_ETCD` (HOST:PORT), which `scripts/test.sh` starts. Without one the
//! tests say so and pass, except in CI (`CI=true`), where a missing etcd is a failure. Each run
//! writes under a key prefix of its own, so reruns against the same etcd start from nothing.

mod common;

use std::process::Command;

use common::{etcd_endpoints, fresh_prefix};
use kvcore::etcd::{EtcdClient, EtcdOptions, ops::prefix_range};
use serde_json::Value;

/// The first etcd member to test against, or `None` to skip (see `common::etcd_endpoints`).
fn etcd_addr() -> Option<String> {
    etcd_endpoints().map(|members| members[0].clone())
}

/// Runs one second of `kvctl bench` on etcd (after 0.3 s of warm-up) and returns the report, checked to have done some
/// operations and no errors.
fn bench(addr: &str, workload: &str, keys: u32, prefix: &str) -> Value {
    let target = format!("etcd://{addr}");
    let keys = keys.to_string();
    let args = [
        "bench",
        "--target",
        &target,
        "--workload",
        workload,
        "--clients",
        "2",
        "--concurrency",
        "4",
        "--keys",
        &keys,
        "--key-prefix",
        prefix,
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--json",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .output()
        .expect("running kvctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{workload}: {err}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(report["ops"].as_u64().unwrap() > 0, "{workload}: {report}");
    assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["errors"].as_u64(), Some(0), "{workload}: {report}");
    report
}

/// The etcd versions of every key under `prefix`.
async fn versions(addr: &str, prefix: &str) -> Vec<i64> {
    let client = EtcdClient::new(&[addr.to_owned()], EtcdOptions::default()).expect("valid");
    let found = client
        .range(prefix_range(prefix.as_bytes().to_vec()))
        .await
        .expect("listing the run's keys");
    found.kvs.iter().map(|kv| kv.version).collect()
}

/// Every put creates one fresh key: as many keys as operations (plus at most the calls the end
/// of the run cut off), each at version 1.
#[tokio::test]
async fn put_creates_one_key_per_operation() {
    let Some(addr) = etcd_addr() else { return };
    let prefix = fresh_prefix("put");
    let report = bench(&addr, "put", 8, &prefix);
    assert_eq!(report["conflicts"].as_u64(), Some(0), "{report}");
    let versions = versions(&addr, &prefix).await;
    let (ops, unfinished) = (
        report["ops"].as_u64().unwrap() + report["warmup_ops"].as_u64().unwrap(),
        report["unfinished"].as_u64().unwrap(),
    );
    let stored = versions.len() as u64;
    assert!(
        stored >= ops && stored <= ops + unfinished,
        "{stored} keys: {report}"
    );
    assert!(versions.iter().all(|&v| v == 1), "{versions:?}");
}

/// Eight workers on two keys conflict, and every cas the report counts as written is one etcd
/// version: the compare is honoured and no write is lost or doubled (the calls the end of the
/// run cut off may or may not have written).
#[tokio::test]
async fn cas_versions_add_up_to_successful_writes() {
    let Some(addr) = etcd_addr() else { return };
    let prefix = fresh_prefix("cas");
    let report = bench(&addr, "cas", 2, &prefix);
    let (ops, conflicts, unfinished) = (
        report["ops"].as_u64().unwrap() + report["warmup_ops"].as_u64().unwrap(),
        report["conflicts"].as_u64().unwrap(),
        report["unfinished"].as_u64().unwrap(),
    );
    assert!(conflicts > 0, "8 workers on 2 keys conflict: {report}");
    let written = versions(&addr, &prefix).await.iter().sum::<i64>() as u64;
    assert!(
        written >= ops && written <= ops + unfinished,
        "{written}: {report}"
    );
}

/// Update: each of the 8 calls in flight owns a key and writes it again with the version it
/// got back, so nothing conflicts, and the versions add up to the writes counted.
#[tokio::test]
async fn update_versions_add_up_to_writes() {
    let Some(addr) = etcd_addr() else { return };
    let prefix = fresh_prefix("update");
    let report = bench(&addr, "update", 1, &prefix);
    let (ops, unfinished) = (
        report["ops"].as_u64().unwrap() + report["warmup_ops"].as_u64().unwrap(),
        report["unfinished"].as_u64().unwrap(),
    );
    assert_eq!(report["conflicts"].as_u64(), Some(0), "{report}");
    let versions = versions(&addr, &prefix).await;
    assert_eq!(
        versions.len(),
        8,
        "one key per call in flight: {versions:?}"
    );
    let written = versions.iter().sum::<i64>() as u64;
    assert!(
        written >= ops && written <= ops + unfinished,
        "{written}: {report}"
    );
    assert!(
        report["client_cpu_us_per_op"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

/// Get preloads its keys once and then finds every one of them.
#[tokio::test]
async fn get_reads_preloaded_keys() {
    let Some(addr) = etcd_addr() else { return };
    let prefix = fresh_prefix("get");
    let report = bench(&addr, "get", 8, &prefix);
    assert_eq!(report["conflicts"].as_u64(), Some(0), "{report}");
    assert_eq!(versions(&addr, &prefix).await, vec![1; 8]);
}
