//! What the fault layer injects, and the seeded dice that decide each call.
//!
//! Fault runs are only useful if a failure can be replayed, so every decision comes from one
//! seeded generator: for the same seed and the same order of calls, the same calls are dropped
//! and delayed by the same amounts. Each selected call draws exactly three numbers, whatever
//! the configuration, so changing one rate does not shift the others' sequence.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::grpc::MethodFilter;

/// Fault injection settings; rates are percentages in `0.0..=100.0`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Percentage of selected calls answered `UNAVAILABLE` without calling the inner service.
    pub drop_request_pct: f64,
    /// Percentage of selected calls whose inner response is discarded and replaced by
    /// `UNAVAILABLE` once the inner service has completed (the work happened, the caller can't
    /// tell).
    pub drop_response_pct: f64,
    /// Latency added before every selected call that is not dropped.
    pub delay: Option<DelayConfig>,
    /// Which calls are subject to faults; the rest pass through untouched.
    pub methods: MethodFilter,
    /// Seed of the decision sequence; print it so a failing run can be replayed.
    pub seed: u64,
}

/// Added latency: `base` plus a uniformly random share of `jitter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayConfig {
    /// Minimum added latency.
    pub base: Duration,
    /// Maximum extra latency on top of `base`.
    pub jitter: Duration,
}

impl FaultConfig {
    /// No faults, every method selected, with this seed.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// Drops this percentage of requests before the inner service sees them.
    pub fn drop_requests(mut self, pct: f64) -> Self {
        self.drop_request_pct = pct;
        self
    }

    /// Drops this percentage of responses after the inner service produced them.
    pub fn drop_responses(mut self, pct: f64) -> Self {
        self.drop_response_pct = pct;
        self
    }

    /// Delays every selected call by `base` plus up to `jitter`.
    pub fn delay(mut self, base: Duration, jitter: Duration) -> Self {
        self.delay = Some(DelayConfig { base, jitter });
        self
    }

    /// Restricts faults to these methods.
    pub fn methods(mut self, methods: MethodFilter) -> Self {
        self.methods = methods;
        self
    }

    /// Checks that both rates are percentages (NaN is refused).
    pub fn validate(&self) -> Result<(), FaultConfigError> {
        for (field, value) in [
            ("drop_request_pct", self.drop_request_pct),
            ("drop_response_pct", self.drop_response_pct),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(FaultConfigError::RateOutOfRange { field, value });
            }
        }
        Ok(())
    }

    /// Whether the configuration can never inject anything (the service's fast path).
    pub fn is_noop(&self) -> bool {
        self.drop_request_pct == 0.0 && self.drop_response_pct == 0.0 && self.delay.is_none()
    }
}

/// An invalid [`FaultConfig`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FaultConfigError {
    /// A rate is outside `0.0..=100.0`, or NaN.
    RateOutOfRange {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
}

impl fmt::Display for FaultConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RateOutOfRange { field, value } => {
                write!(f, "{field} must be a percentage in 0..=100, got {value}")
            }
        }
    }
}

impl std::error::Error for FaultConfigError {}

/// What happens to one selected call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    DropRequest,
    DropResponse { delay: Option<Duration> },
    Pass { delay: Option<Duration> },
}

/// The seeded generator behind every decision of one layer and all its services.
#[derive(Debug)]
pub(crate) struct Dice {
    rng: StdRng,
}

impl Dice {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Draws the fate of the next selected call (always three draws, see the module docs).
    pub(crate) fn roll(&mut self, config: &FaultConfig) -> Decision {
        let request: f64 = self.rng.random();
        let response: f64 = self.rng.random();
        let jitter: f64 = self.rng.random();
        let delay = config.delay.map(|d| d.base + d.jitter.mul_f64(jitter));
        if request * 100.0 < config.drop_request_pct {
            Decision::DropRequest
        } else if response * 100.0 < config.drop_response_pct {
            Decision::DropResponse { delay }
        } else {
            Decision::Pass { delay }
        }
    }
}
