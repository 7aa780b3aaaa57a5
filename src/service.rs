//! `KvService`: the thin gRPC service that turns requests into [`Storage`] calls.
//!
//! It holds no state of its own and makes no decisions beyond translating types: limits are
//! checked by the validation layer before a request gets here (`crate::validate`), versions and
//! replay are the storage's job, and errors become statuses in `crate::error`. Everything else
//! (faults, metrics, tracing) is a layer too.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    proto::{GetRequest, GetResponse, PutRequest, PutResponse, kv_service_server},
    storage::{RequestId, Storage, StorageError, Write},
};

/// Storage failures are logged here, where their message is known, and only they: refusals
/// (not found, conflicts) are the protocol working, answered to the client and counted in the
/// metrics. At most one line a second: a backend that is down fails every call, and one line
/// (with the count of those it stands for) says it as well as ten thousand.
#[derive(Debug)]
struct FailureLog {
    start: Instant,
    /// Milliseconds since `start` before which no line is written.
    quiet_until_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl FailureLog {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            quiet_until_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn failed(&self, err: StorageError) -> Status {
        if matches!(
            err,
            StorageError::Internal(_) | StorageError::Unavailable(_)
        ) {
            let now = self.start.elapsed().as_millis() as u64;
            let until = self.quiet_until_ms.load(Ordering::Relaxed);
            let mine = now >= until
                && self
                    .quiet_until_ms
                    .compare_exchange(until, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            if mine {
                let also = self.suppressed.swap(0, Ordering::Relaxed);
                match &err {
                    StorageError::Internal(_) => {
                        tracing::error!(%err, similar_since_last = also, "storage failed");
                    }
                    _ => tracing::warn!(%err, similar_since_last = also, "storage unavailable"),
                }
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
            }
        }
        err.into()
    }
}

/// Response metadata set (to `true`) on a Put answered by replay: nothing was written now.
pub const REPLAYED_HEADER: &str = "kv-replayed";

/// The `kv.v1.KvService` implementation over any [`Storage`].
#[derive(Clone)]
pub struct KvService {
    storage: Arc<dyn Storage>,
    failures: Arc<FailureLog>,
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService").finish_non_exhaustive()
    }
}

impl KvService {
    /// A service over `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            failures: Arc::new(FailureLog::new()),
        }
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
        let found = self
            .storage
            .get(&request.key)
            .await
            .map_err(|e| self.failures.failed(e))?;
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
        let written = self
            .storage
            .put(write)
            .await
            .map_err(|e| self.failures.failed(e))?;
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
