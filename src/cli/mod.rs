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
    transport::{Channel, ClientTlsConfig},
};

use crate::{client::Bearer, error::version_mismatch};

/// The server a command talks to and how: kvctl's global flags, resolved.
#[derive(Debug, Clone)]
pub struct Server {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// The longest connecting and each call may take (`--timeout`).
    pub timeout: Duration,
    /// Sent as `authorization` with every call (`--token-file`).
    pub token: Option<Bearer>,
    /// TLS settings for an `https://` URL (`--ca`, `--cert`, `--key`).
    pub tls: Option<ClientTlsConfig>,
}

pub mod bench;
pub mod chaos;
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
            code => Failure::Failed(connection_lost(code, &status)),
        }
    }
}

/// The text of a failed call. A connection lost under the call (a TLS peer refusing our
/// certificate closes it, say) explains itself only in the causes tonic keeps, and gets a hint.
fn connection_lost(code: Code, status: &Status) -> String {
    use std::error::Error as _;
    let mut text = format!("{code:?}: {}", status.message());
    let Some(source) = status.source() else {
        return text;
    };
    let causes = crate::error::with_causes(source);
    if !text.contains(&causes) {
        text.push_str(&format!(" ({causes})"));
    }
    if source.is::<tonic::transport::Error>() {
        text.push_str(
            "; the connection closed under the call: for a TLS server check the scheme \
             (https://) and --ca, and for mutual TLS --cert and --key",
        );
    }
    text
}

/// [`endpoint_url`](crate::client::endpoint_url), a malformed endpoint being a usage error.
pub fn endpoint_url(given: &str, tls: bool) -> Result<String, Failure> {
    crate::client::endpoint_url(given, tls).map_err(Failure::Usage)
}

/// The TLS settings of `--ca`, `--cert` and `--key`, read now (an unreadable file is a usage
/// error); `None` when none is given.
pub fn tls(
    ca: Option<&std::path::Path>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Option<ClientTlsConfig>, Failure> {
    if ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    crate::client::tls_from_files(ca, identity)
        .map(Some)
        .map_err(Failure::Usage)
}

/// Opens a channel to `server`, failing with the cause within its timeout.
pub async fn connect(server: &Server) -> Result<Channel, Failure> {
    let (url, timeout) = (server.url.as_str(), server.timeout);
    let endpoint = crate::client::channel_endpoint(url, server.tls.as_ref())
        .map_err(|e| {
            let cause = crate::error::with_causes(&e);
            Failure::Usage(format!("invalid endpoint {url:?}: {cause}"))
        })?
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
