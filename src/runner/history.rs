//! The record of a run: every operation with its call and return instants, input and outcome.
//!
//! Clients append to one shared [`History`] as operations return; the checker reads it at the
//! end. Instants are nanoseconds since the run started, from one monotonic clock.

use std::sync::Mutex;

/// What a recorded operation did and saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpKind {
    /// A read: `Some((value, version))`, or `None` when the key was not found (version 0).
    Get(Option<(String, u64)>),
    /// A compare-and-set write of `value` expecting `expected`.
    Put {
        /// The value written.
        value: String,
        /// The version the write expected.
        expected: u64,
        /// The request id every attempt of the write carried, in hex (`None` when unknown).
        request_id: Option<String>,
        /// The answer to an attempt was lost (an injected fault) and the server's replay told
        /// the client what happened.
        recovered: bool,
        /// What the client learned.
        outcome: PutResult,
    },
}

/// The outcome of a recorded write, as far as the client could prove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    /// Applied, producing this version.
    Written(u64),
    /// Definitely not applied; the key was at `actual` at some instant during the call.
    Refused {
        /// The version the server reported.
        actual: u64,
    },
    /// Applied or not; unknown.
    Maybe,
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Which client issued it (index into the scenario's clients).
    pub client: usize,
    /// The key it touched.
    pub key: String,
    /// When it was called, in nanoseconds since the run started.
    pub call: u64,
    /// When it returned, in nanoseconds since the run started.
    pub ret: u64,
    /// What it did and saw.
    pub kind: OpKind,
}

/// A history shared by every client of a run.
#[derive(Debug, Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one returned operation.
    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// Every operation recorded so far, in the order they were recorded.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
