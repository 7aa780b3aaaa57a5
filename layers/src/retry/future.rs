//! The response future of [`Retry`](super::Retry): collect, call, back off, call again.
//!
//! Everything lives inline in explicit states; nothing is boxed, so a call that never retries
//! costs one body read into a buffer and one request clone.

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, request::Parts};
use http_body::Body as _;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tower::Service;

use super::{GRPC_PREVIOUS_RPC_ATTEMPTS, RetryInfo, Shared};
use crate::grpc::{
    BoxError, GRPC_TIMEOUT, PrefixedBody, ReplayBody, format_timeout, status_code, status_in_chain,
};

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S: Service<Request<Body>>> {
        #[pin]
        state: State<S::Future>,
        // `None` for calls the policy does not cover.
        call: Option<Call<S>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Reading the request body into `Call::buf`.
        Collecting,
        // An attempt is in flight.
        Calling { #[pin] fut: F },
        // Waiting before the next attempt.
        Backoff { #[pin] sleep: Sleep },
        // Waiting for the service to accept the next attempt.
        Ready,
    }
}

/// One retryable call: the service, the request to replay, and the attempts so far.
struct Call<S> {
    svc: S,
    shared: Arc<Shared>,
    parts: Parts,
    body: Body,
    buf: BytesMut,
    trailers: Option<HeaderMap>,
    data: Bytes,
    attempts: u32,
    deadline: Option<Instant>,
    // False once the body outgrew the buffer and was sent as is.
    replayable: bool,
}

impl<S: Service<Request<Body>>> ResponseFuture<S> {
    pub(super) fn passthrough(fut: S::Future) -> Self {
        let state = State::Calling { fut };
        Self { state, call: None }
    }

    pub(super) fn collecting(
        svc: S,
        shared: Arc<Shared>,
        parts: Parts,
        body: Body,
        deadline: Option<Instant>,
    ) -> Self {
        let call = Call {
            svc,
            shared,
            parts,
            body,
            buf: BytesMut::new(),
            trailers: None,
            data: Bytes::new(),
            attempts: 0,
            deadline,
            replayable: true,
        };
        let state = State::Collecting;
        Self {
            state,
            call: Some(call),
        }
    }
}

impl<S: Service<Request<Body>>> Call<S> {
    /// Reads the whole body, or gives up on replaying it once it exceeds the buffer limit and
    /// sends it as is. Returns the first attempt's future.
    fn poll_collect(&mut self, cx: &mut Context<'_>) -> Poll<Result<S::Future, BoxError>> {
        loop {
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.buf.extend_from_slice(&data);
                        if self.buf.len() > self.shared.policy.max_buffer_bytes {
                            self.replayable = false;
                            self.attempts = 1;
                            let read = mem::take(&mut self.buf).freeze();
                            let rest = mem::take(&mut self.body);
                            let body = Body::new(PrefixedBody::new(read, rest));
                            let req = Request::from_parts(self.parts.clone(), body);
                            return Poll::Ready(Ok(self.svc.call(req)));
                        }
                    }
                    Err(frame) => self.trailers = frame.into_trailers().ok(),
                },
                Some(Err(status)) => return Poll::Ready(Err(Box::new(status))),
                None => {
                    self.data = mem::take(&mut self.buf).freeze();
                    return Poll::Ready(Ok(self.attempt()));
                }
            }
        }
    }

    /// Sends the buffered request again, telling the server how many attempts came before and
    /// how much of the caller's deadline is left.
    fn attempt(&mut self) -> S::Future {
        let mut parts = self.parts.clone();
        if self.attempts > 0 {
            let previous = HeaderValue::from(self.attempts);
            parts.headers.insert(GRPC_PREVIOUS_RPC_ATTEMPTS, previous);
            if let Some(deadline) = self.deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                parts.headers.insert(GRPC_TIMEOUT, format_timeout(left));
            }
        }
        self.attempts += 1;
        let body = Body::new(ReplayBody::new(self.data.clone(), self.trailers.clone()));
        self.svc.call(Request::from_parts(parts, body))
    }

    /// Whether an attempt's outcome is one the policy retries.
    fn is_retryable<B>(&self, result: &Result<Response<B>, BoxError>) -> bool {
        let policy = &self.shared.policy;
        match result {
            Ok(response) => status_code(response.headers())
                .is_some_and(|code| policy.retryable_codes.contains(&code)),
            // The attempt was sent and may have been processed: repeat it only where the
            // policy says that is harmless.
            Err(err) if timed_out(&**err) => policy.repeat_timed_out.matches(self.parts.uri.path()),
            Err(err) => match status_in_chain(&**err) {
                Some(code) => policy.retryable_codes.contains(&code),
                None => policy.retry_transport_errors,
            },
        }
    }

    /// Decides on a retry after a retryable failure: the backoff to wait, or `None` to stop.
    fn next_backoff(&self) -> Option<std::time::Duration> {
        let shared = &self.shared;
        let stats = &shared.stats.inner;
        let allowed = shared.throttle.as_ref().is_none_or(|t| t.on_failure());
        if self.attempts >= shared.policy.max_attempts {
            stats
                .exhausted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        if !allowed {
            stats
                .throttled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        let backoff = shared.backoff(self.attempts);
        if self.deadline.is_some_and(|d| Instant::now() + backoff >= d) {
            stats
                .exhausted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        stats
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(backoff)
    }

    /// Tags the final outcome with the attempt count.
    fn finish<B>(&self, result: Result<Response<B>, BoxError>) -> Result<Response<B>, BoxError> {
        let previous = self.attempts.saturating_sub(1);
        match result.map_err(deadline_exceeded) {
            Ok(mut response) => {
                if previous > 0 {
                    let value = HeaderValue::from(previous);
                    response
                        .headers_mut()
                        .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, value);
                }
                let attempts = self.attempts;
                response.extensions_mut().insert(RetryInfo { attempts });
                Ok(response)
            }
            Err(err) if previous > 0 => {
                let mut status = Status::from_error(err);
                let metadata = status.metadata_mut();
                metadata.insert("grpc-previous-rpc-attempts", previous.into());
                Err(Box::new(status))
            }
            Err(err) => Err(err),
        }
    }
}

/// Whether `err` is tonic's own timeout of an attempt (`Endpoint::timeout`, `grpc-timeout`).
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// tonic reports its own timeout as CANCELLED "Timeout expired"; gRPC specifies
/// DEADLINE_EXCEEDED for a call whose deadline passed, and callers branch on it.
fn deadline_exceeded(err: BoxError) -> BoxError {
    if timed_out(&*err) {
        Box::new(Status::deadline_exceeded(
            "deadline exceeded: the call timed out after its request was sent (it may have been \
             processed)",
        ))
    } else {
        err
    }
}

impl<S, B> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Collecting => {
                    let call = this
                        .call
                        .as_mut()
                        .expect("a collecting future holds its call");
                    let fut = ready!(call.poll_collect(cx))?;
                    State::Calling { fut }
                }
                StateProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    let Some(call) = this.call.as_mut() else {
                        return Poll::Ready(result.map_err(deadline_exceeded));
                    };
                    if !call.replayable {
                        return Poll::Ready(call.finish(result));
                    }
                    if !call.is_retryable(&result) {
                        if let Some(throttle) = &call.shared.throttle {
                            throttle.on_success();
                        }
                        return Poll::Ready(call.finish(result));
                    }
                    match call.next_backoff() {
                        Some(backoff) => State::Backoff {
                            sleep: tokio::time::sleep(backoff),
                        },
                        None => return Poll::Ready(call.finish(result)),
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    State::Ready
                }
                StateProj::Ready => {
                    let call = this
                        .call
                        .as_mut()
                        .expect("a retrying future holds its call");
                    if let Err(err) = ready!(call.svc.poll_ready(cx)) {
                        return Poll::Ready(call.finish(Err(err.into())));
                    }
                    State::Calling {
                        fut: call.attempt(),
                    }
                }
            };
            this.state.set(next);
        }
    }
}

impl<S: Service<Request<Body>>> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
