//! Staying up under abuse: ten times the in-flight limit is refused at once with
//! RESOURCE_EXHAUSTED while the accepted calls finish, health stays open, and the other limits
//! (deadline, connection cap) answer promptly and precisely.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use kvcore::{
    ServerOptions,
    proto::GetRequest,
    server::Limits,
    storage::{MemoryStorage, Storage, StorageError, Versioned, Write, Written},
};
use tokio::sync::Semaphore;
use tonic::Code;

/// Reads wait at a gate the test opens, so calls stay in flight as long as the test wants.
struct Gated {
    inner: MemoryStorage,
    gate: Arc<Semaphore>,
    waiting: AtomicUsize,
}

#[async_trait]
impl Storage for Gated {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _pass = self
            .gate
            .acquire()
            .await
            .expect("the gate stays open once opened");
        self.inner.get(key).await
    }
    async fn put(&self, write: Write) -> Result<Written, StorageError> {
        self.inner.put(write).await
    }
    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        self.inner.entries().await
    }
}

/// 80 calls against a limit of 8: 8 reach the storage and wait there; the other 72 are refused
/// with RESOURCE_EXHAUSTED while those 8 are still waiting (so they did not queue behind
/// them), health answers throughout, and the 8 finish once the storage moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_limit_is_shed_at_once() {
    const LIMIT: usize = 8;
    let storage = Arc::new(Gated {
        inner: MemoryStorage::new(),
        gate: Arc::new(Semaphore::new(0)),
        waiting: AtomicUsize::new(0),
    });
    let limits = Limits {
        max_in_flight: LIMIT,
        ..Limits::default()
    };
    let options = ServerOptions::default().limits(limits);
    let shed = options.shed_stats();
    let server = common::start_server_opts(storage.clone(), options).await;
    let client = server.client().await;

    let started = Instant::now();
    let mut calls = Vec::new();
    for n in 0..LIMIT * 10 {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            let began = Instant::now();
            let key = format!("k{n}");
            let result = client.get(GetRequest { key }).await;
            (result.map(drop).map_err(|s| s.code()), began.elapsed())
        }));
    }
    // Every refusal comes back while the gate is still shut: nothing past the limit waits.
    tokio::time::timeout(Duration::from_secs(10), async {
        while calls.iter().filter(|c| c.is_finished()).count() < LIMIT * 9 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the calls past the limit are answered within 10 s, gate shut");
    let (finished, accepted): (Vec<_>, Vec<_>) = calls.into_iter().partition(|c| c.is_finished());
    let mut refused = Vec::new();
    for call in finished {
        let (result, took) = call.await.expect("call task");
        assert_eq!(result, Err(Code::ResourceExhausted), "refused, not queued");
        refused.push(took);
    }
    assert_eq!(
        refused.len(),
        LIMIT * 9,
        "everything past the limit was refused"
    );
    assert_eq!(
        storage.waiting.load(Ordering::SeqCst),
        LIMIT,
        "the limit held"
    );
    let slowest = refused.iter().max().expect("refusals");
    eprintln!(
        "{} refusals, slowest {slowest:?}, all within {:?} of the first call",
        refused.len(),
        started.elapsed()
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(server.url())
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    );
    let check = tonic_health::pb::HealthCheckRequest {
        service: "kv.v1.KvService".into(),
    };
    health.check(check).await.expect("health is never shed");

    storage.gate.add_permits(LIMIT * 10);
    for call in accepted {
        let (result, _) = call.await.expect("call task");
        assert_eq!(
            result,
            Err(Code::NotFound),
            "accepted calls reach the storage"
        );
    }
    assert_eq!(
        (shed.admitted(), shed.shed()),
        (LIMIT as u64, LIMIT as u64 * 9)
    );
    server.stop().await;
}

/// A call still running at the server's request timeout ends with DEADLINE_EXCEEDED (not
/// CANCELLED), and so does one whose caller's grpc-timeout is shorter, at that timeout.
#[tokio::test]
async fn the_request_timeout_answers_deadline_exceeded() {
    let storage = Arc::new(Gated {
        inner: MemoryStorage::new(),
        gate: Arc::new(Semaphore::new(0)),
        waiting: AtomicUsize::new(0),
    });
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = common::start_server_opts(storage, ServerOptions::default().limits(limits)).await;
    let mut client = server.client().await;
    let status = client
        .get(GetRequest { key: "k".into() })
        .await
        .expect_err("the storage never answers");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    server.stop().await;

    // The caller's grpc-timeout, sent by hand so that no client-side timer races the server's,
    // against a server whose own limit (30 s) is far beyond the 5 s this call may take.
    let storage = Arc::new(Gated {
        inner: MemoryStorage::new(),
        gate: Arc::new(Semaphore::new(0)),
        waiting: AtomicUsize::new(0),
    });
    let server = common::start_server_opts(storage, ServerOptions::default()).await;
    let answer = common::raw::h2_call(
        &server.addr.to_string(),
        "/kv.v1.KvService/Get",
        &[("grpc-timeout", "100m")],
        common::raw::whole(&common::raw::field(1, b"k")),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        answer,
        common::raw::Answer::Grpc(4),
        "DEADLINE_EXCEEDED from the server"
    );
    server.stop().await;
}

/// Connections past the cap are closed at once; the ones inside it keep being served.
#[tokio::test]
async fn connections_past_the_cap_are_closed() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let server = common::start_server_opts(storage, ServerOptions::default().limits(limits)).await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    let third = tonic::transport::Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await;
    let refused = match third {
        Err(_) => true,
        Ok(channel) => kvcore::proto::kv_service_client::KvServiceClient::new(channel)
            .get(GetRequest { key: "k".into() })
            .await
            .is_err_and(|s| s.code() != Code::NotFound),
    };
    assert!(refused, "a third connection is not served");
    for client in [&mut first, &mut second] {
        let status = client
            .get(GetRequest { key: "k".into() })
            .await
            .expect_err("not found");
        assert_eq!(status.code(), Code::NotFound, "still served");
    }
    server.stop().await;
}
