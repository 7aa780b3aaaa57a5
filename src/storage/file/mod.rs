//! `file:PATH`: a crash-safe append-only log with group commit, rebuilt into memory on open.
//!
//! The whole store lives in the same sharded `Index` as the memory backend; the log is what
//! makes it survive. A write is decided and applied under its shard lock, where it also appends
//! its record to a shared buffer; one committer thread writes whatever has queued as one frame,
//! fsyncs it, and then wakes every writer that frame covers. So one fsync serves every write that
//! arrived while the previous one ran, and throughput grows with concurrency.
//!
//! Nothing is answered from data that is not yet durable: each entry remembers the log position
//! of its record, and a read, a replay or a refusal waits until that position is synced, exactly
//! like the write itself. An fsync (or write) error is fatal: the kernel may have dropped the
//! dirty pages, so retrying could report as durable what is not. The store then refuses every
//! write, and reads of anything not yet durable, until it is reopened; the failed frame is cut
//! off the file again, so a reopen cannot read it back from the page cache.
//!
//! On open the log is read from the start, frame by frame (see [`format`]): a torn last frame is
//! cut off (and the cut synced); a damaged frame with valid frames after it, or with more bytes
//! after it than one frame could leave, is lost durable data, and open refuses with the file and
//! offset instead of dropping anything. When superseded records outweigh the live ones
//! (and a minimum), the committer compacts: it writes every live record to `PATH.compact`, syncs
//! it, renames it over the log and syncs the directory; a crash at any step leaves either the old
//! or the new log, each complete. `PATH.lock` holds an exclusive lock while the store is open.

mod format;
mod fs;
mod sim;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use async_trait::async_trait;
use tokio::sync::oneshot;

pub use fs::{Fs, FsFile, FsLock, OsFs};
pub use sim::SimFs;

use crate::storage::{
    DEFAULT_REPLAY_CAPACITY, Storage, StorageError, Versioned, Write, Written,
    index::{Index, Snapshot},
};
use format::{FILE_HEADER, FRAME_HEADER, MAX_FRAME_BYTES, Scan, ScanError};

/// The read buffer for opening a log.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// The committer keeps its batch buffers between batches up to this size.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

/// Tuning for [`FileStorage`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FileOptions {
    /// Overwritten request ids remembered for replay (as for the memory backend). The log keeps
    /// them, so a restart with the same capacity remembers the same ids.
    pub replay_capacity: usize,
    /// Compaction runs when superseded bytes exceed both this and the size of the live records.
    pub compact_min_bytes: u64,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            compact_min_bytes: 64 << 20,
        }
    }
}

impl FileOptions {
    /// Sets [`FileOptions::replay_capacity`].
    pub fn replay_capacity(mut self, ids: usize) -> Self {
        self.replay_capacity = ids;
        self
    }

    /// Sets [`FileOptions::compact_min_bytes`].
    pub fn compact_min_bytes(mut self, bytes: u64) -> Self {
        self.compact_min_bytes = bytes;
        self
    }
}

/// A durable [`Storage`] backed by an append-only log file. See the module docs.
#[derive(Debug)]
pub struct FileStorage {
    shared: Arc<Shared>,
    committer: Option<thread::JoinHandle<()>>,
    // Dropped after the committer has stopped, so a new store cannot open the log too early.
    _lock: Box<dyn FsLock>,
}

#[derive(Debug)]
struct Shared {
    index: Index,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The highest log position known to be on stable storage.
    durable_lsn: AtomicU64,
    /// Callers waiting for a position, woken exactly when a sync covers it. (Waking every waiter
    /// on every sync, as a broadcast would, costs more CPU than the writes themselves once
    /// hundreds are in flight and the disk syncs in a fraction of a millisecond.)
    waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<()>>>>,
    /// Why the log stopped taking writes, once it has.
    failed: OnceLock<Arc<str>>,
    path: PathBuf,
}

/// Records appended but not yet taken by the committer. Log positions (LSNs) count record bytes
/// appended since open; a record's LSN is the position just after it.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    appended: u64,
    /// Bytes of the records that are some key's current version.
    live_bytes: u64,
    closing: bool,
}

