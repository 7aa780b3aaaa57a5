//! Runs a scenario's clients against kv.v1 servers somebody else runs, in any language.
//!
//! For each target, an in-process [`FaultProxy`] on loopback injects the scenario's server-side
//! faults (`server_packet_loss_rate`: answers to writes dropped after the target applied them);
//! the clients, with their own faults, are spread over the proxies round-robin. The scenario's
//! keys get a prefix of their own per run, so a target that already holds data (from an
//! earlier run, say) is checked on keys nobody wrote before. At the end the keys are read back
//! from the first target directly, and the checker judges the history against them.

use std::{path::PathBuf, time::Duration};

use grpc_layers::{MethodFilter, fault::FaultConfig};
use tonic::transport::ClientTlsConfig;

use super::{
    ClientSide, Outputs, RunReport, RunnerError, ScenarioConfig, derive_seed, drive, finish,
    proxy::{FaultProxy, Schedule},
    write_outputs,
};
use crate::{
    client::{ClientOptions, GrpcClient, PutOutcome},
    runner::{OpKind, PutResult},
    storage::Versioned,
    validate::PUT_PATH,
};

/// Runs one scenario against running servers; see the module docs.
#[derive(Debug)]
pub struct TargetRunner {
    targets: Vec<String>,
    config: ScenarioConfig,
    side: ClientSide,
    quiet: bool,
    outputs: Outputs,
    timeout: Duration,
}

