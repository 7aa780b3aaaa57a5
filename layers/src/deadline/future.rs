//! The response future of [`Deadline`](super::Deadline): the inner call racing a timer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::Status;

use crate::grpc::{BoxError, status_error};

pin_project! {
    /// Response future of [`Deadline`](super::Deadline).
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        // None: the call has no deadline (or one too far off to represent).
        deadline: Option<Instant>,
        // Armed the first time `fut` is pending: most calls are answered on their first poll
        // and never touch the timer wheel. Boxed, because every call's future is moved a few
        // times on its way to hyper, and a `Sleep` would more than double this one's size.
        sleep: Option<Pin<Box<Sleep>>>,
        limit: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(fut: F, limit: Option<Duration>) -> Self {
        Self {
            fut,
            // Counted from the call, not from the first poll.
            deadline: limit.and_then(|limit| Instant::now().checked_add(limit)),
            sleep: None,
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
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(status_error(Status::deadline_exceeded(format!(
                "deadline exceeded after {:?}",
                this.limit
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