impl FileStorage {
    /// Opens (or creates) the log at `path` with default options on the real file system.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(path, FileOptions::default(), Arc::new(OsFs))
    }

    /// Opens (or creates) the log at `path` on `fs`.
    ///
    /// Errors name the file: another process holds `PATH.lock`; the file is not a kvcore log;
    /// a damaged frame is followed by valid ones (with its offset); an I/O error.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: FileOptions,
        fs: Arc<dyn Fs>,
    ) -> Result<Self, StorageError> {
        let path = path.as_ref().to_owned();
        let shown = path.display();
        let io_err = |what: &str, e: std::io::Error| {
            StorageError::Internal(format!("file log {shown}: {what}: {e}"))
        };
        let lock_path = suffixed(&path, ".lock");
        let lock = fs.lock(&lock_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => StorageError::Internal(format!(
                "file log {shown} is already open in another store (lock {} is held)",
                lock_path.display()
            )),
            _ => io_err("cannot take the lock file", e),
        })?;
        fs.remove(&suffixed(&path, ".compact"))
            .map_err(|e| io_err("cannot remove a stale compaction file", e))?;

        let index = Index::new(options.replay_capacity);
        let mut pending = Pending::default();
        let (file_len, salt) = match read_log(&*fs, &path, &index, &mut pending.live_bytes)? {
            Some(Scan { valid_len, salt }) => (valid_len, salt),
            // A missing file, or one whose creation never got past the header: nothing in it
            // was ever acknowledged.
            _ => {
                let salt = rand::random();
                let mut header = Vec::new();
                format::encode_header(&mut header, salt);
                let mut file = fs.create(&path).map_err(|e| io_err("cannot create", e))?;
                file.write_all(&header)
                    .and_then(|()| file.sync_data())
                    .and_then(|()| fs.sync_dir(&parent(&path)))
                    .map_err(|e| io_err("cannot create", e))?;
                (FILE_HEADER as u64, salt)
            }
        };
        let file = fs.append(&path).map_err(|e| io_err("cannot open", e))?;

        let shared = Arc::new(Shared {
            index,
            pending: Mutex::new(pending),
            wake: Condvar::new(),
            durable_lsn: AtomicU64::new(0),
            waiters: Mutex::new(BTreeMap::new()),
            failed: OnceLock::new(),
            path: path.clone(),
        });
        let committer = Committer {
            shared: shared.clone(),
            fs,
            file,
            file_len,
            salt,
            compact_min_bytes: options.compact_min_bytes,
            retry_compaction_above: 0,
        };
        let committer = thread::Builder::new()
            .name("kv-file-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| io_err("cannot start the commit thread", e))?;
        Ok(Self {
            shared,
            committer: Some(committer),
            _lock: lock,
        })
    }

    /// Waits until log position `lsn` is durable.
    async fn durable(&self, lsn: u64) -> Result<(), StorageError> {
        let shared = &self.shared;
        if shared.durable_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let woken = {
            let mut waiters = shared.waiters();
            // Checked again under the lock the committer takes to wake waiters, so a sync that
            // lands between the first check and the registration cannot be missed.
            if shared.durable_lsn.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            if let Some(why) = shared.failed.get() {
                return Err(shared.refusal(why));
            }
            let (wake, woken) = oneshot::channel();
            waiters.entry(lsn).or_default().push(wake);
            woken
        };
        match woken.await {
            Ok(()) => Ok(()),
            // The committer dropped the waiter: the log failed (or closed) before `lsn`.
            Err(_) => Err(match shared.failed.get() {
                Some(why) => shared.refusal(why),
                None => StorageError::Unavailable("file log is closed".into()),
            }),
        }
    }
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiters(&self) -> MutexGuard<'_, BTreeMap<u64, Vec<oneshot::Sender<()>>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refusal(&self, why: &str) -> StorageError {
        StorageError::Internal(format!(
            "file log {}: {why}; writes are refused until the store is reopened",
            self.path.display()
        ))
    }

    /// Everything up to `lsn` is on stable storage: wake exactly the callers waiting for it.
    fn synced(&self, lsn: u64) {
        self.durable_lsn.fetch_max(lsn, Ordering::Release);
        let ready = {
            let mut waiters = self.waiters();
            let later = waiters.split_off(&(lsn + 1));
            std::mem::replace(&mut *waiters, later)
        };
        for wake in ready.into_values().flatten() {
            let _ = wake.send(());
        }
    }

    /// Queues the record of an applied write (under its shard lock); returns its log position.
    fn append(
        &self,
        write: &Write,
        version: u64,
        replaced: Option<&str>,
    ) -> Result<u64, StorageError> {
        let size = format::record_len(&write.key, &write.value);
        if size > format::MAX_RECORD_BYTES {
            return Err(StorageError::Internal(format!(
                "file log {}: a record of {size} bytes is over the log's limit of {} bytes",
                self.path.display(),
                format::MAX_RECORD_BYTES
            )));
        }
        let mut pending = self.pending();
        if let Some(why) = self.failed.get() {
            return Err(self.refusal(why));
        }
        if pending.closing {
            return Err(StorageError::Unavailable("file log is closing".into()));
        }
        format::encode_record(
            &mut pending.bytes,
            &write.key,
            &write.value,
            version,
            0,
            write.request_id.as_ref(),
        );
        pending.appended += size as u64;
        pending.live_bytes += size as u64;
        if let Some(old) = replaced {
            pending.live_bytes = pending
                .live_bytes
                .saturating_sub(format::record_len(&write.key, old) as u64);
        }
        let lsn = pending.appended;
        drop(pending);
        self.wake.notify_one();
        Ok(lsn)
    }

    fn fail(&self, why: String) {
        tracing::error!(
            "file log {}: {why}; refusing writes until reopened",
            self.path.display()
        );
        // Under the pending lock, so no write is queued after this point.
        let pending = self.pending();
        let _ = self.failed.set(why.into());
        drop(pending);
        // Waiters of positions that were never synced learn it from their dropped sender.
        let unsynced = std::mem::take(&mut *self.waiters());
        drop(unsynced);
    }
}

