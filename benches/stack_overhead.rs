//! The cost of the default server stack: the same KvService with and without its layers,
//! over loopback gRPC, measured side by side in one run.
//!
//! Run with `cargo bench --bench stack_overhead`. Each iteration issues 64 concurrent calls over
//! one HTTP/2 connection; compare the `bare` and `layered` medians of each workload (the ratio
//! bare/layered is the layered stack's relative throughput).

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kvcore::{
    KvService, ServerOptions,
    proto::{GetRequest, PutRequest, kv_service_client::KvServiceClient},
    storage::MemoryStorage,
};
use tokio::{net::TcpListener, runtime::Runtime};
use tonic::transport::{Channel, Server};

const CONCURRENCY: u64 = 64;

async fn bare_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = KvService::new(Arc::new(MemoryStorage::new())).into_server();
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(kvcore::server::incoming(listener)),
    );
    addr
}

async fn layered_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let storage = Arc::new(MemoryStorage::new());
    tokio::spawn(kvcore::serve(
        listener,
        storage,
        ServerOptions::default(),
        std::future::pending(),
    ));
    addr
}

async fn client(addr: SocketAddr) -> KvServiceClient<Channel> {
    let url = format!("http://{addr}");
    let mut client = KvServiceClient::connect(url).await.unwrap();
    let seed = PutRequest {
        key: "hot".into(),
        value: "v".repeat(100),
        version: 0,
        request_id: vec![],
    };
    client.put(seed).await.unwrap();
    client
}

/// Runs `iters` rounds of `CONCURRENCY` concurrent calls and returns the elapsed time.
async fn rounds(
    client: &KvServiceClient<Channel>,
    iters: u64,
    put: bool,
    next: &AtomicU64,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let calls = (0..CONCURRENCY).map(|_| {
            let mut client = client.clone();
            let n = next.fetch_add(1, Ordering::Relaxed);
            async move {
                if put {
                    let request = PutRequest {
                        key: format!("key-{n}"),
                        value: "v".repeat(100),
                        version: 0,
                        request_id: rand::random::<[u8; 16]>().to_vec(),
                    };
                    client.put(request).await.map(drop)
                } else {
                    client.get(GetRequest { key: "hot".into() }).await.map(drop)
                }
            }
        });
        for result in futures_join(calls).await {
            result.expect("call failed");
        }
    }
    start.elapsed()
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    calls: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("call task panicked"));
    }
    out
}

fn stack_overhead(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let (bare, layered) = runtime.block_on(async {
        let bare = client(bare_server().await).await;
        let layered = client(layered_server().await).await;
        (bare, layered)
    });
    let next = AtomicU64::new(0);
    for (workload, put) in [("get", false), ("put", true)] {
        let mut group = c.benchmark_group(format!("stack_overhead/{workload}"));
        group.throughput(Throughput::Elements(CONCURRENCY));
        for (name, client) in [("bare", &bare), ("layered", &layered)] {
            group.bench_function(name, |b| {
                b.to_async(&runtime)
                    .iter_custom(|iters| rounds(client, iters, put, &next));
            });
        }
        group.finish();
    }
}

criterion_group!(benches, stack_overhead);
criterion_main!(benches);
