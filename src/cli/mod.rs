//! `kvctl`'s subcommands: each module holds its flags and its run function, so the binary only
//! parses and dispatches.
//!
//! Every failure ends as a [`Failure`], which decides the exit code: 1 the server refused
//! (not found, version mismatch, invalid argument), 2 usage, 3 the server could not be reached,
//! did not answer in time, or failed.

use std::{error::Error, fmt, time::Duration};

use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

use crate::error::version_mismatch;

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

/// The URL of a kv-server given as `HOST:PORT` (what `kv-server` prints) or
/// `http://HOST:PORT`. `https://` is refused: kvctl does not speak TLS yet, and sending
/// plaintext where the user asked for TLS would hide that.
pub fn endpoint_url(given: &str) -> Result<String, Failure> {
    let usage = |reason: &str| Failure::Usage(format!("invalid endpoint {given:?}: {reason}"));
    let scheme = given
        .split_once("://")
        .map(|(scheme, rest)| (scheme.to_ascii_lowercase(), rest));
    let authority = match scheme.as_ref().map(|(s, rest)| (s.as_str(), *rest)) {
        None => given,
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(usage(
                "https:// needs TLS, which this kvctl does not support yet; \
                 kv-server serves plaintext: use http:// or HOST:PORT",
            ));
        }
        Some((scheme, _)) => return Err(usage(&format!("unknown scheme {scheme}://"))),
    };
    let authority: http::uri::Authority = authority
        .trim_end_matches('/')
        .parse()
        .map_err(|e| usage(&format!("expected HOST:PORT ({e})")))?;
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(usage("expected HOST:PORT"));
    }
    match authority.port_u16() {
        None => return Err(usage("expected HOST:PORT")),
        Some(0) => return Err(usage("port 0 is not a server's port")),
        Some(_) => {}
    }
    Ok(format!("http://{authority}"))
}

/// `err` with every cause behind it, `a: b: c`, so "transport error" says why.
pub fn with_causes(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = source.and_then(|e| e.source());
    }
    text
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
            with_causes(&e)
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

/// The `authorization` value for the token in `path`: its first token (one a line, blank lines
/// and `#` comments skipped, as kv-server's `--auth-token-file` reads them).
pub fn bearer(path: &std::path::Path) -> Result<MetadataValue<Ascii>, Failure> {
    let usage =
        |reason: String| Failure::Usage(format!("--token-file {}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| usage(e.to_string()))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or_else(|| usage("holds no token".into()))?;
    format!("Bearer {token}")
        .parse()
        .map_err(|_| usage("the token holds a character that cannot be sent in a header".into()))
}

/// Adds `authorization` to a request when a token was given.
pub fn authorized<T>(message: T, token: Option<&MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

/// Parses `--duration`/`--timeout`: a positive number of seconds, fractions allowed.
pub fn positive_seconds(arg: &str) -> Result<Duration, String> {
    let seconds: f64 = arg.parse().map_err(|e| format!("{e}"))?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("expected a positive number of seconds, got {arg}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kv-server prints, and the URL form, are both accepted; the rest is refused as a
    /// usage error with the reason.
    #[test]
    fn endpoint_forms() {
        for (given, url) in [
            ("127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("http://127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("http://localhost:7/", "http://localhost:7"),
            ("HTTP://h:1", "http://h:1"),
            ("[::1]:50051", "http://[::1]:50051"),
        ] {
            assert_eq!(endpoint_url(given).expect(given), url);
        }
        for (given, reason) in [
            ("https://127.0.0.1:50051", "needs TLS"),
            ("ftp://h:1", "unknown scheme"),
            ("127.0.0.1", "expected HOST:PORT"),
            ("http://", "expected HOST:PORT"),
            ("a b:1", "expected HOST:PORT"),
            ("user@h:1", "expected HOST:PORT"),
            ("h:0", "port 0"),
        ] {
            let err = endpoint_url(given).expect_err(given);
            assert_eq!(err.exit_code(), 2, "{given}");
            assert!(err.to_string().contains(reason), "{given}: {err}");
        }
    }
}
