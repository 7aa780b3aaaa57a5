//! A bounded memory of overwritten writes, so a retry of a write whose version was since
//! overwritten is still answered with its original version.
//!
//! The id of the write that produced a key's *current* version lives with the value itself;
//! this cache only holds ids whose versions were overwritten. It is first-in-first-out and
//! bounded by entry count, so its memory does not grow with the number of clients. Evicting an
//! id raises the key's `replayable_from` floor, which lets a refused retry tell "provably not
//! applied" from "unknown" (see [`crate::storage::Mismatch`]).

use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;

use crate::storage::RequestId;

/// The remembered outcome of one overwritten write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remembered {
    pub(crate) key: String,
    pub(crate) version: u64,
}

/// A FIFO map from (request id, key) to the version that id produced on that key.
///
/// Ids are meant to be unique per logical write, but a client may reuse one on several keys;
/// each use is then remembered on its own, so no key's floor is skipped. The entries of one id
/// are kept oldest first, matching the order of `order`.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    capacity: usize,
    by_id: HashMap<RequestId, Vec<Remembered>, RandomState>,
    order: VecDeque<RequestId>,
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            by_id: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// The version `id` produced on `key`, if it is still remembered.
    pub(crate) fn lookup(&self, id: &RequestId, key: &str) -> Option<u64> {
        self.by_id
            .get(id)?
            .iter()
            .find(|r| r.key == key)
            .map(|r| r.version)
    }

    /// Remembers that `id` produced `version` of `key`; returns the entry evicted to make
    /// room, whose key must raise its replay floor past the evicted version.
    pub(crate) fn remember(
        &mut self,
        id: RequestId,
        key: &str,
        version: u64,
    ) -> Option<Remembered> {
        if self.capacity == 0 {
            return Some(Remembered {
                key: key.to_owned(),
                version,
            });
        }
        let evicted = if self.order.len() >= self.capacity {
            self.order
                .pop_front()
                .and_then(|old| self.forget_oldest(old))
        } else {
            None
        };
        self.order.push_back(id);
        self.by_id.entry(id).or_default().push(Remembered {
            key: key.to_owned(),
            version,
        });
        evicted
    }

    /// Removes the oldest remembered use of `id`.
    fn forget_oldest(&mut self, id: RequestId) -> Option<Remembered> {
        let uses = self.by_id.get_mut(&id)?;
        let oldest = uses.remove(0);
        if uses.is_empty() {
            self.by_id.remove(&id);
        }
        Some(oldest)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache never holds more than its capacity and evicts the oldest id first.
    #[test]
    fn evicts_oldest_first() {
        let mut cache = ReplayCache::new(2);
        assert_eq!(cache.remember([1; 16], "a", 1), None);
        assert_eq!(cache.remember([2; 16], "a", 2), None);
        let evicted = cache.remember([3; 16], "b", 7).expect("cache is full");
        assert_eq!(
            evicted,
            Remembered {
                key: "a".into(),
                version: 1
            }
        );
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.lookup(&[1; 16], "a"), None);
        assert_eq!(cache.lookup(&[2; 16], "a"), Some(2));
        assert_eq!(cache.lookup(&[3; 16], "b"), Some(7));
    }

    /// An id is only replayed for the key it wrote.
    #[test]
    fn lookup_checks_the_key() {
        let mut cache = ReplayCache::new(4);
        cache.remember([9; 16], "a", 3);
        assert_eq!(cache.lookup(&[9; 16], "b"), None);
    }

    /// Regression: an id reused on a second key used to replace the first key's entry without
    /// evicting it, so the first key's floor never rose and a refused retry there claimed it
    /// was never applied. Each use is now remembered, and evicted, on its own.
    #[test]
    fn an_id_reused_on_two_keys_is_remembered_for_both() {
        let mut cache = ReplayCache::new(2);
        assert_eq!(cache.remember([5; 16], "a", 1), None);
        assert_eq!(cache.remember([5; 16], "b", 4), None);
        assert_eq!(cache.lookup(&[5; 16], "a"), Some(1));
        assert_eq!(cache.lookup(&[5; 16], "b"), Some(4));
        let first = cache.remember([6; 16], "c", 2).expect("full");
        assert_eq!((first.key.as_str(), first.version), ("a", 1));
        let second = cache.remember([7; 16], "c", 3).expect("full");
        assert_eq!((second.key.as_str(), second.version), ("b", 4));
        assert_eq!(cache.lookup(&[5; 16], "b"), None);
    }
}
