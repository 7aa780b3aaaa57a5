//! The client channel stack: the same layers as the server, around a tonic `Channel`.
//!
//! Outermost first: metrics (one count per logical call, however many attempts) → validate
//! (bad requests fail before any attempt) → retry (replays the buffered request) → fault
//! (client-side loss, inside retry so each attempt draws its own fate) → `Channel`.

use std::time::Duration;

use grpc_layers::{
    BoxError, MethodFilter,
    fault::{FaultConfig, FaultConfigError, FaultLayer, FaultStats},
    metrics::{MetricsHandle, MetricsLayer},
    retry::{RetryLayer, RetryPolicy, RetryStats},
};
use tonic::{Status, body::Body, transport::Channel};
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

use crate::{
    limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES},
    proto::kv_service_client::KvServiceClient,
    server::{KV_SERVICE, no_faults},
    validate::kv_validate_layer,
};

/// The layered channel a [`KvServiceClient`] runs on. Errors are already `tonic::Status`
/// (a concrete type keeps spawned client futures `Send` where a boxed error trips rustc's
/// higher-ranked lifetime inference).
pub type KvChannel = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Status>;

/// The settings of the client stack. `ClientStack::default()` retries UNAVAILABLE up to 10
/// attempts and injects no faults.
#[derive(Debug, Clone)]
pub struct ClientStack {
    retry: RetryLayer,
    faults: FaultLayer,
    metrics: MetricsLayer,
}

/// The retry policy the KV client uses by default: 10 attempts, 10 ms–1 s full-jitter backoff,
/// a throttle that stops retrying once failures outnumber successes by 50, and room to replay
/// the largest valid Put.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(10)
        .backoff(Duration::from_millis(10), Duration::from_secs(1), 2.0)
        .throttle(100, 1.0)
        .max_buffer_bytes(MAX_KEY_BYTES + MAX_VALUE_BYTES + 1024)
        .methods(MethodFilter::service(KV_SERVICE))
}

impl Default for ClientStack {
    fn default() -> Self {
        Self {
            retry: RetryLayer::new(default_retry_policy()),
            faults: no_faults(),
            metrics: MetricsLayer::client(),
        }
    }
}

impl ClientStack {
    /// Retries as `policy` says.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = RetryLayer::new(policy);
        self
    }

    /// Injects client-side faults (a dropped request never leaves the process).
    pub fn faults(mut self, config: FaultConfig) -> Result<Self, FaultConfigError> {
        self.faults = FaultLayer::new(config)?;
        Ok(self)
    }

    /// Retries made so far by clients built from this stack.
    pub fn retry_stats(&self) -> RetryStats {
        self.retry.stats()
    }

    /// Faults injected so far by clients built from this stack.
    pub fn fault_stats(&self) -> FaultStats {
        self.faults.stats()
    }

    /// The client-side gRPC metrics (`grpc_client_…`).
    pub fn metrics(&self) -> MetricsHandle {
        self.metrics.handle()
    }

    /// Wraps `channel` in the stack.
    pub fn layer(&self, channel: Channel) -> KvChannel {
        self.layer_service(channel)
    }

    /// Wraps any channel-like service in the stack, e.g. a [`Failover`](super::Failover) over
    /// several frontends.
    pub fn layer_service<S>(&self, channel: S) -> KvChannel
    where
        S: tower::Service<
                http::Request<Body>,
                Response = http::Response<Body>,
                Error = tonic::transport::Error,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let service = ServiceBuilder::new()
            .layer(self.metrics.clone())
            .layer(kv_validate_layer())
            .layer(self.retry.clone())
            .layer(self.faults.clone())
            .service(channel);
        let service = ServiceExt::<http::Request<Body>>::map_response(service, |response| {
            response.map(Body::new)
        });
        let service = ServiceExt::<http::Request<Body>>::map_err(service, |err: BoxError| {
            Status::from_error(err)
        });
        BoxCloneSyncService::new(service)
    }

    /// A generated client over the stacked `channel`.
    pub fn client(&self, channel: Channel) -> KvServiceClient<KvChannel> {
        KvServiceClient::new(self.layer(channel))
    }
}
