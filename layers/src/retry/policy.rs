//! When and how often to retry: the gRFC A6 policy, backoff with full jitter, and the throttle.
//!
//! gRFC A6 (<https://github.com/grpc/proposal/blob/master/A6-client-retries.md>) is what every
//! other gRPC implementation follows, so a tonic client using this layer behaves like a Go or
//! Java client configured with the same service config: same attempt limits, same backoff, and
//! the same token-bucket throttle that stops retry storms when a server is overloaded.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tonic::Code;

use crate::grpc::MethodFilter;

/// Retry settings, with gRFC A6 defaults where A6 has them.
///
/// `retryable_codes` may hold any code, but only codes meaning "not executed" or "transient"
/// are safe for non-idempotent methods: retrying `ABORTED`, `ALREADY_EXISTS`, `NOT_FOUND` or
/// `INVALID_ARGUMENT` repeats a request the server has already judged, and for writes with
/// conditions it can turn one logical call into two effects.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts allowed, the first included (default 5, at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first backoff (default 100 ms).
    pub initial_backoff: Duration,
    /// Upper bound of any backoff (default 1 s).
    pub max_backoff: Duration,
    /// Growth of the backoff bound per retry (default 2.0).
    pub backoff_multiplier: f64,
    /// Codes of Trailers-Only responses (or `Status` errors) that are retried (default
    /// `{UNAVAILABLE}`).
    pub retryable_codes: HashSet<Code>,
    /// Largest request body buffered for replay (default 64 KiB); larger ones are sent once.
    pub max_buffer_bytes: usize,
    /// Whether errors that are not a `Status` (connection refused, reset) are retried
    /// (default true). A timed-out attempt is not one of them: see `repeat_timed_out`.
    pub retry_transport_errors: bool,
    /// Methods safe to send again after an attempt timed out (default: none). A timed-out
    /// attempt (tonic's `TimeoutExpired`, from `Endpoint::timeout` or the per-attempt
    /// `grpc-timeout`) was on the wire and may have been processed, so by default it ends the
    /// call with DEADLINE_EXCEEDED; list here only methods whose repetition is harmless
    /// (reads, or writes made idempotent by a request id).
    pub repeat_timed_out: MethodFilter,
    /// The A6 retry throttle shared by all clones (default 10 tokens, ratio 0.1); `None`
    /// disables it.
    pub throttle: Option<ThrottleConfig>,
    /// Calls that may be retried (default all). Their request bodies are read to the end
    /// before the first attempt, so client-streaming and bidi methods must be left out.
    pub methods: MethodFilter,
    /// Seed of the backoff jitter; `None` seeds from the OS (set it in tests).
    pub seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            retryable_codes: HashSet::from([Code::Unavailable]),
            max_buffer_bytes: 64 * 1024,
            retry_transport_errors: true,
            repeat_timed_out: MethodFilter::only(std::iter::empty::<String>()),
            throttle: Some(ThrottleConfig::default()),
            methods: MethodFilter::All,
            seed: None,
        }
    }
}

impl RetryPolicy {
    /// Sets the number of attempts, the first included (clamped to at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the backoff bounds: retry `n` waits a random time in
    /// `[0, min(initial * multiplier^(n-1), max)]`.
    pub fn backoff(mut self, initial: Duration, max: Duration, multiplier: f64) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self.backoff_multiplier = multiplier;
        self
    }

    /// Replaces the retryable codes (see the type docs before adding non-transient ones).
    pub fn retryable_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable_codes = codes.into_iter().collect();
        self
    }

    /// Sets the largest request body buffered for replay.
    pub fn max_buffer_bytes(mut self, bytes: usize) -> Self {
        self.max_buffer_bytes = bytes;
        self
    }

    /// Sets whether non-`Status` errors are retried.
    pub fn retry_transport_errors(mut self, retry: bool) -> Self {
        self.retry_transport_errors = retry;
        self
    }

    /// Sets the throttle: `max_tokens` and `token_ratio` as in A6.
    pub fn throttle(mut self, max_tokens: u32, token_ratio: f64) -> Self {
        self.throttle = Some(ThrottleConfig {
            max_tokens,
            token_ratio,
        });
        self
    }

    /// Retries without a throttle.
    pub fn without_throttle(mut self) -> Self {
        self.throttle = None;
        self
    }

    /// Methods that may be sent again after an attempt timed out (see `repeat_timed_out`).
    pub fn repeat_timed_out(mut self, methods: MethodFilter) -> Self {
        self.repeat_timed_out = methods;
        self
    }

    /// Restricts retries to these (unary or server-streaming) methods.
    pub fn methods(mut self, methods: MethodFilter) -> Self {
        self.methods = methods;
        self
    }

    /// Seeds the backoff jitter.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Upper bound of the backoff before retry `retry` (1 for the first retry).
    pub fn backoff_bound(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let bound = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.powi(exponent);
        let bound = bound.min(self.max_backoff.as_secs_f64());
        Duration::try_from_secs_f64(bound).unwrap_or(self.max_backoff)
    }
}

/// gRFC A6 retry throttling parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleConfig {
    /// Bucket size; retries stop while the tokens are at or below half of it.
    pub max_tokens: u32,
    /// Tokens earned back by each successful attempt (A6 keeps three decimals).
    pub token_ratio: f64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_tokens: 10,
            token_ratio: 0.1,
        }
    }
}

/// The token bucket of A6, in thousandths of a token so it fits an atomic.
#[derive(Debug)]
pub(crate) struct Throttle {
    max: u64,
    ratio: u64,
    tokens: AtomicU64,
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        let max = u64::from(config.max_tokens) * 1000;
        let ratio = (config.token_ratio.max(0.0) * 1000.0).round() as u64;
        Self {
            max,
            ratio,
            tokens: AtomicU64::new(max),
        }
    }

    /// A successful attempt (anything not retryable) earns `token_ratio` back.
    pub(crate) fn on_success(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.ratio).min(self.max))
            });
    }

    /// A failed attempt costs one token; returns whether a retry is still allowed.
    pub(crate) fn on_failure(&self) -> bool {
        let previous = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(1000))
            })
            .unwrap_or_else(|t| t);
        previous.saturating_sub(1000) > self.max / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds grow by the multiplier from the initial backoff and stop at the maximum.
    #[test]
    fn backoff_bounds_grow_and_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff_bound(1), Duration::from_millis(100));
        assert_eq!(policy.backoff_bound(2), Duration::from_millis(200));
        assert_eq!(policy.backoff_bound(4), Duration::from_millis(800));
        assert_eq!(policy.backoff_bound(5), Duration::from_secs(1));
        assert_eq!(policy.backoff_bound(100), Duration::from_secs(1));
    }

    /// Failures drain the bucket to the half-way mark, successes refill it by the ratio.
    #[test]
    fn throttle_follows_a6() {
        let throttle = Throttle::new(ThrottleConfig {
            max_tokens: 4,
            token_ratio: 0.5,
        });
        assert!(throttle.on_failure(), "3 > 2");
        assert!(!throttle.on_failure(), "2 is not > 2");
        for _ in 0..3 {
            throttle.on_success();
        }
        assert!(throttle.on_failure(), "2 + 1.5 - 1 is back above half");
    }
}
