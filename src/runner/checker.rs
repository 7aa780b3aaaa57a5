//! Decides whether a recorded history is linearizable for the versioned-register model.
//!
//! Keys are independent registers, so the history is checked per key. Versions make the search
//! that a general checker (porcupine) would do unnecessary: every applied write produces a
//! distinct version, so writes can only take effect in version order, and every read or refused
//! write says which version it saw. What remains is to find, for each version, the write that
//! produced it (an acknowledged one, or an unknown `Maybe` one that expected the previous
//! version), check that every observed value is that write's value, and place linearization
//! points greedily as early as each operation's call instant allows, in version order. The
//! greedy placement is optimal for a chain, so a failure is a real violation. Cost: O(n log n).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
};

use crate::{
    runner::history::{Op, OpKind, PutResult},
    storage::Versioned,
};

/// One way the history breaks the model, with the operations that show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key whose history is not linearizable.
    pub key: String,
    /// What is wrong, in words.
    pub reason: String,
    /// The operations involved.
    pub ops: Vec<Op>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {:?}: {}", self.key, self.reason)?;
        for op in &self.ops {
            write!(f, "\n    {}", describe(op))?;
        }
        Ok(())
    }
}

/// A client number that marks the synthetic read of the final state.
pub const FINAL_STATE: usize = usize::MAX;

fn describe(op: &Op) -> String {
    let who = if op.client == FINAL_STATE {
        "final state".to_owned()
    } else {
        format!("client {}", op.client)
    };
    let what = match &op.kind {
        OpKind::Get(None) => "get -> not found".to_owned(),
        OpKind::Get(Some((value, version))) => format!("get -> {value:?} @ v{version}"),
        OpKind::Put {
            value,
            expected,
            outcome,
            ..
        } => format!("put {value:?} expecting v{expected} -> {outcome:?}"),
    };
    let (call, ret) = (op.call as f64 / 1e6, op.ret as f64 / 1e6);
    format!("{who} [{call:.3} ms .. {ret:.3} ms] {what}")
}

/// The checker's verdict over a whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Operations checked (the final-state reads not included).
    pub ops: usize,
    /// Keys checked.
    pub keys: usize,
    /// Every violation found (at most one per key).
    pub violations: Vec<Violation>,
}

impl Verdict {
    /// Whether the history is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks `ops` together with the store's `final_state` (read after every client stopped).
pub fn check(ops: &[Op], final_state: &[(String, Versioned)]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let end = ops.iter().map(|op| op.ret).max().unwrap_or(0) + 1;
    let finals: HashMap<&str, &Versioned> =
        final_state.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (key, _) in final_state {
        by_key.entry(key).or_default();
    }
    let mut violations = Vec::new();
    let keys = by_key.len();
    for (key, mut key_ops) in by_key {
        let seen = finals.get(key).map(|v| (v.value.clone(), v.version));
        key_ops.push(Op {
            client: FINAL_STATE,
            key: key.to_owned(),
            call: end,
            ret: end,
            kind: OpKind::Get(seen),
        });
        if let Err(violation) = check_key(key, &key_ops) {
            violations.push(violation);
        }
    }
    Verdict {
        ops: ops.len(),
        keys,
        violations,
    }
}

/// An operation that saw the key at a version: a read, or a refused write.
struct Observation<'a> {
    value: Option<&'a str>,
    op: &'a Op,
}

