use std::time::Duration;

use http::{Request, Response};
use tonic::Code;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::grpc::status_in_chain;

fn request(timeout: Option<&str>) -> Request<()> {
    let mut builder = Request::builder().uri("/a.S/M");
    if let Some(timeout) = timeout {
        builder = builder.header("grpc-timeout", timeout);
    }
    builder.body(()).expect("valid request")
}

/// A call still running when the caller's grpc-timeout passes ends with DEADLINE_EXCEEDED.
#[tokio::test(start_paused = true)]
async fn the_callers_timeout_ends_the_call() {
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let mut svc = DeadlineLayer::new().layer(mock);
    let call = svc
        .ready()
        .await
        .expect("ready")
        .call(request(Some("100m")));
    let (_req, _respond) = handle.next_request().await.expect("the call arrived");
    let started = tokio::time::Instant::now();
    let err = call.await.expect_err("never answered");
    assert_eq!(
        status_in_chain(&*err),
        Some(Code::DeadlineExceeded),
        "{err}"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

/// The server's own limit applies when it is sooner than the caller's, or the caller sets none.
#[tokio::test(start_paused = true)]
async fn the_servers_limit_caps_every_call() {
    for timeout in [Some("10S"), None] {
        let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
        let mut svc = DeadlineLayer::at_most(Duration::from_millis(300)).layer(mock);
        let call = svc.ready().await.expect("ready").call(request(timeout));
        let (_req, _respond) = handle.next_request().await.expect("the call arrived");
        let started = tokio::time::Instant::now();
        let err = call.await.expect_err("never answered");
        assert_eq!(status_in_chain(&*err), Some(Code::DeadlineExceeded));
        assert_eq!(started.elapsed(), Duration::from_millis(300), "{timeout:?}");
    }
}

/// A call answered in time passes untouched, and one without any deadline waits as long as
/// it takes.
#[tokio::test(start_paused = true)]
async fn answers_in_time_pass() {
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let mut svc = DeadlineLayer::new().layer(mock);
    let call = svc.ready().await.expect("ready").call(request(None));
    let (_req, respond) = handle.next_request().await.expect("the call arrived");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    respond.send_response(Response::new(()));
    call.await.expect("answered");
}

/// The deadline counts from the call, not from the first poll: the timer is armed only when
/// the inner call is first pending, but it is set for the instant the call plus its limit.
#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_the_call_not_the_first_poll() {
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let mut svc = DeadlineLayer::new().layer(mock);
    let called = tokio::time::Instant::now();
    let call = svc
        .ready()
        .await
        .expect("ready")
        .call(request(Some("100m")));
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (_req, _respond) = handle.next_request().await.expect("the call arrived");
    let err = call.await.expect_err("never answered");
    assert_eq!(status_in_chain(&*err), Some(Code::DeadlineExceeded));
    assert_eq!(called.elapsed(), Duration::from_millis(100));
}

/// A call answered on its first poll is answered even when its deadline has already passed:
/// the answer was there before the timer was looked at.
#[tokio::test(start_paused = true)]
async fn an_answer_ready_at_the_first_poll_wins() {
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let mut svc = DeadlineLayer::new().layer(mock);
    let call = svc.ready().await.expect("ready").call(request(Some("10m")));
    let (_req, respond) = handle.next_request().await.expect("the call arrived");
    respond.send_response(Response::new(()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.await.expect("answered before the first poll");
}
