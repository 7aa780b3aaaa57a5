use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::grpc::{MethodFilter, encode_frame, parse_timeout, status_in_chain};

type Mock = mock::Mock<Request<Body>, Response<()>>;
type Handle = mock::Handle<Request<Body>, Response<()>>;

/// What the inner service saw of one attempt.
#[derive(Debug)]
struct Seen {
    body: Bytes,
    headers: HeaderMap,
}

/// How the scripted inner service answers attempt `n` (0-based).
type Script = Box<dyn FnMut(usize) -> Result<Response<()>, BoxError> + Send>;

fn status(code: &'static str) -> Result<Response<()>, BoxError> {
    let mut response = Response::new(());
    response
        .headers_mut()
        .insert("grpc-status", code.parse().expect("valid header"));
    Ok(response)
}

fn committed() -> Result<Response<()>, BoxError> {
    Ok(Response::new(()))
}

/// Runs the inner service on its own task, recording each attempt; `delay` is how long each
/// attempt takes.
fn serve(mut handle: Handle, mut script: Script, delay: Duration) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((req, respond)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .expect("replayed bodies read")
                .to_bytes();
            let n = {
                let mut log = log.lock().unwrap();
                log.push(Seen {
                    body,
                    headers: parts.headers,
                });
                log.len() - 1
            };
            tokio::time::sleep(delay).await;
            match script(n) {
                Ok(response) => respond.send_response(response),
                Err(err) => respond.send_error(err),
            }
        }
    });
    seen
}

fn retry(policy: RetryPolicy) -> (RetryLayer, Retry<Mock>, Handle) {
    let layer = RetryLayer::new(policy.seed(7));
    let (mock, handle) = mock::pair();
    let svc = layer.layer(mock);
    (layer, svc, handle)
}

fn request(message: &[u8]) -> Request<Full<Bytes>> {
    let body = Full::new(encode_frame(message));
    Request::builder()
        .uri("/kv.v1.KvService/Put")
        .body(body)
        .expect("valid request")
}

async fn send(svc: &mut Retry<Mock>, req: Request<Full<Bytes>>) -> Result<Response<()>, BoxError> {
    ServiceExt::<Request<Full<Bytes>>>::ready(svc)
        .await
        .expect("ready")
        .call(req)
        .await
}

fn previous(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(GRPC_PREVIOUS_RPC_ATTEMPTS)
        .map(|v| v.to_str().expect("ascii"))
}

/// Every attempt carries the same body bytes, numbered by grpc-previous-rpc-attempts, and the
/// final response reports the earlier attempts in its header and extension.
#[tokio::test(start_paused = true)]
async fn replays_same_bytes_and_counts_attempts() {
    let (layer, mut svc, handle) = retry(RetryPolicy::default());
    let script: Script = Box::new(|n| if n < 2 { status("14") } else { committed() });
    let seen = serve(handle, script, Duration::ZERO);
    let response = send(&mut svc, request(b"payload"))
        .await
        .expect("third attempt succeeds");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body == encode_frame(b"payload")));
    let numbers: Vec<_> = seen.iter().map(|s| previous(&s.headers)).collect();
    assert_eq!(numbers, [None, Some("1"), Some("2")]);
    assert_eq!(previous(response.headers()), Some("2"));
    assert_eq!(
        response.extensions().get::<RetryInfo>(),
        Some(&RetryInfo { attempts: 3 })
    );
    assert_eq!(layer.stats().retries(), 2);
}

/// Retries stop at max_attempts and the last Trailers-Only answer is returned, tagged.
#[tokio::test(start_paused = true)]
async fn stops_at_max_attempts() {
    let (layer, mut svc, handle) = retry(RetryPolicy::default().max_attempts(3).without_throttle());
    let seen = serve(handle, Box::new(|_| status("14")), Duration::ZERO);
    let response = send(&mut svc, request(b"x"))
        .await
        .expect("a Trailers-Only response");
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(previous(response.headers()), Some("2"));
    assert_eq!(layer.stats().exhausted(), 1);
}

/// Retries stop when the next attempt could not finish before the caller's grpc-timeout, and
/// each retry carries the time left.
#[tokio::test(start_paused = true)]
async fn stops_at_deadline() {
    let policy = RetryPolicy::default()
        .backoff(Duration::from_millis(1), Duration::from_millis(1), 1.0)
        .max_attempts(10)
        .without_throttle();
    let (_layer, mut svc, handle) = retry(policy);
    let seen = serve(
        handle,
        Box::new(|_| status("14")),
        Duration::from_millis(100),
    );
    let mut req = request(b"x");
    req.headers_mut()
        .insert("grpc-timeout", "250m".parse().expect("valid header"));
    let start = Instant::now();
    send(&mut svc, req).await.expect("a Trailers-Only response");
    assert!(
        start.elapsed() <= Duration::from_millis(310),
        "{:?}",
        start.elapsed()
    );
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        3,
        "attempts at 0, ~100 and ~200 ms; none after 250 ms"
    );
    let timeouts: Vec<_> = seen
        .iter()
        .map(|s| parse_timeout(&s.headers["grpc-timeout"]).expect("valid timeout"))
        .collect();
    assert_eq!(timeouts[0], Duration::from_millis(250));
    assert!(timeouts[1] <= Duration::from_millis(150) && timeouts[2] <= Duration::from_millis(50));
}

