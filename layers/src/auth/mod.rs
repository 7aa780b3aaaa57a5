//! Authentication: a call must prove who it is before anything else runs, or it gets
//! UNAUTHENTICATED.
//!
//! The decision is a strategy ([`Authorize`]): the [`Tokens`] preset checks an
//! `authorization: Bearer <token>` header against a set of tokens, and
//! [`AuthLayer::custom`] takes any closure over the request headers. The token set is shared
//! and can be replaced while the server runs ([`Tokens::replace`]), so a token is rotated
//! without downtime: put the new one in, move the clients, take the old one out. Tokens are
//! compared in constant time, against every token, so the answer's timing says nothing about
//! how much of a guess was right; a refusal never echoes what was sent. Calls the method filter
//! leaves out (health checks, for load balancers) pass unchecked.

mod future;
mod layer;
mod policy;

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::Request;
use tower::Service;

use crate::grpc::{BoxError, MethodFilter};
pub use future::ResponseFuture;
pub use layer::AuthLayer;
pub use policy::{Authorize, Tokens, TokensError, token_lines};

/// Checks calls to `S` with `A`; see the module docs.
#[derive(Clone, Debug)]
pub struct Auth<S, A> {
    inner: S,
    authorize: A,
    /// Shared: a server clones its stack for every request, and a set of names would be
    /// copied each time.
    methods: Arc<MethodFilter>,
}

impl<S, A> Auth<S, A> {
    /// Checks every call to `inner` with `authorize`.
    pub fn new(inner: S, authorize: A) -> Self {
        Self {
            inner,
            authorize,
            methods: Arc::new(MethodFilter::All),
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

impl<S, A, B> Service<Request<B>> for Auth<S, A>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    A: Authorize,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !self.methods.matches(req.uri().path()) {
            return ResponseFuture::inner(self.inner.call(req));
        }
        match self.authorize.authorize(req.headers()) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(status) => {
                tracing::debug!(path = req.uri().path(), "auth: refused");
                ResponseFuture::refused(status)
            }
        }
    }
}

#[cfg(test)]
mod tests;
