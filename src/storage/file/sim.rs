//! An in-memory file system that remembers what fsync made durable, fails the operation you
//! choose, and simulates power cuts: the crash tests' disk.
//!
//! Every mutating operation (create, open for append, write, fsync, truncate, rename, remove,
//! directory sync) is one *step*. A test first counts the steps of a workload, then reruns it
//! failing step `n` for every `n`; from the failed step on, every operation fails, as if the disk
//! had gone away. [`SimFs::crash`] then models a power cut: each file keeps what its last
//! `sync_data` made durable plus a seeded, random part of what was written after it — cut short
//! and with whole 512-byte sectors missing, because a disk may persist the pages of an unsynced
//! write in any order — and the directory keeps only the entries its last `sync_dir` made
//! durable.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::storage::file::fs::{Fs, FsFile, FsLock};

/// The unit a disk persists atomically in this model.
const SECTOR: usize = 512;

/// A simulated file system; clones share the same files. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<u64, SimFile>,
    next_id: u64,
    /// Directory entries as the running system sees them.
    names: HashMap<PathBuf, u64>,
    /// Directory entries that survive a power cut.
    durable_names: HashMap<PathBuf, u64>,
    locked: HashMap<PathBuf, u64>,
    steps: u64,
    fail_at: Option<u64>,
    fail_once: Option<u64>,
    /// Creating these paths fails (a full disk, a permission), counted in `create_failures`.
    uncreatable: Vec<PathBuf>,
    create_failures: u64,
    /// Bumped by every crash, so handles from before it stop working.
    generation: u64,
}

#[derive(Debug, Default, Clone)]
struct SimFile {
    data: Vec<u8>,
    durable: Vec<u8>,
}

impl SimFs {
    /// An empty file system with no faults planned.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many steps have run since this file system was made.
    pub fn steps(&self) -> u64 {
        self.state().steps
    }

    /// Fails step number `step` (counting from 0 since creation) and every step after it.
    pub fn fail_at(&self, step: u64) {
        self.state().fail_at = Some(step);
    }

    /// Fails only step number `step`: a transient error, after which the disk works again and
    /// the page cache still holds whatever was written.
    pub fn fail_once(&self, step: u64) {
        self.state().fail_once = Some(step);
    }

    /// Makes every creation of `path` fail from now on, until a crash.
    pub fn refuse_creating(&self, path: impl AsRef<Path>) {
        self.state().uncreatable.push(path.as_ref().to_owned());
    }

    /// How many creations [`SimFs::refuse_creating`] has refused.
    pub fn create_failures(&self) -> u64 {
        self.state().create_failures
    }

    /// A power cut: unsynced data and directory entries are lost (partly, as `seed` decides),
    /// locks are released, planned faults are cleared and old handles stop working.
    pub fn crash(&self, seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut state = self.state();
        for file in state.files.values_mut() {
            let durable = std::mem::take(&mut file.durable);
            file.data = if file.data.starts_with(&durable) {
                let mut torn = file.data[durable.len()..].to_vec();
                torn.truncate(rng.random_range(0..=torn.len()));
                for sector in torn.chunks_mut(SECTOR) {
                    if rng.random_ratio(1, 4) {
                        sector.fill(0);
                    }
                }
                [durable, torn].concat()
            } else if rng.random() {
                durable
            } else {
                file.data.clone()
            };
            file.durable = file.data.clone();
        }
        state.names = state.durable_names.clone();
        let live: Vec<u64> = state.names.values().copied().collect();
        state.files.retain(|id, _| live.contains(id));
        state.locked.clear();
        state.fail_at = None;
        state.fail_once = None;
        state.uncreatable.clear();
        state.generation += 1;
    }

