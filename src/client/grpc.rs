//! `GrpcClient`: typed operations with exact outcomes over the layered channel.
//!
//! Network failures are retried by the retry layer (bounded attempts, backoff, throttle, the
//! call's deadline); version conflicts are retried here without limit by [`GrpcClient::update`],
//! which always re-reads before writing again, so it never overwrites a version it did not see.
//! Every logical write carries one random request id reused by all of its attempts, so a lost
//! response is answered by the server's replay instead of a second write. When the outcome of a
//! write cannot be proven, the client says [`PutOutcome::Maybe`] — never success, never failure.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use grpc_layers::retry::GRPC_PREVIOUS_RPC_ATTEMPTS;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, metadata::MetadataMap, transport::ClientTlsConfig};

use crate::{
    client::{Bearer, ClientStack, Failover, KvChannel, authorized, bearer, channel_endpoint},
    error::version_mismatch,
    proto::{GetRequest, PutRequest, kv_service_client::KvServiceClient},
    service::REPLAYED_HEADER,
    storage::{Mismatch, Versioned},
};

/// How a [`GrpcClient`] behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The layer stack (retry policy, client-side faults, metrics).
    pub stack: ClientStack,
    /// Deadline of one logical call, all its network retries included (sent as `grpc-timeout`).
    pub call_timeout: Duration,
    /// Cancels every operation promptly, mid-call or mid-backoff.
    pub cancel: CancellationToken,
    /// Sent as `authorization: Bearer <token>` with every call (a kv-server started with
    /// `--auth-token-file` refuses calls without one).
    pub token: Option<String>,
    /// TLS settings for `https://` endpoints (which CAs to trust, the client certificate for
    /// mutual TLS); `None` trusts the system's roots. Unused for `http://` endpoints.
    pub tls: Option<ClientTlsConfig>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            stack: ClientStack::default(),
            call_timeout: Duration::from_secs(10),
            cancel: CancellationToken::new(),
            token: None,
            tls: None,
        }
    }
}

/// The outcome of one compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// Applied exactly once, producing `version`. `recovered`: an earlier attempt was applied
    /// and its answer lost; the server replayed it.
    Written {
        /// The version the write produced.
        version: u64,
        /// Whether the answer came from the server's replay.
        recovered: bool,
    },
    /// Definitely not applied: the key is at `actual_version`, not the expected one.
    Conflict {
        /// The key's version when the write was refused.
        actual_version: u64,
    },
    /// Definitely not applied: an update named a version but the key does not exist.
    NotFound,
    /// Definitely not applied: a create (version 0) found the key at `actual_version`.
    AlreadyExists {
        /// The key's current version.
        actual_version: u64,
    },
    /// Applied or not — unprovable (the replay window passed, retries ran out after a request
    /// may have arrived, or the call was cancelled in flight).
    Maybe,
}

/// The outcome of [`GrpcClient::update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The new value was written at `version` after `conflicts` refused attempts.
    Written {
        /// The version written.
        version: u64,
        /// How many times another writer got there first.
        conflicts: u64,
        /// Whether the final write was recovered through replay.
        recovered: bool,
    },
    /// The last write's fate is unknown (see [`PutOutcome::Maybe`]); the loop stopped.
    Maybe {
        /// Conflicts seen before.
        conflicts: u64,
    },
}

/// Errors that are not an outcome of the operation itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint could not be parsed or reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint given.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The bearer token cannot be sent in a header.
    #[error("the bearer token holds a character that cannot be sent in a header")]
    InvalidToken,
    /// The operation was cancelled through the client's token before it could finish.
    #[error("cancelled")]
    Cancelled,
    /// Network retries ran out, the deadline passed, or the server refused the request.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
}

/// Counters of one client (and its clones).
#[derive(Debug, Default)]
struct Counters {
    ops: AtomicU64,
    network_retries: AtomicU64,
    conflicts: AtomicU64,
    recovered: AtomicU64,
    maybe: AtomicU64,
    contract_errors: AtomicU64,
}

/// A snapshot of a client's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCounters {
    /// Operations issued (get, put; each write of an update counts).
    pub ops: u64,
    /// Network attempts beyond the first, summed over operations.
    pub network_retries: u64,
    /// Writes refused because another writer got there first.
    pub conflicts: u64,
    /// Writes whose answer was lost and recovered through the server's replay.
    pub recovered: u64,
    /// Writes whose outcome is unknown.
    pub maybe: u64,
    /// Refusals that broke the kv.v1 wire contract: NOT_FOUND, ALREADY_EXISTS, ABORTED or
    /// FAILED_PRECONDITION on a write without the `kv.v1.VersionMismatch` detail. They count
    /// as unknown outcomes.
    pub contract_errors: u64,
}

