//! The response future of [`Deadline`](super::Deadline): the inner call racing a timer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tonic::Status;

use crate::grpc::{BoxError, status_error};

pin_project! {
    /// Response future of [`Deadline`](super::Deadline).
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        // None: the call has no deadline.
        #[pin]
        sleep: Option<Sleep>,
        limit: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(fut: F, limit: Option<Duration>) -> Self {
        Self {
            fut,
            sleep: limit.map(tokio::time::sleep),
            limit: limit.unwrap_or_default(),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.fut.poll(cx) {
            return Poll::Ready(output.map_err(Into::into));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(status_error(Status::deadline_exceeded(
                format!("deadline exceeded after {:?}", this.limit),
            )))),
            _ => Poll::Pending,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
