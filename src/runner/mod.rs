//! `ServerRunner`: runs a chaos scenario against a real server and proves the run was correct.
//!
//! It starts the server (with the server-side fault layer), spawns the configured clients (each
//! with its own client-side fault layer), records every operation into a [`History`], stops on
//! the timer or Ctrl+C, and checks the history: per key against the versioned-register model
//! ([`checker`]) and, for the counter workload, the exact invariant final value == final
//! version == acknowledged increments. All randomness comes from one seed, printed in the
//! report, so a failing run can be replayed.

pub mod checker;
pub mod config;
pub mod export;
pub mod history;
mod html;
pub mod proxy;
pub mod report;
mod target;
mod workload;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use grpc_layers::{
    MethodFilter,
    auth::Tokens,
    fault::{FaultConfig, FaultStats},
};
use tokio::{net::TcpListener, sync::oneshot, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::transport::ClientTlsConfig;

pub use config::{ClientConfig, ConfigError, Phase, ScenarioConfig, Workload};
pub use history::{History, Op, OpKind, PutResult};
pub use report::{ClientReport, RunReport};
pub use target::TargetRunner;

use crate::{
    ServeError, ServerOptions,
    client::{ClientOptions, ClientStack, GrpcClient, default_retry_policy},
    server::{KV_SERVICE, ServerTls},
    storage::{Storage, StorageError},
    validate::PUT_PATH,
};

/// Why a run could not be carried out (a violation is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The scenario is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed.
    #[error("server failed: {0}")]
    Serve(#[from] ServeError),
    /// The store already holds keys the scenario writes: its checks assume they start absent.
    #[error(
        "the store already holds {count} of the scenario's keys (first: {first:?}); the checker \
         needs them absent at the start: use a fresh store (a new file or database path)"
    )]
    NotEmpty {
        /// How many of the scenario's keys exist.
        count: usize,
        /// One of them.
        first: String,
    },
    /// A target server could not be reached, or does not answer as a kv.v1 server.
    #[error("target {target} cannot be reached: {reason}")]
    Unreachable {
        /// The target's URL.
        target: String,
        /// Why.
        reason: String,
    },
    /// A client could not connect, or the store could not be read at the end.
    #[error("{0}")]
    Other(String),
}

impl From<StorageError> for RunnerError {
    fn from(err: StorageError) -> Self {
        RunnerError::Other(format!("reading the final state failed: {err}"))
    }
}

/// Runs one scenario; see the module docs.
pub struct ServerRunner {
    /// One store shared by every frontend, or one handle per frontend on a shared store.
    stores: Vec<Arc<dyn Storage>>,
    config: ScenarioConfig,
    addr: String,
    quiet: bool,
    security: Security,
    outputs: Outputs,
}

/// Bearer tokens and TLS for the runner's servers, and what its clients present.
#[derive(Debug, Clone, Default)]
struct Security {
    tokens: Option<Tokens>,
    client_token: Option<String>,
    server_tls: Option<ServerTls>,
    client_tls: Option<ClientTlsConfig>,
}

impl std::fmt::Debug for ServerRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRunner")
            .field("config", &self.config)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Derives an independent seed for stream `n` (SplitMix64 step), so clients don't share one.
