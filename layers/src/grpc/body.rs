//! Body wrappers: one that observes the final `grpc-status`, two that replay buffered bytes.
//!
//! A unary OK response carries its `grpc-status` only in the trailers, after the message, so a
//! layer that wants the outcome must watch the body rather than the response head. Layers that
//! read the start of a request body (validate, retry) must then hand the inner service exactly
//! the bytes the client sent, which is what the replay bodies do.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::{Code, Status};

use super::{BoxError, status_code};

/// Told the final code of a call once, when a [`StatusBody`] learns it.
///
/// If the body is dropped before the code is known, the observer is dropped without being
/// told; observers that must count every call do so in their `Drop` (the metrics layer counts
/// such calls as `CANCELLED`).
pub trait OnStatus {
    /// Receives the call's final code.
    fn on_status(self, code: Code);

    /// Receives the trailers that end the call. The default reads their `grpc-status`
    /// (`UNKNOWN` when it is missing) and passes it to [`on_status`](Self::on_status); an
    /// observer that only needs to know that the call ended can skip that header lookup.
    fn on_trailers(self, trailers: &HeaderMap)
    where
        Self: Sized,
    {
        self.on_status(status_code(trailers).unwrap_or(Code::Unknown))
    }
}

impl<F: FnOnce(Code)> OnStatus for F {
    fn on_status(self, code: Code) {
        self(code)
    }
}

pin_project! {
    /// A response body that reports the call's code from its trailers, or from its error.
    ///
    /// A body that ends without trailers reports `INTERNAL`, as gRPC clients do for a stream
    /// closed without a status. Errors are mapped the way tonic maps them and returned as a
    /// boxed `tonic::Status`.
    #[derive(Debug)]
    pub struct StatusBody<B, O> {
        #[pin]
        inner: B,
        observer: Option<O>,
    }
}

impl<B, O> StatusBody<B, O> {
    /// Wraps `inner`; `observer` is `None` when the code is already known (Trailers-Only).
    pub fn new(inner: B, observer: Option<O>) -> Self {
        Self { inner, observer }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B, O> Body for StatusBody<B, O>
where
    B: Body,
    B::Error: Into<BoxError>,
    O: OnStatus,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let (result, code) = match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(observer) = this.observer.take()
                {
                    observer.on_trailers(trailers);
                }
                (Some(Ok(frame)), None)
            }
            Some(Err(err)) => {
                let status = Status::from_error(err.into());
                let code = status.code();
                (Some(Err(Box::new(status) as BoxError)), Some(code))
            }
            None => (None, Some(Code::Internal)),
        };
        if let Some(code) = code
            && let Some(observer) = this.observer.take()
        {
            observer.on_status(code);
        }
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A body that yields bytes already read from `rest`, then the remainder of `rest`.
    #[derive(Debug)]
    pub struct PrefixedBody<B> {
        prefix: Option<Bytes>,
        #[pin]
        rest: B,
    }
}

impl<B> PrefixedBody<B> {
    /// Yields `prefix` first (skipped when empty), then everything `rest` still holds.
    pub fn new(prefix: Bytes, rest: B) -> Self {
        let prefix = (!prefix.is_empty()).then_some(prefix);
        Self { prefix, rest }
    }
}

impl<B: Body<Data = Bytes>> Body for PrefixedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + prefix);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

/// A complete, already-read request body (data then optional trailers), replayed per attempt.
#[derive(Clone, Debug, Default)]
pub struct ReplayBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl ReplayBody {
    /// A body yielding `data` (if non-empty) and then `trailers` (if any).
    pub fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self { data, trailers }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A prefixed body yields the prefix then the rest, so the inner service sees every byte.
    #[tokio::test]
    async fn prefixed_body_yields_all_bytes() {
        let rest = http_body_util::Full::new(Bytes::from_static(b" world"));
        let body = PrefixedBody::new(Bytes::from_static(b"hello"), rest);
        let bytes = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&bytes[..], b"hello world");
    }

    /// The observer hears the trailers' code exactly once.
    #[tokio::test]
    async fn status_body_reports_trailer_code() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().expect("valid header"));
        let inner = ReplayBody::new(Bytes::from_static(b"x"), Some(trailers));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        let body = StatusBody::new(inner, Some(move |code| sink.lock().unwrap().push(code)));
        body.collect().await.expect("replay bodies do not fail");
        assert_eq!(*seen.lock().unwrap(), vec![Code::NotFound]);
    }
}
