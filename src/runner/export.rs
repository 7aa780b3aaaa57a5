//! Histories as JSON lines: one operation a line, readable by other tools and back by ours.
//!
//! ```text
//! {"client":0,"key":"k1","call_ns":1200,"return_ns":2300,"input":{"op":"get"},"output":{"result":"found","value":"3","version":3}}
//! {"client":1,"key":"k1","call_ns":2400,"return_ns":3100,"input":{"op":"put","value":"4","expected_version":3,"request_id":"9f0c…"},"output":{"result":"written","version":4}}
//! ```
//!
//! `input.op` is `get` or `put` (`value`, `expected_version`, 0 = create, and the hex
//! `request_id` every attempt of the write carried). `output.result` is `found` (`value`,
//! `version`), `not_found`, `written` (`version`; `"recovered": true` when an attempt's answer was lost and
//! the server's replay told the client what happened), `refused` (`actual_version`: a conflict, or
//! 0 when an update found no key) or `maybe` (the client could not prove whether the write
//! happened). Times are nanoseconds since the run started, from one monotonic clock. Lines are
//! in the order operations returned.
//!
//! Porcupine: each line is an `Operation{ClientId: client, Input: input, Call: call_ns,
//! Output: output, Return: return_ns}`, partitioned by `key`; a `maybe` write is an operation
//! whose Return is +∞ (it may take effect at any point after its call), as porcupine's
//! documentation recommends for operations that timed out.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::history::{Op, OpKind, PutResult};

/// One line of an exported history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    client: usize,
    key: String,
    call_ns: u64,
    return_ns: u64,
    input: Input,
    output: Output,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Input {
    Get,
    Put {
        value: String,
        expected_version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
enum Output {
    Found {
        value: String,
        version: u64,
    },
    NotFound,
    Written {
        version: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recovered: bool,
    },
    Refused {
        actual_version: u64,
    },
    Maybe,
}

impl From<&Op> for Line {
    fn from(op: &Op) -> Self {
        let (input, output) = match &op.kind {
            OpKind::Get(None) => (Input::Get, Output::NotFound),
            OpKind::Get(Some((value, version))) => (
                Input::Get,
                Output::Found {
                    value: value.clone(),
                    version: *version,
                },
            ),
            OpKind::Put {
                value,
                expected,
                request_id,
                recovered,
                outcome,
            } => (
                Input::Put {
                    value: value.clone(),
                    expected_version: *expected,
                    request_id: request_id.clone(),
                },
                match *outcome {
                    PutResult::Written(version) => Output::Written {
                        version,
                        recovered: *recovered,
                    },
                    PutResult::Refused { actual } => Output::Refused {
                        actual_version: actual,
                    },
                    PutResult::Maybe => Output::Maybe,
                },
            ),
        };
        Self {
            client: op.client,
            key: op.key.clone(),
            call_ns: op.call,
            return_ns: op.ret,
            input,
            output,
        }
    }
}

impl TryFrom<Line> for Op {
    type Error = String;

    fn try_from(line: Line) -> Result<Self, String> {
        let kind = match (line.input, line.output) {
            (Input::Get, Output::NotFound) => OpKind::Get(None),
            (Input::Get, Output::Found { value, version }) => OpKind::Get(Some((value, version))),
            (
                Input::Put {
                    value,
                    expected_version,
                    request_id,
                },
                output,
            ) => {
                let recovered = matches!(
                    output,
                    Output::Written {
                        recovered: true,
                        ..
                    }
                );
                let outcome = match output {
                    Output::Written { version, .. } => PutResult::Written(version),
                    Output::Refused { actual_version } => PutResult::Refused {
                        actual: actual_version,
                    },
                    Output::Maybe => PutResult::Maybe,
                    other => return Err(format!("a put cannot end as {other:?}")),
                };
                OpKind::Put {
                    value,
                    expected: expected_version,
                    request_id,
                    recovered,
                    outcome,
                }
            }
            (Input::Get, other) => return Err(format!("a get cannot end as {other:?}")),
        };
        if line.return_ns < line.call_ns {
            return Err(format!(
                "returns at {} ns, before its call at {} ns",
                line.return_ns, line.call_ns
            ));
        }
        Ok(Op {
            client: line.client,
            key: line.key,
            call: line.call_ns,
            ret: line.return_ns,
            kind,
        })
    }
}

/// Writes `ops` as JSON lines.
pub fn write_history(ops: &[Op], mut out: impl Write) -> std::io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut out, &Line::from(op))?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_history`] (or by any tool in its format); the error
/// names the line.
pub fn read_history(input: impl BufRead) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line =
            serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?;
        ops.push(Op::try_from(parsed).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: u64, kind: OpKind) -> Op {
        Op {
            client,
            key: "k".into(),
            call,
            ret: call + 10,
            kind,
        }
    }

    /// Every kind of operation survives the round trip, and the format is what the docs say.
    #[test]
    fn round_trip() {
        let put = |expected, outcome| OpKind::Put {
            value: "v".into(),
            expected,
            request_id: Some("00ff".into()),
            recovered: false,
            outcome,
        };
        let ops = vec![
            op(0, 0, OpKind::Get(None)),
            op(1, 5, put(0, PutResult::Written(1))),
            op(2, 20, OpKind::Get(Some(("v".into(), 1)))),
            op(0, 30, put(1, PutResult::Refused { actual: 2 })),
            op(1, 40, put(2, PutResult::Maybe)),
            op(
                2,
                50,
                OpKind::Put {
                    value: "w".into(),
                    expected: 1,
                    request_id: Some("01".into()),
                    recovered: true,
                    outcome: PutResult::Written(2),
                },
            ),
        ];
        let mut text = Vec::new();
        write_history(&ops, &mut text).expect("written");
        let text = String::from_utf8(text).expect("utf-8");
        assert_eq!(
            text.lines().nth(1),
            Some(
                r#"{"client":1,"key":"k","call_ns":5,"return_ns":15,"input":{"op":"put","value":"v","expected_version":0,"request_id":"00ff"},"output":{"result":"written","version":1}}"#
            )
        );
        assert_eq!(read_history(text.as_bytes()).expect("read"), ops);
    }

    /// Lines that cannot be an operation are refused with their number.
    #[test]
    fn bad_lines_are_named() {
        for (text, reason) in [
            ("{", "line 2"),
            (
                r#"{"client":0,"key":"k","call_ns":5,"return_ns":1,"input":{"op":"get"},"output":{"result":"not_found"}}"#,
                "before its call",
            ),
            (
                r#"{"client":0,"key":"k","call_ns":1,"return_ns":5,"input":{"op":"get"},"output":{"result":"written","version":1}}"#,
                "a get cannot end",
            ),
        ] {
            let err = read_history(format!("\n{text}\n").as_bytes()).expect_err(text);
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
