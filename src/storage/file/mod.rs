//! `file:PATH`: a crash-safe append-only log (work in progress).

use std::path::Path;

use async_trait::async_trait;

use crate::storage::{Storage, StorageError, Versioned, Write, Written};

/// A durable [`Storage`] backed by an append-only log file.
#[derive(Debug)]
pub struct FileStorage {}

impl FileStorage {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let _ = path;
        Err(StorageError::Internal("file backend: not yet".into()))
    }
}

#[async_trait]
impl Storage for FileStorage {
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