/// The thread that writes and syncs frames, and compacts.
struct Committer {
    shared: Arc<Shared>,
    fs: Arc<dyn Fs>,
    file: Box<dyn FsFile>,
    file_len: u64,
    /// The current file's salt (see [`format`]); a compacted file gets a new one.
    salt: u64,
    compact_min_bytes: u64,
    /// After an abandoned compaction, the garbage it waits for before trying again.
    retry_compaction_above: u64,
}

impl Committer {
    fn run(mut self) {
        // Both buffers are reused from batch to batch; the taken records swap places with the
        // empty one, so a batch costs neither a copy nor an allocation under the pending lock.
        let mut payload = Vec::new();
        let mut frame = Vec::new();
        loop {
            let (lsn, live_bytes) = {
                let mut pending = self.shared.pending();
                while pending.bytes.is_empty() && !pending.closing {
                    pending = self
                        .shared
                        .wake
                        .wait(pending)
                        .unwrap_or_else(|p| p.into_inner());
                }
                if pending.bytes.is_empty() || self.shared.failed.get().is_some() {
                    return;
                }
                payload.clear();
                let cut = frame_cut(&pending.bytes);
                if cut == pending.bytes.len() {
                    std::mem::swap(&mut payload, &mut pending.bytes);
                } else {
                    payload.extend(pending.bytes.drain(..cut));
                }
                let lsn = pending.appended - pending.bytes.len() as u64;
                (lsn, pending.live_bytes)
            };
            frame.clear();
            format::encode_frame(&mut frame, &payload, self.salt, self.file_len);
            if let Err(e) = self
                .file
                .write_all(&frame)
                .and_then(|()| self.file.sync_data())
            {
                let why = self.undo_frame(e);
                self.shared.fail(why);
                return;
            }
            self.file_len += frame.len() as u64;
            self.shared.synced(lsn);
            // Keep ordinary batches' capacity, but not a burst's.
            if payload.capacity() > KEEP_BUFFER_BYTES {
                payload = Vec::new();
                frame = Vec::new();
            }

            let garbage = self.file_len.saturating_sub(live_bytes);
            if garbage
                > self
                    .compact_min_bytes
                    .max(live_bytes)
                    .max(self.retry_compaction_above)
            {
                match self.compact() {
                    Ok(true) => self.retry_compaction_above = 0,
                    // Abandoned (a full disk, say): not again before the garbage has doubled, so
                    // a lasting failure does not rewrite the whole store after every batch.
                    Ok(false) => self.retry_compaction_above = garbage.saturating_mul(2),
                    Err(why) => {
                        self.shared.fail(why);
                        return;
                    }
                }
            }
        }
    }