impl TargetRunner {
    /// A runner of `config` against `targets` (`http://HOST:PORT` or `https://…`), which must
    /// be frontends of one store.
    pub fn new(targets: Vec<String>, config: ScenarioConfig) -> Self {
        Self {
            targets,
            config,
            side: ClientSide::default(),
            quiet: false,
            outputs: Outputs::default(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.side.token = Some(token.into());
        self
    }

    /// Connects to `https://` targets with these settings.
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.side.tls = Some(tls);
        self
    }

    /// Also writes every operation to `path` as JSON lines (see [`super::export`]).
    pub fn history(mut self, path: impl Into<PathBuf>) -> Self {
        self.outputs.history = Some(path.into());
        self
    }

    /// Also writes a self-contained HTML report to `path` (see [`ServerRunner::html`](super::ServerRunner::html));
    /// `replay` is the command that reruns this run, shown in it with the seed.
    pub fn html(mut self, path: impl Into<PathBuf>, replay: impl Into<String>) -> Self {
        self.outputs.html = Some((path.into(), replay.into()));
        self
    }

    /// How long connecting to a target, and each probe and final read, may take (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Suppresses live progress and the final printout (tests).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// A client of `target` without injected faults, for probing and the final reads.
    async fn plain_client(&self, target: &str) -> Result<GrpcClient, RunnerError> {
        let options = ClientOptions {
            call_timeout: self.timeout,
            token: self.side.token.clone(),
            tls: self.side.tls.clone(),
            ..ClientOptions::default()
        };
        GrpcClient::connect(target, options)
            .await
            .map_err(|e| RunnerError::Unreachable {
                target: target.to_owned(),
                reason: crate::error::with_causes(&e),
            })
    }

    /// Runs the scenario to the end and returns the report.
    pub async fn run(self) -> Result<RunReport, RunnerError> {
        if self.targets.is_empty() {
            return Err(RunnerError::Other("no target given".into()));
        }
        self.config.validate()?;
        let mut config = self.config.clone();
        let seed = config.seed.unwrap_or_else(rand::random);
        // Keys of this run only: `chaos-<seed>-<random>/<key>`.
        let prefix = format!("chaos-{seed}-{:08x}/", rand::random::<u32>());
        for (i, client) in config.clients.iter_mut().enumerate() {
            for (j, key) in client.keys.iter_mut().enumerate() {
                if prefix.len() + key.len() > crate::limits::MAX_KEY_BYTES {
                    return Err(RunnerError::Config(super::ConfigError::Invalid {
                        field: format!("clients[{i}].keys[{j}]"),
                        reason: format!(
                            "at most {} bytes here: kvctl chaos prefixes each key with \
                             {prefix:?}",
                            crate::limits::MAX_KEY_BYTES - prefix.len()
                        ),
                    }));
                }
                *key = format!("{prefix}{key}");
            }
        }
        // Each target answers a read of a key nobody wrote as kv.v1 says: not found.
        for target in &self.targets {
            let probe = self.plain_client(target).await?;
            match probe.get(&format!("{prefix}probe")).await {
                Ok(None) => {}
                Ok(Some(found)) => {
                    return Err(RunnerError::Unreachable {
                        target: target.clone(),
                        reason: format!(
                            "a key nobody wrote was found (version {}): not a kv.v1 store",
                            found.version
                        ),
                    });
                }
                Err(e) => {
                    return Err(RunnerError::Unreachable {
                        target: target.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        self.same_store(&prefix).await?;

        let mut proxies = Vec::new();
        let mut schedules = Vec::new();
        for (t, target) in self.targets.iter().enumerate() {
            // Server packet loss drops Put answers after the target applied the write.
            let faults = FaultConfig::new(derive_seed(seed, 3000 + t as u64))
                .drop_responses(config.server_packet_loss_rate)
                .methods(MethodFilter::only([PUT_PATH]));
            let schedule = (!config.schedule.is_empty()).then(|| {
                Schedule::new(config.schedule.clone(), derive_seed(seed, 4000 + t as u64))
            });
            schedules.extend(schedule.clone());
            proxies.push(
                FaultProxy::start_with_schedule(target, self.side.tls.as_ref(), faults, schedule)
                    .await?,
            );
        }
        let urls: Vec<String> = proxies.iter().map(FaultProxy::url).collect();
        // The proxies speak plaintext on loopback; TLS and the token are the target's.
        let through = ClientSide {
            token: self.side.token.clone(),
            tls: None,
        };
        let stats: Vec<_> = proxies.iter().map(FaultProxy::stats).collect();
        let driven = drive(
            &config, seed, &urls, &through, &stats, &schedules, self.quiet,
        )
        .await;
        for proxy in proxies {
            proxy.stop().await?;
        }
        let driven = driven?;
        let final_state = self.final_state(&config).await?;
        let (report, violations) = finish(&config, seed, &driven, final_state, &stats, self.quiet);
        write_outputs(&self.outputs, &driven, &report, &violations);
        let written = driven
            .ops
            .iter()
            .filter(|op| {
                matches!(
                    op.kind,
                    OpKind::Put {
                        outcome: PutResult::Written(_),
                        ..
                    }
                )
            })
            .count();
        if written == 0 {
            return Err(RunnerError::Unreachable {
                target: self.targets.join(","),
                reason: "no write was acknowledged in the whole run, so nothing was tested \
                         (every write failed: see the report above)"
                    .into(),
            });
        }
        Ok(report)
    }

    /// Several targets must be frontends of one store: a write through the first is read
    /// through each of the others, or the run would report their differences as violations.
    async fn same_store(&self, prefix: &str) -> Result<(), RunnerError> {
        let [first, others @ ..] = &self.targets[..] else {
            return Ok(());
        };
        if others.is_empty() {
            return Ok(());
        }
        let key = format!("{prefix}frontends");
        let unreachable = |target: &String, reason: String| RunnerError::Unreachable {
            target: target.clone(),
            reason,
        };
        let writer = self.plain_client(first).await?;
        match writer.put(&key, "one store", 0).await {
            Ok(PutOutcome::Written { .. }) => {}
            other => {
                return Err(unreachable(
                    first,
                    format!("a first write failed: {other:?}"),
                ));
            }
        }
        for target in others {
            let reader = self.plain_client(target).await?;
            match reader.get(&key).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(unreachable(
                        target,
                        format!(
                            "it does not see a write made through {first}: the targets must be \
                             frontends of one store"
                        ),
                    ));
                }
                Err(e) => return Err(unreachable(target, e.to_string())),
            }
        }
        Ok(())
    }

    /// Every key of the scenario, read from the first target.
    async fn final_state(
        &self,
        config: &ScenarioConfig,
    ) -> Result<Vec<(String, Versioned)>, RunnerError> {
        let target = &self.targets[0];
        let client = self.plain_client(target).await?;
        let keys: std::collections::BTreeSet<&String> =
            config.clients.iter().flat_map(|c| &c.keys).collect();
        let mut state = Vec::new();
        for key in keys {
            match client.get(key).await {
                Ok(Some(found)) => state.push((key.clone(), found)),
                Ok(None) => {}
                Err(e) => {
                    return Err(RunnerError::Unreachable {
                        target: target.clone(),
                        reason: format!("reading {key:?} at the end failed: {e}"),
                    });
                }
            }
        }
        Ok(state)
    }
}
