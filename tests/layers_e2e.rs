//! The layer stacks over real loopback gRPC: faults on the server, retries on the client, and
//! not one write lost or applied twice.

mod common;

use std::{collections::HashMap, sync::Arc};

use common::start_server_opts;
use grpc_layers::{MethodFilter, fault::FaultConfig};
use kvcore::{
    ServerOptions,
    client::ClientStack,
    error::version_mismatch,
    proto::{GetRequest, PutRequest},
    storage::{MemoryStorage, Mismatch},
    validate::PUT_PATH,
};
use tokio::sync::Mutex;
use tonic::{Code, transport::Channel};

async fn channel(url: String) -> Channel {
    Channel::from_shared(url).unwrap().connect().await.unwrap()
}

/// What the writers saw: every acknowledged (key, version) with its value, and unknown outcomes.
#[derive(Default)]
struct Ledger {
    acked: HashMap<(String, u64), String>,
    unknown: u64,
}

/// 10% request and 20% response loss on Put, retried by the client stack with request ids:
/// every acknowledged write is in the store exactly once and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_puts_are_applied_exactly_once() {
    let faults = FaultConfig::new(42)
        .drop_requests(10.0)
        .drop_responses(20.0)
        .methods(MethodFilter::only([PUT_PATH]));
    let options = ServerOptions::default().faults(faults).unwrap();
    let server_faults = options.fault_stats();
    let server = start_server_opts(Arc::new(MemoryStorage::new()), options).await;
    let stack = ClientStack::default();
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut client = stack.client(channel(server.url()).await);
        let ledger = Arc::clone(&ledger);
        writers.push(tokio::spawn(async move {
            for n in 0..40 {
                let key = format!("key-{}", (writer + n) % 4);
                let current = match client.get(GetRequest { key: key.clone() }).await {
                    Ok(found) => found.into_inner().version,
                    Err(status) if status.code() == Code::NotFound => 0,
                    Err(status) => panic!("get failed: {status}"),
                };
                let value = format!("w{writer}-n{n}");
                let put = PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    version: current,
                    request_id: rand::random::<[u8; 16]>().to_vec(),
                };
                match client.put(put).await {
                    Ok(written) => {
                        let version = written.into_inner().version;
                        let previous = ledger.lock().await.acked.insert((key, version), value);
                        assert_eq!(previous, None, "two acknowledged writes of one version");
                    }
                    Err(status) => {
                        let retried = status
                            .metadata()
                            .get("grpc-previous-rpc-attempts")
                            .is_some();
                        let proven = version_mismatch(&status)
                            .map(|m| !retried || Mismatch::from(m).proves_not_applied());
                        if proven != Some(true) {
                            ledger.lock().await.unknown += 1;
                        }
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer panicked");
    }

    let ledger = ledger.lock().await;
    assert_eq!(
        ledger.unknown, 0,
        "with 10 attempts every outcome should be known"
    );
    let mut client = stack.client(channel(server.url()).await);
    let mut final_versions = 0;
    for k in 0..4 {
        let key = format!("key-{k}");
        let found = client
            .get(GetRequest { key: key.clone() })
            .await
            .unwrap()
            .into_inner();
        for version in 1..=found.version {
            assert!(
                ledger.acked.contains_key(&(key.clone(), version)),
                "{key} v{version} unacked"
            );
        }
        assert_eq!(
            ledger.acked.get(&(key.clone(), found.version)),
            Some(&found.value)
        );
        final_versions += found.version;
    }
    assert_eq!(
        ledger.acked.len() as u64,
        final_versions,
        "final versions add up to the acknowledged writes"
    );
    assert!(server_faults.requests_dropped() > 0 && server_faults.responses_dropped() > 0);
    assert!(
        stack.retry_stats().retries() > 0,
        "faults were retried away"
    );
    server.stop().await;
}

/// Injected loss reaches a plain client as UNAVAILABLE; health checks are never faulted.
#[tokio::test]
async fn injected_loss_is_unavailable() {
    for faults in [
        FaultConfig::new(1).drop_requests(100.0),
        FaultConfig::new(1).drop_responses(100.0),
    ] {
        let faults = faults.methods(MethodFilter::service(kvcore::server::KV_SERVICE));
        let storage = Arc::new(MemoryStorage::new());
        let options = ServerOptions::default().faults(faults).unwrap();
        let server = start_server_opts(storage.clone(), options).await;
        let mut client = server.client().await;
        let status = client
            .get(GetRequest { key: "k".into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        let put = PutRequest {
            key: "k".into(),
            value: "v".into(),
            version: 0,
            request_id: vec![],
        };
        assert_eq!(client.put(put).await.unwrap_err().code(), Code::Unavailable);

        let mut health =
            tonic_health::pb::health_client::HealthClient::new(channel(server.url()).await);
        let check = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        health.check(check).await.expect("health is never faulted");
        server.stop().await;
    }
}

/// The client stack refuses an invalid request before the network: the server never sees it.
#[tokio::test]
async fn client_validation_fails_fast() {
    let options = ServerOptions::default();
    let server_metrics = options.metrics();
    let server = start_server_opts(Arc::new(MemoryStorage::new()), options).await;
    let stack = ClientStack::default();
    let mut client = stack.client(channel(server.url()).await);
    let put = PutRequest {
        key: String::new(),
        value: "v".into(),
        version: 0,
        request_id: vec![],
    };
    let status = client.put(put).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        server_metrics.started(PUT_PATH),
        0,
        "the request never left the client"
    );
    assert_eq!(stack.metrics().handled(PUT_PATH, Code::InvalidArgument), 1);

    let put = PutRequest {
        key: "k".into(),
        value: "v".into(),
        version: 0,
        request_id: vec![],
    };
    client.put(put).await.unwrap();
    assert_eq!(server_metrics.handled(PUT_PATH, Code::Ok), 1);
    server.stop().await;
}

/// Layers with nothing to do are left out of the server's stack, and calls are served the same:
/// metrics nobody reads (`without_metrics`, as kv-server runs without `--metrics-listen`) count
/// nothing, and a fault configuration that injects nothing counts no passed calls. Refusals
/// and conflicts still get their codes from the layers that remain.
#[tokio::test]
async fn layers_with_nothing_to_do_are_left_out() {
    let options = ServerOptions::default().without_metrics();
    let (server_metrics, fault_stats) = (options.metrics(), options.clone());
    let server = start_server_opts(Arc::new(MemoryStorage::new()), options).await;
    let mut client =
        kvcore::proto::kv_service_client::KvServiceClient::new(channel(server.url()).await);
    let put = |key: &str, version| PutRequest {
        key: key.into(),
        value: "v".into(),
        version,
        request_id: vec![],
    };
    assert_eq!(
        client.put(put("k", 0)).await.unwrap().into_inner().version,
        1
    );
    let conflict = client.put(put("k", 0)).await.unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");
    let refused = client.put(put("", 0)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let got = client
        .get(GetRequest { key: "k".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.value.as_str(), got.version), ("v", 1));

    assert_eq!(server_metrics.handled(PUT_PATH, Code::Ok), 0);
    assert_eq!(server_metrics.handled(PUT_PATH, Code::InvalidArgument), 0);
    assert_eq!(fault_stats.fault_stats().passed(), 0);
    server.stop().await;
}
