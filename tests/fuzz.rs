//! Fuzzing the decoders of untrusted input in kvcore, on the stable toolchain: the scenario
//! parser and the file log reader get arbitrary and mutated inputs and must never panic nor
//! accept a damaged input as something it is not.
//!
//! CI runs a short size (64 logs, 256 scenarios); the long run is
//! `PROPTEST_CASES=20000 cargo test --release --test fuzz`. A failure prints a minimal input.

use std::{path::Path, sync::Arc};

use kvcore::{
    runner::ScenarioConfig,
    storage::{
        FileStorage, Storage, Versioned, Write,
        file::{FileOptions, SimFs},
    },
};
use proptest::prelude::*;

const LOG: &str = "/data/kv.log";
const SCENARIO: &str = r#"{
  "clients": [
    { "name": "a", "keys": ["k1", "k2"], "client_packet_loss_rate": 3.0 },
    { "name": "b", "keys": ["k2"] }
  ],
  "test_duration_seconds": 2,
  "server_packet_loss_rate": 5.0,
  "frontends": 2,
  "seed": 9
}"#;

/// How one log is damaged.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, bits: u8 },
    Cut { at: usize },
    Append { bytes: Vec<u8> },
    Overwrite { at: usize, bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, bits)| Damage::Flip { at, bits }),
        any::<usize>().prop_map(|at| Damage::Cut { at }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Damage::Append { bytes }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..32)
        )
            .prop_map(|(at, bytes)| Damage::Overwrite { at, bytes }),
    ]
}

/// Writes `writes` versions in sequence (each its own commit) and returns the log and the
/// store's state after each write (index 0: empty).
fn write_log(writes: usize) -> (Vec<u8>, Vec<Vec<(String, Versioned)>>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let fs = SimFs::new();
        let store = FileStorage::open_with(LOG, FileOptions::default(), Arc::new(fs.clone()))
            .expect("a fresh log");
        let mut states = vec![Vec::new()];
        for n in 0..writes {
            let key = format!("k{}", n % 3);
            let expected = store.get(&key).await.map_or(0, |v| v.version);
            let write =
                Write::new(&key, format!("{key}={n}"), expected).with_request_id([n as u8; 16]);
            store.put(write).await.expect("write");
            states.push(store.entries().await.expect("entries"));
        }
        store.flush().await.expect("flush");
        drop(store);
        (fs.contents(Path::new(LOG)).expect("the log"), states)
    })
}

/// Opens `bytes` as a log; `None` when the open refuses it.
fn open(bytes: &[u8]) -> Option<Vec<(String, Versioned)>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let fs = SimFs::new();
        fs.put_file(Path::new(LOG), bytes);
        let store =
            FileStorage::open_with(LOG, FileOptions::default(), Arc::new(fs.clone())).ok()?;
        store.entries().await.ok()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
    ))]

    /// A damaged log (a flipped byte, a cut, garbage appended or written over) either refuses to
    /// open or opens as the state after some prefix of the writes: never a state that no
    /// sequence of acknowledged writes produced, never a panic.
    #[test]
    fn file_log_reader(writes in 1usize..12, damage in damage()) {
        let (mut log, states) = write_log(writes);
        match damage {
            Damage::Flip { at, bits } => {
                let at = at % log.len();
                log[at] ^= bits;
            }
            Damage::Cut { at } => log.truncate(at % (log.len() + 1)),
            Damage::Append { bytes } => log.extend_from_slice(&bytes),
            Damage::Overwrite { at, bytes } => {
                let at = at % log.len();
                for (offset, byte) in bytes.into_iter().enumerate() {
                    if let Some(slot) = log.get_mut(at + offset) {
                        *slot = byte;
                    }
                }
            }
        }
        if let Some(opened) = open(&log) {
            prop_assert!(states.contains(&opened), "opened as {opened:?}");
        }
    }

    /// Arbitrary text is a scenario or a precise error, never a panic.
    #[test]
    fn scenario_parser_arbitrary(text in "\\PC{0,200}") {
        let _ = text.parse::<ScenarioConfig>();
    }

    /// A valid scenario with bytes replaced is still parsed or refused cleanly, and what parses
    /// passes its own validation.
    #[test]
    fn scenario_parser_mutated(edits in proptest::collection::vec((any::<usize>(), any::<char>()), 1..6)) {
        let mut text: Vec<char> = SCENARIO.chars().collect();
        for (at, c) in edits {
            let at = at % text.len();
            text[at] = c;
        }
        let text: String = text.into_iter().collect();
        if let Ok(config) = text.parse::<ScenarioConfig>() {
            prop_assert!(config.validate().is_ok());
        }
    }
}
