//! The layer that wraps services in [`Deadline`].

use std::time::Duration;

use tower::Layer;

use super::Deadline;

/// Applies [`Deadline`] to services.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer {
    max: Option<Duration>,
}

impl DeadlineLayer {
    /// Ends calls at their `grpc-timeout` only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends calls at their `grpc-timeout` or after `max`, whichever is sooner.
    pub fn at_most(max: Duration) -> Self {
        Self { max: Some(max) }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline::new(inner, self.max)
    }
}
