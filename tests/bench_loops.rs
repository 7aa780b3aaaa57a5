//! `kvctl bench`'s open loop (`--rate`, wrk2-style) against a server that takes 20 ms a call,
//! beside the closed loop on the same server: the open loop sends on schedule and counts each
//! call's latency from its intended start, so a server that cannot keep up is charged for the
//! calls it held back, where the closed loop, sending only as answers come, reports 20 ms.

mod common;

use std::{sync::Arc, time::Duration};

use grpc_layers::fault::FaultConfig;
use kvcore::{
    ServerOptions,
    bench::{BenchConfig, BenchReport, BenchTarget, BenchWorkload},
    storage::MemoryStorage,
};

async fn bench(url: &str, concurrency: usize, rate: Option<f64>) -> BenchReport {
    let config = BenchConfig {
        target: BenchTarget::Kv(vec![url.to_owned()]),
        workload: BenchWorkload::Get,
        clients: 1,
        concurrency,
        keys: 4,
        value_size: 10,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        rate,
        key_prefix: "loops-".into(),
        serializable: false,
        call_timeout: Duration::from_secs(5),
        progress: false,
        token: None,
        tls: None,
        stack: false,
    };
    let report = kvcore::bench::run(config).await.expect("the bench runs");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.rate, rate, "{report:?}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_charges_a_slow_server_for_the_calls_it_held_back() {
    let slow = FaultConfig::new(1).delay(Duration::from_millis(20), Duration::ZERO);
    let options = ServerOptions::default()
        .faults(slow)
        .expect("a valid delay");
    let server = common::start_server_opts(Arc::new(MemoryStorage::new()), options).await;
    let url = server.url();

    // One call in flight: 50 calls a second at most.
    let closed = bench(&url, 1, None).await;
    assert!(closed.p50_us >= 20_000, "the delay is there: {closed:?}");
    // Asked for 100 a second, it falls further behind with every call: by the end of the
    // second, calls are answered about half a second after they were due.
    let behind = bench(&url, 1, Some(100.0)).await;
    assert!(
        behind.ops <= 101,
        "never more than the schedule: {behind:?}"
    );
    assert!(
        behind.p99_us > 5 * closed.p50_us,
        "the backlog is in the latency: closed {closed:?}, open {behind:?}"
    );
    // Asked for 20 a second over 4 calls in flight, it keeps up: calls start on time and take
    // what a closed-loop call takes.
    let on_time = bench(&url, 4, Some(20.0)).await;
    assert!(
        (15..=21).contains(&on_time.ops),
        "the schedule sets the pace: {on_time:?}"
    );
    assert!(
        on_time.p50_us * 4 < behind.p50_us,
        "no backlog: {on_time:?}, against {behind:?}"
    );
    server.stop().await;
}
