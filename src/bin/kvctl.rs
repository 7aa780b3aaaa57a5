//! `kvctl`: a command-line client for kv-server.
//!
//! Flags only; each subcommand lives in `kvcore::cli`. Exit codes: 0 success, 1 the server
//! refused the call (not found, version mismatch, invalid argument), 2 usage error, 3 the
//! server could not be reached, did not answer within `--timeout`, or failed.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use kvcore::cli::{self, Failure, bench::BenchArgs, kv};

/// kvctl: reads, writes and load-tests a kv-server (or etcd) from the command line.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The server: HOST:PORT (as kv-server prints it) or http://HOST:PORT.
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
    token_file: Option<std::path::PathBuf>,
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
    let url = cli::endpoint_url(&args.endpoint)?;
    let token = args.token_file.as_deref().map(cli::bearer).transpose()?;
    match args.command {
        Command::Get(get) => kv::get(&url, args.timeout, token.as_ref(), get).await,
        Command::Put(put) => kv::put(&url, args.timeout, token.as_ref(), put).await,
        Command::Bench(bench) => cli::bench::run(&url, args.timeout, token, bench).await,
    }
}