/// The shared throttle stops retries once failures drain it to half, across calls.
#[tokio::test(start_paused = true)]
async fn stops_when_throttle_is_empty() {
    let (layer, mut svc, handle) = retry(RetryPolicy::default().throttle(4, 0.1));
    let seen = serve(handle, Box::new(|_| status("14")), Duration::ZERO);
    send(&mut svc, request(b"a")).await.expect("response");
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "4 -> 3 retries, 3 -> 2 stops"
    );
    send(&mut svc, request(b"b")).await.expect("response");
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "the bucket is still below half"
    );
    assert_eq!(layer.stats().throttled(), 2);
}

/// ABORTED is not retryable by default: one attempt only.
#[tokio::test(start_paused = true)]
async fn never_retries_aborted() {
    let (_layer, mut svc, handle) = retry(RetryPolicy::default());
    let seen = serve(handle, Box::new(|_| status("10")), Duration::ZERO);
    let response = send(&mut svc, request(b"x")).await.expect("response");
    assert_eq!(response.headers()["grpc-status"], "10");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(previous(response.headers()), None);
}

/// A response head without grpc-status commits the call: it is returned, never retried.
#[tokio::test(start_paused = true)]
async fn does_not_retry_committed_response() {
    let (_layer, mut svc, handle) = retry(RetryPolicy::default());
    let seen = serve(handle, Box::new(|_| committed()), Duration::ZERO);
    send(&mut svc, request(b"x")).await.expect("response");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// Transport errors are retried, a non-retryable Status error is not, and an exhausted
/// transport error reaches the caller as a Status carrying the attempt count.
#[tokio::test(start_paused = true)]
async fn retries_transport_errors_only() {
    let (_layer, mut svc, handle) =
        retry(RetryPolicy::default().max_attempts(2).without_throttle());
    let script: Script = Box::new(|n| match n {
        0 => Err("connection refused".into()),
        1 => committed(),
        2 => Err(Box::new(tonic::Status::invalid_argument("bad"))),
        _ => Err("connection reset".into()),
    });
    let seen = serve(handle, script, Duration::ZERO);
    send(&mut svc, request(b"x"))
        .await
        .expect("second attempt succeeds");
    assert_eq!(seen.lock().unwrap().len(), 2);
    let err = send(&mut svc, request(b"x"))
        .await
        .expect_err("invalid argument");
    assert_eq!(status_in_chain(&*err), Some(Code::InvalidArgument));
    assert_eq!(seen.lock().unwrap().len(), 3);
    let err = send(&mut svc, request(b"x"))
        .await
        .expect_err("reset twice");
    let status = tonic::Status::from_error(err);
    assert_eq!(
        status
            .metadata()
            .get("grpc-previous-rpc-attempts")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert_eq!(seen.lock().unwrap().len(), 5);
}

/// A body over max_buffer_bytes is sent once, whole, and never retried.
#[tokio::test(start_paused = true)]
async fn large_bodies_pass_unretried() {
    let (_layer, mut svc, handle) = retry(RetryPolicy::default().max_buffer_bytes(4));
    let seen = serve(handle, Box::new(|_| status("14")), Duration::ZERO);
    let response = send(&mut svc, request(b"too long"))
        .await
        .expect("response");
    assert_eq!(response.headers()["grpc-status"], "14");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, encode_frame(b"too long"));
}

fn timeout_expired() -> Result<Response<()>, BoxError> {
    Err(Box::new(tonic::TimeoutExpired(())))
}

/// The code a final error carries, as a tonic client would read it.
fn code_of(err: &BoxError) -> Code {
    status_in_chain(&**err).expect("the error is a Status")
}

/// A timed-out attempt was on the wire and may have been processed: by default it ends the
/// call, unretried, with DEADLINE_EXCEEDED (not tonic's CANCELLED "Timeout expired").
#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_ends_the_call() {
    let (layer, mut svc, handle) = retry(RetryPolicy::default().without_throttle());
    let seen = serve(handle, Box::new(|_| timeout_expired()), Duration::ZERO);
    let err = send(&mut svc, request(b"x")).await.expect_err("timed out");
    assert_eq!(seen.lock().unwrap().len(), 1, "not sent again");
    assert_eq!(code_of(&err), Code::DeadlineExceeded, "{err}");
    assert_eq!(layer.stats().retries(), 0);
}

/// A method the policy says is safe to repeat is retried after a timed-out attempt.
#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_repeated_where_the_policy_allows() {
    let policy = RetryPolicy::default()
        .without_throttle()
        .repeat_timed_out(MethodFilter::only(["Put"]));
    let (_layer, mut svc, handle) = retry(policy);
    let script: Script = Box::new(|n| {
        if n < 2 {
            timeout_expired()
        } else {
            committed()
        }
    });
    let seen = serve(handle, script, Duration::ZERO);
    send(&mut svc, request(b"x"))
        .await
        .expect("the third attempt answers");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// Calls the policy does not retry still get DEADLINE_EXCEEDED for a timeout.
#[tokio::test(start_paused = true)]
async fn unretried_methods_get_deadline_exceeded_too() {
    let policy = RetryPolicy::default().methods(MethodFilter::only(["Get"]));
    let (_layer, mut svc, handle) = retry(policy);
    let seen = serve(handle, Box::new(|_| timeout_expired()), Duration::ZERO);
    let err = send(&mut svc, request(b"x")).await.expect_err("timed out");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(code_of(&err), Code::DeadlineExceeded, "{err}");
}