fn check_key(key: &str, ops: &[Op]) -> Result<(), Violation> {
    let fail = |reason: String, ops: Vec<&Op>| Violation {
        key: key.to_owned(),
        reason,
        ops: ops.into_iter().cloned().collect(),
    };
    // Per version: the write that produced it, its value, and whether its outcome was Maybe (a
    // Maybe may take effect any time after its call, even after the client stopped waiting).
    let mut writers: BTreeMap<u64, (&Op, &str, bool)> = BTreeMap::new();
    let mut maybes: HashMap<u64, Vec<(&Op, &str)>> = HashMap::new();
    let mut observations: BTreeMap<u64, Vec<Observation<'_>>> = BTreeMap::new();
    for op in ops {
        match &op.kind {
            OpKind::Get(seen) => {
                let (version, value) = match seen {
                    Some((value, version)) => (*version, Some(value.as_str())),
                    None => (0, None),
                };
                observations
                    .entry(version)
                    .or_default()
                    .push(Observation { value, op });
            }
            OpKind::Put {
                value,
                expected,
                outcome,
                ..
            } => match outcome {
                PutResult::Written(version) => {
                    if *version != expected + 1 {
                        let reason = format!(
                            "a write expecting v{expected} was acknowledged with v{version}"
                        );
                        return Err(fail(reason, vec![op]));
                    }
                    if let Some((other, ..)) = writers.insert(*version, (op, value, false)) {
                        let reason = format!("two acknowledged writes produced v{version}");
                        return Err(fail(reason, vec![other, op]));
                    }
                }
                PutResult::Refused { actual } => {
                    if actual == expected {
                        let reason = format!(
                            "a write expecting v{expected} was refused although the key was at \
                             v{actual}"
                        );
                        return Err(fail(reason, vec![op]));
                    }
                    observations
                        .entry(*actual)
                        .or_default()
                        .push(Observation { value: None, op });
                }
                PutResult::Maybe => maybes.entry(*expected).or_default().push((op, value)),
            },
        }
    }

    let last = writers
        .keys()
        .chain(observations.keys())
        .copied()
        .max()
        .unwrap_or(0);
    // Give every version up to the last one seen its writer.
    for version in 1..=last {
        if writers.contains_key(&version) {
            continue;
        }
        let seen_values: Vec<&str> = observations
            .get(&version)
            .into_iter()
            .flatten()
            .filter_map(|o| o.value)
            .collect();
        let candidate = maybes
            .get(&(version - 1))
            .into_iter()
            .flatten()
            .filter(|(_, value)| seen_values.iter().all(|seen| seen == value))
            .min_by_key(|(op, _)| op.call);
        match candidate {
            Some(&(op, value)) => {
                writers.insert(version, (op, value, true));
            }
            None => {
                let witnesses = observations
                    .get(&version)
                    .into_iter()
                    .flatten()
                    .map(|o| o.op);
                let reason = format!(
                    "v{version} was observed but no write could have produced it \
                     (a lost, duplicated or invented write)"
                );
                return Err(fail(reason, witnesses.collect()));
            }
        }
    }

    // Every observed value must be the value its version's writer wrote.
    for (version, seen) in &observations {
        for o in seen {
            if let (Some(value), Some((writer, written, _))) = (o.value, writers.get(version))
                && value != *written
            {
                let reason = format!("v{version} was read as {value:?} but written as {written:?}");
                return Err(fail(reason, vec![writer, o.op]));
            }
        }
    }

    // Place linearization points in version order, each as early as allowed.
    let mut at = 0u64;
    let mut blocker: Option<&Op> = None;
    for version in 0..=last {
        if let Some(&(writer, _, maybe)) = writers.get(&version) {
            let point = at.max(writer.call);
            if point > writer.ret && !maybe {
                let reason = format!(
                    "the write of v{version} returned before an operation that must precede \
                     it began (a stale read or a lost write)"
                );
                return Err(fail(reason, blocker.into_iter().chain([writer]).collect()));
            }
            at = point;
        }
        let slot_start = at;
        for o in observations.get(&version).into_iter().flatten() {
            let point = slot_start.max(o.op.call);
            if point > o.op.ret {
                let reason = format!(
                    "an operation saw v{version} although it returned before v{version} could \
                     have taken effect"
                );
                let writer = writers.get(&version).map(|(w, ..)| *w);
                return Err(fail(
                    reason,
                    writer.into_iter().chain(blocker).chain([o.op]).collect(),
                ));
            }
            if point > at {
                at = point;
                blocker = Some(o.op);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(
        client: usize,
        call: u64,
        ret: u64,
        value: &str,
        expected: u64,
        outcome: PutResult,
    ) -> Op {
        Op {
            client,
            key: "k".into(),
            call,
            ret,
            kind: OpKind::Put {
                value: value.into(),
                expected,
                request_id: None,
                recovered: false,
                outcome,
            },
        }
    }

    fn get(client: usize, call: u64, ret: u64, seen: Option<(&str, u64)>) -> Op {
        Op {
            client,
            key: "k".into(),
            call,
            ret,
            kind: OpKind::Get(seen.map(|(v, n)| (v.to_owned(), n))),
        }
    }

    fn state(value: &str, version: u64) -> Vec<(String, Versioned)> {
        vec![(
            "k".into(),
            Versioned {
                value: value.into(),
                version,
            },
        )]
    }

    /// Overlapping writes, reads and a Maybe that did happen are accepted.
    #[test]
    fn accepts_a_linearizable_history() {
        let ops = [
            put(0, 0, 10, "a", 0, PutResult::Written(1)),
            get(1, 5, 12, Some(("a", 1))),
            put(1, 13, 30, "b", 1, PutResult::Maybe),
            put(0, 14, 20, "x", 1, PutResult::Refused { actual: 2 }),
            get(0, 21, 25, Some(("b", 2))),
            put(2, 26, 40, "c", 2, PutResult::Written(3)),
        ];
        let verdict = check(&ops, &state("c", 3));
        assert!(verdict.is_linearizable(), "{:?}", verdict.violations);
        assert_eq!((verdict.ops, verdict.keys), (6, 1));
    }

    /// A read that returns an older version than a write completed before it began is caught.
    #[test]
    fn catches_a_stale_read() {
        let ops = [
            put(0, 0, 10, "a", 0, PutResult::Written(1)),
            put(0, 11, 20, "b", 1, PutResult::Written(2)),
            get(1, 30, 40, Some(("a", 1))),
        ];
        let verdict = check(&ops, &state("b", 2));
        let text = verdict.violations[0].to_string();
        assert!(
            text.starts_with("key \"k\": the write of v2 returned before"),
            "{text}"
        );
        assert!(
            text.contains("client 1") && text.contains("client 0"),
            "{text}"
        );
    }

    /// An acknowledged write missing from the final state is caught.
    #[test]
    fn catches_a_lost_write() {
        let ops = [
            put(0, 0, 10, "a", 0, PutResult::Written(1)),
            put(1, 20, 30, "b", 1, PutResult::Written(2)),
        ];
        let verdict = check(&ops, &state("a", 1));
        assert!(!verdict.is_linearizable());
        assert!(verdict.violations[0].to_string().contains("final state"));
    }

    /// A version that no write produced (a write applied twice) is caught.
    #[test]
    fn catches_a_duplicated_write() {
        let ops = [put(0, 0, 10, "a", 0, PutResult::Written(1))];
        let verdict = check(&ops, &state("a", 2));
        let text = verdict.violations[0].to_string();
        assert!(
            text.contains("v2 was observed but no write could have produced it"),
            "{text}"
        );
    }

    /// A Maybe write may take effect after its caller stopped waiting; a refused write that
    /// claims the key was at the expected version is a violation.
    #[test]
    fn maybe_writes_may_land_late_and_refusals_must_differ() {
        let ops = [
            put(0, 100, 200, "6", 5, PutResult::Maybe),
            put(1, 150, 1000, "6", 5, PutResult::Maybe),
            get(2, 300, 310, Some(("5", 5))),
        ];
        let mut history: Vec<Op> = (0..5)
            .map(|v| {
                put(
                    3,
                    v * 10,
                    v * 10 + 5,
                    &(v + 1).to_string(),
                    v,
                    PutResult::Written(v + 1),
                )
            })
            .collect();
        history.extend(ops);
        let verdict = check(&history, &state("6", 6));
        assert!(verdict.is_linearizable(), "{:?}", verdict.violations);

        let ops = [
            put(0, 0, 10, "a", 0, PutResult::Written(1)),
            put(1, 20, 30, "b", 1, PutResult::Refused { actual: 1 }),
        ];
        let text = check(&ops, &state("a", 1)).violations[0].to_string();
        assert!(
            text.contains("refused although the key was at v1"),
            "{text}"
        );
    }

    /// Two acknowledgements of one version, and a read of a value never written, are caught.
    #[test]
    fn catches_double_acks_and_invented_values() {
        let ops = [
            put(0, 0, 10, "a", 0, PutResult::Written(1)),
            put(1, 0, 10, "b", 0, PutResult::Written(1)),
        ];
        let text = check(&ops, &state("a", 1)).violations[0].to_string();
        assert!(
            text.contains("two acknowledged writes produced v1"),
            "{text}"
        );

        let ops = [
            put(0, 0, 10, "a", 0, PutResult::Written(1)),
            get(1, 20, 30, Some(("z", 1))),
        ];
        let text = check(&ops, &state("a", 1)).violations[0].to_string();
        assert!(
            text.contains("v1 was read as \"z\" but written as \"a\""),
            "{text}"
        );
    }
}
