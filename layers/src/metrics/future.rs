//! The response future and body of [`Metrics`](super::Metrics): they end the call's record.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Status;

use super::registry::CallRecord;
use crate::grpc::{BoxError, StatusBody, status_code};

pin_project! {
    /// Response future of [`Metrics`](super::Metrics).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        record: Option<CallRecord>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, record: CallRecord) -> Self {
        Self {
            inner,
            record: Some(record),
        }
    }
}

impl<F, E, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<MetricsBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let record = this
            .record
            .take()
            .expect("a response future completes once");
        match result {
            Ok(response) => {
                // Trailers-Only: the head already holds the final status.
                let record = match status_code(response.headers()) {
                    Some(code) => {
                        record.finish(code);
                        None
                    }
                    None => Some(record),
                };
                Poll::Ready(Ok(response.map(|body| MetricsBody::new(body, record))))
            }
            Err(err) => {
                // Mapped as the caller's tonic will map it, so the code counted is the one seen.
                let status = Status::from_error(err.into());
                record.finish(status.code());
                Poll::Ready(Err(Box::new(status)))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// Response body of [`Metrics`](super::Metrics): counts the call as handled when its
    /// trailers arrive, when it fails, or (as `CANCELLED`) when it is dropped before the end.
    pub struct MetricsBody<B> {
        #[pin]
        inner: StatusBody<B, CallRecord>,
    }
}

impl<B> MetricsBody<B> {
    fn new(inner: B, record: Option<CallRecord>) -> Self {
        Self {
            inner: StatusBody::new(inner, record),
        }
    }
}

impl<B> Body for MetricsBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for MetricsBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBody").finish_non_exhaustive()
    }
}
