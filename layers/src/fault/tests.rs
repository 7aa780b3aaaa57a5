use std::time::Duration;

use http::{Request, Response};
use tonic::Code;
use tower::{Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::grpc::{MethodFilter, error_code};

type Mock = mock::Mock<Request<()>, Response<&'static str>>;
type Handle = mock::Handle<Request<()>, Response<&'static str>>;

const PUT: &str = "/kv.v1.KvService/Put";

fn request(path: &str) -> Request<()> {
    Request::builder()
        .uri(path)
        .body(())
        .expect("valid request")
}

fn fault(config: FaultConfig) -> (Fault<Mock>, Handle) {
    let (mock, handle) = mock::pair();
    (Fault::new(mock, config).expect("valid config"), handle)
}

/// Drives one call through `svc`, answering it from `handle` if it reaches the inner service.
async fn call(
    svc: &mut Fault<Mock>,
    handle: &mut Handle,
    path: &str,
) -> Result<&'static str, Code> {
    let fut = svc
        .ready()
        .await
        .expect("mock is ready")
        .call(request(path));
    let mut fut = std::pin::pin!(fut);
    let result = tokio::select! {
        result = &mut fut => result,
        Some((_, respond)) = handle.next_request() => {
            respond.send_response(Response::new("inner"));
            fut.await
        }
    };
    result.map(Response::into_body).map_err(|e| error_code(&*e))
}

/// A dropped request is answered UNAVAILABLE and never reaches the inner service.
#[tokio::test]
async fn drop_request_never_calls_inner() {
    let (mut svc, mut handle) = fault(FaultConfig::new(1).drop_requests(100.0));
    let err = svc.ready().await.expect("ready").call(request(PUT)).await;
    let err = err.expect_err("request is dropped");
    assert_eq!(error_code(&*err), Code::Unavailable);
    assert!(err.to_string().contains("injected request loss"));
    assert_eq!(svc.stats().requests_dropped(), 1);
    drop(svc);
    assert!(
        handle.next_request().await.is_none(),
        "inner saw no request"
    );
}

/// A dropped response still calls the inner service exactly once, then answers UNAVAILABLE.
#[tokio::test]
async fn drop_response_calls_inner_exactly_once() {
    let (mut svc, mut handle) = fault(FaultConfig::new(1).drop_responses(100.0));
    let fut = svc.ready().await.expect("ready").call(request(PUT));
    let (_, respond) = handle.next_request().await.expect("inner is called");
    respond.send_response(Response::new("written"));
    let err = fut.await.expect_err("response is dropped");
    assert_eq!(error_code(&*err), Code::Unavailable);
    assert!(err.to_string().contains("injected response loss"));
    assert_eq!(svc.stats().responses_dropped(), 1);
    drop(svc);
    assert!(
        handle.next_request().await.is_none(),
        "inner was called only once"
    );
}

/// Outcomes of 200 calls under a 30% request loss and 30% response loss.
async fn outcomes(seed: u64) -> Vec<Result<&'static str, Code>> {
    let config = FaultConfig::new(seed)
        .drop_requests(30.0)
        .drop_responses(30.0);
    let (mut svc, mut handle) = fault(config);
    let mut out = Vec::new();
    for _ in 0..200 {
        out.push(call(&mut svc, &mut handle, PUT).await);
    }
    out
}

/// The same seed replays the same fault sequence; another seed gives another one.
#[tokio::test]
async fn same_seed_same_sequence() {
    let first = outcomes(42).await;
    assert_eq!(first, outcomes(42).await);
    assert_ne!(first, outcomes(43).await);
    let lost = first.iter().filter(|r| r.is_err()).count();
    assert!(
        (60..=160).contains(&lost),
        "about half the calls fail, got {lost}"
    );
}

/// Calls outside the method filter pass through untouched even at a 100% loss rate.
#[tokio::test]
async fn unselected_methods_pass_through() {
    let config = FaultConfig::new(7)
        .drop_requests(100.0)
        .methods(MethodFilter::service("kv.v1.KvService"));
    let (mut svc, mut handle) = fault(config);
    let health = "/grpc.health.v1.Health/Check";
    assert_eq!(call(&mut svc, &mut handle, health).await, Ok("inner"));
    assert_eq!(
        call(&mut svc, &mut handle, PUT).await,
        Err(Code::Unavailable)
    );
    assert_eq!(svc.stats().passed(), 1);
}

/// A delay holds the request back for at least `base` (on tokio's paused clock).
#[tokio::test(start_paused = true)]
async fn delay_delays() {
    let base = Duration::from_millis(300);
    let config = FaultConfig::new(3).delay(base, Duration::from_millis(100));
    let (mut svc, mut handle) = fault(config);
    let start = tokio::time::Instant::now();
    let fut = svc.ready().await.expect("ready").call(request(PUT));
    let inner = async {
        let (_, respond) = handle.next_request().await.expect("inner is called");
        let reached = start.elapsed();
        respond.send_response(Response::new("late"));
        reached
    };
    let (result, reached) = tokio::join!(fut, inner);
    assert_eq!(result.expect("not dropped").into_body(), "late");
    assert!(
        reached >= base && reached <= base + Duration::from_millis(100),
        "{reached:?}"
    );
    assert_eq!(svc.stats().delayed(), 1);
}

/// Rates outside 0..=100 (and NaN) are refused when the layer is built.
#[test]
fn rates_out_of_range_are_rejected() {
    for bad in [-1.0, 100.5, f64::NAN] {
        let err = FaultLayer::new(FaultConfig::new(0).drop_requests(bad)).expect_err("refused");
        assert!(err.to_string().contains("drop_request_pct"), "{err}");
        assert!(FaultLayer::new(FaultConfig::new(0).drop_responses(bad)).is_err());
    }
    assert!(FaultLayer::new(FaultConfig::new(0).drop_requests(100.0)).is_ok());
}
