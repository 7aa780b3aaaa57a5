//! The main job: five clients hammer a server through injected faults, then a checker proves no
//! acknowledged write was lost or applied twice.
//!
//! Run it with `cargo run --example chaos_stack` (in-memory backend, nothing else to start).
//! Options: `--config PATH` (default `examples/chaos_stack.json`), `--storage SPEC` (default:
//! the scenario's `storage`, else `memory`), `--frontends N` (N servers over the one store,
//! clients spread over them; with `etcd:` each frontend has its own etcd client, as separate
//! kv-servers would), `--seed N` (replay a run), `--duration SECS`, `--json PATH` (write the
//! report as JSON), `--history PATH` (every operation, JSON lines), `--html PATH` (a
//! self-contained HTML report). The servers and clients can run with kv-server's and kvctl's security
//! options: `--auth-token-file PATH` (servers require its tokens, clients send the first),
//! `--tls-cert PATH --tls-key PATH [--tls-client-ca PATH]` (servers) with `--ca PATH
//! [--cert PATH --key PATH]` (clients). Watch the live progress on stderr, then the
//! per-client table and the verdict `linearizable: yes (N ops, K keys)`. Exit status: 0 passed,
//! 1 a violation, 2 the run could not be carried out (the reason is printed).

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use grpc_layers::auth::{Tokens, token_lines};
use kvcore::{
    client::tls_from_files,
    runner::{ScenarioConfig, ServerRunner},
    server::{ServerTls, TlsFiles},
    storage::StorageSpec,
};

/// Runs a chaos scenario against an in-process kv-server.
#[derive(Debug, Parser)]
struct Args {
    /// The scenario file.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chaos_stack.json"))]
    config: PathBuf,
    /// The storage backend (overrides the scenario's `storage`).
    #[arg(long)]
    storage: Option<StorageSpec>,
    /// How many frontends serve the store (overrides the scenario's `frontends`).
    #[arg(long)]
    frontends: Option<usize>,
    /// The seed (overrides the scenario's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the clients run, seconds (overrides the scenario).
    #[arg(long)]
    duration: Option<f64>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write every operation to this file as JSON lines.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Also write a self-contained HTML report (verdict, violations, rates, timeline).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Servers require a bearer token from this file; clients send its first token.
    #[arg(long, value_name = "PATH")]
    auth_token_file: Option<PathBuf>,
    /// Servers speak TLS with this certificate chain (PEM); needs --tls-key and --ca.
    #[arg(long, value_name = "PATH", requires_all = ["tls_key", "ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Servers require client certificates signed by this CA (mutual TLS; needs --cert).
    #[arg(long, value_name = "PATH", requires_all = ["tls_cert", "cert"])]
    tls_client_ca: Option<PathBuf>,
    /// Clients trust this CA (PEM) for the servers' certificate.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    ca: Option<PathBuf>,
    /// Clients present this certificate chain (PEM) for mutual TLS; needs --key.
    #[arg(long, value_name = "PATH", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PATH", requires = "cert")]
    key: Option<PathBuf>,
}

/// Applies the security flags to `runner`.
fn secure(runner: ServerRunner, args: &Args) -> Result<ServerRunner, Box<dyn std::error::Error>> {
    let mut runner = runner;
    if let Some(path) = &args.auth_token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --auth-token-file {}: {e}", path.display()))?;
        let tokens = Tokens::parse(&text)?;
        let first = token_lines(&text).next().unwrap_or_default().to_owned();
        runner = runner.auth(tokens, first);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let server = ServerTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        })?;
        let identity = args.cert.as_deref().zip(args.key.as_deref());
        let client = tls_from_files(args.ca.as_deref(), identity)?;
        runner = runner.tls(server, client);
    }
    Ok(runner)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("chaos_stack: {err}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenario; `Ok(passed)`, or why it could not run.
async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let mut config = ScenarioConfig::from_file(&args.config)?;
    let seed = args.seed.or(config.seed).unwrap_or_else(rand::random);
    config.seed = Some(seed);
    if let Some(duration) = args.duration {
        config.test_duration_seconds = duration;
    }
    config.frontends = args.frontends.or(config.frontends);
    config.validate()?;
    let spec = match (&args.storage, &config.storage) {
        (Some(spec), _) => spec.clone(),
        (None, Some(spec)) => spec.parse()?,
        (None, None) => StorageSpec::Memory,
    };
    let frontends = config.frontend_count();
    println!(
        "chaos_stack: {} clients for {}s on {spec} storage, {frontends} frontend(s) ({:?} workload)",
        config.clients.len(),
        config.test_duration_seconds,
        config.workload
    );
    let runner = if matches!(spec, StorageSpec::Etcd(_)) {
        let mut stores = Vec::new();
        for _ in 0..frontends {
            stores.push(spec.open().await?);
        }
        ServerRunner::with_frontends(stores, config, "127.0.0.1:0")?
    } else {
        // One in-process store shared by every frontend.
        ServerRunner::with_config(spec.open().await?, config, "127.0.0.1:0")
    };
    let mut runner = secure(runner, &args)?;
    if let Some(path) = &args.history {
        runner = runner.history(path);
    }
    if let Some(path) = &args.html {
        let mut replay =
            format!("cargo run --example chaos_stack -- --seed {seed} --storage {spec}");
        for (flag, value) in [
            ("--config", Some(args.config.display().to_string())),
            ("--duration", args.duration.map(|d| d.to_string())),
            ("--frontends", args.frontends.map(|f| f.to_string())),
        ] {
            if let Some(value) = value {
                replay.push_str(&format!(" {flag} {value}"));
            }
        }
        runner = runner.html(path, replay);
    }
    let report = runner.run().await?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    Ok(report.passed())
}
