use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use tonic::Code;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::grpc::ReplayBody;

type Mock = mock::Mock<Request<()>, Response<ReplayBody>>;
type Handle = mock::Handle<Request<()>, Response<ReplayBody>>;

const PUT: &str = "/kv.v1.KvService/Put";

fn service() -> (Metrics<Mock>, Handle, MetricsHandle) {
    let layer = MetricsLayer::server();
    let (mock, handle) = mock::pair();
    (layer.layer(mock), handle, layer.handle())
}

fn request() -> Request<()> {
    Request::builder().uri(PUT).body(()).expect("valid request")
}

/// A unary OK response: a message, then `grpc-status: 0` in the trailers only.
fn ok_response() -> Response<ReplayBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("valid header"));
    Response::new(ReplayBody::new(
        Bytes::from_static(b"\0\0\0\0\0"),
        Some(trailers),
    ))
}

/// A Trailers-Only response: the status is in the head and the body is empty.
fn trailers_only(code: &'static str) -> Response<ReplayBody> {
    let mut response = Response::new(ReplayBody::default());
    response
        .headers_mut()
        .insert("grpc-status", code.parse().expect("valid header"));
    response
}

/// Calls `svc` once and answers with `response`.
async fn call(
    svc: &mut Metrics<Mock>,
    handle: &mut Handle,
    response: Response<ReplayBody>,
) -> Result<Response<MetricsBody<ReplayBody>>, BoxError> {
    let fut = svc.ready().await.expect("ready").call(request());
    let (_, respond) = handle.next_request().await.expect("inner called");
    respond.send_response(response);
    fut.await
}

/// An OK whose status is only in the trailers counts as handled once the body ends.
#[tokio::test]
async fn counts_ok_from_trailers() {
    let (mut svc, mut handle, metrics) = service();
    let response = call(&mut svc, &mut handle, ok_response())
        .await
        .expect("ok");
    assert_eq!(metrics.started(PUT), 1);
    assert_eq!(metrics.handled(PUT, Code::Ok), 0, "not before the trailers");
    assert_eq!(metrics.in_flight(PUT), 1);
    response.into_body().collect().await.expect("body reads");
    assert_eq!(metrics.handled(PUT, Code::Ok), 1);
    assert_eq!(metrics.in_flight(PUT), 0);
}

/// A Trailers-Only error is counted by its code as soon as the head arrives.
#[tokio::test]
async fn counts_trailers_only_error_by_code() {
    let (mut svc, mut handle, metrics) = service();
    let response = call(&mut svc, &mut handle, trailers_only("14"))
        .await
        .expect("a response");
    assert_eq!(metrics.handled(PUT, Code::Unavailable), 1);
    assert_eq!(metrics.in_flight(PUT), 0);
    drop(response);
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.methods[0].handled.get("UNAVAILABLE"), Some(&1));
    assert_eq!(snapshot.methods[0].handled.len(), 1, "counted exactly once");
}

/// Errors are counted with tonic's mapping, and a body dropped early counts as CANCELLED, so
/// in-flight returns to zero in every case.
#[tokio::test]
async fn in_flight_returns_to_zero() {
    let (mut svc, mut handle, metrics) = service();
    let fut = svc.ready().await.expect("ready").call(request());
    let (_, respond) = handle.next_request().await.expect("inner called");
    respond.send_error(tonic::Status::unavailable("gone"));
    let err = fut.await.expect_err("inner failed");
    assert_eq!(tonic::Status::from_error(err).code(), Code::Unavailable);
    let fut = svc.ready().await.expect("ready").call(request());
    let (_, respond) = handle.next_request().await.expect("inner called");
    respond.send_error("connection reset");
    fut.await.expect_err("inner failed");
    let response = call(&mut svc, &mut handle, ok_response())
        .await
        .expect("ok");
    assert_eq!(metrics.in_flight(PUT), 1);
    drop(response);
    let pending = svc.ready().await.expect("ready").call(request());
    drop(pending);
    assert_eq!(metrics.in_flight(PUT), 0);
    assert_eq!(metrics.started(PUT), 4);
    assert_eq!(metrics.handled(PUT, Code::Unavailable), 1);
    assert_eq!(metrics.handled(PUT, Code::Unknown), 1);
    assert_eq!(metrics.handled(PUT, Code::Cancelled), 2);
}

/// The Prometheus text carries go-grpc-prometheus names and labels.
#[tokio::test]
async fn renders_prometheus_text() {
    let (mut svc, mut handle, metrics) = service();
    let response = call(&mut svc, &mut handle, ok_response())
        .await
        .expect("ok");
    response.into_body().collect().await.expect("body reads");
    let text = metrics.render_prometheus();
    let labels = r#"grpc_type="unary",grpc_service="kv.v1.KvService",grpc_method="Put""#;
    assert!(
        text.contains(&format!("grpc_server_started_total{{{labels}}} 1\n")),
        "{text}"
    );
    let handled = format!("grpc_server_handled_total{{{labels},grpc_code=\"OK\"}} 1\n");
    assert!(text.contains(&handled), "{text}");
    assert!(
        text.contains(&format!("grpc_server_in_flight{{{labels}}} 0\n")),
        "{text}"
    );
    assert!(text.contains(&format!(
        "grpc_server_handling_seconds_count{{{labels}}} 1\n"
    )));
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"));
    let client = MetricsLayer::client().handle().render_prometheus();
    assert!(client.contains("# TYPE grpc_client_handled_total counter"));
}

/// Latency lands in the right bucket (measured on tokio's paused clock).
#[tokio::test(start_paused = true)]
async fn measures_latency() {
    let (mut svc, mut handle, metrics) = service();
    assert_eq!(metrics.latency_quantile(PUT, 0.5), None);
    let fut = svc.ready().await.expect("ready").call(request());
    let (_, respond) = handle.next_request().await.expect("inner called");
    tokio::time::sleep(Duration::from_millis(70)).await;
    respond.send_response(trailers_only("0"));
    fut.await.expect("ok");
    let p50 = metrics.latency_quantile(PUT, 0.5).expect("one observation");
    assert!(
        p50 > Duration::from_millis(50) && p50 <= Duration::from_millis(100),
        "{p50:?}"
    );
}
