//! The pluggable storage behind `KvService`: one object-safe trait and its backends.
//!
//! Every backend gives the same promises, checked by the shared [`conformance`] suite:
//! compare-and-set is atomic per key, versions count writes (1, 2, 3, …), and the request id
//! of a write is stored atomically with it so a retried write is answered from memory instead
//! of being applied twice (see [`Storage::put`]).

use std::sync::Arc;

use async_trait::async_trait;

pub mod conformance;
pub mod etcd;
pub mod file;
mod index;
mod memory;
pub mod redb;
mod replay;
mod spec;

pub use etcd::{EtcdSpec, EtcdStorage};
pub use file::FileStorage;
pub use memory::{DEFAULT_REPLAY_CAPACITY, MemoryStorage};
pub use redb::RedbStorage;
pub use spec::{SpecError, StorageSpec};

/// The idempotency key of one logical write: 16 random bytes reused by all of its retries.
pub type RequestId = [u8; 16];

/// A value together with the version that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value, byte for byte as written.
    pub value: String,
    /// How many writes the key has seen; the first write produces 1.
    pub version: u64,
}

/// One compare-and-set write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The key to write.
    pub key: String,
    /// The new value.
    pub value: String,
    /// The version the key must have now; 0 means "the key must not exist".
    pub expected_version: u64,
    /// The idempotency key of this logical write, if the caller wants de-duplication.
    pub request_id: Option<RequestId>,
}

impl Write {
    /// A write without an idempotency key.
    pub fn new(key: impl Into<String>, value: impl Into<String>, expected_version: u64) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            expected_version,
            request_id: None,
        }
    }

    /// Attaches an idempotency key.
    pub fn with_request_id(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }
}

/// A successful [`Storage::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The version the write produced (`expected_version + 1`).
    pub version: u64,
    /// True when the request id had already been applied and nothing was written now.
    pub replayed: bool,
}

/// Why a write was refused: the key's version is not the one the write expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// The version the write expected.
    pub expected: u64,
    /// The key's version when the write was refused (0 = the key does not exist).
    pub actual: u64,
    /// The lowest version of this key whose writer the store can still name: the request id of
    /// every write that produced a version `>= replayable_from` is remembered (or that write had
    /// none). A retried write that expected `E` and is refused was provably never applied when
    /// `actual <= E` or `E + 1 >= replayable_from`; otherwise its fate is unknown.
    pub replayable_from: u64,
}

impl Mismatch {
    /// Whether a refused *retry* of a write with a request id proves that no earlier attempt
    /// of it was applied (see [`Mismatch::replayable_from`]).
    pub fn proves_not_applied(&self) -> bool {
        self.actual <= self.expected
            || (self.replayable_from > 0 && self.expected + 1 >= self.replayable_from)
    }
}

/// Errors a backend reports. Mapped to gRPC statuses in exactly one place (`crate::error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The key was never written.
    #[error("key not found")]
    NotFound,
    /// Compare-and-set failed: the key's version differs from the expected one.
    #[error("version mismatch: expected {}, actual {}", .0.expected, .0.actual)]
    Conflict(Mismatch),
    /// The backend cannot serve now but may later (a lost connection, a full queue).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend failed in a way retrying will not fix (corruption, a failed fsync).
    #[error("storage failure: {0}")]
    Internal(String),
}

/// A key-value store with per-key versions and compare-and-set writes.
///
/// Implementations must be safe to share between tasks; the server holds one behind an `Arc`.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Returns the current value and version of `key`.
    ///
    /// Errors: [`StorageError::NotFound`] if the key was never written; `Unavailable` or
    /// `Internal` if the backend failed. A read never observes a write that has not been (or
    /// will not be) acknowledged as durable by this backend.
    async fn get(&self, key: &str) -> Result<Versioned, StorageError>;

    /// Writes `write.value` if the key's current version equals `write.expected_version`,
    /// atomically with respect to every other write of the same key, producing version
    /// `expected_version + 1` (a key that was never written has version 0).
    ///
    /// Idempotent replay: if `write.request_id` is the id of a write this store already applied
    /// — the one that produced the key's current version, or a recent one since overwritten —
    /// nothing is written and the original version comes back with `replayed: true`.
    ///
    /// Errors: [`StorageError::Conflict`] when the versions differ (with the actual version);
    /// `Unavailable`/`Internal` when the backend failed, in which case the write may or may not
    /// have been applied. `Ok` means the write is durable to the backend's promise (memory:
    /// visible to every later call; durable backends: on stable storage).
    async fn put(&self, write: Write) -> Result<Written, StorageError>;

    /// Every key with its current value and version, sorted by key (for final reports).
    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError>;

    /// Whether the backend can serve now. The server asks about once a second and reports
    /// NOT_SERVING on `grpc.health.v1` while this fails, so load balancers route away from a
    /// frontend whose backend is gone (etcd: no quorum); it keeps serving and recovers by
    /// itself. Backends that cannot lose their storage keep the default, always `Ok`.
    async fn check(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Makes every acknowledged write durable and releases resources before shutdown.
    async fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// A shared store is a store: `Arc<dyn Storage>` (what [`StorageSpec::open`] returns) goes
/// wherever `impl Storage` is asked for.
///
/// Each call hands back the backend's own future. (Written out rather than with
/// `#[async_trait]`, whose `async fn`s would box one more future around the backend's, on
/// every call of a server holding its store in an `Arc`.)
impl<S: Storage + ?Sized> Storage for Arc<S> {
    fn get<'s, 'k, 'f>(&'s self, key: &'k str) -> BoxedCall<'f, Versioned>
    where
        's: 'f,
        'k: 'f,
        Self: 'f,
    {
        (**self).get(key)
    }

    fn put<'s, 'f>(&'s self, write: Write) -> BoxedCall<'f, Written>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).put(write)
    }

    fn entries<'s, 'f>(&'s self) -> BoxedCall<'f, Vec<(String, Versioned)>>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).entries()
    }

    fn check<'s, 'f>(&'s self) -> BoxedCall<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).check()
    }

    fn flush<'s, 'f>(&'s self) -> BoxedCall<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        (**self).flush()
    }
}

/// The future of a [`Storage`] call, as `#[async_trait]` declares it.
type BoxedCall<'f, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StorageError>> + Send + 'f>>;