    /// After a failed write or sync: cuts the frame off again and says what happened.
    ///
    /// Linux marks pages whose writeback failed as clean, so the frame would stay readable in the
    /// page cache without ever reaching the disk (a later sync does not retry it): reopening the
    /// log without a reboot would serve writes that were never acknowledged, and the next power
    /// cut would leave a hole before later, synced frames. Truncating drops those pages.
    fn undo_frame(&mut self, error: std::io::Error) -> String {
        match self.file.set_len(self.file_len) {
            Ok(()) => {
                // Best effort: if the shorter length is lost in a crash, the frame is a torn tail.
                let _ = self.file.sync_data();
                format!(
                    "writing or syncing the log failed: {error}; the unsynced frame was cut off"
                )
            }
            Err(cut) => format!(
                "writing or syncing the log failed: {error}, and cutting the unsynced frame off \
                 failed too ({cut}); do not reopen this log before the machine restarts, since \
                 its page cache may hold data that is not on disk"
            ),
        }
    }

    /// Rewrites the log with only the live records; returns whether it did. An error before the
    /// rename abandons the attempt (the old log is intact and stays in use); an error after it
    /// is fatal.
    fn compact(&mut self) -> Result<bool, String> {
        let path = self.shared.path.clone();
        let temp = suffixed(&path, ".compact");
        let (live, snapshot_lsn) = self
            .shared
            .index
            .snapshot(|| self.shared.pending().appended);
        let salt = rand::random();
        let (file, len) = match write_compacted(&*self.fs, &temp, live, salt) {
            Ok(written) => written,
            Err(e) => {
                tracing::warn!(
                    "file log {}: compaction abandoned, the log stays as it is: {e}",
                    path.display()
                );
                let _ = self.fs.remove(&temp);
                return Ok(false);
            }
        };
        self.fs
            .rename(&temp, &path)
            .and_then(|()| self.fs.sync_dir(&parent(&path)))
            .map_err(|e| format!("installing the compacted log failed: {e}"))?;
        tracing::info!(
            "file log {}: compacted {} bytes into {len}",
            path.display(),
            self.file_len
        );
        self.file = file;
        self.file_len = len;
        self.salt = salt;
        // Records queued before the snapshot are in the new file already.
        let mut pending = self.shared.pending();
        let queued_from = pending.appended - pending.bytes.len() as u64;
        let covered = (snapshot_lsn - queued_from) as usize;
        pending.bytes.drain(..covered);
        drop(pending);
        self.shared.synced(snapshot_lsn);
        Ok(true)
    }
}

