//! Durable backends (`file:` and `redb:`) as users run them: a real `kv-server` killed with SIGKILL while many writers
//! run, restarted on the same data, for several cycles; no acknowledged write may be lost.
//!
//! A write counts as acknowledged only once its response reached the client. Each writer owns
//! one key and writes versions in order, with values derived from the version, so after each
//! restart every key must sit between its last acknowledged and its last attempted version,
//! with exactly the value of that version. `KV_KILL_CYCLES=N` runs more cycles (default 4);
//! `KV_KILL_SEED` replays the kill timing of a printed seed.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kvcore::proto::{GetRequest, PutRequest, kv_service_client::KvServiceClient};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tonic::{Code, transport::Channel};

const WRITERS: usize = 16;

fn value(key: &str, version: u64) -> String {
    format!("{key} version {version}")
}

#[derive(Debug, Default, Clone, Copy)]
struct KeyState {
    acked: u64,
    attempted: u64,
}

async fn connect(addr: &str) -> KvServiceClient<Channel> {
    KvServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connecting to kv-server")
}

/// Checks every key after a restart and returns the versions to continue from.
async fn verify(addr: &str, keys: &HashMap<String, KeyState>, context: &str) {
    let mut client = connect(addr).await;
    for (key, state) in keys {
        let version = match client.get(GetRequest { key: key.clone() }).await {
            Ok(found) => {
                let found = found.into_inner();
                assert_eq!(
                    found.value,
                    value(key, found.version),
                    "{context}: {key} holds a damaged value"
                );
                found.version
            }
            Err(status) if status.code() == Code::NotFound => 0,
            Err(status) => panic!("{context}: reading {key}: {status}"),
        };
        assert!(
            version >= state.acked,
            "{context}: {key} lost acknowledged version {} (found {version})",
            state.acked
        );
        assert!(
            version <= state.attempted,
            "{context}: {key} is at version {version}, never attempted (last {})",
            state.attempted
        );
    }
}

/// Writes versions of `key` until a call fails (the server was killed).
async fn writer(addr: String, key: String, from: u64, keys: Arc<Mutex<HashMap<String, KeyState>>>) {
    let mut client = connect(&addr).await;
    let mut version = from;
    loop {
        let next = version + 1;
        keys.lock().unwrap().get_mut(&key).unwrap().attempted = next;
        let put = PutRequest {
            key: key.clone(),
            value: value(&key, next),
            version,
            request_id: rand::random::<[u8; 16]>().to_vec(),
        };
        match client.put(put).await {
            Ok(response) => {
                assert_eq!(response.into_inner().version, next);
                keys.lock().unwrap().get_mut(&key).unwrap().acked = next;
                version = next;
            }
            Err(_) => return,
        }
    }
}

async fn kill_cycles(backend: &str, file: &str) {
    let cycles: u64 = std::env::var("KV_KILL_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("KV_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{backend}: {cycles} SIGKILL cycles, seed {seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{backend}:{}", dir.path().join(file).display());
    let keys: Arc<Mutex<HashMap<String, KeyState>>> = Arc::new(Mutex::new(
        (0..WRITERS)
            .map(|w| (format!("writer-{w}"), KeyState::default()))
            .collect(),
    ));
    for cycle in 0..=cycles {
        let (mut server, addr) = common::spawn_kv_server(&["--storage", &spec]);
        let context = format!("{backend}, seed {seed}, after kill {cycle}");
        let snapshot = keys.lock().unwrap().clone();
        verify(&addr, &snapshot, &context).await;
        // Continue from what the server holds now.
        let mut client = connect(&addr).await;
        let mut starts = Vec::new();
        for key in snapshot.keys() {
            let version = client
                .get(GetRequest { key: key.clone() })
                .await
                .map_or(0, |r| r.into_inner().version);
            let mut all = keys.lock().unwrap();
            let state = all.get_mut(key).unwrap();
            *state = KeyState {
                acked: version,
                attempted: version,
            };
            starts.push((key.clone(), version));
        }
        if cycle == cycles {
            server.kill().unwrap();
            server.wait().unwrap();
            break;
        }
        let writers: Vec<_> = starts
            .into_iter()
            .map(|(key, from)| tokio::spawn(writer(addr.clone(), key, from, keys.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..700))).await;
        server.kill().expect("SIGKILL"); // std's Child::kill sends SIGKILL on Unix
        server.wait().unwrap();
        for w in writers {
            w.await.expect("writer task");
        }
    }
    let acked: u64 = keys.lock().unwrap().values().map(|s| s.acked).sum();
    eprintln!("{backend}: {acked} writes stored across {cycles} kills");
    assert!(
        acked >= WRITERS as u64 * cycles,
        "the writers should have made progress in every cycle, stored {acked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_survives_sigkill() {
    kill_cycles("file", "kv.log").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_survives_sigkill() {
    kill_cycles("redb", "kv.redb").await;
}
