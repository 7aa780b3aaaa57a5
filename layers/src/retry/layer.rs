//! The layer that wraps client services in [`Retry`], sharing one throttle and one RNG.

use std::sync::Arc;

use tower::Layer;

use super::{Retry, RetryPolicy, RetryStats, Shared};

/// Applies [`Retry`] to services; all of them share the throttle, jitter RNG and stats.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// Retries per `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            shared: Arc::new(Shared::new(policy)),
        }
    }

    /// Counters of retries, throttled and exhausted calls.
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.clone()
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new(RetryPolicy::default())
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_shared(inner, self.shared.clone())
    }
}