impl Drop for FileStorage {
    fn drop(&mut self) {
        self.shared.pending().closing = true;
        self.shared.wake.notify_all();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

/// Writes every live record to a new synced file at `temp` with this `salt`; returns the file and
/// its length.
fn write_compacted(
    fs: &dyn Fs,
    temp: &Path,
    live: Vec<Snapshot>,
    salt: u64,
) -> std::io::Result<(Box<dyn FsFile>, u64)> {
    let mut file = fs.create(temp)?;
    let mut out = Vec::new();
    format::encode_header(&mut out, salt);
    let mut payload = Vec::new();
    let flush = |payload: &mut Vec<u8>, out: &mut Vec<u8>| {
        if !payload.is_empty() {
            let offset = out.len() as u64;
            format::encode_frame(out, payload, salt, offset);
            payload.clear();
        }
    };
    for record in &live {
        // The writers of overwritten versions are not carried over, so the floor rises to the
        // current version: a retry of a forgotten write will be reported as unknown, not refused.
        let floor = record.replayable_from.max(record.version);
        format::encode_record(
            &mut payload,
            &record.key,
            &record.value,
            record.version,
            floor,
            record.writer.as_ref(),
        );
        if payload.len() >= MAX_FRAME_BYTES {
            flush(&mut payload, &mut out);
        }
    }
    flush(&mut payload, &mut out);
    file.write_all(&out)?;
    file.sync_data()?;
    Ok((file, out.len() as u64))
}

/// Where the first frame of `bytes` should end: as many whole records as fit in
/// [`MAX_FRAME_BYTES`], and at least one.
fn frame_cut(bytes: &[u8]) -> usize {
    let mut cut = 0;
    while cut < bytes.len() {
        let len = u32::from_le_bytes(bytes[cut..cut + 4].try_into().expect("record header"));
        let next = cut + 4 + len as usize;
        if cut > 0 && next + FRAME_HEADER > MAX_FRAME_BYTES {
            break;
        }
        cut = next;
    }
    cut
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Reads the log at `path` into `index`, one frame at a time, counting the bytes of the live
/// records into `live_bytes`, and cuts off (durably) a torn tail. `None` if there is no file, or
/// only one whose creation never got past its header.
fn read_log(
    fs: &dyn Fs,
    path: &Path,
    index: &Index,
    live_bytes: &mut u64,
) -> Result<Option<Scan>, StorageError> {
    let shown = path.display();
    let io_err = |what: &str, e: std::io::Error| {
        StorageError::Internal(format!("file log {shown}: {what}: {e}"))
    };
    let Some((file, total)) = fs.open_read(path).map_err(|e| io_err("cannot read", e))? else {
        return Ok(None);
    };
    let file = std::io::BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let scan = format::scan(file, total, |record| {
        let key_cost = format::record_len(&record.key, "") as u64;
        let value_len = record.value.len() as u64;
        let replaced = index.restore(record, 0)?;
        *live_bytes += key_cost + value_len;
        if let Some(old) = replaced {
            *live_bytes = live_bytes.saturating_sub(key_cost + old.len() as u64);
        }
        Ok(())
    });
    let refusal = |why: String| {
        Err(StorageError::Internal(format!(
            "file log {shown}{why}. Refusing to start rather than drop acknowledged data: restore \
             the file from a backup or inspect it"
        )))
    };
    let scan = match scan {
        Ok(Some(scan)) => scan,
        Ok(None) => return Ok(None),
        Err(ScanError::NotALog) => {
            return Err(StorageError::Internal(format!(
                "{shown} is not a kvcore log file (it does not start with the log's magic bytes)"
            )));
        }
        Err(ScanError::Format(version)) => {
            return Err(StorageError::Internal(format!(
                "file log {shown} is in log format {version}, which this build does not read \
                 (it reads format 2; format 1 came from development builds before frames were \
                 bound to their offsets). The file is untouched"
            )));
        }
        Err(ScanError::Refused(reason)) => {
            return Err(StorageError::Internal(format!(
                "file log {shown} contradicts itself: {reason}; refusing to start"
            )));
        }
        Err(ScanError::Io(e)) => {
            return Err(StorageError::Internal(format!(
                "file log {shown}: cannot read: {e}"
            )));
        }
        Err(ScanError::BadHeader) => {
            return refusal(format!(
                ": its header fails its checksum (the first {FILE_HEADER} bytes are damaged), so \
                 no frame can be checked"
            ));
        }
        Err(ScanError::LongTail { offset, tail, most }) => {
            return refusal(format!(
                " is damaged at byte offset {offset}, and the {tail} bytes from there to the end \
                 hold no valid frame: more than an interrupted write can leave (at most {most} \
                 bytes here), so writes that were acknowledged are missing. If you know the end \
                 of the file was lost, `truncate -s {offset} {shown}` keeps what is before it"
            ));
        }
        Err(ScanError::Corrupt { offset, reason }) => {
            return refusal(format!(
                " is corrupt at byte offset {offset}: {reason}; valid records follow, so this is \
                 damage to durable data, not a torn write"
            ));
        }
    };
    if scan.valid_len < total {
        let mut file = fs.append(path).map_err(|e| io_err("cannot open", e))?;
        file.set_len(scan.valid_len)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_err("cannot cut off the torn tail", e))?;
        tracing::warn!(
            "file log {shown}: cut off a torn tail of {} bytes at offset {} (an interrupted \
             write that was never acknowledged)",
            total - scan.valid_len,
            scan.valid_len
        );
    }
    Ok(Some(scan))
}

#[async_trait]
impl Storage for FileStorage {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        let found = self.shared.index.get_stamped(key);
        self.durable(found.lsn).await?;
        found.result.ok_or(StorageError::NotFound)
    }

    async fn put(&self, write: Write) -> Result<Written, StorageError> {
        let done = self
            .shared
            .index
            .put_with(write, |write, version, replaced| {
                self.shared.append(write, version, replaced)
            });
        self.durable(done.lsn).await?;
        done.result
    }

    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        let all = self.shared.index.entries_stamped();
        self.durable(all.lsn).await?;
        Ok(all.result)
    }

    async fn flush(&self) -> Result<(), StorageError> {
        let lsn = self.shared.pending().appended;
        self.durable(lsn).await
    }
}
