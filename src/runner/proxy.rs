//! A faulting proxy in front of a kv.v1 server we did not start.
//!
//! Server-side faults cannot be injected into somebody else's process, so the runner puts one
//! of these on loopback in front of each target and points its clients at it. It forwards
//! every KvService call as it is (headers, body and trailers, `grpc-status-details-bin` and
//! `kv-replayed` included) over one HTTP/2 connection to the target, through our `FaultLayer`:
//! a dropped response is a write the target applied whose answer never arrives, which is what
//! tests a server's replay of retried writes.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use grpc_layers::fault::{FaultConfig, FaultLayer, FaultStats};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Status,
    body::Body,
    server::NamedService,
    transport::{Channel, ClientTlsConfig, Server},
};

use super::RunnerError;
use crate::{client::channel_endpoint, error::with_causes, server::KV_SERVICE};

/// Forwards each call to the target.
#[derive(Clone, Debug)]
struct Forward {
    target: Channel,
}

impl NamedService for Forward {
    const NAME: &'static str = KV_SERVICE;
}

impl tower::Service<http::Request<Body>> for Forward {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move {
            match tower::ServiceExt::oneshot(target, request).await {
                Ok(response) => Ok(response),
                // The target could not be reached: the caller sees what a lost connection is.
                Err(err) => Ok(Status::unavailable(format!(
                    "the proxy could not reach the target: {}",
                    with_causes(&err)
                ))
                .into_http()),
            }
        })
    }
}

/// A running proxy on loopback; [`FaultProxy::stop`] it when done.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    stats: FaultStats,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) to `target` (`http://HOST:PORT`, or
    /// `https://…` with `tls`), injecting `faults` into the calls they select (use
    /// `FaultConfig::new(seed)` for none). Connects to the target on the first call.
    pub async fn start(
        target: &str,
        tls: Option<&ClientTlsConfig>,
        faults: FaultConfig,
    ) -> Result<Self, RunnerError> {
        let channel = channel_endpoint(target, tls)
            .map_err(|e| RunnerError::Other(format!("target {target}: {}", with_causes(&e))))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let faults = FaultLayer::new(faults).map_err(|e| {
            RunnerError::Config(super::ConfigError::Invalid {
                field: "server_packet_loss_rate".into(),
                reason: e.to_string(),
            })
        })?;
        let stats = faults.stats();
        let listener =
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|source| RunnerError::Bind {
                    addr: "127.0.0.1:0".into(),
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|e| RunnerError::Other(e.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Server::builder()
                .layer(faults)
                .add_service(Forward { target: channel })
                .serve_with_incoming_shutdown(crate::server::incoming(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            addr,
            stats,
            stop,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` + [`addr`](Self::addr).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the fault layer injected so far.
    pub fn stats(&self) -> FaultStats {
        self.stats.clone()
    }

    /// Stops accepting and waits for the calls in flight.
    pub async fn stop(self) -> Result<(), RunnerError> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| RunnerError::Other(format!("the proxy failed: {e}")))?
            .map_err(|e| RunnerError::Other(format!("the proxy failed: {}", with_causes(&e))))
    }
}
