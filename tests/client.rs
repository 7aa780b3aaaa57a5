//! GrpcClient against real loopback servers with injected faults: exact outcomes, counters,
//! conflicts and cancellation.

mod common;

use std::{sync::Arc, time::Duration};

use common::start_server_opts;
use grpc_layers::{MethodFilter, fault::FaultConfig};
use kvcore::{
    ServerOptions,
    client::{
        ClientOptions, ClientStack, GrpcClient, PutOutcome, UpdateOutcome, default_retry_policy,
    },
    storage::MemoryStorage,
    validate::PUT_PATH,
};

fn put_faults(seed: u64, drop_requests: f64, drop_responses: f64) -> FaultConfig {
    FaultConfig::new(seed)
        .drop_requests(drop_requests)
        .drop_responses(drop_responses)
        .methods(MethodFilter::only([PUT_PATH]))
}

async fn lossy_server(faults: FaultConfig) -> common::TestServer {
    let options = ServerOptions::default().faults(faults).unwrap();
    start_server_opts(Arc::new(MemoryStorage::new()), options).await
}

/// Many concurrent increments through `update` under 10% request and 20% response loss:
/// final value == final version == acknowledged updates, and no outcome is Maybe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_counters_are_exact() {
    let server = lossy_server(put_faults(5, 10.0, 20.0)).await;
    let client = GrpcClient::connect(&server.url(), ClientOptions::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = [0u64; 3];
            for n in 0..25u64 {
                let counter = ((task + n) % 3) as usize;
                let increment = |v: Option<&str>| {
                    let current: u64 = v.map_or(0, |v| v.parse().expect("counter value"));
                    (current + 1).to_string()
                };
                match client
                    .update(&format!("counter-{counter}"), increment)
                    .await
                    .unwrap()
                {
                    UpdateOutcome::Written { .. } => acked[counter] += 1,
                    UpdateOutcome::Maybe { .. } => panic!("Maybe outcome"),
                }
            }
            acked
        }));
    }
    let mut acked = [0u64; 3];
    for task in tasks {
        for (total, n) in acked.iter_mut().zip(task.await.unwrap()) {
            *total += n;
        }
    }
    for (counter, acked) in acked.iter().enumerate() {
        let found = client
            .get(&format!("counter-{counter}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.version, *acked, "version == acknowledged updates");
        assert_eq!(
            found.value,
            acked.to_string(),
            "value == acknowledged updates"
        );
    }
    let counters = client.counters();
    assert_eq!(counters.maybe, 0);
    assert!(counters.network_retries > 0, "{counters:?}");
    assert!(
        counters.recovered > 0,
        "lost responses were recovered by replay: {counters:?}"
    );
    assert!(
        counters.conflicts > 0,
        "8 updaters on 3 keys conflict: {counters:?}"
    );
    server.stop().await;
}

/// A write whose response was lost is reported Written with its version and counted as
/// recovered; versions stay consecutive (no write applied twice).
#[tokio::test]
async fn lost_response_is_recovered() {
    let server = lossy_server(put_faults(11, 0.0, 50.0)).await;
    let client = GrpcClient::connect(&server.url(), ClientOptions::default())
        .await
        .unwrap();
    let mut recovered = 0;
    for expected in 0..20 {
        match client
            .put("k", &format!("v{expected}"), expected)
            .await
            .unwrap()
        {
            PutOutcome::Written {
                version,
                recovered: r,
            } => {
                assert_eq!(version, expected + 1);
                recovered += u64::from(r);
            }
            other => panic!("put {expected}: {other:?}"),
        }
    }
    assert!(recovered > 0, "half the responses were dropped");
    assert_eq!(client.counters().recovered, recovered);
    assert_eq!(client.get("k").await.unwrap().unwrap().version, 20);
    server.stop().await;
}

/// A request lost on the client side is retried and applied once, never "recovered".
#[tokio::test]
async fn lost_request_is_retried() {
    let server = lossy_server(put_faults(0, 0.0, 0.0)).await;
    let stack = ClientStack::default()
        .faults(put_faults(3, 50.0, 0.0))
        .unwrap();
    let options = ClientOptions {
        stack: stack.clone(),
        ..ClientOptions::default()
    };
    let client = GrpcClient::connect(&server.url(), options).await.unwrap();
    for expected in 0..20 {
        let outcome = client.put("k", "v", expected).await.unwrap();
        assert_eq!(
            outcome,
            PutOutcome::Written {
                version: expected + 1,
                recovered: false
            }
        );
    }
    assert!(stack.fault_stats().requests_dropped() > 0);
    assert_eq!(
        client.counters().network_retries,
        stack.fault_stats().requests_dropped()
    );
    server.stop().await;
}

/// A conflict on the first attempt is definite and carries the actual version; creates and
/// updates of the wrong kind are told apart.
#[tokio::test]
async fn first_attempt_conflicts_are_definite() {
    let server = lossy_server(put_faults(0, 0.0, 0.0)).await;
    let client = GrpcClient::connect(&server.url(), ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(client.put("k", "a", 3).await.unwrap(), PutOutcome::NotFound);
    client.put("k", "a", 0).await.unwrap();
    client.put("k", "b", 1).await.unwrap();
    assert_eq!(
        client.put("k", "x", 1).await.unwrap(),
        PutOutcome::Conflict { actual_version: 2 }
    );
    assert_eq!(
        client.put("k", "x", 0).await.unwrap(),
        PutOutcome::AlreadyExists { actual_version: 2 }
    );
    assert_eq!(client.counters().conflicts, 3);
    server.stop().await;
}

/// Cancelling while the retry layer backs off returns at once, with the write's fate Maybe.
#[tokio::test]
async fn cancellation_during_backoff_is_prompt() {
    let server = lossy_server(put_faults(0, 100.0, 0.0)).await;
    let slow = default_retry_policy()
        .backoff(Duration::from_secs(30), Duration::from_secs(30), 1.0)
        .without_throttle();
    let options = ClientOptions {
        stack: ClientStack::default().retry(slow),
        call_timeout: Duration::from_secs(600),
        ..ClientOptions::default()
    };
    let cancel = options.cancel.clone();
    let client = GrpcClient::connect(&server.url(), options).await.unwrap();
    let put = tokio::spawn(async move { client.put("k", "v", 0).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), put)
        .await
        .expect("cancelled put returned promptly")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, PutOutcome::Maybe);
    server.stop().await;
}

/// Eight concurrent `update` increments of one key: the final version equals the number of
/// successful updates and the value reflects every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_one_key_lose_nothing() {
    let server = lossy_server(put_faults(0, 0.0, 0.0)).await;
    let client = GrpcClient::connect(&server.url(), ClientOptions::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0u64;
            for _ in 0..10 {
                let increment =
                    |v: Option<&str>| (v.map_or(0, |v| v.parse::<u64>().unwrap()) + 1).to_string();
                if let UpdateOutcome::Written { .. } =
                    client.update("one", increment).await.unwrap()
                {
                    written += 1;
                }
            }
            written
        }));
    }
    let mut written = 0;
    for task in tasks {
        written += task.await.unwrap();
    }
    assert_eq!(written, 80);
    let found = client.get("one").await.unwrap().unwrap();
    assert_eq!((found.value.as_str(), found.version), ("80", 80));
    assert!(
        client.counters().conflicts > 0,
        "8 updaters of one key conflict"
    );
    server.stop().await;
}
