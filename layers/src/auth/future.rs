//! The response future of [`Auth`](super::Auth): the inner call, or the refusal.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tonic::Status;

use crate::grpc::{BoxError, status_error};

pin_project! {
    /// Response future of [`Auth`](super::Auth).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Authorized: the inner service works on the call.
        Inner { #[pin] fut: F },
        // Refused: answered on the first poll.
        Refused { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn inner(fut: F) -> Self {
        let state = State::Inner { fut };
        Self { state }
    }

    pub(super) fn refused(status: Status) -> Self {
        let state = State::Refused {
            error: Some(status_error(status)),
        };
        Self { state }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut } => Poll::Ready(ready!(fut.poll(cx)).map_err(Into::into)),
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .expect("a refused future is polled to completion once"))),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
