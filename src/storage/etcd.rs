//! `etcd:`: the store lives in an etcd cluster, so any number of stateless kv-servers can
//! front it and behave as one store.
//!
//! etcd's per-key `version` counts writes exactly as ours does (0 = absent, 1 after the
//! create, +1 per put), so a compare-and-set is one etcd `Txn` comparing it. Request ids go into
//! the same Txn, so a retry is recognised by whichever frontend it reaches, and after restarts.
//!
//! Layout under the prefix `P` (`kvcore` unless the spec names another; letters, digits and
//! `._/-` only, so no store's keys can fall inside another's: each starts with `P:`):
//!
//! | etcd key | value | written |
//! |---|---|---|
//! | `P:meta` | `kvcore-etcd 1 replay_depth=N` | once, by the first frontend |
//! | `P:d/` key | the value, byte for byte | every write |
//! | `P:w/` len(key) u16 BE, key, version u64 BE | the 16-byte request id | writes with an id |
//!
//! A write producing version `V` of a key, in one Txn: if `version(P d/key) == V - 1`, put the
//! value, put the id record of `V`, and delete the id record of `V - N`; else read the key's
//! version and its id records. So each key keeps the ids of its last `N` writes, exactly: a
//! refused retry is replayed if its id is among them, and `replayable_from` is `V - N + 1`,
//! which every frontend computes alike because `N` is stored in the cluster, not configured per
//! frontend. The window is counted in writes to the key, not in time, and does not depend on
//! etcd's history: compaction removes old revisions, never current keys, so it changes nothing.
//!
//! Reads are linearizable (etcd's default), so every frontend sees every acknowledged write.

use std::fmt;

use async_trait::async_trait;
use tonic::{Code, Status};

use crate::{
    etcd::{
        EtcdClient, EtcdOptions,
        ops::{delete, prefix_end, prefix_range, put, range, read, version_is},
        proto::{KeyValue, RangeRequest, TxnRequest, response_op},
    },
    storage::{Mismatch, Storage, StorageError, Versioned, Write, Written},
};

/// The prefix used when the spec names none.
pub const DEFAULT_PREFIX: &str = "kvcore";

/// How many writes of each key keep their request id, when a prefix is first used.
pub const DEFAULT_REPLAY_DEPTH: u64 = 32;

/// The version of the layout above, stored in the meta key.
const FORMAT: &str = "kvcore-etcd 1";

/// How many keys `entries` fetches per round trip.
const PAGE: i64 = 64;

/// How long a health check waits for one member.
const CHECK_PER_MEMBER: std::time::Duration = std::time::Duration::from_millis(500);

/// Where the store lives: the cluster's members and the key prefix that is this store's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSpec {
    /// Members as `HOST:PORT`.
    pub endpoints: Vec<String>,
    /// Every etcd key of this store starts with `prefix` + `:` (see [`check_prefix`]).
    pub prefix: String,
}

/// Why a prefix is refused, if it is: it must be non-empty and made of ASCII letters, digits
/// and `._/-`. The store's keys start with `prefix:`, and no prefix holds a `:`, so two
/// different prefixes never share a key (`app` and `app/d` included).
pub fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("the prefix is empty");
    }
    if prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    {
        Ok(())
    } else {
        Err("a prefix holds only ASCII letters, digits and ._/-")
    }
}

