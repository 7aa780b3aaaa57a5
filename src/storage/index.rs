//! The in-memory heart of every local backend: a sharded map of versioned entries with
//! compare-and-set and idempotent replay.
//!
//! Keys are spread over a fixed number of shards, each behind its own `std::sync::Mutex`, so
//! writers of unrelated keys rarely meet. A std mutex (not tokio's) is right here: critical
//! sections are a hash lookup and a few moves, never held across an `.await`, and an async
//! mutex would only add cost. Each shard also owns the replay cache of the keys it holds, so
//! checking an id, applying the write and remembering the overwritten id are one atomic step.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{Mutex, MutexGuard},
};

use foldhash::fast::RandomState;

use crate::storage::{
    Mismatch, RequestId, StorageError, Versioned, Write, Written,
    replay::{Remembered, ReplayCache},
};

/// How many shards the map is split into; a power of two well above typical core counts.
const SHARDS: usize = 64;

/// The default number of overwritten request ids remembered across all shards.
pub const DEFAULT_REPLAY_CAPACITY: usize = 64 * 1024;

#[derive(Debug)]
struct Entry {
    value: String,
    version: u64,
    writer: Option<RequestId>,
    replayable_from: u64,
    /// Where a durable backend logged this version (0 in memory): anything derived from the
    /// entry may be answered only once that position is on stable storage.
    lsn: u64,
}

/// One key's current state, as a durable backend needs it to rebuild or rewrite its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) version: u64,
    pub(crate) writer: Option<RequestId>,
    pub(crate) replayable_from: u64,
}

/// The answer to a write plus the log position that must be durable before it is given.
#[derive(Debug)]
pub(crate) struct Stamped<T> {
    pub(crate) result: T,
    pub(crate) lsn: u64,
}

#[derive(Debug)]
struct Shard {
    // A keyed hash that claims resistance to chosen collisions (ahash, as std's SipHash, which
    // cost ~0.4k instructions per lookup here; foldhash does not claim it): keys come from
    // clients, and a store open to the network must not let them pick colliding keys.
    entries: HashMap<String, Entry, ahash::RandomState>,
    replay: ReplayCache,
}

/// What a write would do, decided under the shard lock before anything changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The request id already produced this version: answer it, write nothing.
    Replay(u64),
    /// The write applies and produces this version.
    Apply(u64),
}

/// A sharded map of versioned entries. See the module docs.
#[derive(Debug)]
pub(crate) struct Index {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a key's shard. foldhash is enough here: keys a client chose to share one shard
    /// would only share its lock, not slow every lookup down.
    hasher: RandomState,
}

