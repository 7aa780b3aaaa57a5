//! Model-based property tests for every local backend: random sequences of gets, puts (fresh,
//! stale or from the future, with or without a request id), retries of earlier writes with the
//! same id, and restarts, each checked against a simple model of what the store must answer.
//!
//! The model assumes no replay id is ever evicted (the sequences are far shorter than every
//! backend's replay capacity), so a retry of an applied write must be replayed exactly and every
//! refusal must prove its write was not applied (`Mismatch::proves_not_applied`). Short in CI
//! (32 sequences per backend); `PROPTEST_CASES=2000 cargo test --release --test storage_model`
//! is the long run. A failure prints a minimal sequence.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use kvcore::storage::{
    FileStorage, MemoryStorage, RedbStorage, Storage, StorageError, Versioned, Write, Written,
    file::{FileOptions, SimFs},
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Get {
        key: usize,
    },
    /// A new write; `offset` moves the expected version away from the current one (0: current).
    Put {
        key: usize,
        offset: i8,
        with_id: bool,
    },
    /// The same write as put number `of` (modulo the puts so far), sent again.
    Retry {
        of: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..3).prop_map(|key| Op::Get { key }),
        6 => (0usize..3, prop_oneof![4 => Just(0i8), 1 => -2i8..=2], any::<bool>())
            .prop_map(|(key, offset, with_id)| Op::Put { key, offset, with_id }),
        3 => any::<usize>().prop_map(|of| Op::Retry { of }),
        1 => Just(Op::Restart),
    ]
}

/// What the store must hold: per key its version and value, and which id produced which version.
#[derive(Debug, Default, Clone)]
struct Model {
    keys: BTreeMap<String, (u64, String)>,
    produced: BTreeMap<([u8; 16], String), u64>,
}

impl Model {
    fn version(&self, key: &str) -> u64 {
        self.keys.get(key).map_or(0, |(v, _)| *v)
    }

    /// What the store must answer to `write`, updating the model when it applies.
    fn put(&mut self, write: &Write) -> Result<Written, u64> {
        let produced = write
            .request_id
            .and_then(|id| self.produced.get(&(id, write.key.clone())));
        if let Some(&version) = produced {
            return Ok(Written {
                version,
                replayed: true,
            });
        }
        let current = self.version(&write.key);
        if current != write.expected_version {
            return Err(current);
        }
        let version = current + 1;
        self.keys
            .insert(write.key.clone(), (version, write.value.clone()));
        if let Some(id) = write.request_id {
            self.produced.insert((id, write.key.clone()), version);
        }
        Ok(Written {
            version,
            replayed: false,
        })
    }
}

/// A backend under test: opened, and reopened on its own data by `restart`.
trait Backend {
    fn store(&self) -> Arc<dyn Storage>;
    fn restart(&mut self);
}

struct Memory(Arc<dyn Storage>);

impl Backend for Memory {
    fn store(&self) -> Arc<dyn Storage> {
        Arc::clone(&self.0)
    }
    fn restart(&mut self) {} // nothing to reopen: memory lives as long as the process
}

struct File {
    fs: SimFs,
    store: Option<Arc<dyn Storage>>,
}

impl File {
    fn open(fs: &SimFs) -> Arc<dyn Storage> {
        Arc::new(
            FileStorage::open_with("/data/kv.log", FileOptions::default(), Arc::new(fs.clone()))
                .expect("open the simulated log"),
        )
    }
}

impl Backend for File {
    fn store(&self) -> Arc<dyn Storage> {
        Arc::clone(self.store.as_ref().expect("open"))
    }
    fn restart(&mut self) {
        drop(self.store.take());
        self.store = Some(Self::open(&self.fs));
    }
}

struct Redb {
    dir: tempfile::TempDir,
    store: Option<Arc<dyn Storage>>,
}

impl Redb {
    fn open(dir: &Path) -> Arc<dyn Storage> {
        Arc::new(RedbStorage::open(dir.join("kv.redb")).expect("open the database"))
    }
}

impl Backend for Redb {
    fn store(&self) -> Arc<dyn Storage> {
        Arc::clone(self.store.as_ref().expect("open"))
    }
    fn restart(&mut self) {
        drop(self.store.take());
        self.store = Some(Self::open(self.dir.path()));
    }
}

/// Runs `ops` against `backend` and the model; the first disagreement is an error.
fn check(mut backend: impl Backend, ops: &[Op]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut model = Model::default();
    let mut puts: Vec<Write> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let store = backend.store();
        match op {
            Op::Get { key } => {
                let key = format!("k{key}");
                let got = runtime.block_on(store.get(&key));
                let want = match model.keys.get(&key) {
                    Some((version, value)) => Ok(Versioned {
                        value: value.clone(),
                        version: *version,
                    }),
                    None => Err(StorageError::NotFound),
                };
                prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            }
            Op::Put {
                key,
                offset,
                with_id,
            } => {
                let key = format!("k{key}");
                let expected = model
                    .version(&key)
                    .saturating_add_signed(i64::from(*offset));
                let mut write = Write::new(&key, format!("{key}#{step}"), expected);
                if *with_id {
                    write = write.with_request_id((step as u128 + 1).to_le_bytes());
                }
                puts.push(write.clone());
                compare(&runtime, &*store, &mut model, &write, step)?;
            }
            Op::Retry { of } => {
                let Some(write) = (!puts.is_empty()).then(|| puts[of % puts.len()].clone()) else {
                    continue;
                };
                compare(&runtime, &*store, &mut model, &write, step)?;
            }
            Op::Restart => {
                drop(store);
                backend.restart();
                let state = runtime
                    .block_on(backend.store().entries())
                    .expect("entries");
                let want: Vec<_> = model
                    .keys
                    .iter()
                    .map(|(k, (version, value))| {
                        (
                            k.clone(),
                            Versioned {
                                value: value.clone(),
                                version: *version,
                            },
                        )
                    })
                    .collect();
                prop_assert_eq!(state, want, "step {}: after a restart", step);
            }
        }
    }
    Ok(())
}

fn compare(
    runtime: &tokio::runtime::Runtime,
    store: &dyn Storage,
    model: &mut Model,
    write: &Write,
    step: usize,
) -> Result<(), TestCaseError> {
    let got = runtime.block_on(store.put(write.clone()));
    match (got, model.put(write)) {
        (Ok(got), Ok(want)) => prop_assert_eq!(got, want, "step {}: {:?}", step, write),
        (Err(StorageError::Conflict(m)), Err(actual)) => {
            prop_assert_eq!((m.expected, m.actual), (write.expected_version, actual));
            prop_assert!(
                m.proves_not_applied(),
                "step {}: a refusal with every id remembered must prove it: {:?}",
                step,
                m
            );
        }
        (got, want) => prop_assert!(false, "step {step}: {write:?}: got {got:?}, want {want:?}"),
    }
    Ok(())
}

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(cases())]

    /// The in-memory backend agrees with the model.
    #[test]
    fn memory_follows_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        check(Memory(Arc::new(MemoryStorage::new())), &ops)?;
    }

    /// The file log agrees with the model, across restarts.
    #[test]
    fn file_follows_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let fs = SimFs::new();
        let store = Some(File::open(&fs));
        check(File { fs, store }, &ops)?;
    }

    /// redb agrees with the model, across restarts.
    #[test]
    fn redb_follows_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Some(Redb::open(dir.path()));
        check(Redb { dir, store }, &ops)?;
    }
}