impl fmt::Display for EtcdSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd:{}", self.endpoints.join(","))?;
        if self.prefix != DEFAULT_PREFIX {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// A [`Storage`] in an etcd cluster. See the module docs.
#[derive(Debug, Clone)]
pub struct EtcdStorage {
    client: EtcdClient,
    prefix: Vec<u8>,
    replay_depth: u64,
}

impl EtcdStorage {
    /// Opens the store at `spec`, creating its meta key if the prefix is new (with
    /// [`DEFAULT_REPLAY_DEPTH`]). Fails if no member answers or the prefix holds something else.
    pub async fn open(spec: &EtcdSpec) -> Result<Self, StorageError> {
        Self::open_with(spec, EtcdOptions::default(), DEFAULT_REPLAY_DEPTH).await
    }

    /// Opens with explicit client options and the replay depth for a new prefix. An existing
    /// prefix keeps the depth it was created with: every frontend must use the same one.
    pub async fn open_with(
        spec: &EtcdSpec,
        options: EtcdOptions,
        replay_depth: u64,
    ) -> Result<Self, StorageError> {
        if replay_depth == 0 {
            return Err(StorageError::Internal(
                "replay depth must be at least 1".into(),
            ));
        }
        check_prefix(&spec.prefix).map_err(|reason| {
            StorageError::Internal(format!("invalid etcd prefix {:?}: {reason}", spec.prefix))
        })?;
        let client = EtcdClient::new(&spec.endpoints, options)
            .map_err(|e| StorageError::Internal(e.to_string()))?;
        let prefix = format!("{}:", spec.prefix).into_bytes();
        let meta_key = meta_key(&prefix);
        let ours = format!("{FORMAT} replay_depth={replay_depth}");
        let answer = client
            .txn(TxnRequest {
                compare: vec![version_is(&meta_key, 0)],
                success: vec![put(meta_key.clone(), ours.into_bytes())],
                failure: vec![range(meta_key.clone(), false)],
            })
            .await
            .map_err(|status| {
                StorageError::Unavailable(format!(
                    "cannot reach etcd at {}: {}",
                    spec.endpoints.join(","),
                    status.message()
                ))
            })?;
        let replay_depth = if answer.succeeded {
            replay_depth
        } else {
            let meta = ranged(answer.responses.into_iter().next())?
                .into_iter()
                .next()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .unwrap_or_default();
            parse_meta(&meta).ok_or_else(|| {
                StorageError::Internal(format!(
                    "etcd key {:?} holds {meta:?}, not a kvcore store of this version: \
                     choose another prefix (etcd:HOSTS/PREFIX)",
                    String::from_utf8_lossy(&meta_key)
                ))
            })?
        };
        Ok(Self {
            client,
            prefix,
            replay_depth,
        })
    }

    /// How many writes of each key keep their request id (the replay window).
    pub fn replay_depth(&self) -> u64 {
        self.replay_depth
    }

    fn meta_key(&self) -> Vec<u8> {
        meta_key(&self.prefix)
    }

    fn data_key(&self, key: &str) -> Vec<u8> {
        [self.prefix.as_slice(), b"d/", key.as_bytes()].concat()
    }

    /// The prefix of every id record of `key`; unambiguous because the key's length leads.
    /// Keys reach us validated (at most 1 KiB); a library caller's longer key is refused.
    fn records_of(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let len = u16::try_from(key.len()).map_err(|_| {
            StorageError::Internal(format!("key of {} bytes: at most 64 KiB", key.len()))
        })?;
        Ok([
            self.prefix.as_slice(),
            b"w/",
            &len.to_be_bytes(),
            key.as_bytes(),
        ]
        .concat())
    }

    /// The lowest version whose writer is still named, given the key's current version.
    fn floor(&self, actual: u64) -> u64 {
        (actual + 1).saturating_sub(self.replay_depth).max(1)
    }
}

fn meta_key(prefix: &[u8]) -> Vec<u8> {
    [prefix, b"meta"].concat()
}

fn parse_meta(meta: &str) -> Option<u64> {
    let depth = meta.strip_prefix(FORMAT)?.strip_prefix(" replay_depth=")?;
    depth.parse().ok().filter(|&d| d > 0)
}

/// The pairs a range inside a Txn returned. A missing answer is damage, never "no pairs":
/// reading it as an absent key could prove a write "not applied" that was.
fn ranged(response: Option<crate::etcd::proto::ResponseOp>) -> Result<Vec<KeyValue>, StorageError> {
    match response.and_then(|r| r.response) {
        Some(response_op::Response::ResponseRange(range)) => Ok(range.kvs),
        other => Err(StorageError::Internal(format!(
            "etcd answered a Txn without the range it was asked for: {other:?}"
        ))),
    }
}

/// Maps an etcd failure. Whatever the cause, a write may have been applied; the client's retry
/// with the same id is answered by replay, on this frontend or another.
fn failed(status: Status) -> StorageError {
    let message = status.message();
    match status.code() {
        // Lost connections, elections, timeouts, "too many requests": try again shortly.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            StorageError::Unavailable(format!("etcd: {message}"))
        }
        // The space quota (NOSPACE alarm) refuses writes until an operator frees space; reads
        // still work. Transient from the client's view: nothing is wrong with its request.
        Code::ResourceExhausted if message.contains("space exceeded") => StorageError::Unavailable(
            format!("etcd: {message}: compact and defragment etcd, then `etcdctl alarm disarm`"),
        ),
        Code::ResourceExhausted => StorageError::Unavailable(format!("etcd: {message}")),
        _ => StorageError::Internal(format!("etcd: {}: {message}", status.code())),
    }
}