impl Index {
    /// An empty index remembering up to `replay_capacity` overwritten request ids in total.
    pub(crate) fn new(replay_capacity: usize) -> Self {
        let per_shard = replay_capacity.div_ceil(SHARDS);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    entries: HashMap::default(),
                    replay: ReplayCache::new(per_shard),
                })
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::default(),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current value and version of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<Versioned> {
        self.get_stamped(key).result
    }

    /// The current value and version of `key`, stamped with the log position of that version.
    pub(crate) fn get_stamped(&self, key: &str) -> Stamped<Option<Versioned>> {
        let shard = self.shard(key);
        let entry = shard.entries.get(key);
        Stamped {
            result: entry.map(|e| Versioned {
                value: e.value.clone(),
                version: e.version,
            }),
            lsn: entry.map_or(0, |e| e.lsn),
        }
    }

    /// Compare-and-set with replay, applied in memory at once.
    pub(crate) fn put(&self, write: Write) -> Result<Written, StorageError> {
        self.put_with(write, |_, _, _| Ok(0)).result
    }

    /// Compare-and-set with replay for a durable backend.
    ///
    /// `persist(write, version, replaced_value)` runs under the shard lock after the decision
    /// and before the index changes, so the backend logs the writes of one key in exactly the
    /// order they are applied; it returns the log position of its record. If it fails, nothing
    /// changes. The returned stamp is the position that must be durable before the answer may be
    /// given: the new record for an applied write, and for a replay or a refusal the record of
    /// the version the answer reveals.
    pub(crate) fn put_with(
        &self,
        write: Write,
        persist: impl FnOnce(&Write, u64, Option<&str>) -> Result<u64, StorageError>,
    ) -> Stamped<Result<Written, StorageError>> {
        let mut shard = self.shard(&write.key);
        let Shard { entries, replay } = &mut *shard;
        // The key is hashed once: decided, persisted and applied through this one lookup.
        let mut entry = entries.get_mut(&write.key);
        let current_lsn = entry.as_ref().map_or(0, |e| e.lsn);
        let version = match decide(entry.as_deref(), replay, &write) {
            Ok(Decision::Replay(version)) => {
                return Stamped {
                    result: Ok(Written {
                        version,
                        replayed: true,
                    }),
                    lsn: current_lsn,
                };
            }
            Ok(Decision::Apply(version)) => version,
            Err(refused) => {
                return Stamped {
                    result: Err(refused),
                    lsn: current_lsn,
                };
            }
        };
        let replaced = entry.as_ref().map(|e| e.value.as_str());
        let lsn = match persist(&write, version, replaced) {
            Ok(lsn) => lsn,
            Err(failed) => {
                return Stamped {
                    result: Err(failed),
                    lsn: 0,
                };
            }
        };
        let evicted = match entry.take() {
            Some(entry) => entry.overwrite(write, version, lsn, replay),
            None => {
                insert(entries, write, version, lsn);
                None
            }
        };
        shard.raise_floor(evicted);
        Stamped {
            result: Ok(Written {
                version,
                replayed: false,
            }),
            lsn,
        }
    }

    /// Applies a logged version while a durable backend rebuilds the index on open; returns the
    /// value it replaced. `floor` raises the key's replay floor (compacted records name the
    /// version below which writers were forgotten).
    ///
    /// A version that does not follow the key's current one (unless a floor explains the gap)
    /// means the log contradicts itself, and is refused with the reason.
    pub(crate) fn restore(&self, record: Snapshot, lsn: u64) -> Result<Option<String>, String> {
        let mut shard = self.shard(&record.key);
        let current = shard.entries.get(&record.key).map_or(0, |e| e.version);
        let gap_explained = record.replayable_from >= record.version;
        if record.version != current + 1 && !(record.version > current && gap_explained) {
            return Err(format!(
                "key {:?} jumps from version {current} to {}",
                record.key, record.version
            ));
        }
        let replaced = shard.entries.get(&record.key).map(|e| e.value.clone());
        let Snapshot {
            key,
            value,
            version,
            writer,
            replayable_from,
        } = record;
        let write = Write {
            key,
            value,
            expected_version: current,
            request_id: writer,
        };
        let key = write.key.clone();
        shard.apply(write, version, lsn);
        if let Some(entry) = shard.entries.get_mut(&key) {
            entry.replayable_from = entry.replayable_from.max(replayable_from);
        }
        Ok(replaced)
    }

    /// Every key's state, taken while every shard is locked, so no write is half applied;
    /// `under_lock` runs at that same instant (a durable backend reads its log position there).
    pub(crate) fn snapshot<T>(&self, under_lock: impl FnOnce() -> T) -> (Vec<Snapshot>, T) {
        let shards: Vec<_> = self
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let at = under_lock();
        let all = shards
            .iter()
            .flat_map(|shard| {
                shard.entries.iter().map(|(k, e)| Snapshot {
                    key: k.clone(),
                    value: e.value.clone(),
                    version: e.version,
                    writer: e.writer,
                    replayable_from: e.replayable_from,
                })
            })
            .collect();
        (all, at)
    }

    /// Every entry, sorted by key, stamped with the highest log position among them.
    pub(crate) fn entries_stamped(&self) -> Stamped<Vec<(String, Versioned)>> {
        let mut lsn = 0;
        let mut all: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                shard
                    .entries
                    .iter()
                    .map(|(k, e)| {
                        lsn = lsn.max(e.lsn);
                        (
                            k.clone(),
                            Versioned {
                                value: e.value.clone(),
                                version: e.version,
                            },
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Stamped { result: all, lsn }
    }

    /// Every entry, sorted by key.
    pub(crate) fn entries(&self) -> Vec<(String, Versioned)> {
        self.entries_stamped().result
    }
}

impl Shard {
    /// Applies a decided write (see [`Index::put_with`], which does the same without hashing
    /// the key again).
    fn apply(&mut self, write: Write, version: u64, lsn: u64) {
        let evicted = match self.entries.get_mut(&write.key) {
            Some(entry) => entry.overwrite(write, version, lsn, &mut self.replay),
            None => {
                insert(&mut self.entries, write, version, lsn);
                None
            }
        };
        self.raise_floor(evicted);
    }

    /// An id evicted from the replay cache raises its key's floor past the version it wrote.
    fn raise_floor(&mut self, evicted: Option<Remembered>) {
        if let Some(gone) = evicted
            && let Some(entry) = self.entries.get_mut(&gone.key)
        {
            entry.replayable_from = entry.replayable_from.max(gone.version + 1);
        }
    }
}

/// What `write` would do to `entry` (its key's current entry, if any).
fn decide(
    entry: Option<&Entry>,
    replay: &ReplayCache,
    write: &Write,
) -> Result<Decision, StorageError> {
    if let Some(id) = &write.request_id {
        if let Some(e) = entry.filter(|e| e.writer.as_ref() == Some(id)) {
            return Ok(Decision::Replay(e.version));
        }
        if let Some(version) = replay.lookup(id, &write.key) {
            return Ok(Decision::Replay(version));
        }
    }
    let (actual, replayable_from) = entry.map_or((0, 1), |e| (e.version, e.replayable_from));
    if actual == write.expected_version {
        Ok(Decision::Apply(actual + 1))
    } else {
        Err(StorageError::Conflict(Mismatch {
            expected: write.expected_version,
            actual,
            replayable_from,
        }))
    }
}

/// A new key's first version.
fn insert(
    entries: &mut HashMap<String, Entry, ahash::RandomState>,
    write: Write,
    version: u64,
    lsn: u64,
) {
    entries.insert(
        write.key,
        Entry {
            value: write.value,
            version,
            writer: write.request_id,
            replayable_from: 1,
            lsn,
        },
    );
}

impl Entry {
    /// Replaces this entry's version with `write`'s; the writer of the replaced version is
    /// remembered in `replay`, which returns the write it evicted to make room, if any.
    fn overwrite(
        &mut self,
        write: Write,
        version: u64,
        lsn: u64,
        replay: &mut ReplayCache,
    ) -> Option<Remembered> {
        let Write {
            key,
            value,
            request_id,
            ..
        } = write;
        // The write's own copy of the key goes to the replay record: the index has one.
        let evicted = self
            .writer
            .take()
            .and_then(|old| replay.remember(old, key, self.version));
        self.value = value;
        self.version = version;
        self.writer = request_id;
        self.lsn = lsn;
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(result: Result<Written, StorageError>) -> Mismatch {
        match result {
            Err(StorageError::Conflict(m)) => m,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    /// Once an overwritten id is forgotten, a refused retry of it is reported as unprovable,
    /// while writes of still-remembered versions stay provably unapplied.
    #[test]
    fn forgotten_ids_raise_the_replay_floor() {
        let index = Index::new(0);
        let (a, b) = ([0xA; 16], [0xB; 16]);
        index
            .put(Write::new("k", "1", 0).with_request_id(a))
            .unwrap();
        index
            .put(Write::new("k", "2", 1).with_request_id(b))
            .unwrap();

        let retry_a = mismatch(index.put(Write::new("k", "1", 0).with_request_id(a)));
        assert_eq!((retry_a.actual, retry_a.replayable_from), (2, 2));
        assert!(
            !retry_a.proves_not_applied(),
            "a's write of version 1 was forgotten"
        );

        let late = mismatch(index.put(Write::new("k", "x", 1).with_request_id([0xC; 16])));
        assert!(
            late.proves_not_applied(),
            "version 2's writer (b) is remembered"
        );

        let replay_b = index
            .put(Write::new("k", "2", 1).with_request_id(b))
            .unwrap();
        assert_eq!(
            replay_b,
            Written {
                version: 2,
                replayed: true
            },
            "current writer replays"
        );
    }

    /// With room in the cache, overwritten ids replay and the floor stays at 1.
    #[test]
    fn remembered_ids_keep_the_floor_low() {
        let index = Index::new(1024);
        for (version, id) in (0..5u8).enumerate() {
            index
                .put(Write::new("k", "v", version as u64).with_request_id([id; 16]))
                .unwrap();
        }
        let stale = mismatch(index.put(Write::new("k", "x", 0).with_request_id([9; 16])));
        assert_eq!((stale.actual, stale.replayable_from), (5, 1));
        let replay = index
            .put(Write::new("k", "v", 0).with_request_id([0; 16]))
            .unwrap();
        assert_eq!(
            replay,
            Written {
                version: 1,
                replayed: true
            }
        );
    }
}
