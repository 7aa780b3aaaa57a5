//! `kvctl chaos`: a scenario's clients, with their faults, against running kv.v1 servers in
//! any language, through a faulting proxy per target; the history is checked at the end.
//!
//! Exit status: 0 the history is linearizable and the invariants hold, 1 a violation, 2 usage,
//! 3 a target cannot be reached (or does not answer as a kv.v1 server).

use std::{path::PathBuf, time::Duration};

use crate::{
    cli::{Failure, Server, positive_seconds},
    runner::{RunnerError, ScenarioConfig, TargetRunner},
};

/// The scenario `chaos_stack` runs by default, built in.
const DEFAULT_SCENARIO: &str = include_str!("../../examples/chaos_stack.json");

/// `kvctl chaos` flags. The global `--token-file`, `--ca`, `--cert` and `--key` apply to the
/// targets.
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// The servers under test, frontends of one store: URL[,URL...] (HOST:PORT, http:// or
    /// https://). Clients are spread over them round-robin.
    #[arg(long, value_delimiter = ',', required = true, value_name = "URL")]
    pub target: Vec<String>,
    /// The scenario (JSON, as for chaos_stack) [default: chaos_stack's built-in scenario].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The seed of every fault and workload decision (overrides the scenario's).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// How long the clients run, in seconds (overrides the scenario's).
    #[arg(long, value_name = "SECS", value_parser = positive_seconds)]
    pub duration: Option<Duration>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also write every operation to this file as JSON lines (format: README, "Testing your
    /// own server").
    #[arg(long, value_name = "PATH")]
    pub history: Option<PathBuf>,
    /// Also write a self-contained HTML report: the verdict, each violation, rates and faults
    /// over time, and a per-key timeline of every operation.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
}

/// Runs the scenario against the targets and prints the report.
pub async fn run(server: &Server, args: ChaosArgs) -> Result<(), Failure> {
    let mut config = match &args.config {
        Some(path) => ScenarioConfig::from_file(path).map_err(|e| Failure::Usage(e.to_string()))?,
        None => DEFAULT_SCENARIO
            .parse()
            .map_err(|e: crate::runner::ConfigError| Failure::Usage(e.to_string()))?,
    };
    // Decided here, so the report can show the command that replays this run.
    let seed = args.seed.or(config.seed).unwrap_or_else(rand::random);
    config.seed = Some(seed);
    if let Some(duration) = args.duration {
        config.test_duration_seconds = duration.as_secs_f64();
    }
    config
        .validate()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let targets = args
        .target
        .iter()
        .map(|t| crate::cli::endpoint_url(t, server.tls.is_some()))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "kvctl chaos: {} clients for {}s against {} ({:?} workload)",
        config.clients.len(),
        config.test_duration_seconds,
        targets.join(", "),
        config.workload
    );
    // Every output file is created now: a path that cannot be written is a usage error before
    // the run, not a lost verdict after it.
    for path in [&args.json, &args.history, &args.html]
        .into_iter()
        .flatten()
    {
        std::fs::File::create(path)
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    let config_duration = config.test_duration_seconds;
    let mut runner = TargetRunner::new(targets, config).timeout(server.timeout);
    if let Some(token) = &server.token {
        let token = token.to_str().unwrap_or_default();
        runner = runner.token(token.strip_prefix("Bearer ").unwrap_or(token));
    }
    if let Some(tls) = &server.tls {
        runner = runner.tls(tls.clone());
    }
    if let Some(path) = &args.history {
        runner = runner.history(path);
    }
    if let Some(path) = &args.html {
        let mut replay = format!(
            "kvctl chaos --target {} --seed {seed} --duration {}",
            args.target.join(","),
            config_duration
        );
        if let Some(config) = &args.config {
            replay.push_str(&format!(" --config {}", config.display()));
        }
        runner = runner.html(path, replay);
    }
    let report = runner.run().await.map_err(|e| match e {
        RunnerError::Config(e) => Failure::Usage(e.to_string()),
        other => Failure::Failed(other.to_string()),
    })?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("a report serializes");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("kvctl: warning: cannot write {}: {e}", path.display());
        }
    }
    for (what, path) in [("history", &args.history), ("HTML report", &args.html)] {
        if let Some(path) = path {
            println!("{what} written to {}", path.display());
        }
    }
    if report.passed() {
        Ok(())
    } else {
        Err(Failure::Refused(report.verdict()))
    }
}
