//! ServerRunner end to end: the checker passes honest runs, catches broken storage with a
//! readable explanation, and the same seed replays the same fault decisions.

mod common;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use async_trait::async_trait;
use kvcore::{
    runner::{RunReport, ScenarioConfig, ServerRunner},
    storage::{MemoryStorage, Storage, StorageError, Versioned, Write, Written},
};

fn scenario(extra: &str) -> ScenarioConfig {
    format!(
        r#"{{
          "clients": [
            {{ "name": "a", "keys": ["k1", "k2"], "client_packet_loss_rate": 5.0 }},
            {{ "name": "b", "keys": ["k2", "k3"], "client_packet_loss_rate": 5.0 }},
            {{ "name": "c", "keys": ["k1", "k3"], "client_packet_loss_rate": 5.0 }}
          ],
          "test_duration_seconds": 1.5,
          "server_packet_loss_rate": 10.0,
          "seed": 7
          {extra}
        }}"#
    )
    .parse()
    .unwrap()
}

async fn run(storage: Arc<dyn Storage>, config: ScenarioConfig) -> RunReport {
    ServerRunner::with_config(storage, config, "127.0.0.1:0")
        .quiet()
        .run()
        .await
        .expect("the run completes")
}

/// The runner's servers can require mutual TLS and a token, and its clients present them: an
/// honest run under faults still passes, every call having crossed TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_over_mutual_tls_with_a_token() {
    use common::pki::{Ca, write};
    use grpc_layers::auth::Tokens;
    use kvcore::server::{ServerTls, TlsFiles};
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("runner CA");
    let ca_file = write(dir.path(), "ca.crt", &ca.pem);
    let (cert, key) = ca.leaf_files(dir.path(), "server", false);
    let (client_cert, client_key) = ca.leaf_files(dir.path(), "client", false);
    let server = ServerTls::load(TlsFiles {
        cert,
        key,
        client_ca: Some(ca_file.clone()),
    })
    .expect("server TLS");
    let client = kvcore::client::tls_from_files(
        Some(&ca_file),
        Some((client_cert.as_path(), client_key.as_path())),
    )
    .expect("client TLS");
    let report =
        ServerRunner::with_config(Arc::new(MemoryStorage::new()), scenario(""), "127.0.0.1:0")
            .auth(
                Tokens::parse("runner-token").expect("tokens"),
                "runner-token",
            )
            .tls(server, client)
            .quiet()
            .run()
            .await
            .expect("the run completes");
    assert!(report.passed(), "{report:?}");
    let ops: u64 = report.clients.iter().map(|c| c.ops).sum();
    assert!(ops > 10, "calls got through TLS: {report:?}");
}

/// A fault schedule: a pause holds every call (nothing returns while it lasts, and the calls
/// go on after it), then a phase drops 60% of write answers; the run stays linearizable, and
/// the report counts what the schedule did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_schedule_pauses_and_drops() {
    let mut config = scenario(
        r#", "schedule": [
            {"at": 0.5, "for": 0.7, "pause": true},
            {"at": 1.5, "for": 0.5, "drop_responses": 60}
        ]"#,
    );
    config.test_duration_seconds = 2.5;
    // No steady faults: what is dropped and replayed here is the schedule's doing.
    config.server_packet_loss_rate = 0.0;
    for client in &mut config.clients {
        client.client_packet_loss_rate = 0.0;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.jsonl");
    let report = ServerRunner::with_config(Arc::new(MemoryStorage::new()), config, "127.0.0.1:0")
        .history(&history)
        .quiet()
        .run()
        .await
        .expect("the run completes");
    assert!(report.passed(), "{report}");
    assert!(report.scheduled_faults > 10, "{report}");
    assert_eq!(report.schedule.len(), 2);
    let ops = kvcore::runner::export::read_history(std::io::BufReader::new(
        std::fs::File::open(&history).expect("history"),
    ))
    .expect("history");
    let during = |from: f64, to: f64| {
        ops.iter()
            .filter(|op| (from * 1e9..to * 1e9).contains(&(op.ret as f64)))
            .count()
    };
    assert_eq!(during(0.65, 1.1), 0, "calls returned during the pause");
    assert!(during(1.2, 1.5) > 0, "the calls go on after the pause");
    let recovered: u64 = report.clients.iter().map(|c| c.recovered).sum();
    assert!(
        recovered > 0,
        "answers the schedule dropped were replayed: {report}"
    );
}