pub(crate) fn derive_seed(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl ServerRunner {
    /// A runner over `storage` with the scenario in the JSON file `config`, serving on `addr`
    /// (`127.0.0.1:0` picks a free port).
    pub fn new(
        storage: impl Storage,
        config: impl AsRef<Path>,
        addr: &str,
    ) -> Result<Self, RunnerError> {
        let config = ScenarioConfig::from_file(config)?;
        Ok(Self::with_config(Arc::new(storage), config, addr))
    }

    /// A runner from an already parsed scenario.
    pub fn with_config(storage: Arc<dyn Storage>, config: ScenarioConfig, addr: &str) -> Self {
        Self {
            stores: vec![storage],
            config,
            addr: addr.to_owned(),
            quiet: false,
            security: Security::default(),
            outputs: Outputs::default(),
        }
    }

    /// A runner whose frontends each serve from their own handle on one shared store (etcd:
    /// one `EtcdStorage::open` per frontend, as separate kv-server processes would), one handle
    /// per frontend the scenario asks for. The first frontend listens on `addr`, the others on
    /// free ports of the same host.
    pub fn with_frontends(
        stores: Vec<Arc<dyn Storage>>,
        config: ScenarioConfig,
        addr: &str,
    ) -> Result<Self, RunnerError> {
        if stores.len() != config.frontend_count() {
            return Err(RunnerError::Other(format!(
                "{} store handles for {} frontends: give one per frontend",
                stores.len(),
                config.frontend_count()
            )));
        }
        Ok(Self {
            stores,
            config,
            addr: addr.to_owned(),
            quiet: false,
            security: Security::default(),
            outputs: Outputs::default(),
        })
    }

    /// The servers require a bearer token from `tokens`; the clients send `client_token`.
    pub fn auth(mut self, tokens: Tokens, client_token: impl Into<String>) -> Self {
        self.security.tokens = Some(tokens);
        self.security.client_token = Some(client_token.into());
        self
    }

    /// The servers speak TLS with `server` (mutual TLS if it names a client CA); the clients
    /// connect with `client` (the CA to trust, and their certificate for mutual TLS).
    pub fn tls(mut self, server: ServerTls, client: ClientTlsConfig) -> Self {
        self.security.server_tls = Some(server);
        self.security.client_tls = Some(client);
        self
    }

    /// Also writes every operation to `path` as JSON lines (see [`export`]).
    pub fn history(mut self, path: impl Into<PathBuf>) -> Self {
        self.outputs.history = Some(path.into());
        self
    }

    /// Also writes a self-contained HTML report to `path` (verdict, violations, rates over
    /// time and a per-key timeline; README, "Testing your own server"); `replay` is the
    /// command that reruns this scenario, shown in it with the seed.
    pub fn html(mut self, path: impl Into<PathBuf>, replay: impl Into<String>) -> Self {
        self.outputs.html = Some((path.into(), replay.into()));
        self
    }

    /// Suppresses live progress and the final printout (tests).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// Refuses a store that already holds a key the scenario writes.
    async fn storage_is_fresh(&self, config: &ScenarioConfig) -> Result<(), RunnerError> {
        let keys: std::collections::BTreeSet<&String> =
            config.clients.iter().flat_map(|c| &c.keys).collect();
        let mut present = Vec::new();
        for key in keys {
            match self.stores[0].get(key).await {
                Ok(_) => present.push(key.clone()),
                Err(StorageError::NotFound) => {}
                Err(e) => return Err(RunnerError::Other(format!("reading {key:?} failed: {e}"))),
            }
        }
        match present.first() {
            None => Ok(()),
            Some(first) => Err(RunnerError::NotEmpty {
                count: present.len(),
                first: first.clone(),
            }),
        }
    }

    /// Runs the scenario to the end and returns the report.
    pub async fn run(self) -> Result<RunReport, RunnerError> {
        self.config.validate()?;
        self.storage_is_fresh(&self.config).await?;
        let config = self.config;
        let seed = config.seed.unwrap_or_else(rand::random);
        let frontends = config.frontend_count();
        let mut urls = Vec::new();
        let mut server_stats = Vec::new();
        let mut servers = Vec::new();
        let mut stops = Vec::new();
        for f in 0..frontends {
            let addr = if f == 0 {
                self.addr.clone()
            } else {
                self.addr
                    .parse::<std::net::SocketAddr>()
                    .map_or_else(|_| "127.0.0.1:0".to_owned(), |a| format!("{}:0", a.ip()))
            };
            let listener = TcpListener::bind(&addr)
                .await
                .map_err(|source| RunnerError::Bind { addr, source })?;
            let scheme = match self.security.server_tls {
                Some(_) => "https",
                None => "http",
            };
            urls.push(format!(
                "{scheme}://{}",
                listener
                    .local_addr()
                    .map_err(|e| RunnerError::Other(e.to_string()))?
            ));
            // Server packet loss drops Put answers after the write is applied.
            let fault_seed = if f == 0 { 0 } else { 3000 + f as u64 };
            let server_faults = FaultConfig::new(derive_seed(seed, fault_seed))
                .drop_responses(config.server_packet_loss_rate)
                .methods(MethodFilter::only([PUT_PATH]));
            let mut options = ServerOptions::default()
                .faults(server_faults)
                .map_err(|e| ConfigError::Invalid {
                    field: "server_packet_loss_rate".into(),
                    reason: e.to_string(),
                })?;
            if let Some(tokens) = &self.security.tokens {
                options = options.auth(tokens.clone());
            }
            if let Some(tls) = &self.security.server_tls {
                options = options.tls(tls.clone());
            }
            server_stats.push(options.fault_stats());
            let (stop_server, server_stopped) = oneshot::channel::<()>();
            let store = Arc::clone(&self.stores[f % self.stores.len()]);
            servers.push(tokio::spawn(crate::serve(
                listener,
                store,
                options,
                async {
                    let _ = server_stopped.await;
                },
            )));
            stops.push(stop_server);
        }

        let mut clients = ClientSide {
            token: self.security.client_token.clone(),
            tls: self.security.client_tls.clone(),
        };
        // A fault schedule is applied by a proxy in front of each frontend.
        let mut proxies = Vec::new();
        let mut schedules = Vec::new();
        if !config.schedule.is_empty() {
            for (f, url) in urls.iter_mut().enumerate() {
                let schedule = proxy::Schedule::new(
                    config.schedule.clone(),
                    derive_seed(seed, 4000 + f as u64),
                );
                let proxy = proxy::FaultProxy::start_with_schedule(
                    url,
                    clients.tls.as_ref(),
                    FaultConfig::new(0),
                    Some(Arc::clone(&schedule)),
                )
                .await?;
                *url = proxy.url();
                proxies.push(proxy);
                schedules.push(schedule);
            }
            clients.tls = None; // the proxies speak plaintext on loopback
        }
        let driven = drive(
            &config,
            seed,
            &urls,
            &clients,
            &server_stats,
            &schedules,
            self.quiet,
        )
        .await;
        for proxy in proxies {
            proxy.stop().await?;
        }
        for stop in stops {
            let _ = stop.send(());
        }
        for server in servers {
            server
                .await
                .map_err(|e| RunnerError::Other(format!("server task failed: {e}")))??;
        }
        let driven = driven?;
        let final_state = self.stores[0].entries().await?;
        let (report, violations) = finish(
            &config,
            seed,
            &driven,
            final_state,
            &server_stats,
            self.quiet,
        );
        write_outputs(&self.outputs, &driven, &report, &violations);
        Ok(report)
    }
}

/// What the runner's clients present to the servers.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientSide {
    pub(crate) token: Option<String>,
    pub(crate) tls: Option<ClientTlsConfig>,
}

