//! Request validation: refuse a bad message before the service (or the network) sees it.
//!
//! A server should not spend a storage round trip on a request that can never succeed, and a
//! client should not spend a network round trip on one. For the calls its [`Validator`] applies
//! to, this layer reads the request body until the first gRPC frame is complete (bounded by the
//! validator's size limit), hands the message to the validator, and on success forwards the very
//! bytes it read followed by whatever the body still holds, so the inner service sees the
//! request exactly as sent. Reading only the first frame keeps a stream flowing even if it is
//! selected by mistake. Calls the validator does not apply to are forwarded unread.
//!
//! Refusals, each answered without calling the inner service:
//! - a message the validator rejects: the validator's status (presets use `INVALID_ARGUMENT`);
//! - a body that is not a gRPC frame, or ends before a whole one: `INVALID_ARGUMENT`
//!   "malformed request message";
//! - a message over the size limit: `RESOURCE_EXHAUSTED`, as gRPC's own receive limits answer;
//! - a compressed message: `UNIMPLEMENTED`, since the layer cannot decompress it to look.

mod future;
mod layer;
mod policy;
pub mod wire;

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::Request;
use tonic::body::Body;
use tower::Service;

use crate::grpc::{BoxError, GrpcMethod};
use future::Reading;
pub use future::ResponseFuture;
pub use layer::ValidateLayer;
pub use policy::{DEFAULT_MAX_MESSAGE_SIZE, ForMethods, MaxMessageSize, Refusal, Rules, Validator};
pub use tonic_types::FieldViolation;

/// Validates request messages with `V` before calling `S`; see the module docs.
#[derive(Debug)]
pub struct Validate<S, V> {
    inner: S,
    validator: Arc<V>,
}

impl<S: Clone, V> Clone for Validate<S, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            validator: self.validator.clone(),
        }
    }
}

impl<S, V> Validate<S, V> {
    /// Wraps `inner` with `validator`.
    pub fn new(inner: S, validator: V) -> Self {
        Self::from_arc(inner, Arc::new(validator))
    }

    fn from_arc(inner: S, validator: Arc<V>) -> Self {
        Self { inner, validator }
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

impl<S: Clone, V> Validate<S, V> {
    /// The service `poll_ready` readied, leaving a fresh clone in its place, as tower's
    /// contract requires of a call that outlives `call`.
    fn take_ready(&mut self) -> S {
        let fresh = self.inner.clone();
        std::mem::replace(&mut self.inner, fresh)
    }
}

impl<S, V, B> Service<Request<B>> for Validate<S, V>
where
    S: Service<Request<Body>> + Clone,
    S::Error: Into<BoxError>,
    V: Validator,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, V>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        // Free when `B` is already tonic's body, which it is on both servers and channels.
        let body = Body::new(body);
        let method = GrpcMethod::from_uri(&parts.uri).filter(|m| self.validator.applies_to(m));
        match method {
            None => ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body))),
            Some(method) => {
                // What the body already holds is read at once: a unary request usually
                // arrives whole with its headers, and is then judged and passed on here, with
                // nothing cloned or boxed. (Polled with a waker that does nothing: a body that
                // is not ready is polled again, with the task's waker, when the future is.)
                let mut reading = Reading::new(method, parts, body);
                let noop = &mut Context::from_waker(Waker::noop());
                let Poll::Ready(read) = reading.poll_frame(&*self.validator, noop) else {
                    let ready = self.take_ready();
                    return ResponseFuture::pending(ready, Arc::clone(&self.validator), reading);
                };
                match read.and_then(|len| reading.finish(&*self.validator, len)) {
                    Ok(request) => ResponseFuture::judged(Ok(self.inner.call(request))),
                    Err(refusal) => {
                        // Dropped: the readiness `poll_ready` reserved goes unused, and a
                        // client's buffer would keep a slot for it until the next call.
                        drop(self.take_ready());
                        ResponseFuture::judged(Err(refusal))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
