//! Server-side deadlines: a call ends with DEADLINE_EXCEEDED when the caller's `grpc-timeout`
//! passes, or the server's own longest allowed time, whichever comes first.
//!
//! tonic's `Server::timeout` does the timing but answers CANCELLED "Timeout expired", and it
//! sits outside every user layer, so metrics count the call with the wrong code. gRPC specifies
//! DEADLINE_EXCEEDED, and callers branch on it; this layer sits inside the stack where the
//! metrics layer sees its answer. When the deadline passes the inner future is dropped, which
//! cancels the handler: work it started may or may not be done, as for any DEADLINE_EXCEEDED.

mod future;
mod layer;

use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tower::Service;

use crate::grpc::{BoxError, GRPC_TIMEOUT, parse_timeout};
pub use future::ResponseFuture;
pub use layer::DeadlineLayer;

/// Enforces call deadlines on `S`; see the module docs.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    max: Option<Duration>,
}

impl<S> Deadline<S> {
    /// Ends calls at their `grpc-timeout`, and at `max` when given (or when sooner).
    pub fn new(inner: S, max: Option<Duration>) -> Self {
        Self { inner, max }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let asked = req.headers().get(GRPC_TIMEOUT).and_then(parse_timeout);
        let limit = match (asked, self.max) {
            (Some(asked), Some(max)) => Some(asked.min(max)),
            (one, other) => one.or(other),
        };
        ResponseFuture::new(self.inner.call(req), limit)
    }
}

#[cfg(test)]
mod tests;