fn corrupt(what: impl fmt::Display) -> StorageError {
    StorageError::Internal(format!("etcd holds a damaged record: {what}"))
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String, StorageError> {
    String::from_utf8(bytes).map_err(|_| corrupt(format!("{what} is not UTF-8")))
}

fn version_of(kv: &KeyValue) -> Result<u64, StorageError> {
    u64::try_from(kv.version).map_err(|_| corrupt(format!("negative version {}", kv.version)))
}

#[async_trait]
impl Storage for EtcdStorage {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        let found = self
            .client
            .range(RangeRequest {
                key: self.data_key(key),
                ..RangeRequest::default()
            })
            .await
            .map_err(failed)?;
        let kv = found.kvs.into_iter().next().ok_or(StorageError::NotFound)?;
        Ok(Versioned {
            version: version_of(&kv)?,
            value: utf8(kv.value, "a value")?,
        })
    }

    async fn put(&self, write: Write) -> Result<Written, StorageError> {
        let data = self.data_key(&write.key);
        let records = self.records_of(&write.key)?;
        let record_key = |version: u64| [records.as_slice(), &version.to_be_bytes()].concat();
        // etcd versions are i64: a larger expected version can never match, so read the key
        // and refuse (nothing with that id can have been applied either).
        let Some(version) = write
            .expected_version
            .checked_add(1)
            .filter(|&v| i64::try_from(v).is_ok())
        else {
            let actual = match self.get(&write.key).await {
                Ok(found) => found.version,
                Err(StorageError::NotFound) => 0,
                Err(other) => return Err(other),
            };
            return Err(StorageError::Conflict(Mismatch {
                expected: write.expected_version,
                actual,
                replayable_from: self.floor(actual),
            }));
        };
        let mut success = vec![put(data.clone(), write.value.into_bytes())];
        let mut failure = vec![range(data.clone(), true)];
        if let Some(id) = write.request_id {
            success.push(put(record_key(version), id.to_vec()));
            failure.push(read(prefix_range(records.clone())));
        }
        if version > self.replay_depth {
            success.push(delete(record_key(version - self.replay_depth)));
        }
        let answer = self
            .client
            .txn(TxnRequest {
                // `expected_version < version <= i64::MAX`, checked above.
                compare: vec![version_is(&data, write.expected_version as i64)],
                success,
                failure,
            })
            .await
            .map_err(failed)?;
        if answer.succeeded {
            return Ok(Written {
                version,
                replayed: false,
            });
        }
        let mut responses = answer.responses.into_iter();
        let actual = ranged(responses.next())?
            .first()
            .map_or(Ok(0), version_of)?;
        if let Some(id) = write.request_id {
            for record in ranged(responses.next())? {
                if record.value.as_slice() != id.as_slice() {
                    continue;
                }
                let produced = record
                    .key
                    .strip_prefix(records.as_slice())
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| corrupt("an id record's key has no version"))?;
                if produced <= actual {
                    return Ok(Written {
                        version: produced,
                        replayed: true,
                    });
                }
            }
        }
        Err(StorageError::Conflict(Mismatch {
            expected: write.expected_version,
            actual,
            replayable_from: self.floor(actual),
        }))
    }

    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        let data = self.data_key("");
        let end = prefix_end(&data);
        let mut next = data.clone();
        let mut all = Vec::new();
        // One linearizable revision for every page, so the listing is a single snapshot.
        let mut revision = 0;
        loop {
            let page = self
                .client
                .range(RangeRequest {
                    key: next,
                    range_end: end.clone(),
                    limit: PAGE,
                    revision,
                    ..RangeRequest::default()
                })
                .await
                .map_err(failed)?;
            if revision == 0 {
                revision = page.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = page.more;
            let mut last = None;
            for kv in page.kvs {
                let version = version_of(&kv)?;
                let key = kv
                    .key
                    .strip_prefix(data.as_slice())
                    .ok_or_else(|| corrupt("a listed key lies outside the store's prefix"))?
                    .to_vec();
                last = Some(kv.key);
                all.push((
                    utf8(key, "a key")?,
                    Versioned {
                        value: utf8(kv.value, "a value")?,
                        version,
                    },
                ));
            }
            match (more, last) {
                (true, Some(mut last)) => {
                    last.push(0);
                    next = last;
                }
                _ => break,
            }
        }
        Ok(all)
    }

    async fn check(&self) -> Result<(), StorageError> {
        // Every member gets a short turn, so one hung member cannot make the whole check miss
        // the server's deadline (2 s) while the others have quorum.
        let probe = RangeRequest {
            key: self.meta_key(),
            count_only: true,
            ..RangeRequest::default()
        };
        self.client
            .range_within(probe, CHECK_PER_MEMBER)
            .await
            .map(drop)
            .map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefixes are refused when empty or holding anything but letters, digits and `._/-`.
    #[test]
    fn prefixes() {
        for good in ["kvcore", "team/app", "a.b_c-d"] {
            assert_eq!(check_prefix(good), Ok(()), "{good}");
        }
        for bad in ["", "a:b", "a b", "ü", "a\0"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    /// The meta line round-trips and anything else is refused.
    #[test]
    fn meta_lines() {
        assert_eq!(parse_meta("kvcore-etcd 1 replay_depth=32"), Some(32));
        for bad in [
            "",
            "kvcore-etcd 2 replay_depth=32",
            "kvcore-etcd 1 replay_depth=0",
            "hello",
        ] {
            assert_eq!(parse_meta(bad), None, "{bad:?}");
        }
    }
}
