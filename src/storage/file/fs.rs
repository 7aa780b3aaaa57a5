//! The few file-system operations the log needs, behind a trait so tests can fail or crash them.
//!
//! [`OsFs`] is the real thing. [`crate::storage::file::SimFs`] keeps files in memory, tracks what
//! an fsync has made durable, and can fail the n-th operation or simulate a power cut: the crash
//! tests use it to prove that no acknowledged write is lost at any step.

use std::{
    fmt,
    fs::{File, OpenOptions, TryLockError},
    io::{self, Read, Write as _},
    path::Path,
};

/// A file opened for writing.
pub trait FsFile: Send + fmt::Debug {
    /// Appends all of `data` at the end of the file.
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (not durable until [`FsFile::sync_data`]).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// A held lock; dropping it releases the lock.
pub trait FsLock: Send + Sync + fmt::Debug {}

/// The file-system operations of the log. Paths name files; `sync_dir` names a directory.
pub trait Fs: Send + Sync + fmt::Debug + 'static {
    /// Opens `path` for reading from its start, with its length in bytes; `None` if it does not
    /// exist.
    fn open_read(&self, path: &Path) -> io::Result<Option<(Box<dyn Read + Send>, u64)>>;
    /// Creates `path` empty (truncating it if it exists) for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens the existing `path` for appending at its end.
    fn append(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Renames `from` to `to`, replacing `to` (durable after [`Fs::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes `path` if it exists.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing) without waiting; an error of kind
    /// [`io::ErrorKind::WouldBlock`] means someone else holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>>;
}

/// The operating system's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFs;

#[derive(Debug)]
struct OsFile(File);

impl FsFile for OsFile {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

/// An advisory `flock` on an open file; the kernel releases it when the file is closed, which
/// includes the process being killed.
#[derive(Debug)]
struct OsLock(#[allow(dead_code)] File);

impl FsLock for OsLock {}

impl Fs for OsFs {
    fn open_read(&self, path: &Path) -> io::Result<Option<(Box<dyn Read + Send>, u64)>> {
        match File::open(path) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok(Some((Box::new(file), len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(OsLock(file))),
            Err(TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}
