//! The response future of [`Fault`](super::Fault): delay, then call, then maybe lose the answer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tonic::Status;
use tower::Service;

use crate::grpc::{BoxError, status_error};

pin_project! {
    /// Response future of [`Fault`](super::Fault).
    pub struct ResponseFuture<S: Service<Req>, Req> {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req> {
        // Waiting out an injected delay with a ready service and the request. Both are boxed:
        // every call's future is as large as this enum's largest variant, and is moved a few
        // times on its way to hyper, while delays are rare.
        Delayed { sleep: Pin<Box<Sleep>>, call: Option<Box<(S, Req)>>, drop_response: bool },
        // The inner service is working on the request.
        Inner { #[pin] fut: S::Future, drop_response: bool },
        // The request was lost; the error is returned on the first poll.
        Failed { error: Option<BoxError> },
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    pub(super) fn inner(fut: S::Future, drop_response: bool) -> Self {
        let state = State::Inner { fut, drop_response };
        Self { state }
    }

    pub(super) fn request_lost() -> Self {
        let error = Some(status_error(Status::unavailable("injected request loss")));
        let state = State::Failed { error };
        Self { state }
    }

    pub(super) fn delayed(delay: Duration, svc: S, req: Req, drop_response: bool) -> Self {
        let sleep = Box::pin(tokio::time::sleep(delay));
        let state = State::Delayed {
            sleep,
            call: Some(Box::new((svc, req))),
            drop_response,
        };
        Self { state }
    }
}

impl<S, Req, Res> Future for ResponseFuture<S, Req>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Delayed {
                    sleep,
                    call,
                    drop_response,
                } => {
                    ready!(sleep.as_mut().poll(cx));
                    let (mut svc, req) = *call.take().expect("a delayed call is started once");
                    let fut = svc.call(req);
                    let drop_response = *drop_response;
                    state.set(State::Inner { fut, drop_response });
                }
                StateProj::Inner { fut, drop_response } => {
                    let response = ready!(fut.poll(cx)).map_err(Into::into)?;
                    if *drop_response {
                        drop(response);
                        let status = Status::unavailable("injected response loss");
                        return Poll::Ready(Err(status_error(status)));
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .expect("a failed future is polled to completion once");
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
