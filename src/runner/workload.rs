//! What each simulated client does, recording every operation into the history.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

use crate::{
    client::{ClientError, GrpcClient, PutOutcome},
    runner::{
        config::{ClientConfig, ScenarioConfig, Workload},
        history::{History, Op, OpKind, PutResult},
        report::{ClientReport, percentile},
    },
    storage::Versioned,
};

/// Per key: acknowledged increments and writes of unknown fate, for the counter invariant.
#[derive(Debug, Default)]
pub(crate) struct Acked {
    per_key: BTreeMap<String, (u64, u64)>,
}

impl Acked {
    pub(crate) fn merge(&mut self, other: Acked) {
        for (key, (acked, maybe)) in other.per_key {
            let entry = self.per_key.entry(key).or_default();
            entry.0 += acked;
            entry.1 += maybe;
        }
    }

    /// final value == final version, and acknowledged <= version <= acknowledged + maybe.
    pub(crate) fn check_counters(&self, state: &[(String, Versioned)]) -> Vec<String> {
        let finals: BTreeMap<&str, &Versioned> =
            state.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut problems = Vec::new();
        for (key, &(acked, maybe)) in &self.per_key {
            let (value, version) = finals
                .get(key.as_str())
                .map_or(("<absent>".to_owned(), 0), |v| (v.value.clone(), v.version));
            if value.parse::<u64>().ok() != Some(version) && !(version == 0 && acked == 0) {
                problems.push(format!(
                    "counter {key:?}: value {value:?} != version {version}"
                ));
            }
            if version < acked || version > acked + maybe {
                problems.push(format!(
                    "counter {key:?}: version {version}, but {acked} increments were acknowledged \
                     ({maybe} of unknown fate)"
                ));
            }
        }
        problems
    }
}

/// One client's whole run.
pub(crate) struct ClientJob {
    pub(crate) index: usize,
    pub(crate) client: GrpcClient,
    pub(crate) config: ClientConfig,
    pub(crate) scenario: ScenarioConfig,
    pub(crate) seed: u64,
    pub(crate) history: Arc<History>,
    pub(crate) start: Instant,
}

impl ClientJob {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, ClientError> {
        let call = self.now();
        let result = self.client.get(key).await;
        if let Ok(found) = &result {
            let seen = found.as_ref().map(|v| (v.value.clone(), v.version));
            self.record(key, call, OpKind::Get(seen));
        }
        result
    }

    async fn put(
        &self,
        key: &str,
        value: String,
        expected: u64,
    ) -> Result<PutOutcome, ClientError> {
        let call = self.now();
        // Random, not from the seed: ids must never repeat, even when a seed is replayed
        // against the same server.
        let request_id: [u8; 16] = rand::random();
        let result = self
            .client
            .put_with_id(key, &value, expected, request_id)
            .await;
        if let Ok(outcome) = &result {
            let recovered = matches!(
                outcome,
                PutOutcome::Written {
                    recovered: true,
                    ..
                }
            );
            let outcome = match *outcome {
                PutOutcome::Written { version, .. } => PutResult::Written(version),
                PutOutcome::Conflict { actual_version }
                | PutOutcome::AlreadyExists { actual_version } => PutResult::Refused {
                    actual: actual_version,
                },
                PutOutcome::NotFound => PutResult::Refused { actual: 0 },
                _ => PutResult::Maybe,
            };
            self.record(
                key,
                call,
                OpKind::Put {
                    value,
                    expected,
                    request_id: Some(request_id.iter().map(|b| format!("{b:02x}")).collect()),
                    recovered,
                    outcome,
                },
            );
        }
        result
    }

    fn record(&self, key: &str, call: u64, kind: OpKind) {
        self.history.record(Op {
            client: self.index,
            key: key.to_owned(),
            call,
            ret: self.now(),
            kind,
        });
    }

    async fn pause(&self, ok: bool) {
        let ms = if ok {
            self.config
                .success_sleep_ms
                .unwrap_or(self.scenario.success_sleep_ms)
        } else {
            self.config
                .error_sleep_ms
                .unwrap_or(self.scenario.error_sleep_ms)
        };
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// Runs until cancelled or the operation budget is spent.
    pub(crate) async fn run(self) -> Acked {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut acked = Acked::default();
        let limit = self.scenario.ops_per_client.unwrap_or(u64::MAX);
        let mut known: BTreeMap<String, u64> = BTreeMap::new();
        let mut n = 0u64;
        while self.client.counters().ops < limit {
            let key = self.config.keys[rng.random_range(0..self.config.keys.len())].clone();
            n += 1;
            let step = match self.scenario.workload {
                Workload::Counter => self.increment(&key, &mut acked).await,
                Workload::Mixed => {
                    let value = format!("{}-{n}", self.config.name);
                    self.mixed(&key, value, rng.random_bool(0.5), &mut known)
                        .await
                }
            };
            match step {
                Ok(ok) => self.pause(ok).await,
                Err(ClientError::Cancelled) => break,
                Err(_) => self.pause(false).await,
            }
        }
        acked
    }

    /// Read-modify-write increment, re-reading after every conflict (what `update` does, with
    /// every operation recorded). Returns whether the increment was acknowledged.
    async fn increment(&self, key: &str, acked: &mut Acked) -> Result<bool, ClientError> {
        let mut current = self.get(key).await?;
        loop {
            let (value, expected) = match &current {
                Some(v) => (v.value.parse::<u64>().unwrap_or(0) + 1, v.version),
                None => (1, 0),
            };
            let entry = acked.per_key.entry(key.to_owned()).or_default();
            match self.put(key, value.to_string(), expected).await? {
                PutOutcome::Written { .. } => {
                    entry.0 += 1;
                    return Ok(true);
                }
                PutOutcome::Maybe => {
                    entry.1 += 1;
                    return Ok(false);
                }
                _ => current = self.get(key).await?,
            }
        }
    }

    async fn mixed(
        &self,
        key: &str,
        value: String,
        read: bool,
        known: &mut BTreeMap<String, u64>,
    ) -> Result<bool, ClientError> {
        if read {
            let found = self.get(key).await?;
            known.insert(key.to_owned(), found.map_or(0, |v| v.version));
            return Ok(true);
        }
        let expected = known.get(key).copied().unwrap_or(0);
        let outcome = self.put(key, value, expected).await?;
        match outcome {
            PutOutcome::Written { version, .. } => {
                known.insert(key.to_owned(), version);
                Ok(true)
            }
            PutOutcome::Conflict { actual_version }
            | PutOutcome::AlreadyExists { actual_version } => {
                known.insert(key.to_owned(), actual_version);
                Ok(false)
            }
            PutOutcome::NotFound => {
                known.insert(key.to_owned(), 0);
                Ok(false)
            }
            _ => Ok(false),
        }
    }
}

/// The report line of client `index`, with latency percentiles from the history.
pub(crate) fn client_report(
    index: usize,
    name: &str,
    client: &GrpcClient,
    ops: &[Op],
) -> ClientReport {
    let mut latencies: Vec<u64> = ops
        .iter()
        .filter(|op| op.client == index)
        .map(|op| (op.ret - op.call) / 1000)
        .collect();
    latencies.sort_unstable();
    let c = client.counters();
    ClientReport {
        name: name.to_owned(),
        ops: c.ops,
        network_retries: c.network_retries,
        conflicts: c.conflicts,
        recovered: c.recovered,
        maybe: c.maybe,
        contract_errors: c.contract_errors,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
    }
}
