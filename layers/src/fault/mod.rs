//! Fault injection: lose requests, lose responses, add latency, replayably.
//!
//! Chaos tests need failures that look like a real network's: a request that never arrived
//! (the server did nothing), a response that never came back (the server did the work, the
//! caller sees `UNAVAILABLE`), and slow calls. Decisions come from one seeded generator behind a
//! `std::sync::Mutex`: the critical section is three draws with no `.await` inside, so a
//! blocking lock is cheaper than an async one, and sharing it across clones is what makes the
//! decision *sequence* replay exactly for the same seed and the same order of calls (under
//! concurrency the order of calls is itself up to the scheduler). Calls the filter does not
//! select, and every call when all rates are zero and there is no delay, take a fast path with
//! no lock and no allocation. Bodies are never touched, so streams are decided on headers only.

mod future;
mod layer;
mod policy;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use crate::grpc::BoxError;
pub use future::ResponseFuture;
pub use layer::FaultLayer;
use policy::{Decision, Dice};
pub use policy::{DelayConfig, FaultConfig, FaultConfigError};

/// Counters of injected faults; each call handled by the layer lands in exactly one of
/// `requests_dropped`, `responses_dropped` or `passed`, and delayed calls also in `delayed`.
#[derive(Clone, Debug, Default)]
pub struct FaultStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    requests_dropped: AtomicU64,
    responses_dropped: AtomicU64,
    delayed: AtomicU64,
    passed: AtomicU64,
}

impl FaultStats {
    /// Calls answered `UNAVAILABLE` without reaching the inner service.
    pub fn requests_dropped(&self) -> u64 {
        self.inner.requests_dropped.load(Ordering::Relaxed)
    }

    /// Calls whose inner response was discarded.
    pub fn responses_dropped(&self) -> u64 {
        self.inner.responses_dropped.load(Ordering::Relaxed)
    }

    /// Calls that were delayed.
    pub fn delayed(&self) -> u64 {
        self.inner.delayed.load(Ordering::Relaxed)
    }

    /// Calls forwarded with no loss injected (including calls the filter did not select).
    pub fn passed(&self) -> u64 {
        self.inner.passed.load(Ordering::Relaxed)
    }
}

/// State shared by a [`FaultLayer`] and every service it built.
#[derive(Debug)]
struct Shared {
    config: FaultConfig,
    noop: bool,
    dice: Mutex<Dice>,
    stats: FaultStats,
}

impl Shared {
    fn new(config: FaultConfig) -> Result<Self, FaultConfigError> {
        config.validate()?;
        Ok(Self {
            noop: config.is_noop(),
            dice: Mutex::new(Dice::new(config.seed)),
            config,
            stats: FaultStats::default(),
        })
    }

    fn roll(&self, path: &str) -> Option<Decision> {
        if self.noop || !self.config.methods.matches(path) {
            return None;
        }
        // A panic while holding the lock cannot leave the generator half-updated in a way that
        // matters for fault injection, so a poisoned lock is still usable.
        let mut dice = self
            .dice
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        Some(dice.roll(&self.config))
    }
}

/// Injects request loss, response loss and latency into calls to `S`; see the module docs.
#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Fault<S> {
    /// Wraps `inner` with its own decision sequence; use [`FaultLayer`] to share one.
    pub fn new(inner: S, config: FaultConfig) -> Result<Self, FaultConfigError> {
        Ok(Self::from_shared(inner, Arc::new(Shared::new(config)?)))
    }

    fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// Counters of what this service (and its layer's other services) injected.
    pub fn stats(&self) -> FaultStats {
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

impl<S, B, ResBody> Service<Request<B>> for Fault<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let stats = &self.shared.stats.inner;
        let (delay, drop_response) = match self.shared.roll(req.uri().path()) {
            None => {
                stats.passed.fetch_add(1, Ordering::Relaxed);
                return ResponseFuture::inner(self.inner.call(req), false);
            }
            Some(Decision::DropRequest) => {
                tracing::debug!(path = req.uri().path(), "fault: injecting request loss");
                stats.requests_dropped.fetch_add(1, Ordering::Relaxed);
                return ResponseFuture::request_lost();
            }
            Some(Decision::DropResponse { delay }) => {
                tracing::debug!(path = req.uri().path(), "fault: injecting response loss");
                stats.responses_dropped.fetch_add(1, Ordering::Relaxed);
                (delay, true)
            }
            Some(Decision::Pass { delay }) => {
                stats.passed.fetch_add(1, Ordering::Relaxed);
                (delay, false)
            }
        };
        match delay {
            None => ResponseFuture::inner(self.inner.call(req), drop_response),
            Some(delay) => {
                stats.delayed.fetch_add(1, Ordering::Relaxed);
                // The service that was polled ready goes with the request; this one keeps a
                // fresh clone, as tower's contract requires.
                let fresh = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, fresh);
                ResponseFuture::delayed(delay, ready, req, drop_response)
            }
        }
    }
}

#[cfg(test)]
mod tests;
