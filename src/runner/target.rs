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
    client::{ClientOptions, GrpcClient},
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

    /// Suppresses live progress and the final printout (tests).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// A client of `target` without injected faults, for probing and the final reads.
    async fn plain_client(&self, target: &str) -> Result<GrpcClient, RunnerError> {
        let options = ClientOptions {
            call_timeout: Duration::from_secs(5),
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
        for client in &mut config.clients {
            for key in &mut client.keys {
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
        let driven = drive(&config, seed, &urls, &through, &stats, self.quiet).await;
        for proxy in proxies {
            proxy.stop().await?;
        }
        let mut driven = driven?;
        driven.scheduled = schedules.iter().map(|s| s.injected()).sum();
        let final_state = self.final_state(&config).await?;
        let (report, violations) = finish(&config, seed, &driven, final_state, &stats, self.quiet);
        write_outputs(&self.outputs, &driven, &report, &violations)?;
        Ok(report)
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
