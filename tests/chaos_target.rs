//! `kvctl chaos --target` against servers it did not start: the honest kv-server binary passes;
//! three deliberately broken kv.v1 servers (one that loses 2% of acknowledged updates, one that
//! serves the previous version on 3% of reads, one that forgets retried writes' ids and then
//! claims it would have replayed them) each end in exit 1 with the violation named; an
//! unreachable target is exit 3; and an exported history, read back, gets the same verdict.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use kvcore::{
    ServerOptions,
    runner::{checker, export},
    storage::{MemoryStorage, Storage, StorageError, Versioned, Write, Written},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// How a broken server breaks.
#[derive(Clone, Copy, Debug)]
enum Flaw {
    /// Acknowledges 2% of updates without applying them.
    LosesUpdates,
    /// Answers 3% of reads with the key's previous version.
    StaleReads,
    /// Drops every write's request id: a retried write whose first attempt was applied is
    /// refused as a conflict, while the store still says it replays.
    ForgetsRequestIds,
}

struct Broken {
    inner: MemoryStorage,
    flaw: Flaw,
    rng: Mutex<StdRng>,
    previous: Mutex<HashMap<String, Versioned>>,
}

impl Broken {
    fn roll(&self, percent: f64) -> bool {
        self.rng.lock().unwrap().random_bool(percent / 100.0)
    }
}

#[async_trait]
impl Storage for Broken {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        if matches!(self.flaw, Flaw::StaleReads)
            && self.roll(3.0)
            && let Some(old) = self.previous.lock().unwrap().get(key)
        {
            return Ok(old.clone());
        }
        self.inner.get(key).await
    }

    async fn put(&self, mut write: Write) -> Result<Written, StorageError> {
        match self.flaw {
            Flaw::LosesUpdates if write.expected_version > 0 && self.roll(2.0) => {
                return Ok(Written {
                    version: write.expected_version + 1,
                    replayed: false,
                });
            }
            Flaw::ForgetsRequestIds => write.request_id = None,
            _ => {}
        }
        let before = self.inner.get(&write.key).await.ok();
        let written = self.inner.put(write.clone()).await?;
        if let Some(before) = before {
            self.previous.lock().unwrap().insert(write.key, before);
        }
        Ok(written)
    }

    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        self.inner.entries().await
    }
}

/// Runs `kvctl chaos` against `target` for 3 s; (exit code, stdout, stderr).
fn chaos(target: &str, extra: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args([
            "chaos",
            "--target",
            target,
            "--duration",
            "3",
            "--seed",
            "11",
        ])
        .args(extra)
        .output()
        .expect("kvctl chaos");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The honest binary passes; its exported history, read back and checked against the
/// server's final state, passes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_honest_server_passes() {
    let (mut server, addr) = common::spawn_kv_server(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.jsonl");
    let json = dir.path().join("report.json");
    let (code, out, err) = tokio::task::spawn_blocking({
        let (addr, history, json) = (addr.clone(), history.clone(), json.clone());
        move || {
            chaos(
                &addr,
                &[
                    "--history",
                    history.to_str().unwrap(),
                    "--json",
                    json.to_str().unwrap(),
                ],
            )
        }
    })
    .await
    .expect("kvctl");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("linearizable: yes"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    assert!(
        report["server_responses_dropped"].as_u64().unwrap() > 0,
        "{report}"
    );
    let recovered: u64 = report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["recovered"].as_u64().unwrap())
        .sum();
    assert!(
        recovered > 0,
        "dropped answers were replayed through the proxy: {report}"
    );

    // Read back: the same verdict, against the keys as the server holds them now.
    let ops = export::read_history(std::io::BufReader::new(
        std::fs::File::open(&history).expect("history"),
    ))
    .expect("a valid history");
    assert!(ops.len() > 100, "{} ops", ops.len());
    let client = kvcore::client::GrpcClient::connect(
        &format!("http://{addr}"),
        kvcore::client::ClientOptions::default(),
    )
    .await
    .expect("connect");
    let mut final_state = Vec::new();
    let keys: std::collections::BTreeSet<String> = ops.iter().map(|op| op.key.clone()).collect();
    for key in keys {
        if let Some(found) = client.get(&key).await.expect("read") {
            final_state.push((key, found));
        }
    }
    let verdict = checker::check(&ops, &final_state);
    assert!(verdict.is_linearizable(), "{:?}", verdict.violations);
    let _ = server.kill();
    let _ = server.wait();
}

/// Each broken server is caught: exit 1, and the report names the key and what is wrong. The
/// exported history of the first, read back, gets the same verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_servers_are_caught() {
    for flaw in [
        Flaw::LosesUpdates,
        Flaw::StaleReads,
        Flaw::ForgetsRequestIds,
    ] {
        let storage = Arc::new(Broken {
            inner: MemoryStorage::new(),
            flaw,
            rng: Mutex::new(StdRng::seed_from_u64(7)),
            previous: Mutex::new(HashMap::new()),
        });
        let server = common::start_server_opts(storage.clone(), ServerOptions::default()).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let history = dir.path().join("history.jsonl");
        let (code, out, err) = tokio::task::spawn_blocking({
            let (addr, history) = (server.addr.to_string(), history.clone());
            move || chaos(&addr, &["--history", history.to_str().unwrap()])
        })
        .await
        .expect("kvctl");
        assert_eq!(code, 1, "{flaw:?} was not caught:\n{out}\n{err}");
        let named: Vec<&str> = out
            .lines()
            .skip_while(|l| !l.starts_with("faults injected"))
            .collect();
        eprintln!("{flaw:?}: {}", named.join("\n    "));
        assert!(err.contains("VIOLATION"), "{flaw:?}: {err}");
        assert!(
            out.contains("key ") && out.contains("chaos-11-"),
            "{flaw:?}: the violation names the key:\n{out}"
        );
        let ops = export::read_history(std::io::BufReader::new(
            std::fs::File::open(&history).expect("history"),
        ))
        .expect("a valid history");
        let final_state = storage.entries().await.expect("entries");
        let verdict = checker::check(&ops, &final_state);
        assert!(
            !verdict.is_linearizable(),
            "{flaw:?}: the re-read history passes the checker:\n{out}"
        );
        server.stop().await;
    }
}

