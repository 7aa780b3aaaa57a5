//! A bounded memory of overwritten writes, so a retry of a write whose version was since
//! overwritten is still answered with its original version.
//!
//! The id of the write that produced a key's *current* version lives with the value itself;
//! this cache only holds ids whose versions were overwritten. It is first-in-first-out and
//! bounded by entry count, so its memory does not grow with the number of clients. Evicting an
//! id raises the key's `replayable_from` floor, which lets a refused retry tell "provably not
//! applied" from "unknown" (see [`crate::storage::Mismatch`]).

use std::collections::{HashMap, VecDeque, hash_map::Entry};

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
/// each use is then remembered on its own, so no key's floor is skipped. The remembered writes
/// live in `order` itself, oldest first, so evicting one reads the front of a ring buffer
/// rather than chasing a pointer into a large map; `by_id` only says where an id's uses are.
/// (Each use used to sit in a `Vec` of its own: an allocation per write, and a cache miss per
/// eviction on a 64k-entry cache.)
#[derive(Debug)]
pub(crate) struct ReplayCache {
    capacity: usize,
    /// The remembered writes, oldest first; the front one is number `first`.
    order: VecDeque<(RequestId, Remembered)>,
    first: u64,
    /// Request ids come from clients: a collision-resistant keyed hash (see `Index`).
    by_id: HashMap<RequestId, Uses, ahash::RandomState>,
}

/// The numbers (positions counted from the first write ever remembered) of one id's uses,
/// oldest first: nearly always one.
#[derive(Debug)]
enum Uses {
    One(u64),
    Many(Vec<u64>),
}

impl Uses {
    fn as_slice(&self) -> &[u64] {
        match self {
            Uses::One(n) => std::slice::from_ref(n),
            Uses::Many(all) => all,
        }
    }
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            first: 0,
            by_id: HashMap::default(),
        }
    }

    /// The version `id` produced on `key`, if it is still remembered.
    pub(crate) fn lookup(&self, id: &RequestId, key: &str) -> Option<u64> {
        self.by_id
            .get(id)?
            .as_slice()
            .iter()
            .map(|n| &self.order[(n - self.first) as usize].1)
            .find(|r| r.key == key)
            .map(|r| r.version)
    }

    /// Remembers that `id` produced `version` of `key`; returns the entry evicted to make
    /// room, whose key must raise its replay floor past the evicted version.
    pub(crate) fn remember(
        &mut self,
        id: RequestId,
        key: String,
        version: u64,
    ) -> Option<Remembered> {
        if self.capacity == 0 {
            return Some(Remembered { key, version });
        }
        let evicted = if self.order.len() >= self.capacity {
            self.forget_oldest()
        } else {
            None
        };
        let n = self.first + self.order.len() as u64;
        self.order.push_back((id, Remembered { key, version }));
        match self.by_id.entry(id) {
            Entry::Vacant(vacant) => {
                vacant.insert(Uses::One(n));
            }
            Entry::Occupied(mut uses) => match uses.get_mut() {
                Uses::One(earlier) => {
                    let earlier = *earlier;
                    uses.insert(Uses::Many(vec![earlier, n]));
                }
                Uses::Many(all) => all.push(n),
            },
        }
        evicted
    }

    /// Removes the oldest remembered write.
    fn forget_oldest(&mut self) -> Option<Remembered> {
        let (id, oldest) = self.order.pop_front()?;
        let n = self.first;
        self.first += 1;
        if let Entry::Occupied(mut uses) = self.by_id.entry(id) {
            match uses.get_mut() {
                Uses::One(_) => {
                    uses.remove();
                }
                Uses::Many(all) => {
                    // Uses are numbered in order, so the oldest remembered is this id's first.
                    all.retain(|&use_n| use_n != n);
                    if let [last] = all[..] {
                        uses.insert(Uses::One(last));
                    }
                }
            }
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
        assert_eq!(cache.remember([1; 16], "a".into(), 1), None);
        assert_eq!(cache.remember([2; 16], "a".into(), 2), None);
        let evicted = cache
            .remember([3; 16], "b".into(), 7)
            .expect("cache is full");
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
        cache.remember([9; 16], "a".into(), 3);
        assert_eq!(cache.lookup(&[9; 16], "b"), None);
    }

    /// Regression: an id reused on a second key used to replace the first key's entry without
    /// evicting it, so the first key's floor never rose and a refused retry there claimed it
    /// was never applied. Each use is now remembered, and evicted, on its own.
    #[test]
    fn an_id_reused_on_two_keys_is_remembered_for_both() {
        let mut cache = ReplayCache::new(2);
        assert_eq!(cache.remember([5; 16], "a".into(), 1), None);
        assert_eq!(cache.remember([5; 16], "b".into(), 4), None);
        assert_eq!(cache.lookup(&[5; 16], "a"), Some(1));
        assert_eq!(cache.lookup(&[5; 16], "b"), Some(4));
        let first = cache.remember([6; 16], "c".into(), 2).expect("full");
        assert_eq!((first.key.as_str(), first.version), ("a", 1));
        let second = cache.remember([7; 16], "c".into(), 3).expect("full");
        assert_eq!((second.key.as_str(), second.version), ("b", 4));
        assert_eq!(cache.lookup(&[5; 16], "b"), None);
    }

    proptest::proptest! {
        /// Against a model (a plain FIFO of (id, key, version) searched front to back): the
        /// same evictions, in the same order, and the same answers to every lookup, with ids
        /// reused across keys.
        #[test]
        fn behaves_as_a_plain_fifo(
            capacity in 0usize..6,
            writes in proptest::collection::vec((0u8..4, 0u8..3), 0..40),
        ) {
            let mut cache = ReplayCache::new(capacity);
            let mut model: VecDeque<(RequestId, String, u64)> = VecDeque::new();
            for (version, (id, key)) in writes.into_iter().enumerate() {
                let (id, key, version) = ([id; 16], format!("k{key}"), version as u64);
                let evicted = cache.remember(id, key.clone(), version);
                let expected = if capacity == 0 {
                    Some(Remembered { key: key.clone(), version })
                } else {
                    model.push_back((id, key, version));
                    (model.len() > capacity)
                        .then(|| model.pop_front())
                        .flatten()
                        .map(|(_, key, version)| Remembered { key, version })
                };
                proptest::prop_assert_eq!(evicted, expected);
                for probe_id in 0u8..4 {
                    for probe_key in 0u8..3 {
                        let (probe_id, probe_key) = ([probe_id; 16], format!("k{probe_key}"));
                        let found = model
                            .iter()
                            .find(|(i, k, _)| *i == probe_id && *k == probe_key)
                            .map(|(_, _, v)| *v);
                        proptest::prop_assert_eq!(cache.lookup(&probe_id, &probe_key), found);
                    }
                }
            }
        }
    }
}
