//! The layers on a service that is not KV: tonic-health's `grpc.health.v1.Health`.
//!
//! Run: `cargo run --example own_server [SEED]` (or `SEED=7 cargo run ...`).
//! The server loses 30% of `Check` requests and 20% of its responses; the client retries.
//! Look for: the fault counts, how many of the 200 calls needed retries (and how many gave up),
//! and the two `handled_total` views of `Check`: the server counts every attempt (the injected
//! losses show up as `UNAVAILABLE`), the client counts one outcome per logical call.
//! The same seed replays the same fault sequence, so the numbers repeat run to run.

use std::time::Duration;

use grpc_layers::MethodFilter;
use grpc_layers::fault::{FaultConfig, FaultLayer};
use grpc_layers::metrics::MetricsLayer;
use grpc_layers::retry::{GRPC_PREVIOUS_RPC_ATTEMPTS, RetryLayer, RetryPolicy};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const HEALTH: &str = "grpc.health.v1.Health";
const CALLS: u32 = 200;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed: u64 = match std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SEED").ok())
    {
        Some(s) => s
            .parse()
            .map_err(|e| format!("seed {s:?} is not a u64: {e}"))?,
        None => 42,
    };
    println!("seed {seed} (pass it as the first argument or SEED to replay this run)");

    // The reporter starts with the overall service ("") SERVING, which is what `Check` with an
    // empty name asks about, so nothing needs registering.
    let (_reporter, health) = tonic_health::server::health_reporter();

    let server_metrics = MetricsLayer::server();
    let faults = FaultLayer::new(
        FaultConfig::new(seed)
            .drop_requests(30.0)
            .drop_responses(20.0)
            .methods(MethodFilter::only([format!("/{HEALTH}/Check")])),
    )?;
    let (server_metrics_handle, fault_stats) = (server_metrics.handle(), faults.stats());

    // Port 0 lets the OS pick, so the example never collides with anything already running.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            // Outermost, so the attempts the fault layer refuses are counted too.
            .layer(server_metrics)
            .layer(faults)
            .add_service(health)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );

    let channel = Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let client_metrics = MetricsLayer::client();
    // Each attempt fails with probability 0.3 + 0.7 * 0.2 = 0.44, which would drain the default
    // A6 throttle within a few calls; this run wants every call retried. Short backoffs keep a
    // sequential run fast, and the seeded jitter keeps it replayable.
    let retry = RetryLayer::new(
        RetryPolicy::default()
            .max_attempts(8)
            .backoff(Duration::from_millis(2), Duration::from_millis(20), 2.0)
            .without_throttle()
            .seed(seed)
            .methods(MethodFilter::service(HEALTH)),
    );
    let (client_metrics_handle, retry_stats) = (client_metrics.handle(), retry.stats());
    let stack = tower::ServiceBuilder::new()
        // Above retry: one count per logical call, whatever the number of attempts.
        .layer(client_metrics)
        .layer(retry)
        .service(channel);
    let mut client = HealthClient::new(stack);

    let (mut first_try, mut after_retries, mut failed) = (0u32, 0u32, 0u32);
    let mut most_attempts = 1u32;
    for _ in 0..CALLS {
        // Calls run one after another so the fault decisions follow call order and replay.
        match client.check(HealthCheckRequest::default()).await {
            Ok(resp) => {
                let previous = previous_attempts(resp.metadata());
                most_attempts = most_attempts.max(previous + 1);
                if previous == 0 {
                    first_try += 1;
                } else {
                    after_retries += 1;
                }
            }
            Err(status) => {
                failed += 1;
                // A failed call carries the attempt count too, in the status metadata.
                println!(
                    "gave up: {:?} ({}) after {} attempts",
                    status.code(),
                    status.message(),
                    previous_attempts(status.metadata()) + 1
                );
            }
        }
    }

    println!("\n== server faults");
    println!("requests dropped:  {}", fault_stats.requests_dropped());
    println!("responses dropped: {}", fault_stats.responses_dropped());
    println!("passed:            {}", fault_stats.passed());
    println!("\n== client retries");
    println!("retries sent:      {}", retry_stats.retries());
    println!("exhausted:         {}", retry_stats.exhausted());
    println!("throttled:         {}", retry_stats.throttled());
    println!("\n== {CALLS} Check calls");
    println!("ok on first try:   {first_try}");
    println!("ok after retries:  {after_retries} (most attempts for one call: {most_attempts})");
    println!("failed:            {failed}");

    for (side, handle) in [
        ("server", &server_metrics_handle),
        ("client", &client_metrics_handle),
    ] {
        println!("\n== {side} metrics (Check)");
        handle
            .render_prometheus()
            .lines()
            .filter(|l| l.contains("Check") && (l.contains("_total") || l.contains("_count")))
            .for_each(|l| println!("{l}"));
    }

    // Graceful: in-flight calls finish (there are none left) before serve returns.
    let _ = stop.send(());
    server.await??;
    println!("\nserver stopped");
    Ok(())
}

/// Attempts before the last one; the header is only present when the call was retried.
fn previous_attempts(metadata: &tonic::metadata::MetadataMap) -> u32 {
    metadata
        .get(GRPC_PREVIOUS_RPC_ATTEMPTS.as_str())
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}
