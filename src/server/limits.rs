//! What one server may be made to hold: message sizes, streams, calls, connections and how long
//! they may sit, each with a default sized for a small machine. `super::conn` enforces the
//! connection limits, `super::http2` the HTTP/2 ones (streams, keepalive), the layers of
//! `super::serve` the call limits.
//!
//! Every limit turns an abuse into a prompt, defined answer instead of unbounded memory or
//! queueing: an oversized message is refused before it is read (RESOURCE_EXHAUSTED), calls past
//! the in-flight limit are shed at once (RESOURCE_EXHAUSTED), a call past its deadline ends
//! (DEADLINE_EXCEEDED), a connection past the cap is closed as soon as it is accepted, and a
//! peer that stops answering HTTP/2 pings, leaves a connection without calls for the idle
//! timeout, or does not finish a TLS handshake in time is disconnected.

use std::time::Duration;

use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// The server's limits. `Limits::default()` fits every valid request and a few thousand
/// concurrent callers on one small machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message read, in bytes (default: the largest valid Put, 1 KiB key and
    /// 1 MiB value, plus 63 KiB). Larger ones are refused before they are read.
    pub max_message_bytes: usize,
    /// HTTP/2 streams (calls) one connection may have open at once (default 256).
    pub max_concurrent_streams: u32,
    /// KvService calls worked on at once across all connections (default 1024); more are
    /// refused at once with RESOURCE_EXHAUSTED. Health and reflection are never refused.
    pub max_in_flight: usize,
    /// Open connections (default 4096); more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest a call may run (default 30 s); a shorter `grpc-timeout` from the caller wins.
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings to each client (default 30 s).
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed (default 10 s).
    pub keepalive_timeout: Duration,
    /// How long a connection may stay open without a call before it is closed (default
    /// 300 s). This also ends connections that never finish the HTTP/2 preface or a request's
    /// headers. Clients reconnect on their next call.
    pub idle_timeout: Duration,
    /// How long a TLS handshake may take before the connection is dropped (default 10 s).
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: MAX_KEY_BYTES + MAX_VALUE_BYTES + 63 * 1024,
            max_concurrent_streams: 256,
            max_in_flight: 1024,
            max_connections: 4096,
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}
