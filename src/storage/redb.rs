//! `redb:PATH`: a durable backend on an embedded redb database, with group commit.
//!
//! redb is the source of truth; nothing is cached in memory. Compare-and-set, idempotent replay
//! and the replay cache (the same rules as [`MemoryStorage`](crate::storage::MemoryStorage))
//! are all decided inside one redb write transaction, so a write, the request id stored with it
//! and the id it overwrote change together or not at all, and replay works across restarts.
//!
//! Each redb commit with immediate durability costs an fsync, so writes are group-committed:
//! one committer thread owns every write transaction. Writers queue their [`Write`] and wait on
//! a oneshot; the committer takes everything queued (up to [`MAX_BATCH`]), applies each write
//! in arrival order in one transaction (a write sees the earlier writes of its batch), commits,
//! and only then answers. A thread (not a tokio task) because commits block on fsync for
//! milliseconds, and a dedicated thread keeps that off the runtime without a hop per batch.
//! The queue is unbounded, but every queued write has a caller awaiting its answer, so it
//! holds at most one write per in-flight `put`.
//!
//! The tables:
//!
//! | table          | key                 | value                                      |
//! |----------------|---------------------|--------------------------------------------|
//! | `entries`      | key (UTF-8)         | a row: see `encode_row`                    |
//! | `replay_ids`   | (request id, key)   | the version an overwritten write produced  |
//! | `replay_order` | FIFO sequence (u64) | (request id, key), oldest first            |
//! | `kvcore_meta`  | `"format"`          | the layout version, refused if unknown     |
//!
//! Overwritten ids are keyed by id *and* key because replay is per key: an id a client reuses
//! on another key is a new write, and each key keeps its own record. Unlike the memory
//! backend, which splits its replay capacity over 64 shards, the replay cache here is one FIFO
//! of exactly `replay_capacity` overwritten writes.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
};

use ::redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::storage::{
    DEFAULT_REPLAY_CAPACITY, Mismatch, RequestId, Storage, StorageError, Versioned, Write, Written,
};

/// The most writes one transaction applies; bounds the latency a batch adds to its last write.
pub const MAX_BATCH: usize = 1024;

/// The version of the table layout and row encoding below.
const FORMAT: u64 = 1;

const ENTRIES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("entries");
const REPLAY_IDS: TableDefinition<'static, (RequestId, &str), u64> =
    TableDefinition::new("replay_ids");
const REPLAY_ORDER: TableDefinition<'static, u64, (RequestId, &str)> =
    TableDefinition::new("replay_order");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("kvcore_meta");

/// Bytes before the value in a row.
const HEADER_LEN: usize = 33;

/// How a [`RedbStorage`] is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedbOptions {
    replay_capacity: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
        }
    }
}

impl RedbOptions {
    /// How many overwritten request ids to remember (default [`DEFAULT_REPLAY_CAPACITY`];
    /// 0 = only the writer of each key's current version). Evicting one raises its key's
    /// [`Mismatch::replayable_from`]. Lowering it for an existing database (to 0 too) takes
    /// effect as new ids are remembered.
    pub fn replay_capacity(mut self, capacity: usize) -> Self {
        self.replay_capacity = capacity;
        self
    }
}

/// A durable [`Storage`] backed by a redb database file. See the module docs.
///
/// Dropping it waits for the batch being committed, stops the committer thread and closes the
/// database, so the same path can be opened again right away.
#[derive(Debug)]
pub struct RedbStorage {
    db: Arc<Database>,
    path: PathBuf,
    /// `None` only inside `drop`, which closes the queue to stop the committer.
    commands: Option<mpsc::Sender<Command>>,
    committer: Option<thread::JoinHandle<()>>,
}

#[derive(Debug)]
enum Command {
    Put(Write, oneshot::Sender<Result<Written, StorageError>>),
    /// Answered once every command queued before it has been committed.
    Flush(oneshot::Sender<()>),
}

impl RedbStorage {
    /// Opens (or creates) the database at `path` with default [`RedbOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(path, RedbOptions::default())
    }

    /// Opens (or creates) the database at `path`.
    ///
    /// Errors ([`StorageError::Internal`], naming the path): the database is already open (by
    /// another process or another `RedbStorage`), the file is not a redb database or holds
    /// tables of another layout, or an I/O error.
    pub fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|e| open_error(&path, e))?;
        prepare(&db).map_err(|e| failure(&path, "cannot prepare the kvcore tables", e))?;
        let db = Arc::new(db);
        let (commands, queue) = mpsc::channel();
        let committer = Committer {
            db: Arc::clone(&db),
            path: path.clone(),
            replay_capacity: options.replay_capacity as u64,
        };
        let committer = thread::Builder::new()
            .name("redb-committer".into())
            .spawn(move || committer.run(queue))
            .map_err(|e| failure(&path, "cannot start the committer thread", e))?;
        Ok(Self {
            db,
            path,
            commands: Some(commands),
            committer: Some(committer),
        })
    }

    fn send(&self, command: Command) -> Result<(), StorageError> {
        self.commands
            .as_ref()
            .expect("commands is only taken in drop")
            .send(command)
            .map_err(|_| self.committer_gone())
    }

    fn committer_gone(&self) -> StorageError {
        StorageError::Internal(format!(
            "redb {}: the committer thread stopped",
            self.path.display()
        ))
    }

    fn read_error(&self, err: impl Into<::redb::Error>) -> StorageError {
        failure(&self.path, "read failed", err.into())
    }
}

