//! The layer that wraps services in [`Metrics`], all recording into one registry.

use std::collections::HashMap;
use std::sync::Arc;

use tower::Layer;

use super::registry::Registry;
use super::{GrpcType, Metrics, MetricsHandle, Side};

/// Applies [`Metrics`] to services; read what they record through [`handle`](Self::handle).
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    registry: Arc<Registry>,
}

impl MetricsLayer {
    /// Server-side metrics, `grpc_server_…`.
    pub fn server() -> Self {
        Self::new(Side::Server)
    }

    /// Client-side metrics, `grpc_client_…`.
    pub fn client() -> Self {
        Self::new(Side::Client)
    }

    /// Metrics for `side`.
    pub fn new(side: Side) -> Self {
        Self {
            registry: Arc::new(Registry::new(side, HashMap::new())),
        }
    }

    /// Labels the method at `path` (`/pkg.Service/Method`) with `grpc_type`; call before the
    /// layer serves anything, as it starts a fresh registry.
    pub fn grpc_type(self, path: impl Into<String>, grpc_type: GrpcType) -> Self {
        let side = self.registry.side;
        let mut types = self.registry.types().clone();
        types.insert(path.into(), grpc_type);
        Self {
            registry: Arc::new(Registry::new(side, types)),
        }
    }

    /// A reader of everything the layer's services record.
    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            registry: self.registry.clone(),
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::from_registry(inner, self.registry.clone())
    }
}
