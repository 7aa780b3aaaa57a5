//! `kvctl`: a command-line client for kv-server.
//!
//! Exit codes: 0 success, 1 the server refused the call (not found, version mismatch, invalid
//! argument), 2 usage error, 3 the server could not be reached or failed.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use kvcore::{
    bench::{BenchConfig, BenchTarget, BenchWorkload},
    error::version_mismatch,
    proto::{GetRequest, PutRequest, kv_service_client::KvServiceClient},
};
use tonic::{Code, Status, transport::Channel};

/// Talks to a kv-server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:50051",
        env = "KV_ENDPOINT"
    )]
    endpoint: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a key's value and version.
    Get {
        /// The key to read.
        key: String,
    },
    /// Writes a value if the key's version matches (0 = create).
    Put {
        /// The key to write.
        key: String,
        /// The new value.
        value: String,
        /// The version the key must have now; 0 creates the key.
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
    /// Load-generates against a server and reports throughput and latency.
    Bench(BenchArgs),
}

/// `kvctl bench` flags.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// What to load: kv://HOST:PORT[,HOST:PORT...] (this server, or several frontends;
    /// default: --endpoint) or etcd://HOST:PORT[,...] (etcd itself, the same operations as
    /// Txns). Connections are spread over the addresses round-robin.
    #[arg(long)]
    target: Option<BenchTarget>,
    /// What each call does.
    #[arg(long, value_enum, default_value = "get")]
    workload: BenchWorkload,
    /// Connections.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Distinct keys (get and cas workloads).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Seconds to run (fractions allowed).
    #[arg(long, default_value = "10", value_parser = positive_seconds)]
    duration: Duration,
    /// Prefix of every key the run touches (put adds a random run id after it).
    #[arg(long, default_value = "bench-")]
    key_prefix: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// etcd target: serializable (member-local, possibly stale) reads instead of linearizable.
    #[arg(long)]
    serializable: bool,
}

fn positive_seconds(arg: &str) -> Result<Duration, String> {
    let seconds: f64 = arg.parse().map_err(|e| format!("{e}"))?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("expected a positive number of seconds, got {arg}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(msg)) => {
            eprintln!("kvctl: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Failed(msg)) => {
            eprintln!("kvctl: {msg}");
            ExitCode::from(3)
        }
    }
}

enum Failure {
    Refused(String),
    Failed(String),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        if let Some(m) = version_mismatch(&status) {
            let (expected, actual) = (m.expected_version, m.actual_version);
            return Failure::Refused(match status.code() {
                Code::NotFound => format!("key not found (expected version {expected})"),
                Code::AlreadyExists => format!("key already exists at version {actual}"),
                _ => format!("version mismatch: expected {expected}, actual {actual}"),
            });
        }
        let msg = status.message().to_owned();
        match status.code() {
            Code::NotFound => Failure::Refused("key not found".into()),
            Code::InvalidArgument => Failure::Refused(msg),
            code => Failure::Failed(format!("{code:?}: {msg}")),
        }
    }
}

async fn bench(endpoint: &str, args: BenchArgs) -> Result<(), Failure> {
    let config = BenchConfig {
        target: args
            .target
            .unwrap_or_else(|| BenchTarget::Kv(vec![endpoint.to_owned()])),
        workload: args.workload,
        clients: args.clients,
        concurrency: args.concurrency,
        keys: args.keys,
        value_size: args.value_size,
        duration: args.duration,
        key_prefix: args.key_prefix,
        serializable: args.serializable,
    };
    let report = kvcore::bench::run(config)
        .await
        .map_err(|e| Failure::Failed(e.to_string()))?;
    if args.json {
        let json = serde_json::to_string(&report).expect("a report serializes");
        println!("{json}");
    } else {
        println!(
            "{:.0} ops/s, p50 {} us, p99 {} us, {} errors, {} conflicts ({} ops in {:.1} s)",
            report.ops_per_sec,
            report.p50_us,
            report.p99_us,
            report.errors,
            report.conflicts,
            report.ops,
            report.seconds
        );
    }
    Ok(())
}

async fn connect(endpoint: &str) -> Result<KvServiceClient<Channel>, Failure> {
    let channel = Channel::from_shared(endpoint.to_owned())
        .map_err(|e| Failure::Failed(format!("invalid endpoint {endpoint:?}: {e}")))?
        .connect()
        .await
        .map_err(|e| Failure::Failed(format!("cannot connect to {endpoint}: {e}")))?;
    Ok(KvServiceClient::new(channel))
}

async fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        Command::Get { key } => {
            let mut client = connect(&args.endpoint).await?;
            let got = client.get(GetRequest { key }).await?.into_inner();
            println!("{}", got.value);
            eprintln!("version {}", got.version);
        }
        Command::Put {
            key,
            value,
            version,
        } => {
            let mut client = connect(&args.endpoint).await?;
            let request_id = rand::random::<[u8; 16]>().to_vec();
            let put = PutRequest {
                key,
                value,
                version,
                request_id,
            };
            let written = client.put(put).await?.into_inner();
            println!("written: version {}", written.version);
        }
        Command::Bench(bench_args) => bench(&args.endpoint, bench_args).await?,
    }
    Ok(())
}
