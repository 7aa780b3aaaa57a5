//! `redb:PATH`: the embedded database backend (work in progress).

use std::path::Path;

use async_trait::async_trait;

use crate::storage::{Storage, StorageError, Versioned, Write, Written};

/// A durable [`Storage`] backed by a redb database file.
#[derive(Debug)]
pub struct RedbStorage {}

impl RedbStorage {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let _ = path;
        Err(StorageError::Internal("redb backend: not yet".into()))
    }
}

#[async_trait]
impl Storage for RedbStorage {
    async fn get(&self, _key: &str) -> Result<Versioned, StorageError> {
        unimplemented!()
    }
    async fn put(&self, _write: Write) -> Result<Written, StorageError> {
        unimplemented!()
    }
    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        unimplemented!()
    }
}
