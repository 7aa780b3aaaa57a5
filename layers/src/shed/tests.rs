use std::time::Duration;

use http::{Request, Response};
use tonic::Code;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::grpc::status_in_chain;

type Handle = mock::Handle<Request<String>, Response<String>>;
type Mocked = Shed<mock::Mock<Request<String>, Response<String>>>;

fn request(path: &str) -> Request<String> {
    Request::builder()
        .uri(path)
        .body(String::from("body"))
        .expect("valid request")
}

fn shed(limit: usize, methods: MethodFilter) -> (ShedLayer, Mocked, Handle) {
    let layer = ShedLayer::with_methods(limit, methods);
    let (mock, handle) = mock::pair();
    (layer.clone(), layer.layer(mock), handle)
}

/// With the limit reached, the next call is refused at once with RESOURCE_EXHAUSTED and never
/// reaches the inner service; a finished call frees its place.
#[tokio::test]
async fn refuses_beyond_the_limit_and_frees_on_completion() {
    let (layer, mut svc, mut handle) = shed(2, MethodFilter::All);
    let first = svc.ready().await.expect("ready").call(request("/a.S/M"));
    let second = svc.ready().await.expect("ready").call(request("/a.S/M"));
    assert_eq!(svc.in_flight(), 2);
    let third = svc.ready().await.expect("ready").call(request("/a.S/M"));
    let err = tokio::time::timeout(Duration::from_secs(1), third)
        .await
        .expect("refused at once")
        .expect_err("over the limit");
    assert_eq!(
        status_in_chain(&*err),
        Some(Code::ResourceExhausted),
        "{err}"
    );
    let (_, respond) = handle.next_request().await.expect("first call");
    respond.send_response(Response::new(String::new()));
    first.await.expect("answered");
    assert_eq!(svc.in_flight(), 1, "the answered call freed its place");
    let (_, respond) = handle.next_request().await.expect("second call");
    respond.send_response(Response::new(String::new()));
    second.await.expect("answered");
    let fourth = svc.ready().await.expect("ready").call(request("/a.S/M"));
    let (_, respond) = handle.next_request().await.expect("the fourth call got in");
    respond.send_response(Response::new(String::new()));
    fourth.await.expect("answered");
    assert_eq!((layer.stats().admitted(), layer.stats().shed()), (3, 1));
}

/// An answer the client has not taken yet still holds its place: the place is freed when the
/// response body ends (or is dropped), not when the response head is returned.
#[tokio::test]
async fn the_place_is_held_until_the_body_ends() {
    use http_body_util::BodyExt;
    let (_layer, mut svc, mut handle) = shed(1, MethodFilter::All);
    for drain in [true, false] {
        let call = svc.ready().await.expect("ready").call(request("/a.S/M"));
        let (_, respond) = handle.next_request().await.expect("the call");
        respond.send_response(Response::new(String::from("the answer")));
        let response = call.await.expect("answered");
        assert_eq!(svc.in_flight(), 1, "the body is not taken yet");
        let mut body = response.into_body();
        if drain {
            while let Some(frame) = body.frame().await {
                frame.expect("a frame");
            }
            assert_eq!(svc.in_flight(), 0, "the body ended");
        }
        drop(body);
        assert_eq!(svc.in_flight(), 0);
    }
}

/// A call dropped before it finished (the client went away) gives its place back.
#[tokio::test]
async fn a_dropped_call_frees_its_place() {
    let (_layer, mut svc, _handle) = shed(1, MethodFilter::All);
    let call = svc.ready().await.expect("ready").call(request("/a.S/M"));
    assert_eq!(svc.in_flight(), 1);
    drop(call);
    assert_eq!(svc.in_flight(), 0);
}

/// Calls the filter does not select are never counted nor refused.
#[tokio::test]
async fn unselected_calls_pass() {
    let (layer, mut svc, mut handle) = shed(1, MethodFilter::service("a.S"));
    let counted = svc.ready().await.expect("ready").call(request("/a.S/M"));
    let health = svc
        .ready()
        .await
        .expect("ready")
        .call(request("/grpc.health.v1.Health/Check"));
    let (_, respond) = handle.next_request().await.expect("counted call");
    respond.send_response(Response::new(String::new()));
    let (_, respond) = handle.next_request().await.expect("health call got in");
    respond.send_response(Response::new(String::new()));
    counted.await.expect("answered");
    health.await.expect("answered");
    assert_eq!((layer.stats().admitted(), layer.stats().shed()), (1, 0));
}

/// A refusal reads what is left of the request, but waits at most a second for a request that
/// never ends, so such a client cannot keep the call (and its connection) open.
#[tokio::test(start_paused = true)]
async fn a_refusal_gives_up_on_a_request_that_never_ends() {
    struct Endless;
    impl http_body::Body for Endless {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }
    let stuck = tower::service_fn(|_: Request<Endless>| {
        std::future::pending::<Result<Response<String>, BoxError>>()
    });
    let mut svc = ShedLayer::new(1).layer(stuck);
    let request = || {
        Request::builder()
            .uri("/a.S/M")
            .body(Endless)
            .expect("request")
    };
    let _holding = svc.ready().await.expect("ready").call(request());
    let began = tokio::time::Instant::now();
    let refused = svc.ready().await.expect("ready").call(request());
    let err = refused.await.expect_err("over the limit");
    assert_eq!(status_in_chain(&*err), Some(Code::ResourceExhausted));
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}
