//! The layer that wraps services in [`Fault`], all sharing one seeded decision sequence.

use std::sync::Arc;

use tower::Layer;

use super::{Fault, FaultConfig, FaultConfigError, FaultStats, Shared};

/// Applies [`Fault`] to services; every service it builds draws from the same dice.
#[derive(Clone, Debug)]
pub struct FaultLayer {
    shared: Arc<Shared>,
}

impl FaultLayer {
    /// Validates `config` and builds the layer.
    pub fn new(config: FaultConfig) -> Result<Self, FaultConfigError> {
        Ok(Self {
            shared: Arc::new(Shared::new(config)?),
        })
    }

    /// Counters of what was injected, shared with every service of this layer.
    pub fn stats(&self) -> FaultStats {
        self.shared.stats.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &FaultConfig {
        &self.shared.config
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Fault::from_shared(inner, self.shared.clone())
    }
}