/// A target nobody listens on is exit 3, naming it.
#[test]
fn an_unreachable_target_is_exit_3() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = free.local_addr().expect("addr").to_string();
    drop(free);
    let (code, _, err) = chaos(&addr, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&addr), "{err}");
}

/// Forwards to an honest server but strips `grpc-status-details-bin`: refused writes arrive
/// without their `kv.v1.VersionMismatch` detail.
#[derive(Clone)]
struct StripsDetails {
    target: tonic::transport::Channel,
}

impl tonic::server::NamedService for StripsDetails {
    const NAME: &'static str = "kv.v1.KvService";
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for StripsDetails {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move {
            let mut response = tower::ServiceExt::oneshot(target, request)
                .await
                .expect("the honest server answers");
            response.headers_mut().remove("grpc-status-details-bin");
            Ok(response)
        })
    }
}

/// A server that breaks the wire contract (conflicts without their detail) is reported as
/// such, with exit 1, and the runner does not crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_contract_is_reported() {
    let honest = common::start_server().await;
    let target = tonic::transport::Endpoint::from_shared(format!("http://{}", honest.addr))
        .expect("url")
        .connect_lazy();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stripping = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StripsDetails { target })
            .serve_with_incoming(kvcore::server::incoming(listener)),
    );
    let (code, out, err) = tokio::task::spawn_blocking(move || chaos(&addr, &[]))
        .await
        .expect("kvctl");
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("broke the kv.v1 wire contract"), "{err}");
    stripping.abort();
    honest.stop().await;
}

/// Targets that are not frontends of one store, and a target that acknowledges no write at
/// all, are exit 3 with the reason, not a verdict.
#[test]
fn targets_that_cannot_be_tested_are_exit_3() {
    let (mut a, addr_a) = common::spawn_kv_server(&[]);
    let (mut b, addr_b) = common::spawn_kv_server(&[]);
    let (code, _, err) = chaos(&format!("{addr_a},{addr_b}"), &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("frontends of one store"), "{err}");
    let _ = (a.kill(), b.kill(), a.wait(), b.wait());

    let (mut refusing, addr) =
        common::spawn_kv_server(&["--drop-request-rate", "100", "--fault-methods", "Put"]);
    let (code, _, err) = chaos(&addr, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no write was acknowledged"), "{err}");
    let _ = (refusing.kill(), refusing.wait());
}
