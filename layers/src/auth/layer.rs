//! The layer that wraps services in [`Auth`], with constructors for each preset.

use std::sync::Arc;

use tower::Layer;

use super::{Auth, Authorize, Tokens};
use crate::grpc::MethodFilter;

/// Applies [`Auth`] with strategy `A` to services.
#[derive(Clone, Debug)]
pub struct AuthLayer<A> {
    authorize: A,
    methods: Arc<MethodFilter>,
}

impl AuthLayer<Tokens> {
    /// Requires `authorization: Bearer <token>` with one of `tokens` (a shared set: replacing
    /// its tokens takes effect at once for every service of this layer).
    pub fn bearer(tokens: Tokens) -> Self {
        Self::custom(tokens)
    }
}

impl<A: Authorize> AuthLayer<A> {
    /// Checks calls with any strategy, closures over the request headers included.
    pub fn custom(authorize: A) -> Self {
        Self {
            authorize,
            methods: Arc::new(MethodFilter::All),
        }
    }

    /// Checks only the calls `methods` selects (leave health checks out, say); others pass.
    pub fn methods(mut self, methods: MethodFilter) -> Self {
        self.methods = Arc::new(methods);
        self
    }
}

impl<S, A: Clone> Layer<S> for AuthLayer<A> {
    type Service = Auth<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            authorize: self.authorize.clone(),
            methods: Arc::clone(&self.methods),
        }
    }
}