/// An honest store under client and server faults passes both workloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_runs_pass() {
    for workload in ["counter", "mixed"] {
        let config = scenario(&format!(r#", "workload": "{workload}""#));
        let report = run(Arc::new(MemoryStorage::new()), config).await;
        assert!(report.passed(), "{workload}: {report}");
        assert!(report.checked_ops > 100, "{workload}: {report}");
        assert!(report.server_responses_dropped > 0 && report.client_requests_dropped > 0);
        assert!(report.verdict().starts_with("linearizable: yes"));
    }
}

/// A deliberately broken store: `fault` decides, per put or get, how to misbehave.
struct Broken {
    inner: MemoryStorage,
    puts: AtomicU64,
    lost: tokio::sync::Mutex<Option<([u8; 16], u64)>>,
    doubled: std::sync::atomic::AtomicBool,
    kind: Fault,
    stale: Mutex<Option<(String, Versioned)>>,
}

#[derive(Clone, Copy)]
enum Fault {
    LoseWrite,
    ApplyTwice,
    StaleRead,
}

#[async_trait]
impl Storage for Broken {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        let fresh = self.inner.get(key).await?;
        if let Fault::StaleRead = self.kind {
            let mut stale = self.stale.lock().unwrap();
            match &*stale {
                Some((k, old)) if k == key && fresh.version > old.version + 2 => {
                    return Ok(old.clone());
                }
                None if fresh.version >= 5 => *stale = Some((key.to_owned(), fresh.clone())),
                _ => {}
            }
        }
        Ok(fresh)
    }

    async fn put(&self, write: Write) -> Result<Written, StorageError> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst);
        match self.kind {
            Fault::LoseWrite => {
                let mut lost = self.lost.lock().await;
                if let Some((id, version)) = *lost {
                    if write.request_id == Some(id) {
                        // Keep the lie consistent when the lost write is retried.
                        return Ok(Written {
                            version,
                            replayed: true,
                        });
                    }
                } else if let Some(id) = write.request_id.filter(|_| n >= 20) {
                    let current = self.inner.get(&write.key).await.map_or(0, |v| v.version);
                    if current == write.expected_version {
                        // Acknowledge without applying: the write is lost.
                        let version = current + 1;
                        *lost = Some((id, version));
                        return Ok(Written {
                            version,
                            replayed: false,
                        });
                    }
                }
            }
            Fault::ApplyTwice if n >= 20 && !self.doubled.load(Ordering::SeqCst) => {
                let written = self.inner.put(write.clone()).await?;
                if written.replayed || self.doubled.swap(true, Ordering::SeqCst) {
                    return Ok(written);
                }
                let again = Write {
                    expected_version: written.version,
                    request_id: None,
                    ..write
                };
                self.inner.put(again).await?;
                return Ok(written);
            }
            _ => {}
        }
        self.inner.put(write).await
    }

    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        self.inner.entries().await
    }
}

/// Each kind of broken store produces a violation that names a key and the operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_storage_is_caught() {
    for (kind, name) in [
        (Fault::LoseWrite, "loses a write"),
        (Fault::ApplyTwice, "applies a write twice"),
        (Fault::StaleRead, "returns a stale read"),
    ] {
        let storage = Broken {
            inner: MemoryStorage::new(),
            puts: AtomicU64::new(0),
            lost: tokio::sync::Mutex::new(None),
            doubled: Default::default(),
            kind,
            stale: Mutex::new(None),
        };
        let report = run(Arc::new(storage), scenario("")).await;
        assert!(!report.passed(), "a store that {name} passed: {report}");
        assert!(
            report.verdict().starts_with("VIOLATION"),
            "{name}: {}",
            report.verdict()
        );
        let explained = report.violations.iter().chain(&report.invariant_violations);
        let text: Vec<_> = explained.cloned().collect();
        assert!(
            text.iter()
                .any(|v| v.contains("key \"k") || v.contains("counter \"k")),
            "{name}: violations name the key: {text:#?}"
        );
        assert!(
            report.violations.iter().any(|v| v.contains("client ")),
            "{name}: the checker names the operations: {text:#?}"
        );
    }
}