/// What the clients did.
pub(crate) struct Driven {
    ops: Vec<Op>,
    acked: workload::Acked,
    clients: Vec<GrpcClient>,
    stacks: Vec<ClientStack>,
    elapsed: Duration,
    samples: Vec<FaultSample>,
    /// Calls the fault schedule held or dropped.
    scheduled: u64,
}

/// Runs the scenario's clients against `urls` (client `i` prefers `urls[i % n]`) until the
/// duration or the operation budget is spent, recording every operation.
pub(crate) async fn drive(
    config: &ScenarioConfig,
    seed: u64,
    urls: &[String],
    side: &ClientSide,
    server_stats: &[FaultStats],
    schedules: &[Arc<proxy::Schedule>],
    quiet: bool,
) -> Result<Driven, RunnerError> {
    let frontends = urls.len();
    let cancel = CancellationToken::new();
    let history = Arc::new(History::new());
    let mut clients = Vec::new();
    let mut stacks = Vec::new();
    for (i, client_config) in config.clients.iter().enumerate() {
        let n = i as u64 + 1;
        let retry = default_retry_policy()
            .max_attempts(config.max_retries_server_packet_loss + 1)
            .seed(derive_seed(seed, 1000 + n));
        let faults = FaultConfig::new(derive_seed(seed, n))
            .drop_requests(client_config.client_packet_loss_rate)
            .methods(MethodFilter::service(KV_SERVICE));
        let stack = ClientStack::default()
            .retry(retry)
            .faults(faults)
            .map_err(|e| ConfigError::Invalid {
                field: format!("clients[{i}].client_packet_loss_rate"),
                reason: e.to_string(),
            })?;
        let options = ClientOptions {
            stack: stack.clone(),
            call_timeout: Duration::from_secs(10),
            cancel: cancel.clone(),
            token: side.token.clone(),
            tls: side.tls.clone(),
        };
        let client = if frontends == 1 {
            GrpcClient::connect(&urls[0], options).await
        } else {
            // Its own frontend first, then the others in order.
            let mut order = urls.to_vec();
            order.rotate_left(i % frontends);
            GrpcClient::connect_any(&order, options)
        }
        .map_err(|e| RunnerError::Other(e.to_string()))?;
        stacks.push(stack);
        clients.push(client);
    }

    let duration = Duration::from_secs_f64(config.test_duration_seconds);
    // The schedules count from the same instant as the history and the duration.
    let start = Instant::now();
    for schedule in schedules {
        schedule.start(start.into_std());
    }
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let job = workload::ClientJob {
            index: i,
            client: client.clone(),
            config: config.clients[i].clone(),
            scenario: config.clone(),
            seed: derive_seed(seed, 2000 + i as u64),
            history: Arc::clone(&history),
            start,
        };
        tasks.push(tokio::spawn(job.run()));
    }
    let all_done = {
        let cancel = cancel.clone();
        async move {
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await);
            }
            cancel.cancel();
            results
        }
    };
    let progress = progress(
        &clients,
        &stacks,
        server_stats,
        start,
        duration,
        quiet,
        &cancel,
    );
    let watchdog = async {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = tokio::signal::ctrl_c() => {
                if !quiet { eprintln!("interrupted: stopping clients"); }
            }
            () = cancel.cancelled() => {}
        }
        cancel.cancel();
    };
    let (results, (), samples) = tokio::join!(all_done, watchdog, progress);
    let mut acked = workload::Acked::default();
    for result in results {
        let result = result.map_err(|e| RunnerError::Other(format!("client task failed: {e}")))?;
        acked.merge(result);
    }
    Ok(Driven {
        ops: history.ops(),
        acked,
        clients,
        stacks,
        elapsed: start.elapsed(),
        samples,
        // Every client has finished: nothing passes the proxies any more.
        scheduled: schedules.iter().map(|s| s.injected()).sum(),
    })
}

