//! The bare baseline (`kvctl bench-server --bare`): a tonic kv.v1 service with the same
//! messages as kv-server and nothing else (no layers, no storage, no request ids), so that a
//! comparison can measure the cost of a tonic unary call on this machine, the limit any
//! kv.v1 server reaches, beside the servers it compares.
//!
//! It stores nothing. Get answers every key with one fixed value at version 1; Put answers
//! with the version a store would give a write that matched (`version + 1`), so every
//! `kvctl bench` workload runs against it unchanged and sees no conflicts.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::Server};

use crate::proto::{
    GetRequest, GetResponse, PutRequest, PutResponse,
    kv_service_server::{KvService, KvServiceServer},
};

/// The stateless kv.v1 service.
#[derive(Debug, Clone)]
pub struct BareService {
    value: String,
}

impl BareService {
    /// A service whose Get answers carry `value_size` bytes, as the store's would after a
    /// `kvctl bench` run with the same `--value-size`.
    pub fn new(value_size: usize) -> Self {
        Self {
            value: "x".repeat(value_size),
        }
    }
}

#[tonic::async_trait]
impl KvService for BareService {
    async fn get(&self, _: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Ok(Response::new(GetResponse {
            value: self.value.clone(),
            version: 1,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let version = request.into_inner().version.saturating_add(1);
        Ok(Response::new(PutResponse { version }))
    }
}

/// Serves [`BareService`] on `listener` with tonic's defaults (and Nagle's algorithm off, as
/// kv-server) until `shutdown` completes.
pub async fn serve_bare(
    listener: TcpListener,
    value_size: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(KvServiceServer::new(BareService::new(value_size)))
        .serve_with_incoming_shutdown(crate::server::incoming(listener), shutdown)
        .await
}
