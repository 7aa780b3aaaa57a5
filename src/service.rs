//! `KvService`: the thin gRPC service that turns requests into [`Storage`] calls.
//!
//! It holds no state of its own and makes no decisions beyond translating types: limits are
//! checked by the validation layer before a request gets here (`crate::validate`), versions and
//! replay are the storage's job, and errors become statuses in `crate::error`. Everything else
//! (faults, metrics, tracing) is a layer too.

use std::sync::Arc;

use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    proto::{GetRequest, GetResponse, PutRequest, PutResponse, kv_service_server},
    storage::{RequestId, Storage, StorageError, Write},
};

/// Logs a storage failure where it happens, and only those: refusals (not found, conflicts)
/// are the protocol working, answered to the client and counted in metrics, never logged above
/// debug by the server stack.
fn logged(err: StorageError) -> Status {
    match &err {
        StorageError::Internal(_) => tracing::error!(%err, "storage failed"),
        StorageError::Unavailable(_) => tracing::warn!(%err, "storage unavailable"),
        _ => {}
    }
    err.into()
}

/// Response metadata set (to `true`) on a Put answered by replay: nothing was written now.
pub const REPLAYED_HEADER: &str = "kv-replayed";

/// The `kv.v1.KvService` implementation over any [`Storage`].
#[derive(Clone)]
pub struct KvService {
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService").finish_non_exhaustive()
    }
}

impl KvService {
    /// A service over `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    /// The generated tonic server wrapping this service, ready for `Server::add_service`.
    pub fn into_server(self) -> kv_service_server::KvServiceServer<Self> {
        kv_service_server::KvServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl kv_service_server::KvService for KvService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let request = request.into_inner();
        let found = self.storage.get(&request.key).await.map_err(logged)?;
        Ok(Response::new(GetResponse {
            value: found.value,
            version: found.version,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        // The validation layer has refused ids that are neither empty nor 16 bytes.
        let request_id = RequestId::try_from(request.request_id.as_slice()).ok();
        let write = Write {
            key: request.key,
            value: request.value,
            expected_version: request.version,
            request_id,
        };
        let written = self.storage.put(write).await.map_err(logged)?;
        let mut response = Response::new(PutResponse {
            version: written.version,
        });
        if written.replayed {
            // Lets a client tell a recovered write (its earlier attempt was applied and the
            // answer lost) from a write applied by this attempt.
            response
                .metadata_mut()
                .insert(REPLAYED_HEADER, MetadataValue::from_static("true"));
        }
        Ok(response)
    }
}