/// Writes the history as JSON lines to `path` (see [`export`]).
pub(crate) fn write_history_file(path: &Path, ops: &[Op]) -> Result<(), RunnerError> {
    let failed = |e: std::io::Error| {
        RunnerError::Other(format!(
            "cannot write the history to {}: {e}",
            path.display()
        ))
    };
    let file = std::fs::File::create(path).map_err(failed)?;
    export::write_history(ops, std::io::BufWriter::new(file)).map_err(failed)
}

/// Checks the history against the final state and the scenario's invariants, and builds (and
/// unless `quiet` prints) the report.
pub(crate) fn finish(
    config: &ScenarioConfig,
    seed: u64,
    driven: &Driven,
    final_state: Vec<(String, crate::storage::Versioned)>,
    server_stats: &[FaultStats],
    quiet: bool,
) -> (RunReport, Vec<checker::Violation>) {
    let Driven {
        ops,
        acked,
        clients,
        stacks,
        elapsed,
        ..
    } = driven;
    let verdict = checker::check(ops, &final_state);
    let invariant_violations = match config.workload {
        Workload::Counter => acked.check_counters(&final_state),
        Workload::Mixed => Vec::new(),
    };
    let report = RunReport {
        seed,
        duration_secs: elapsed.as_secs_f64(),
        clients: config
            .clients
            .iter()
            .zip(clients)
            .enumerate()
            .map(|(i, (c, client))| workload::client_report(i, &c.name, client, ops))
            .collect(),
        server_requests_dropped: server_stats.iter().map(|s| s.requests_dropped()).sum(),
        server_responses_dropped: server_stats.iter().map(|s| s.responses_dropped()).sum(),
        client_requests_dropped: stacks
            .iter()
            .map(|s| s.fault_stats().requests_dropped())
            .sum(),
        checked_ops: verdict.ops,
        checked_keys: verdict.keys,
        violations: verdict.violations.iter().map(ToString::to_string).collect(),
        invariant_violations,
        schedule: config.schedule.clone(),
        scheduled_faults: driven.scheduled,
    };
    if !quiet {
        print_final_state(&final_state);
        println!("{report}");
    }
    (report, verdict.violations)
}