/// A KvService client with exact write outcomes. Cheap to clone; clones share counters.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    inner: KvServiceClient<KvChannel>,
    options: ClientOptions,
    authorization: Option<Bearer>,
    counters: Arc<Counters>,
}

/// The `authorization` value for `options.token`.
fn authorization(options: &ClientOptions) -> Result<Option<Bearer>, ClientError> {
    options
        .token
        .as_deref()
        .map(|token| bearer(token).ok_or(ClientError::InvalidToken))
        .transpose()
}

fn attempts_before(metadata: &MetadataMap) -> u64 {
    metadata
        .get(GRPC_PREVIOUS_RPC_ATTEMPTS.as_str())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl GrpcClient {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`, or `https://…` with
    /// `options.tls`) through `options.stack`.
    pub async fn connect(endpoint: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        };
        let channel = channel_endpoint(endpoint, options.tls.as_ref())
            .map_err(connect_error)?
            .connect_timeout(options.call_timeout)
            .connect()
            .await
            .map_err(connect_error)?;
        Ok(Self {
            inner: options.stack.client(channel),
            authorization: authorization(&options)?,
            options,
            counters: Arc::default(),
        })
    }

    /// A client of several equivalent servers (frontends of one store), e.g.
    /// `["http://10.0.0.1:50051", "http://10.0.0.2:50051"]`: calls go to the first until it
    /// fails, then to the next (see [`Failover`]). Connections open on first use, so this only
    /// fails on a malformed endpoint or an empty list.
    pub fn connect_any(endpoints: &[String], options: ClientOptions) -> Result<Self, ClientError> {
        let channels = endpoints
            .iter()
            .map(|endpoint| {
                channel_endpoint(endpoint, options.tls.as_ref())
                    .map(|e| e.connect_timeout(Duration::from_secs(1)).connect_lazy())
                    .map_err(|source| ClientError::Connect {
                        endpoint: endpoint.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if channels.is_empty() {
            return Err(ClientError::Status(Status::invalid_argument(
                "no endpoint given",
            )));
        }
        Ok(Self {
            inner: KvServiceClient::new(options.stack.layer_service(Failover::new(channels))),
            authorization: authorization(&options)?,
            options,
            counters: Arc::default(),
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> ClientCounters {
        let c = &self.counters;
        ClientCounters {
            ops: c.ops.load(Ordering::Relaxed),
            network_retries: c.network_retries.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            recovered: c.recovered.load(Ordering::Relaxed),
            maybe: c.maybe.load(Ordering::Relaxed),
            contract_errors: c.contract_errors.load(Ordering::Relaxed),
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = authorized(message, self.authorization.as_ref());
        request.set_timeout(self.options.call_timeout);
        request
    }

    /// Enforces the call deadline on this side too: `grpc-timeout` only helps if the server
    /// honours it, and a stopped or black-holed server would otherwise hang the call.
    async fn deadline<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let limit = self.options.call_timeout + Duration::from_millis(500);
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("client-side call deadline")))
    }

    fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The value and version of `key`, or `None` if it was never written.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, ClientError> {
        Self::count(&self.counters.ops, 1);
        let mut inner = self.inner.clone();
        let call = inner.get(self.request(GetRequest {
            key: key.to_owned(),
        }));
        let result = tokio::select! {
            result = self.deadline(call) => result,
            () = self.options.cancel.cancelled() => return Err(ClientError::Cancelled),
        };
        match result {
            Ok(response) => {
                Self::count(
                    &self.counters.network_retries,
                    attempts_before(response.metadata()),
                );
                let found = response.into_inner();
                Ok(Some(Versioned {
                    value: found.value,
                    version: found.version,
                }))
            }
            Err(status) => {
                Self::count(
                    &self.counters.network_retries,
                    attempts_before(status.metadata()),
                );
                match status.code() {
                    Code::NotFound => Ok(None),
                    _ => Err(ClientError::Status(status)),
                }
            }
        }
    }

    /// Writes `value` if `key` is at `expected_version` (0 = create), with a fresh request id.
    pub async fn put(
        &self,
        key: &str,
        value: &str,
        expected_version: u64,
    ) -> Result<PutOutcome, ClientError> {
        self.put_with_id(key, value, expected_version, rand::random())
            .await
    }

    /// [`put`](Self::put) with the caller's request id (the chaos runner records it). Every
    /// logical write needs an id of its own: the server answers a write whose id it has seen
    /// with the first one's outcome.
    pub async fn put_with_id(
        &self,
        key: &str,
        value: &str,
        expected_version: u64,
        request_id: [u8; 16],
    ) -> Result<PutOutcome, ClientError> {
        if self.options.cancel.is_cancelled() {
            return Err(ClientError::Cancelled);
        }
        Self::count(&self.counters.ops, 1);
        let mut inner = self.inner.clone();
        let put = PutRequest {
            key: key.to_owned(),
            value: value.to_owned(),
            version: expected_version,
            request_id: request_id.to_vec(),
        };
        let call = inner.put(self.request(put));
        let result = tokio::select! {
            result = self.deadline(call) => result,
            // The request may be on the wire or applied already: its fate is unknown.
            () = self.options.cancel.cancelled() => Err(Status::cancelled("client cancelled")),
        };
        let outcome = match result {
            Ok(response) => {
                Self::count(
                    &self.counters.network_retries,
                    attempts_before(response.metadata()),
                );
                let recovered = response.metadata().get(REPLAYED_HEADER).is_some();
                Self::count(&self.counters.recovered, u64::from(recovered));
                PutOutcome::Written {
                    version: response.into_inner().version,
                    recovered,
                }
            }
            Err(status) => {
                let retried = attempts_before(status.metadata());
                Self::count(&self.counters.network_retries, retried);
                self.refused(status, retried > 0)?
            }
        };
        match outcome {
            PutOutcome::Maybe => Self::count(&self.counters.maybe, 1),
            PutOutcome::Written { .. } => {}
            _ => Self::count(&self.counters.conflicts, 1),
        }
        Ok(outcome)
    }

    /// Classifies a refused write. A refusal on a retried attempt is definite only when the
    /// server proves no earlier attempt was applied (see [`Mismatch::proves_not_applied`]).
    fn refused(&self, status: Status, retried: bool) -> Result<PutOutcome, ClientError> {
        let definite = |m: Mismatch| !retried || m.proves_not_applied();
        match (status.code(), version_mismatch(&status).map(Mismatch::from)) {
            (Code::NotFound, Some(m)) if definite(m) => Ok(PutOutcome::NotFound),
            (Code::AlreadyExists, Some(m)) if definite(m) => Ok(PutOutcome::AlreadyExists {
                actual_version: m.actual,
            }),
            (Code::Aborted, Some(m)) if definite(m) => Ok(PutOutcome::Conflict {
                actual_version: m.actual,
            }),
            // The same bytes are invalid on every attempt, so no attempt was applied.
            (Code::InvalidArgument, _) => Err(ClientError::Status(status)),
            // A refusal the contract says carries its versions, without them: the server is
            // not speaking kv.v1 as written. Counted, and unknown.
            (
                Code::NotFound | Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition,
                None,
            ) => {
                Self::count(&self.counters.contract_errors, 1);
                Ok(PutOutcome::Maybe)
            }
            // Anything else — retries ran out, the deadline passed, a stream was reset after
            // the server answered, a storage failure on a retry — may follow an applied attempt.
            _ => Ok(PutOutcome::Maybe),
        }
    }

    /// Read-modify-write: sets `key` to `f(current value)` (with `None` if absent), retrying on
    /// every conflict — re-reading first, never overwriting a version it did not read — until a
    /// write lands, its fate becomes unknown, or the client is cancelled.
    pub async fn update<F>(&self, key: &str, mut f: F) -> Result<UpdateOutcome, ClientError>
    where
        F: FnMut(Option<&str>) -> String,
    {
        let mut conflicts = 0;
        let mut current = self.get(key).await?;
        loop {
            let value = f(current.as_ref().map(|v| v.value.as_str()));
            let expected = current.as_ref().map_or(0, |v| v.version);
            match self.put(key, &value, expected).await? {
                PutOutcome::Written { version, recovered } => {
                    return Ok(UpdateOutcome::Written {
                        version,
                        conflicts,
                        recovered,
                    });
                }
                PutOutcome::Maybe => return Ok(UpdateOutcome::Maybe { conflicts }),
                _ => {
                    conflicts += 1;
                    current = self.get(key).await?;
                }
            }
        }
    }
}
