//! Load shedding: at most `max_in_flight` calls are worked on at once; the rest are refused at
//! once with RESOURCE_EXHAUSTED instead of queueing.
//!
//! A server that queues without bound turns overload into latency for everyone and memory it
//! cannot give back; refusing at the door keeps the accepted calls fast and tells the caller
//! (and its retry policy, which does not retry RESOURCE_EXHAUSTED by default) to back off. The
//! count is one atomic counter shared by every clone, so the limit holds across all
//! connections, unlike tonic's per-connection `concurrency_limit_per_connection`. A permit is
//! held from the call until its response body ends or is dropped, so answers a client has not
//! taken yet (a reader that never grants HTTP/2 flow control, say) count against the limit, and
//! the memory they hold stays bounded by it. Calls the filter does not select (health checks, say) are never refused. A refusal
//! reads the request body to its end (at most 64 KiB) before answering, so HTTP/2 does not
//! reset the stream: a connection that saw 1024 resets would be closed by the server.

mod future;
mod layer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::Request;
use tower::Service;

use crate::grpc::{BoxError, MethodFilter};
pub use future::{Place, ResponseFuture, ShedBody};
pub use layer::ShedLayer;

/// Counters of a [`ShedLayer`] and all its services.
#[derive(Clone, Debug)]
pub struct ShedStats {
    inner: Arc<Shared>,
}

impl Default for ShedStats {
    /// Counters of no layer: they read zero.
    fn default() -> Self {
        Self {
            inner: Shared::new(1, MethodFilter::All),
        }
    }
}

impl ShedStats {
    /// Calls let through to the inner service (selected calls only).
    pub fn admitted(&self) -> u64 {
        self.inner.admitted.load(Ordering::Relaxed)
    }

    /// Calls refused with RESOURCE_EXHAUSTED.
    pub fn shed(&self) -> u64 {
        self.inner.shed.load(Ordering::Relaxed)
    }
}

/// What a layer and all its services share: the calls in flight, the counters, the filter.
///
/// Shedding never waits, so a counter is all it takes: a tokio `Semaphore` locks its queue of
/// waiters on every release, which made one lock per call shared by every connection. It is
/// one allocation, so an admitted call, which clones the service, takes a permit and counts
/// itself, writes to one allocation that every core shares rather than three.
#[derive(Debug)]
struct Shared {
    in_flight: AtomicUsize,
    admitted: AtomicU64,
    shed: AtomicU64,
    max: usize,
    methods: MethodFilter,
}

impl Shared {
    fn new(max: usize, methods: MethodFilter) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            max,
            methods,
        })
    }

    /// The counters, read through the same allocation.
    fn stats(self: &Arc<Self>) -> ShedStats {
        ShedStats {
            inner: Arc::clone(self),
        }
    }

    /// A place under the limit, or `None` when every place is taken.
    fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut count = self.in_flight.load(Ordering::Relaxed);
        loop {
            if count >= self.max {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                count,
                count + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Permit(Arc::clone(self))),
                Err(now) => count = now,
            }
        }
    }
}

/// One admitted call's place under the limit, given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit(Arc<Shared>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Refuses calls to `S` beyond the in-flight limit; see the module docs.
#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Shed<S> {
    /// Wraps `inner` with a limit of its own; use [`ShedLayer`] to share one limit.
    pub fn new(inner: S, max_in_flight: usize) -> Self {
        ShedLayer::new(max_in_flight).wrap(inner)
    }

    /// Counters of this service's (and its layer's) decisions.
    pub fn stats(&self) -> ShedStats {
        self.shared.stats()
    }

    /// Calls being worked on now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
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

impl<S, B, RB> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = http::Response<RB>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Response = http::Response<ShedBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        if !shared.methods.matches(req.uri().path()) {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        match shared.try_acquire() {
            Some(permit) => {
                shared.admitted.fetch_add(1, Ordering::Relaxed);
                ResponseFuture::inner(self.inner.call(req), Some(permit))
            }
            None => {
                shared.shed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(path = req.uri().path(), "shed: over the in-flight limit");
                ResponseFuture::refused(shared.max, req.into_body())
            }
        }
    }
}

#[cfg(test)]
mod tests;