impl Drop for RedbStorage {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(committer) = self.committer.take()
            && committer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "redb committer thread panicked");
        }
    }
}

// Reads run inline on the calling task rather than in `spawn_blocking`: a point read is a
// B-tree descent through redb's page cache (a `pread` on a miss; redb does not mmap), which
// costs about what the hop to a blocking thread and back would, and a read transaction is a
// snapshot that never waits for the committer's transaction or its fsync. Inline reads also
// hold no `Arc<Database>` beyond `&self`, so dropping the store really closes the file.
// `entries` scans everything, but it serves final reports, not traffic.
#[async_trait]
impl Storage for RedbStorage {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.read_error(e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| self.read_error(e))?;
        let row = table.get(key).map_err(|e| self.read_error(e))?;
        let row = row.ok_or(StorageError::NotFound)?;
        let (header, value) = decode_row(row.value()).map_err(|e| self.read_error(e))?;
        Ok(Versioned {
            value: value.to_owned(),
            version: header.version,
        })
    }

    async fn put(&self, write: Write) -> Result<Written, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Put(write, reply))?;
        answer.await.map_err(|_| self.committer_gone())?
    }

    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        let txn = self.db.begin_read().map_err(|e| self.read_error(e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| self.read_error(e))?;
        // redb orders `&str` keys by their bytes, which is `String`'s order too.
        let mut all = Vec::new();
        for item in table.iter().map_err(|e| self.read_error(e))? {
            let (key, row) = item.map_err(|e| self.read_error(e))?;
            let (header, value) = decode_row(row.value()).map_err(|e| self.read_error(e))?;
            all.push((
                key.value().to_owned(),
                Versioned {
                    value: value.to_owned(),
                    version: header.version,
                },
            ));
        }
        Ok(all)
    }

    async fn flush(&self) -> Result<(), StorageError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Flush(reply))?;
        done.await.map_err(|_| self.committer_gone())
    }
}

/// The thread that owns every write transaction.
struct Committer {
    db: Arc<Database>,
    path: PathBuf,
    replay_capacity: u64,
}

impl Committer {
    /// Commits batches until every sender is gone, i.e. the store was dropped.
    fn run(self, queue: mpsc::Receiver<Command>) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            batch.extend(queue.try_iter().take(MAX_BATCH - 1));
            self.commit(batch);
        }
    }

    fn commit(&self, batch: Vec<Command>) {
        let mut writes = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for command in batch {
            match command {
                Command::Put(write, reply) => {
                    writes.push(write);
                    replies.push(reply);
                }
                Command::Flush(reply) => flushes.push(reply),
            }
        }
        let count = writes.len();
        let outcomes = self.apply(writes).unwrap_or_else(|err| {
            tracing::error!(path = %self.path.display(), %err, count, "redb batch failed");
            // Until commit returns, replays and conflicts may rest on the batch's own
            // uncommitted writes, so no answer of a failed batch can be trusted.
            let err = failure(&self.path, "write failed", err);
            vec![Err(err); count]
        });
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // The caller may have gone (a cancelled request); the write stands either way.
            let _ = reply.send(outcome);
        }
        for reply in flushes {
            let _ = reply.send(());
        }
    }

    fn apply(
        &self,
        writes: Vec<Write>,
    ) -> Result<Vec<Result<Written, StorageError>>, ::redb::Error> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write()?;
        let outcomes = {
            let mut tables = Tables::open(&txn, self.replay_capacity)?;
            writes
                .into_iter()
                .map(|write| tables.put(write))
                .collect::<Result<Vec<_>, _>>()?
        };
        // Immediate durability (redb's default): the data is on disk when commit returns.
        txn.commit()?;
        Ok(outcomes)
    }
}

