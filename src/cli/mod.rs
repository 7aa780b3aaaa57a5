//! `kvctl`'s subcommands: each module holds its flags and its run function, so the binary only
//! parses and dispatches.
//!
//! Every failure ends as a [`Failure`], which decides the exit code: 1 the server refused
//! (not found, version mismatch, invalid argument), 2 usage, 3 the server could not be reached,
//! did not answer in time, or failed.

use std::{fmt, time::Duration};

use grpc_layers::auth::token_lines;

use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};

use crate::{client::Bearer, error::version_mismatch};

pub mod bench;
pub mod kv;

/// How a kvctl command failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure {
    /// The server answered and refused (exit 1).
    Refused(String),
    /// The command line is wrong (exit 2).
    Usage(String),
    /// The server could not be reached, did not answer in time, or failed (exit 3).
    Failed(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Failed(_) => 3,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused(m) | Failure::Usage(m) | Failure::Failed(m) => f.write_str(m),
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        if let Some(m) = version_mismatch(&status) {
            let (expected, actual) = (m.expected_version, m.actual_version);
            return Failure::Refused(match status.code() {
                Code::NotFound => format!("key not found (expected version {expected})"),
                Code::AlreadyExists => format!("key already exists at version {actual}"),
                _ => format!("version mismatch: expected {expected}, actual {actual}"),
            });
        }
        let msg = status.message().to_owned();
        match status.code() {
            Code::NotFound => Failure::Refused("key not found".into()),
            Code::InvalidArgument => Failure::Refused(msg),
            Code::Unauthenticated => Failure::Refused(format!(
                "unauthenticated: {msg} (give a token with --token-file or KV_TOKEN_FILE)"
            )),
            code => Failure::Failed(format!("{code:?}: {msg}")),
        }
    }
}

/// [`endpoint_url`](crate::client::endpoint_url), a malformed endpoint being a usage error.
pub fn endpoint_url(given: &str) -> Result<String, Failure> {
    crate::client::endpoint_url(given).map_err(Failure::Usage)
}

/// Opens a channel to `url`, failing with the cause within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> Result<Channel, Failure> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Failure::Usage(format!("invalid endpoint {url:?}: {e}")))?
        .connect_timeout(timeout);
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(Failure::Failed(format!(
            "cannot connect to {url}: {}",
            crate::error::with_causes(&e)
        ))),
        Err(_) => Err(no_answer(url, timeout)),
    }
}

/// The failure of a call that got no answer within `timeout`.
pub fn no_answer(url: &str, timeout: Duration) -> Failure {
    Failure::Failed(format!(
        "no answer from {url} within {} s (--timeout)",
        timeout.as_secs_f64()
    ))
}

/// The `authorization` value for the token in `path`: its first token, read as kv-server's
/// `--auth-token-file` reads tokens.
pub fn bearer(path: &std::path::Path) -> Result<Bearer, Failure> {
    let usage = |reason: &str| Failure::Usage(format!("--token-file {}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| usage(&e.to_string()))?;
    let token = token_lines(&text)
        .next()
        .ok_or_else(|| usage("holds no token"))?;
    crate::client::bearer(token)
        .ok_or_else(|| usage("the token holds a character that cannot be sent in a header"))
}

/// Parses `--duration`/`--timeout`: a positive number of seconds, fractions allowed.
pub fn positive_seconds(arg: &str) -> Result<Duration, String> {
    let seconds: f64 = arg.parse().map_err(|e| format!("{e}"))?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("expected a positive number of seconds, got {arg}")),
    }
}
