//! `kv-server`: serves `kv.v1.KvService` (plus health and reflection) over gRPC.
//!
//! Flags only; all behaviour lives in the library (`kvcore::serve`).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, builder::RangedU64ValueParser};
use grpc_layers::{MethodFilter, auth::Tokens, fault::FaultConfig};
use kvcore::{
    ServerOptions,
    server::{KV_SERVICE, Limits, ServerTls, TlsFiles, serve_metrics},
    storage::StorageSpec,
};
use tokio::{net::TcpListener, sync::watch};

// glibc's malloc spends a measurable share of a busy server's CPU on the small buffers every
// gRPC call allocates on one worker thread and frees on another; mimalloc handles that pattern
// with thread-local free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kv-server: a versioned key-value gRPC server with optimistic concurrency control.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free port. Prints `listening on IP:PORT` when ready.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
    /// Storage backend: memory | file:PATH | redb:PATH | etcd:HOST:PORT[,HOST:PORT...], the
    /// last optionally followed by /PREFIX (its etcd keys start with PREFIX:, default kvcore:).
    #[arg(long, default_value = "memory")]
    storage: StorageSpec,
    /// Percent of requests dropped before KvService runs (the caller sees UNAVAILABLE).
    #[arg(long, default_value_t = 0.0, value_name = "PCT")]
    drop_request_rate: f64,
    /// Percent of responses dropped after KvService ran (the write happened; the caller sees
    /// UNAVAILABLE).
    #[arg(long, default_value_t = 0.0, value_name = "PCT")]
    drop_response_rate: f64,
    /// KvService methods to fault, comma-separated (default: all). Health and reflection are
    /// never faulted.
    #[arg(long, value_delimiter = ',', value_name = "Get,Put")]
    fault_methods: Vec<String>,
    /// Seed of the fault decisions; the same seed replays the same decision sequence
    /// (default: random, printed at start).
    #[arg(long, value_name = "N")]
    fault_seed: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics; port 0 picks a free port, printed as
    /// `metrics on IP:PORT` after the `listening on` line.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Require `authorization: Bearer <token>` on every KvService and reflection call, with one
    /// of the tokens in this file (one a line; blank lines and # comments skipped). Health
    /// stays open. SIGHUP re-reads the file; a bad new file is refused and the old tokens stay.
    #[arg(long, value_name = "PATH")]
    auth_token_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key. SIGHUP
    /// re-reads the certificate files; bad new files are refused and the old ones stay.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: require a client certificate signed by a CA in this PEM file (needs
    /// --tls-cert).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Largest request message read, in bytes; larger ones get RESOURCE_EXHAUSTED before
    /// being read [default: 1 KiB + 1 MiB + 63 KiB, every valid request fits].
    #[arg(long, value_name = "BYTES", value_parser = at_least_one())]
    max_message_bytes: Option<usize>,
    /// Calls one connection may have open at once (HTTP/2 streams) [default: 256].
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<u32>::new().range(1..))]
    max_concurrent_streams: Option<u32>,
    /// KvService calls worked on at once, all connections together; more are refused at once
    /// with RESOURCE_EXHAUSTED (load shedding). Health is never refused [default: 1024].
    #[arg(long, value_name = "N", value_parser = at_least_one())]
    max_in_flight: Option<usize>,
    /// Open connections; more are closed as soon as they are accepted [default: 4096].
    #[arg(long, value_name = "N", value_parser = at_least_one())]
    max_connections: Option<usize>,
    /// Longest a call may run, in seconds; a shorter grpc-timeout from the caller wins. Past
    /// it the call gets DEADLINE_EXCEEDED [default: 30].
    #[arg(long, value_name = "SECS", value_parser = kvcore::cli::positive_seconds)]
    request_timeout: Option<Duration>,
    /// Seconds between HTTP/2 keepalive pings to each client [default: 30].
    #[arg(long, value_name = "SECS", value_parser = kvcore::cli::positive_seconds)]
    keepalive_interval: Option<Duration>,
    /// Seconds a keepalive ping may go unanswered before the connection is closed
    /// [default: 10].
    #[arg(long, value_name = "SECS", value_parser = kvcore::cli::positive_seconds)]
    keepalive_timeout: Option<Duration>,
    /// Seconds a connection may stay open without a call before it is closed; this also
    /// ends connections that never finish the HTTP/2 preface [default: 300].
    #[arg(long, value_name = "SECS", value_parser = kvcore::cli::positive_seconds)]
    idle_timeout: Option<Duration>,
    /// Seconds a TLS handshake may take before the connection is dropped [default: 10].
    #[arg(long, value_name = "SECS", value_parser = kvcore::cli::positive_seconds)]
    handshake_timeout: Option<Duration>,
    /// Log format on stderr: text (colours only on a terminal) or json (one object a line,
    /// for log shippers). Levels come from RUST_LOG (default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// The limits the flags ask for, the defaults elsewhere.
