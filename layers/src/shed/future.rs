//! The response future of [`Shed`](super::Shed): the inner call holding its permit, or a refusal.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http_body::Body as _;
use pin_project_lite::pin_project;
use tonic::Status;

use crate::grpc::{BoxError, OnStatus, StatusBody, status_error};

/// A place under the in-flight limit (none for calls the filter does not count), held by the
/// response body until the body ends or is dropped.
#[derive(Debug)]
pub struct Place {
    _permit: Option<super::Permit>,
}

impl OnStatus for Place {
    fn on_status(self, _: tonic::Code) {}

    /// The place is given back whatever the code: no need to look it up.
    fn on_trailers(self, _: &http::HeaderMap) {}
}

/// The response body of [`Shed`](super::Shed): the inner body, holding the call's place.
pub type ShedBody<B> = StatusBody<B, Place>;

/// The most request bytes a refusal reads (and drops) before answering; see `Refused`.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The longest a refusal waits for the rest of the request: a client that never finishes its
/// request must not keep the call (and its connection) open.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

pin_project! {
    /// Response future of [`Shed`](super::Shed).
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        // The inner service works on the call; the permit (if the call counts) moves into the
        // response body, and is released when the body ends or the call is dropped.
        Inner { #[pin] fut: F, permit: Option<super::Permit> },
        // Over the limit. The (small, unary) request body is read to its end first: answering
        // a stream the peer is still sending makes HTTP/2 reset it, and after 1024 such
        // resets on one connection the server closes it, taking accepted calls with it.
        Refused {
            #[pin] body: B,
            drained: usize,
            // Boxed: every call's future is as large as this enum's largest variant.
            give_up: Pin<Box<tokio::time::Sleep>>,
            error: Option<BoxError>,
        },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(super) fn inner(fut: F, permit: Option<super::Permit>) -> Self {
        let state = State::Inner { fut, permit };
        Self { state }
    }

    pub(super) fn refused(max_in_flight: usize, body: B) -> Self {
        let status = Status::resource_exhausted(format!(
            "server overloaded: {max_in_flight} calls in flight already; retry with backoff"
        ));
        let state = State::Refused {
            body,
            drained: 0,
            give_up: Box::pin(tokio::time::sleep(DRAIN_TIME)),
            error: Some(status_error(status)),
        };
        Self { state }
    }
}

impl<F, B, RB, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<http::Response<ShedBody<RB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut, permit } => {
                let response = ready!(fut.poll(cx)).map_err(Into::into)?;
                let place = Place {
                    _permit: permit.take(),
                };
                Poll::Ready(Ok(response.map(|body| StatusBody::new(body, Some(place)))))
            }
            StateProj::Refused {
                mut body,
                drained,
                give_up,
                error,
            } => {
                while *drained < DRAIN_LIMIT && !body.is_end_stream() {
                    let frame = match body.as_mut().poll_frame(cx) {
                        Poll::Ready(frame) => frame,
                        Poll::Pending if give_up.as_mut().poll(cx).is_ready() => break,
                        Poll::Pending => return Poll::Pending,
                    };
                    match frame {
                        Some(Ok(frame)) => {
                            *drained += frame.data_ref().map_or(0, |d| d.remaining());
                        }
                        Some(Err(_)) | None => break,
                    }
                }
                Poll::Ready(Err(error
                    .take()
                    .expect("a refused future is polled to completion once")))
            }
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
