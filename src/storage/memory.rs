//! `memory`: the default backend, a sharded in-memory map.
//!
//! Fast and simple; everything is lost when the process exits. Replay memory is bounded by
//! the replay capacity (default [`DEFAULT_REPLAY_CAPACITY`] overwritten ids, each costing about
//! 100 bytes plus its key), independent of how many clients write.

use async_trait::async_trait;

pub use crate::storage::index::DEFAULT_REPLAY_CAPACITY;
use crate::storage::{Storage, StorageError, Versioned, Write, Written, index::Index};

/// An in-memory [`Storage`]: a sharded map with per-key compare-and-set.
#[derive(Debug)]
pub struct MemoryStorage {
    index: Index,
}

impl MemoryStorage {
    /// An empty store with the default replay capacity.
    pub fn new() -> Self {
        Self::with_replay_capacity(DEFAULT_REPLAY_CAPACITY)
    }

    /// An empty store remembering up to `capacity` overwritten request ids (0 = only the
    /// writer of each key's current version).
    pub fn with_replay_capacity(capacity: usize) -> Self {
        Self {
            index: Index::new(capacity),
        }
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        self.index.get(key).ok_or(StorageError::NotFound)
    }

    async fn put(&self, write: Write) -> Result<Written, StorageError> {
        self.index.put(write)
    }

    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        Ok(self.index.entries())
    }
}