fn limits(args: &Args) -> Limits {
    let default = Limits::default();
    Limits {
        max_message_bytes: args.max_message_bytes.unwrap_or(default.max_message_bytes),
        max_concurrent_streams: args
            .max_concurrent_streams
            .unwrap_or(default.max_concurrent_streams),
        max_in_flight: args.max_in_flight.unwrap_or(default.max_in_flight),
        max_connections: args.max_connections.unwrap_or(default.max_connections),
        request_timeout: args.request_timeout.unwrap_or(default.request_timeout),
        keepalive_interval: args
            .keepalive_interval
            .unwrap_or(default.keepalive_interval),
        keepalive_timeout: args.keepalive_timeout.unwrap_or(default.keepalive_timeout),
        idle_timeout: args.idle_timeout.unwrap_or(default.idle_timeout),
        handshake_timeout: args.handshake_timeout.unwrap_or(default.handshake_timeout),
    }
}

fn fault_config(args: &Args) -> Result<FaultConfig, String> {
    let methods = if args.fault_methods.is_empty() {
        MethodFilter::service(KV_SERVICE)
    } else {
        for method in &args.fault_methods {
            if !["Get", "Put"].contains(&method.as_str()) {
                return Err(format!(
                    "--fault-methods: unknown method {method:?} (expected Get, Put)"
                ));
            }
        }
        let paths = args
            .fault_methods
            .iter()
            .map(|m| format!("/{KV_SERVICE}/{m}"));
        MethodFilter::only(paths)
    };
    let seed = args.fault_seed.unwrap_or_else(rand::random);
    Ok(FaultConfig::new(seed)
        .drop_requests(args.drop_request_rate)
        .drop_responses(args.drop_response_rate)
        .methods(methods))
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kv-server: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let shutdown =
        kvcore::server::shutdown_signal().map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let faults = fault_config(&args)?;
    let mut options = ServerOptions::default()
        .limits(limits(&args))
        .faults(faults.clone())
        .map_err(|e| format!("invalid fault flags: {e}"))?;
    if args.metrics_listen.is_none() {
        // Nothing would read them.
        options = options.without_metrics();
    }
    let mut reloads = Reloads::default();
    if let Some(path) = &args.auth_token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --auth-token-file {}: {e}", path.display()))?;
        let tokens = Tokens::parse(&text)
            .map_err(|e| format!("--auth-token-file {}: {e}", path.display()))?;
        tracing::info!(tokens = tokens.len(), "bearer-token authentication on");
        reloads.tokens = Some((path.clone(), tokens.clone()));
        options = options.auth(tokens);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = ServerTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        })
        .map_err(|e| format!("TLS: {e}"))?;
        tracing::info!(mutual = tls.mutual(), "TLS on");
        reloads.tls = Some(tls.clone());
        options = options.tls(tls);
    }
    if reloads.tokens.is_some() || reloads.tls.is_some() {
        // Installed now, so a SIGHUP right after start reloads instead of killing the server.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        tokio::spawn(reloads.on_sighup(hangups));
    }
    let storage = args.storage.open().await?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, storage = %args.storage, "kv-server starting");
    if !faults.is_noop() {
        tracing::warn!(
            seed = faults.seed,
            drop_request_pct = faults.drop_request_pct,
            drop_response_pct = faults.drop_response_pct,
            "FAULT INJECTION IS ON: calls will fail on purpose; a testing tool, never for \
             production (replay with --fault-seed {})",
            faults.seed
        );
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut metrics_on = None;
    if let Some(metrics_addr) = &args.metrics_listen {
        let metrics_listener = TcpListener::bind(metrics_addr)
            .await
            .map_err(|e| format!("cannot listen on {metrics_addr} for metrics: {e}"))?;
        let metrics_addr = metrics_listener.local_addr()?;
        tracing::info!(%metrics_addr, "serving Prometheus metrics at /metrics");
        metrics_on = Some(metrics_addr);
        let mut stop = stop_rx.clone();
        tokio::spawn(serve_metrics(
            metrics_listener,
            options.metrics(),
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            },
        ));
    }
    kvcore::server::announce(&format!("listening on {addr}"));
    if let Some(metrics_addr) = metrics_on {
        kvcore::server::announce(&format!("metrics on {metrics_addr}"));
    }
    kvcore::serve(listener, storage, options, shutdown).await?;
    let _ = stop_tx.send(true);
    tracing::info!("kv-server stopped");
    Ok(())
}

/// What SIGHUP re-reads: the token file and the TLS files, whichever are in use.
#[derive(Default)]
struct Reloads {
    tokens: Option<(PathBuf, Tokens)>,
    tls: Option<ServerTls>,
}

impl Reloads {
    /// Re-reads everything on every SIGHUP. A file that cannot be read or holds nothing
    /// valid is refused with an error in the log, and what is in force stays.
    async fn on_sighup(self, mut hangups: tokio::signal::unix::Signal) {
        while hangups.recv().await.is_some() {
            if let Some((path, tokens)) = &self.tokens {
                let reloaded = std::fs::read_to_string(path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| tokens.replace_from(&text).map_err(|e| e.to_string()));
                match reloaded {
                    Ok(()) => tracing::info!(tokens = tokens.len(), "SIGHUP: token file reloaded"),
                    Err(err) => tracing::error!(
                        file = %path.display(),
                        %err,
                        "SIGHUP: token file refused; the tokens in force stay"
                    ),
                }
            }
            if let Some(tls) = &self.tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                    Err(err) => tracing::error!(
                        %err,
                        "SIGHUP: TLS files refused; the certificates in force stay"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Flag names, ids and requirements are consistent (clap checks only when asked).
    #[test]
    fn flags_are_consistent() {
        super::Args::command().debug_assert();
    }
}