/// The tables of one write transaction, with the compare-and-set and replay rules.
struct Tables<'txn> {
    entries: Table<'txn, &'static str, &'static [u8]>,
    ids: Table<'txn, (RequestId, &'static str), u64>,
    order: Table<'txn, u64, (RequestId, &'static str)>,
    replay_capacity: u64,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction, replay_capacity: u64) -> Result<Self, ::redb::Error> {
        Ok(Self {
            entries: txn.open_table(ENTRIES)?,
            ids: txn.open_table(REPLAY_IDS)?,
            order: txn.open_table(REPLAY_ORDER)?,
            replay_capacity,
        })
    }

    /// One compare-and-set with replay. The outer error aborts the batch; the inner one is
    /// this write's answer.
    fn put(&mut self, write: Write) -> Result<Result<Written, StorageError>, ::redb::Error> {
        let current = match self.header(&write.key) {
            Ok(current) => current,
            // Nothing has changed yet: a damaged row fails this write, not the whole batch.
            Err(::redb::Error::Corrupted(why)) => {
                return Ok(Err(StorageError::Internal(format!(
                    "the row of key {:?} is damaged: {why}",
                    write.key
                ))));
            }
            Err(e) => return Err(e),
        };
        if let Some(id) = &write.request_id {
            let replayed = match current {
                Some(row) if row.writer.as_ref() == Some(id) => Some(row.version),
                _ => self.remembered(id, &write.key)?,
            };
            if let Some(version) = replayed {
                return Ok(Ok(Written {
                    version,
                    replayed: true,
                }));
            }
        }
        let (actual, replayable_from) = current.map_or((0, 1), |r| (r.version, r.replayable_from));
        if actual != write.expected_version {
            return Ok(Err(StorageError::Conflict(Mismatch {
                expected: write.expected_version,
                actual,
                replayable_from,
            })));
        }
        let Some(version) = actual.checked_add(1) else {
            return Ok(Err(StorageError::Internal(format!(
                "the row of key {:?} is damaged: its version is the largest possible",
                write.key
            ))));
        };
        let header = Header {
            version,
            replayable_from,
            writer: write.request_id,
        };
        let row = encode_row(&header, &write.value);
        self.entries.insert(write.key.as_str(), row.as_slice())?;
        if let Some(old) = current.and_then(|r| r.writer) {
            self.remember(old, &write.key, actual)?;
        }
        Ok(Ok(Written {
            version,
            replayed: false,
        }))
    }

    fn header(&self, key: &str) -> Result<Option<Header>, ::redb::Error> {
        match self.entries.get(key)? {
            Some(row) => Ok(Some(decode_row(row.value())?.0)),
            None => Ok(None),
        }
    }

    /// The version an overwritten `id` produced on `key`, if it is still remembered.
    fn remembered(&self, id: &RequestId, key: &str) -> Result<Option<u64>, ::redb::Error> {
        Ok(self.ids.get((*id, key))?.map(|version| version.value()))
    }

    /// Remembers that the overwritten `id` produced `version` of `key`, evicting the oldest ids
    /// beyond the capacity. `(id, key)` cannot be remembered already: the write would have
    /// been a replay.
    fn remember(&mut self, id: RequestId, key: &str, version: u64) -> Result<(), ::redb::Error> {
        // Evict down to room for this id (to nothing at all when nothing is remembered): a
        // loop, not one eviction, so a capacity lowered since the last open is honoured.
        let keep = self.replay_capacity.saturating_sub(1);
        while self.order.len()? > keep {
            let oldest = self.order.pop_first()?.map(|(_, entry)| {
                let (id, key) = entry.value();
                (id, key.to_owned())
            });
            let Some((old_id, old_key)) = oldest else {
                break;
            };
            let forgotten = self.ids.remove((old_id, old_key.as_str()))?;
            if let Some(old_version) = forgotten.map(|v| v.value()) {
                self.raise_floor(&old_key, old_version)?;
            }
        }
        if self.replay_capacity == 0 {
            return self.raise_floor(key, version);
        }
        let seq = match self.order.last()? {
            None => 0,
            Some((seq, _)) => seq.value().checked_add(1).ok_or_else(|| {
                ::redb::Error::Corrupted("replay order sequence at its maximum".into())
            })?,
        };
        self.order.insert(seq, (id, key))?;
        self.ids.insert((id, key), version)?;
        Ok(())
    }

    /// The writer of `version` of `key` is forgotten: refused retries of versions up to it can
    /// no longer be proven unapplied.
    fn raise_floor(&mut self, key: &str, version: u64) -> Result<(), ::redb::Error> {
        let Some(row) = self.entries.get(key)?.map(|guard| guard.value().to_vec()) else {
            return Ok(());
        };
        let (mut header, value) = decode_row(&row)?;
        if header.replayable_from <= version {
            header.replayable_from = version.saturating_add(1);
            self.entries
                .insert(key, encode_row(&header, value).as_slice())?;
        }
        Ok(())
    }
}

/// The fixed-size part of a row.
#[derive(Debug, Clone, Copy)]
struct Header {
    version: u64,
    replayable_from: u64,
    writer: Option<RequestId>,
}

