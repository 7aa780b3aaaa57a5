//! Per-method call metrics named like go-grpc-prometheus, readable in-process.
//!
//! Operators need started/handled counts by code, latency and in-flight calls for every method,
//! on servers and on clients, without each service instrumenting itself. The layer counts a call
//! as started when it is called, and as handled exactly once: at the response head if it
//! carries `grpc-status` (Trailers-Only), else when the body yields its trailers, when the
//! response future fails (code as tonic maps the error), or as `CANCELLED` when the response or
//! its body is dropped before the end. Measurements go to an in-process registry read through a
//! [`MetricsHandle`] (which also renders Prometheus text), and with the `metrics-facade` feature
//! to the `metrics` crate as well.
//!
//! The path of a gRPC request does not say whether the call streams, so every method is labelled
//! `grpc_type="unary"` unless [`MetricsLayer::grpc_type`] says otherwise.

mod future;
mod handle;
mod layer;
mod registry;

#[cfg(feature = "metrics-facade")]
mod facade;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use crate::grpc::BoxError;
pub use future::{MetricsBody, ResponseFuture};
pub use handle::{MethodSnapshot, MetricsHandle, MetricsSnapshot};
pub use layer::MetricsLayer;
use registry::Registry;
pub use registry::{LATENCY_BUCKETS, Side};

/// The `grpc_type` label of a method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GrpcType {
    /// One request, one response.
    #[default]
    Unary,
    /// A stream of requests, one response.
    ClientStream,
    /// One request, a stream of responses.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl GrpcType {
    /// The label value: `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }
}

/// Records call metrics for `S`; see the module docs.
#[derive(Clone, Debug)]
pub struct Metrics<S> {
    inner: S,
    registry: Arc<Registry>,
}

impl<S> Metrics<S> {
    /// Wraps `inner`, recording into a registry of its own; use [`MetricsLayer`] to share one
    /// and get a [`MetricsHandle`].
    pub fn new(inner: S, side: Side) -> Self {
        Self::from_registry(inner, Arc::new(Registry::new(side, Default::default())))
    }

    fn from_registry(inner: S, registry: Arc<Registry>) -> Self {
        Self { inner, registry }
    }

    /// A reader of this service's registry.
    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            registry: self.registry.clone(),
        }
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

impl<S, B, ResBody> Service<Request<B>> for Metrics<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let record = self.registry.start(req.uri().path());
        ResponseFuture::new(self.inner.call(req), record)
    }
}

#[cfg(test)]
mod tests;
