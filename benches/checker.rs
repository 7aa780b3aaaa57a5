//! The linearizability checker on a history of 1,000,000 operations (8 clients, 100 keys):
//! reads and compare-and-set writes that overlap in time, some refused and some of unknown
//! outcome, as a chaos run records them. The goal is under 2 s on the project's 2-core machine.
//!
//! Run with `cargo bench --bench checker` (`KV_CHECKER_OPS=N` for another size).

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use criterion::{Criterion, criterion_group, criterion_main};
use kvcore::{
    runner::{Op, OpKind, PutResult, checker},
    storage::Versioned,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

const CLIENTS: usize = 8;
const KEYS: usize = 100;

/// A linearizable history of `n` operations, and the final state it leaves.
///
/// Operation `i` takes effect at `i * 100` ns; its call is up to 300 ns earlier and its return
/// up to 300 ns later, so neighbours overlap as concurrent clients' calls do.
fn history(n: usize, seed: u64) -> (Vec<Op>, Vec<(String, Versioned)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<String> = (0..KEYS).map(|k| format!("key{k}")).collect();
    let mut state: Vec<(u64, String)> = vec![(0, String::new()); KEYS];
    let mut ops = Vec::with_capacity(n);
    for i in 0..n {
        let k = rng.random_range(0..KEYS);
        let at = 1_000 + i as u64 * 100;
        let call = at - rng.random_range(0..300);
        let ret = at + rng.random_range(1..300);
        let (version, value) = &mut state[k];
        let kind = match rng.random_range(0..100) {
            0..50 => OpKind::Get((*version > 0).then(|| (value.clone(), *version))),
            50..=55 => OpKind::Put {
                value: format!("stale-{i}"),
                expected: *version + 1,
                request_id: None,
                recovered: false,
                outcome: PutResult::Refused { actual: *version },
            },
            56 => {
                // Unknown outcome, not applied.
                let expected = *version;
                OpKind::Put {
                    value: format!("lost-{i}"),
                    expected,
                    request_id: None,
                    recovered: false,
                    outcome: PutResult::Maybe,
                }
            }
            _ => {
                let expected = *version;
                *version += 1;
                *value = format!("v{i}");
                OpKind::Put {
                    value: value.clone(),
                    expected,
                    request_id: None,
                    recovered: false,
                    outcome: PutResult::Written(*version),
                }
            }
        };
        ops.push(Op {
            client: i % CLIENTS,
            key: names[k].clone(),
            call,
            ret,
            kind,
        });
    }
    ops.sort_by_key(|op| op.ret);
    let finals = state
        .into_iter()
        .zip(names)
        .filter(|((version, _), _)| *version > 0)
        .map(|((version, value), key)| (key, Versioned { value, version }))
        .collect();
    (ops, finals)
}

fn check(c: &mut Criterion) {
    // `cargo test --all-targets` runs benches once, unoptimised, to see that they work: a
    // small history does for that.
    let benching = std::env::args().any(|arg| arg == "--bench");
    let n = std::env::var("KV_CHECKER_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 10_000 });
    let (ops, finals) = history(n, 1);
    let verdict = checker::check(&ops, &finals);
    assert!(
        verdict.is_linearizable(),
        "{:?}",
        verdict.violations.first()
    );
    let mut group = c.benchmark_group("checker");
    group.sample_size(10);
    group.bench_function(format!("{n} ops, {CLIENTS} clients, {KEYS} keys"), |b| {
        b.iter(|| checker::check(&ops, &finals))
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
