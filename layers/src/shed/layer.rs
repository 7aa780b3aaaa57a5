//! The layer that wraps services in [`Shed`], all sharing one in-flight limit.

use std::sync::Arc;

use tower::Layer;

use super::{Shared, Shed, ShedStats};
use crate::grpc::MethodFilter;

/// Applies [`Shed`] to services; every service it builds counts against the same limit.
#[derive(Clone, Debug)]
pub struct ShedLayer {
    shared: Arc<Shared>,
}

impl ShedLayer {
    /// At most `max_in_flight` calls at once (at least 1), for every method.
    pub fn new(max_in_flight: usize) -> Self {
        Self::with_methods(max_in_flight, MethodFilter::All)
    }

    /// At most `max_in_flight` calls at once among the calls `methods` selects; others pass.
    pub fn with_methods(max_in_flight: usize, methods: MethodFilter) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            shared: Shared::new(max_in_flight, methods),
        }
    }

    /// Counters shared with every service of this layer.
    pub fn stats(&self) -> ShedStats {
        self.shared.stats()
    }

    pub(super) fn wrap<S>(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.wrap(inner)
    }
}