    /// The current content of `path`, as a reader would see it now.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state();
        let id = state.names.get(path)?;
        Some(state.files[id].data.clone())
    }

    /// Replaces `path` with `data`, durably (for tests that damage a log on purpose).
    pub fn put_file(&self, path: &Path, data: &[u8]) {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        state.files.insert(
            id,
            SimFile {
                data: data.to_vec(),
                durable: data.to_vec(),
            },
        );
        state.names.insert(path.to_owned(), id);
        state.durable_names.insert(path.to_owned(), id);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one step; fails it if a fault is planned at or before it.
    fn step(&self) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self.state();
        let step = state.steps;
        state.steps += 1;
        if state.fail_at.is_some_and(|fail| step >= fail) || state.fail_once == Some(step) {
            return Err(io::Error::other(format!(
                "simulated I/O failure at step {step}"
            )));
        }
        Ok(state)
    }

    fn open(&self, path: &Path, truncate: bool) -> io::Result<Box<dyn FsFile>> {
        let mut state = self.step()?;
        if truncate && state.uncreatable.iter().any(|p| p == path) {
            state.create_failures += 1;
            return Err(io::Error::other(format!(
                "simulated failure creating {}",
                path.display()
            )));
        }
        let id = match state.names.get(path) {
            Some(&id) => id,
            None if truncate => {
                let id = state.next_id;
                state.next_id += 1;
                state.files.insert(id, SimFile::default());
                state.names.insert(path.to_owned(), id);
                id
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        if truncate {
            state
                .files
                .get_mut(&id)
                .expect("named file exists")
                .data
                .clear();
        }
        Ok(Box::new(SimHandle {
            fs: self.clone(),
            id,
            generation: state.generation,
        }))
    }
}

/// An open simulated file.
#[derive(Debug)]
struct SimHandle {
    fs: SimFs,
    id: u64,
    generation: u64,
}

impl SimHandle {
    fn with_file<T>(&self, f: impl FnOnce(&mut SimFile) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.fs.step()?;
        if state.generation != self.generation {
            return Err(io::Error::other(
                "file handle from before a simulated crash",
            ));
        }
        let file = state
            .files
            .get_mut(&self.id)
            .ok_or(io::ErrorKind::NotFound)?;
        f(file)
    }
}

impl FsFile for SimHandle {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        // A failing write may still have written part of its data, as a real one can.
        let fail_here = {
            let state = self.fs.state();
            state.fail_at.is_some_and(|fail| state.steps >= fail)
        };
        if fail_here {
            let partial = &data[..data.len() / 2];
            let mut state = self.fs.state();
            if state.generation == self.generation
                && let Some(file) = state.files.get_mut(&self.id)
            {
                file.data.extend_from_slice(partial);
            }
        }
        self.with_file(|file| {
            file.data.extend_from_slice(data);
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with_file(|file| {
            file.durable = file.data.clone();
            Ok(())
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with_file(|file| {
            file.data.resize(len as usize, 0);
            Ok(())
        })
    }
}

#[derive(Debug)]
struct SimLock {
    fs: SimFs,
    path: PathBuf,
    generation: u64,
}

impl FsLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut state = self.fs.state();
        if state.locked.get(&self.path) == Some(&self.generation) {
            state.locked.remove(&self.path);
        }
    }
}

impl Fs for SimFs {
    fn open_read(&self, path: &Path) -> io::Result<Option<(Box<dyn io::Read + Send>, u64)>> {
        Ok(self.contents(path).map(|data| {
            let len = data.len() as u64;
            (
                Box::new(io::Cursor::new(data)) as Box<dyn io::Read + Send>,
                len,
            )
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path, true)
    }

    fn append(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path, false)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.step()?;
        let id = state.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        state.names.insert(to.to_owned(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.step()?;
        state.names.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.step()?;
        let in_dir = |p: &Path| match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent == dir,
            _ => dir == Path::new("."),
        };
        let State {
            names,
            durable_names,
            ..
        } = &mut *state;
        durable_names.retain(|p, _| !in_dir(p));
        durable_names.extend(
            names
                .iter()
                .filter(|(p, _)| in_dir(p))
                .map(|(p, id)| (p.clone(), *id)),
        );
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        let mut state = self.state();
        if state.locked.contains_key(path) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let generation = state.generation;
        state.locked.insert(path.to_owned(), generation);
        Ok(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_owned(),
            generation,
        }))
    }
}
