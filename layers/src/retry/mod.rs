//! Client retries with gRFC A6 semantics, for any tonic client.
//!
//! tonic has no retries of its own (tonic#733). This layer sits on the channel stack and
//! retries unary (and server-streaming) calls the way A6 specifies: the request body is read
//! once (up to `max_buffer_bytes`, larger bodies are sent once, unretried) and replayed
//! byte-for-byte; an attempt is retried only if the inner service failed without a response
//! (a transport error or a `Status` error with a retryable code) or answered Trailers-Only with a
//! retryable `grpc-status`. Once a response head without `grpc-status` has arrived the call is
//! committed and never retried. Retries stop at `max_attempts`, when the throttle runs dry, or
//! when the next backoff would end past the caller's deadline (`grpc-timeout`); each retry
//! carries `grpc-previous-rpc-attempts` and the time left in `grpc-timeout`.
//!
//! Which failures prove a request never left the client: a refused connection (tonic's
//! `ConnectError`) and a request the layer itself never sent. Every other failure may follow a
//! request the server received. A timed-out attempt (tonic's `TimeoutExpired`, from
//! `Endpoint::timeout` or the per-attempt `grpc-timeout`) is the case that matters most: it was
//! sent and may have been processed, so it ends the call unless the method is listed in
//! [`RetryPolicy::repeat_timed_out`], and the caller gets DEADLINE_EXCEEDED, as gRPC
//! specifies, instead of tonic's CANCELLED "Timeout expired".
//!
//! The caller learns how many attempts were made from the `grpc-previous-rpc-attempts`
//! response header (visible in `tonic::Response::metadata()` or `tonic::Status::metadata()`;
//! only when a retry happened) and from the [`RetryInfo`] response extension.

mod future;
mod layer;
mod policy;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, Request};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tonic::body::Body;
use tower::Service;

use crate::grpc::{BoxError, GRPC_TIMEOUT, parse_timeout};
pub use future::ResponseFuture;
pub use layer::RetryLayer;
use policy::Throttle;
pub use policy::{RetryPolicy, ThrottleConfig};

/// The request and response header counting earlier attempts of a call.
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

/// Response extension: how many attempts the call took, the first included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryInfo {
    /// Attempts made, at least 1.
    pub attempts: u32,
}

/// Counters shared by a [`RetryLayer`] and all its services.
#[derive(Clone, Debug, Default)]
pub struct RetryStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    retries: AtomicU64,
    throttled: AtomicU64,
    exhausted: AtomicU64,
}

impl RetryStats {
    /// Retries sent (attempts after the first).
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Calls that wanted a retry the throttle refused.
    pub fn throttled(&self) -> u64 {
        self.inner.throttled.load(Ordering::Relaxed)
    }

    /// Calls that wanted a retry but had used all attempts or had no time left before the
    /// deadline.
    pub fn exhausted(&self) -> u64 {
        self.inner.exhausted.load(Ordering::Relaxed)
    }
}

/// State shared by a [`RetryLayer`] and every service it built.
#[derive(Debug)]
struct Shared {
    policy: RetryPolicy,
    throttle: Option<Throttle>,
    // Held for one draw, never across an await, so a blocking lock is the cheap choice.
    rng: Mutex<SmallRng>,
    stats: RetryStats,
}

impl Shared {
    fn new(policy: RetryPolicy) -> Self {
        let rng = match policy.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        Self {
            throttle: policy.throttle.map(Throttle::new),
            policy,
            rng: Mutex::new(rng),
            stats: RetryStats::default(),
        }
    }

    /// A full-jitter backoff for retry `retry`: uniform in `[0, bound(retry)]`.
    fn backoff(&self, retry: u32) -> std::time::Duration {
        use rand::Rng;
        let bound = self.policy.backoff_bound(retry);
        let mut rng = self.rng.lock().unwrap_or_else(|poison| poison.into_inner());
        bound.mul_f64(rng.random::<f64>())
    }
}

/// Retries calls to `S` per a [`RetryPolicy`]; see the module docs.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    /// Wraps `inner` with its own throttle and stats; use [`RetryLayer`] to share them.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self::from_shared(inner, Arc::new(Shared::new(policy)))
    }

    fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// Counters of this service's (and its layer's) retries.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.clone()
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

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    S: Service<Request<Body>, Response = http::Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        // Free when `B` is already tonic's body, which it is for generated clients.
        let body = Body::new(body);
        if !self.shared.policy.methods.matches(parts.uri.path()) {
            let fut = self.inner.call(Request::from_parts(parts, body));
            return ResponseFuture::passthrough(fut);
        }
        let deadline = parts
            .headers
            .get(GRPC_TIMEOUT)
            .and_then(parse_timeout)
            .map(|timeout| tokio::time::Instant::now() + timeout);
        // The service that was polled ready goes with the call; this one keeps a fresh clone,
        // as tower's contract requires.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture::collecting(ready, self.shared.clone(), parts, body, deadline)
    }
}

#[cfg(test)]
mod tests;