/// The same seed gives the same fault decisions: one sequential client, a fixed number of
/// operations, identical injected faults and final state across two runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_replays_faults() {
    let config: ScenarioConfig = r#"{
        "clients": [{ "name": "solo", "keys": ["a", "b"], "client_packet_loss_rate": 20.0 }],
        "test_duration_seconds": 30,
        "server_packet_loss_rate": 20.0,
        "seed": 1234,
        "ops_per_client": 200
    }"#
    .parse()
    .unwrap();
    let storage_a = Arc::new(MemoryStorage::new());
    let storage_b = Arc::new(MemoryStorage::new());
    let first = run(storage_a.clone(), config.clone()).await;
    let second = run(storage_b.clone(), config.clone()).await;
    assert!(first.passed() && second.passed());
    assert!(first.server_responses_dropped > 0 && first.client_requests_dropped > 0);
    assert_eq!(
        first.server_responses_dropped,
        second.server_responses_dropped
    );
    assert_eq!(
        first.client_requests_dropped,
        second.client_requests_dropped
    );
    assert_eq!(
        first.clients[0].network_retries,
        second.clients[0].network_retries
    );
    assert_eq!(
        storage_a.entries().await.unwrap(),
        storage_b.entries().await.unwrap()
    );

    let mut other = config;
    other.seed = Some(4321);
    let third = run(Arc::new(MemoryStorage::new()), other).await;
    assert_ne!(
        (
            first.server_responses_dropped,
            first.client_requests_dropped
        ),
        (
            third.server_responses_dropped,
            third.client_requests_dropped
        ),
        "another seed, other decisions"
    );
}

/// The chaos scenario passes on the durable backends too, through `--storage`-style specs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_backends_pass() {
    let dir = tempfile::tempdir().unwrap();
    for backend in ["file", "redb"] {
        for workload in ["counter", "mixed"] {
            let spec: kvcore::storage::StorageSpec = format!(
                "{backend}:{}",
                dir.path().join(format!("{backend}-{workload}")).display()
            )
            .parse()
            .unwrap();
            let storage = spec.open().await.expect("opening a fresh store");
            let config = scenario(&format!(r#", "workload": "{workload}""#));
            let report = run(storage, config).await;
            assert!(report.passed(), "{spec} {workload}: {report}");
            assert!(report.checked_ops > 30, "{spec} {workload}: {report}");
        }
    }
}

/// A store that already holds the scenario's keys is refused up front, not reported as a
/// violation at the end.
#[tokio::test]
async fn a_used_store_is_refused() {
    let storage = MemoryStorage::new();
    storage.put(Write::new("k2", "old", 0)).await.unwrap();
    let err = ServerRunner::with_config(Arc::new(storage), scenario(""), "127.0.0.1:0")
        .quiet()
        .run()
        .await
        .expect_err("k2 exists");
    assert!(
        err.to_string()
            .contains("already holds 1 of the scenario's keys (first: \"k2\")"),
        "{err}"
    );
}

/// `ServerRunner::new` takes the `Arc<dyn Storage>` that `StorageSpec::open` returns, and a
/// scenario file, as the README shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_takes_an_opened_spec_and_a_file() {
    let storage = kvcore::storage::StorageSpec::Memory
        .open()
        .await
        .expect("memory opens");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("scenario.json");
    let scenario = r#"{ "clients": [ { "name": "a", "keys": ["k"] } ],
                        "test_duration_seconds": 0.3, "seed": 3 }"#;
    std::fs::write(&path, scenario).expect("scenario file");
    let report = ServerRunner::new(storage, &path, "127.0.0.1:0")
        .expect("valid scenario")
        .quiet()
        .run()
        .await
        .expect("the run completes");
    assert!(report.passed(), "{report}");
    assert!(report.checked_ops > 0, "{report}");
}
