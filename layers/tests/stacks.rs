//! Every layer stacks on a tonic server and around a tonic channel, and works end to end.
//!
//! The loopback test runs the health service behind the server stack (metrics, validate,
//! fault) and calls it through the client stack (metrics, retry, validate, fault): injected
//! request loss is retried away, validation failures cross the wire as real statuses with
//! details, and client-side validation fails fast without reaching the server.

use std::time::Duration;

use grpc_layers::MethodFilter;
use grpc_layers::fault::{FaultConfig, FaultLayer};
use grpc_layers::metrics::MetricsLayer;
use grpc_layers::retry::{RetryInfo, RetryLayer, RetryPolicy};
use grpc_layers::validate::{FieldViolation, ValidateLayer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use tower::ServiceBuilder;

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// Server-side rule: the service name "forbidden" is refused.
fn server_rules() -> ValidateLayer<grpc_layers::validate::Rules> {
    ValidateLayer::prost::<HealthCheckRequest, _>(CHECK, |req| match req.service.as_str() {
        "forbidden" => Err(vec![FieldViolation::new("service", "is forbidden")]),
        _ => Ok(()),
    })
}

/// Client-side rule: service names are at most 64 bytes.
fn client_rules() -> ValidateLayer<grpc_layers::validate::Rules> {
    ValidateLayer::prost::<HealthCheckRequest, _>(CHECK, |req| {
        if req.service.len() > 64 {
            return Err(vec![FieldViolation::new("service", "longer than 64 bytes")]);
        }
        Ok(())
    })
}

/// Every layer constructs around a lazy channel handed to a generated client, and on a server.
#[tokio::test]
async fn stacks_compile_and_construct() {
    let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let stack = ServiceBuilder::new()
        .layer(MetricsLayer::client())
        .layer(RetryLayer::default())
        .layer(ValidateLayer::max_message_size(1024))
        .layer(FaultLayer::new(FaultConfig::new(0)).expect("valid config"))
        .service(channel);
    let _client = HealthClient::new(stack);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let _router = Server::builder()
        .layer(MetricsLayer::server())
        .layer(server_rules())
        .layer(FaultLayer::new(FaultConfig::new(0)).expect("valid config"))
        .add_service(health);
}

/// A real loopback call goes through both stacks with faults retried away and statuses intact.
#[tokio::test]
async fn loopback_through_both_stacks() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server_metrics = MetricsLayer::server();
    let faults = FaultConfig::new(1)
        .drop_requests(40.0)
        .methods(MethodFilter::service("grpc.health.v1.Health"));
    let server_faults = FaultLayer::new(faults).expect("valid config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .layer(server_metrics.clone())
        .layer(server_rules())
        .layer(server_faults.clone())
        .add_service(health)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            stopped.await.ok();
        });
    let server = tokio::spawn(server);

    let channel: Channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("server is listening");
    let client_metrics = MetricsLayer::client();
    let retry = RetryLayer::new(
        RetryPolicy::default()
            .max_attempts(5)
            .backoff(Duration::from_millis(1), Duration::from_millis(5), 2.0)
            .without_throttle()
            .seed(1),
    );
    let stack = ServiceBuilder::new()
        .layer(client_metrics.clone())
        .layer(retry.clone())
        .layer(client_rules())
        .layer(FaultLayer::new(FaultConfig::new(0)).expect("valid config"))
        .service(channel);
    let mut client = HealthClient::new(stack);

    let mut retried_calls = 0;
    for _ in 0..10 {
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("retries hide the injected loss");
        let attempts = response
            .extensions()
            .get::<RetryInfo>()
            .expect("retry info")
            .attempts;
        if attempts > 1 {
            retried_calls += 1;
            let previous = response.metadata().get("grpc-previous-rpc-attempts");
            assert_eq!(
                previous.map(|v| v.to_str().unwrap().to_owned()),
                Some((attempts - 1).to_string())
            );
        }
    }
    let dropped = server_faults.stats().requests_dropped();
    assert!(
        dropped > 0 && retried_calls > 0,
        "the seed injects some loss"
    );
    assert_eq!(retry.stats().retries(), dropped);
    assert_eq!(client_metrics.handle().handled(CHECK, Code::Ok), 10);
    assert_eq!(
        server_metrics.handle().handled(CHECK, Code::Unavailable),
        dropped
    );

    // Server-side validation: a real INVALID_ARGUMENT with BadRequest details.
    let status = loop {
        let request = HealthCheckRequest {
            service: "forbidden".into(),
        };
        let status = client
            .check(request)
            .await
            .expect_err("refused by the server");
        if status.code() != Code::Unavailable {
            break status;
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_details_bad_request().expect("field violations");
    assert_eq!(details.field_violations[0].field, "service");

    // Client-side validation fails fast: the server never sees the call.
    let started = server_metrics.handle().started(CHECK);
    let status = client
        .check(HealthCheckRequest {
            service: "x".repeat(100),
        })
        .await
        .expect_err("refused by the client");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(server_metrics.handle().started(CHECK), started);
    assert!(
        server_metrics
            .handle()
            .render_prometheus()
            .contains("grpc_server_handled_total{")
    );

    stop.send(()).expect("server is running");
    server
        .await
        .expect("server task")
        .expect("server shuts down cleanly");
}

/// A call whose attempt times out (tonic's `Endpoint::timeout`, here 200 ms against a server
/// that takes 500 ms) ends with DEADLINE_EXCEEDED, not tonic's CANCELLED, and is not sent
/// again by the retry layer: the server saw it and may have acted on it.
#[tokio::test]
async fn a_timed_out_call_is_deadline_exceeded_and_sent_once() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server_metrics = MetricsLayer::server();
    let slow = FaultConfig::new(1)
        .delay(Duration::from_millis(500), Duration::ZERO)
        .methods(MethodFilter::service("grpc.health.v1.Health"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .layer(server_metrics.clone())
        .layer(FaultLayer::new(slow).expect("valid config"))
        .add_service(health)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        });
    let server = tokio::spawn(server);

    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid url")
        .timeout(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    let retry = RetryLayer::new(RetryPolicy::default().max_attempts(5));
    let mut client = HealthClient::new(ServiceBuilder::new().layer(retry.clone()).service(channel));
    let err = client
        .check(HealthCheckRequest::default())
        .await
        .expect_err("the call times out");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(
        retry.stats().retries(),
        0,
        "a timed-out attempt is not sent again"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = server_metrics.handle().started(CHECK);
    assert_eq!(started, 1, "the server saw one attempt");
    let _ = stop.send(());
    server.await.expect("server task").expect("server ran");
}
