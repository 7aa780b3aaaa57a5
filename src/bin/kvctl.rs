//! `kvctl`: a command-line client for kv-server.
//!
//! Flags only; each subcommand lives in `kvcore::cli`. Exit codes: 0 success, 1 the server
//! refused the call (not found, version mismatch, invalid argument), 2 usage error, 3 the
//! server could not be reached, did not answer within `--timeout`, or failed.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

// The same allocator as kv-server: `bench-server --bare` is the baseline kv-server is compared
// with, and the load generator allocates per call as a server does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use kvcore::cli::{
    self, Failure,
    bench::{BenchArgs, BenchServerArgs},
    chaos::ChaosArgs,
    kv,
};

/// kvctl: reads, writes and load-tests a kv-server (or etcd) from the command line.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The server: HOST:PORT (as kv-server prints it), http://HOST:PORT or https://HOST:PORT.
    /// HOST:PORT speaks TLS when --ca, --cert or --key is given.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:50051",
        env = "KV_ENDPOINT"
    )]
    endpoint: String,
    /// Seconds to wait for the server: connecting and each call (fractions allowed).
    #[arg(long, global = true, default_value = "5", value_parser = cli::positive_seconds)]
    timeout: Duration,
    /// Send `authorization: Bearer <token>` with the first token in this file (for a
    /// kv-server started with --auth-token-file).
    #[arg(long, global = true, env = "KV_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// TLS: trust the CA certificates in this PEM file (default: the system's roots).
    #[arg(long, global = true, value_name = "PATH")]
    ca: Option<PathBuf>,
    /// Mutual TLS: present this client certificate chain (PEM); needs --key.
    #[arg(long, global = true, value_name = "PATH", requires = "client_key")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    // (Its own id: `get KEY` and `put KEY` have an argument called key.)
    #[arg(
        long = "key",
        id = "client_key",
        global = true,
        value_name = "PATH",
        requires = "cert"
    )]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a key's value (stdout) and version (stderr).
    Get(kv::GetArgs),
    /// Writes a value if the key's version matches (0 = create).
    Put(kv::PutArgs),
    /// Load-generates against a server (or etcd) and reports throughput and latency.
    Bench(BenchArgs),
    /// Runs a chaos scenario against running kv.v1 servers (any language) and checks the
    /// history: exit 0 linearizable, 1 a violation, 2 usage, 3 a target unreachable.
    Chaos(ChaosArgs),
    /// Serves a baseline for `bench` to measure: `--bare` is kv.v1 in plain tonic with no
    /// layers and no storage, the limit of a tonic call on this machine.
    BenchServer(BenchServerArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("kvctl: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    // The client flags, resolved for the commands that talk to a server.
    let server = || -> Result<cli::Server, Failure> {
        let identity = args.cert.as_deref().zip(args.key.as_deref());
        let tls = cli::tls(args.ca.as_deref(), identity)?;
        Ok(cli::Server {
            url: cli::endpoint_url(&args.endpoint, tls.is_some())?,
            timeout: args.timeout,
            token: args.token_file.as_deref().map(cli::bearer).transpose()?,
            tls,
        })
    };
    match args.command {
        Command::Get(get) => kv::get(&server()?, get).await,
        Command::Put(put) => kv::put(&server()?, put).await,
        Command::Bench(bench) => cli::bench::run(&server()?, bench).await,
        Command::Chaos(chaos) => cli::chaos::run(&server()?, chaos).await,
        Command::BenchServer(serve) => cli::bench::serve(serve).await,
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
