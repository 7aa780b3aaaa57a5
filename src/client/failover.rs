//! `Failover`: one channel over several equivalent servers (stateless frontends of one store),
//! sending every call to the current one and moving to the next when it fails.
//!
//! It sits below the retry layer, so a retried attempt after a failure goes to the next server:
//! a frontend that was killed, or that dropped an answer, is left behind by the retry itself,
//! and the retry's request id is replayed by whichever frontend it reaches. A server counts as
//! failed on a transport error or an UNAVAILABLE status in the response headers; every other
//! answer (a conflict, NOT_FOUND) is the store speaking and keeps the current server.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tonic::{body::Body, transport::Channel};
use tower::{Service, ServiceExt, util::Oneshot};

/// Several channels, one in use at a time. Cheap to clone; clones share the current choice.
#[derive(Debug, Clone)]
pub struct Failover {
    channels: Arc<[Channel]>,
    current: Arc<AtomicUsize>,
}

impl Failover {
    /// Starts with `channels[0]`. Panics on an empty list: there is nothing to fail over to.
    pub fn new(channels: Vec<Channel>) -> Self {
        assert!(!channels.is_empty(), "Failover needs at least one channel");
        Self {
            channels: channels.into(),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The index of the channel calls go to now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = FailoverFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen channel's, awaited inside the call (`Oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let index = self.current() % self.channels.len();
        FailoverFuture {
            inner: self.channels[index].clone().oneshot(request),
            index,
            len: self.channels.len(),
            current: Arc::clone(&self.current),
        }
    }
}

pin_project! {
    /// The response future of [`Failover`].
    pub struct FailoverFuture {
        #[pin]
        inner: Oneshot<Channel, http::Request<Body>>,
        index: usize,
        len: usize,
        current: Arc<AtomicUsize>,
    }
}

impl Future for FailoverFuture {
    type Output = Result<http::Response<Body>, tonic::transport::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let unavailable = |r: &http::Response<Body>| {
            r.headers().get("grpc-status").map(|v| v.as_bytes()) == Some(b"14")
        };
        if result.as_ref().map_or(true, unavailable) {
            // Only the first failure of the current server moves on; concurrent failures of
            // the same server must not skip its successor.
            let next = (*this.index + 1) % *this.len;
            let _ = this.current.compare_exchange(
                *this.index,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Poll::Ready(result)
    }
}