/// Encodes a row of the `entries` table:
///
/// | offset | size | field                                                  |
/// |--------|------|--------------------------------------------------------|
/// | 0      | 8    | version, u64 little-endian                             |
/// | 8      | 8    | `replayable_from`, u64 little-endian                   |
/// | 16     | 1    | 1 if the write carried a request id, else 0            |
/// | 17     | 16   | that request id (zeros without one)                    |
/// | 33     | rest | the value, its UTF-8 bytes exactly                     |
fn encode_row(header: &Header, value: &str) -> Vec<u8> {
    let mut row = Vec::with_capacity(HEADER_LEN + value.len());
    row.extend_from_slice(&header.version.to_le_bytes());
    row.extend_from_slice(&header.replayable_from.to_le_bytes());
    row.push(u8::from(header.writer.is_some()));
    row.extend_from_slice(&header.writer.unwrap_or_default());
    row.extend_from_slice(value.as_bytes());
    row
}

/// Decodes a row written by [`encode_row`]; anything else is corruption.
fn decode_row(row: &[u8]) -> Result<(Header, &str), ::redb::Error> {
    let corrupt = |what: &str| ::redb::Error::Corrupted(format!("malformed entries row: {what}"));
    let (fixed, value) = row
        .split_first_chunk::<HEADER_LEN>()
        .ok_or_else(|| corrupt("shorter than its header"))?;
    let u64_at = |at: usize| {
        u64::from_le_bytes(
            fixed[at..at + 8]
                .try_into()
                .expect("8 bytes within the header"),
        )
    };
    let writer = match fixed[16] {
        0 => None,
        1 => Some(
            fixed[17..]
                .try_into()
                .expect("the id fills the header's tail"),
        ),
        _ => return Err(corrupt("bad request id flag")),
    };
    let value = std::str::from_utf8(value).map_err(|_| corrupt("value is not UTF-8"))?;
    let header = Header {
        version: u64_at(0),
        replayable_from: u64_at(8),
        writer,
    };
    Ok((header, value))
}

/// Creates the tables of a new database and refuses one written in another format, so
/// reads can assume the tables exist.
fn prepare(db: &Database) -> Result<(), ::redb::Error> {
    let txn = db.begin_write()?;
    {
        txn.open_table(ENTRIES)?;
        txn.open_table(REPLAY_IDS)?;
        txn.open_table(REPLAY_ORDER)?;
        let mut meta = txn.open_table(META)?;
        let format = meta.get("format")?.map(|v| v.value());
        match format {
            None => {
                meta.insert("format", FORMAT)?;
            }
            Some(FORMAT) => {}
            Some(other) => {
                return Err(::redb::Error::Corrupted(format!(
                    "kvcore format {other}, this build reads format {FORMAT}"
                )));
            }
        }
    }
    txn.commit()?;
    Ok(())
}

fn open_error(path: &Path, err: DatabaseError) -> StorageError {
    let path = path.display();
    let message = match &err {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => format!(
            "redb database {path} is already open (by another process or another store in this one): {err}"
        ),
        DatabaseError::Storage(::redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            format!("{path} is not a redb database: {err}")
        }
        _ => format!("cannot open redb database {path}: {err}"),
    };
    StorageError::Internal(message)
}

fn failure(path: &Path, what: &str, err: impl fmt::Display) -> StorageError {
    StorageError::Internal(format!("redb {}: {what}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row gives back its header and value byte for byte, with and without a writer.
    #[test]
    fn rows_round_trip() {
        for writer in [None, Some([0xAB; 16])] {
            let header = Header {
                version: u64::MAX - 1,
                replayable_from: 7,
                writer,
            };
            let value = "a,b\n\0 🦀";
            let row = encode_row(&header, value);
            assert_eq!(row.len(), HEADER_LEN + value.len());
            assert_eq!(
                &row[..8],
                &(u64::MAX - 1).to_le_bytes(),
                "version leads, LE"
            );
            let (decoded, got) = decode_row(&row).expect("decode");
            assert_eq!(
                (
                    decoded.version,
                    decoded.replayable_from,
                    decoded.writer,
                    got
                ),
                (u64::MAX - 1, 7, writer, value)
            );
        }
    }

    /// Rows that `encode_row` cannot produce are reported as corruption, never a panic.
    #[test]
    fn malformed_rows_are_corruption() {
        let good = encode_row(
            &Header {
                version: 1,
                replayable_from: 1,
                writer: None,
            },
            "v",
        );
        let mut bad_flag = good.clone();
        bad_flag[16] = 2;
        let mut bad_utf8 = good.clone();
        bad_utf8.push(0xFF);
        for row in [&good[..HEADER_LEN - 1], &bad_flag, &bad_utf8, &[]] {
            assert!(
                matches!(decode_row(row), Err(::redb::Error::Corrupted(_))),
                "{row:?}"
            );
        }
    }
}