/// Writes the outputs a runner was asked for: the history and the HTML report. A file that
/// cannot be written is a warning on stderr: the run's verdict stands.
pub(crate) fn write_outputs(
    outputs: &Outputs,
    driven: &Driven,
    report: &RunReport,
    violations: &[checker::Violation],
) {
    if let Some(path) = &outputs.history
        && let Err(err) = write_history_file(path, &driven.ops)
    {
        eprintln!("warning: {err}");
    }
    if let Some((path, replay)) = &outputs.html {
        let page = html::render(report, &driven.ops, violations, &driven.samples, replay);
        if let Err(err) = std::fs::write(path, page) {
            eprintln!(
                "warning: cannot write the report to {}: {err}",
                path.display()
            );
        }
    }
}

/// Files a run writes besides its report.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outputs {
    pub(crate) history: Option<PathBuf>,
    /// The HTML report's path, and the command that replays the run (shown in it).
    pub(crate) html: Option<(PathBuf, String)>,
}

/// The faults injected by one second into a run (cumulative counts).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FaultSample {
    /// Seconds since the run started.
    pub(crate) at: f64,
    /// Answers the server side (faults or proxy) dropped so far.
    pub(crate) responses_dropped: u64,
    /// Requests the clients dropped so far.
    pub(crate) requests_dropped: u64,
}

/// Samples the fault counts once a second until the clients stop (for the HTML report), and
/// unless `quiet` prints live progress to stderr.
async fn progress(
    clients: &[GrpcClient],
    stacks: &[ClientStack],
    servers: &[FaultStats],
    start: Instant,
    duration: Duration,
    quiet: bool,
    cancel: &CancellationToken,
) -> Vec<FaultSample> {
    let mut samples = vec![FaultSample::default()];
    let mut last_ops = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return samples,
        }
        let elapsed = start.elapsed();
        let sample = FaultSample {
            at: elapsed.as_secs_f64(),
            responses_dropped: servers.iter().map(|s| s.responses_dropped()).sum(),
            requests_dropped: stacks
                .iter()
                .map(|s| s.fault_stats().requests_dropped())
                .sum(),
        };
        samples.push(sample);
        if quiet {
            continue;
        }
        let ops: u64 = clients.iter().map(|c| c.counters().ops).sum();
        let retries: u64 = clients.iter().map(|c| c.counters().network_retries).sum();
        let left = duration.saturating_sub(elapsed).as_secs_f64().ceil();
        eprintln!(
            "[{:>5.1}s] {ops} ops ({}/s), {retries} retries, faults: server {} responses dropped, clients {} requests dropped; {left}s left",
            elapsed.as_secs_f64(),
            ops - last_ops,
            sample.responses_dropped,
            sample.requests_dropped,
        );
        last_ops = ops;
    }
}

fn print_final_state(state: &[(String, crate::storage::Versioned)]) {
    const SHOWN: usize = 20;
    println!("final state ({} keys):", state.len());
    for (key, v) in state.iter().take(SHOWN) {
        let mut value = v.value.clone();
        if value.len() > 40 {
            let cut = (0..=40)
                .rev()
                .find(|&i| value.is_char_boundary(i))
                .unwrap_or(0);
            value.truncate(cut);
            value.push('…');
        }
        println!("  {key:?} = {value:?} @ v{}", v.version);
    }
    if state.len() > SHOWN {
        println!("  … and {} more", state.len() - SHOWN);
    }
}
