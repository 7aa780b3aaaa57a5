//! What a run found: per-client numbers, the checker's verdict, and how to replay it.

use std::fmt;

use serde::Serialize;

/// The `q` quantile (0..=1) of ascending `sorted` values, nearest rank; 0 when empty.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    match sorted.len() {
        0 => 0,
        n => sorted[((n - 1) as f64 * q).round() as usize],
    }
}

/// One client's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    /// The client's name.
    pub name: String,
    /// Operations issued (gets and puts).
    pub ops: u64,
    /// Network attempts beyond the first.
    pub network_retries: u64,
    /// Writes refused because another writer got there first.
    pub conflicts: u64,
    /// Writes whose lost answer was recovered through the server's replay.
    pub recovered: u64,
    /// Writes with unknown outcome.
    pub maybe: u64,
    /// Answers that broke the kv.v1 wire contract (see `ClientCounters::contract_errors`).
    pub contract_errors: u64,
    /// Median operation latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile operation latency, microseconds.
    pub p99_us: u64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The seed every fault and workload decision came from.
    pub seed: u64,
    /// How long the clients ran, seconds.
    pub duration_secs: f64,
    /// Per-client numbers.
    pub clients: Vec<ClientReport>,
    /// Requests the server's fault layer dropped.
    pub server_requests_dropped: u64,
    /// Responses the server's fault layer dropped (after applying the write).
    pub server_responses_dropped: u64,
    /// Requests the clients' fault layers dropped before sending.
    pub client_requests_dropped: u64,
    /// Operations checked.
    pub checked_ops: usize,
    /// Keys checked.
    pub checked_keys: usize,
    /// Linearizability violations, readable.
    pub violations: Vec<String>,
    /// Counter invariant violations (counter workload), readable.
    pub invariant_violations: Vec<String>,
    /// The scenario's fault schedule.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<super::Phase>,
    /// Calls the schedule held (pause) or dropped.
    pub scheduled_faults: u64,
}

impl RunReport {
    /// Whether the run proved correct: no violation, and no answer that broke the contract.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
            && self.invariant_violations.is_empty()
            && self.contract_errors() == 0
    }

    /// Answers that broke the kv.v1 wire contract, all clients together.
    pub fn contract_errors(&self) -> u64 {
        self.clients.iter().map(|c| c.contract_errors).sum()
    }

    /// How many write outcomes stayed unknown, and the likely reason, or `None` if none did.
    /// An unknown outcome is not a violation: the checker allows both fates.
    pub fn unknowns(&self) -> Option<String> {
        let maybe: u64 = self.clients.iter().map(|c| c.maybe).sum();
        if maybe == 0 {
            return None;
        }
        let recovered: u64 = self.clients.iter().map(|c| c.recovered).sum();
        let why = if recovered == 0 && self.server_responses_dropped > 0 {
            "the server never replayed a retried write (no `kv-replayed` answer, or no \
             `replayable_from` in its conflicts), so a write whose answer was dropped cannot \
             be proven either way"
        } else {
            "retries ran out, a call's deadline passed, or the run ended while the write was in \
             flight, before an answer proved the outcome"
        };
        let contract = self.contract_errors();
        let contract = if contract > 0 {
            format!(" ({contract} of them refusals that broke the wire contract)")
        } else {
            String::new()
        };
        Some(format!(
            "{maybe} write outcome(s) stayed unknown{contract}: {why}"
        ))
    }

    /// The one-line verdict.
    pub fn verdict(&self) -> String {
        if self.passed() {
            return format!(
                "linearizable: yes ({} ops, {} keys)",
                self.checked_ops, self.checked_keys
            );
        }
        let n = self.violations.len() + self.invariant_violations.len();
        let contract = self.contract_errors();
        let mut found = Vec::new();
        if n > 0 {
            found.push(format!("{n} problem(s) found"));
        }
        if contract > 0 {
            found.push(format!(
                "{contract} answer(s) broke the kv.v1 wire contract (a refused write without \
                 its kv.v1.VersionMismatch detail)"
            ));
        }
        format!(
            "VIOLATION: {}; replay with seed {}",
            found.join(", "),
            self.seed
        )
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<12} {:>8} {:>8} {:>9} {:>9} {:>6} {:>9} {:>9}",
            "client", "ops", "retries", "conflicts", "recovered", "maybe", "p50", "p99"
        )?;
        for c in &self.clients {
            writeln!(
                f,
                "{:<12} {:>8} {:>8} {:>9} {:>9} {:>6} {:>7}us {:>7}us",
                c.name,
                c.ops,
                c.network_retries,
                c.conflicts,
                c.recovered,
                c.maybe,
                c.p50_us,
                c.p99_us
            )?;
        }
        writeln!(
            f,
            "faults injected: server dropped {} requests and {} responses; clients dropped {} requests",
            self.server_requests_dropped,
            self.server_responses_dropped,
            self.client_requests_dropped
        )?;
        if !self.schedule.is_empty() {
            writeln!(
                f,
                "fault schedule: {} phase(s); {} calls held or dropped by it",
                self.schedule.len(),
                self.scheduled_faults
            )?;
        }
        if let Some(unknowns) = self.unknowns() {
            writeln!(f, "{unknowns}")?;
        }
        for v in self.violations.iter().chain(&self.invariant_violations) {
            writeln!(f, "  {v}")?;
        }
        writeln!(f, "{}", self.verdict())?;
        write!(
            f,
            "seed {} (rerun with --seed {}, or \"seed\" in the scenario, for the same fault \
             decision at each call number and the same key choices; thread timing still differs)",
            self.seed, self.seed
        )
    }
}
