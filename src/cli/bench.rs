//! `kvctl bench`: its flags, and how a run is reported and judged.

use std::time::Duration;

use clap::builder::RangedU64ValueParser;

use crate::{
    bench::{BenchConfig, BenchReport, BenchTarget, BenchWorkload},
    cli::{Failure, Server, positive_seconds},
};

/// `kvctl bench` flags.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to load: kv://HOST:PORT[,HOST:PORT...] (this server, or several frontends;
    /// default: --endpoint) or etcd://HOST:PORT[,...] (etcd itself, the same operations as
    /// Txns). Connections are spread over the addresses round-robin.
    #[arg(long)]
    pub target: Option<BenchTarget>,
    /// What each call does.
    #[arg(long, value_enum, default_value = "get")]
    pub workload: BenchWorkload,
    /// Connections (at least 1).
    #[arg(long, default_value_t = 4, value_parser = at_least_one())]
    pub clients: usize,
    /// Calls in flight per connection (at least 1).
    #[arg(long, default_value_t = 16, value_parser = at_least_one())]
    pub concurrency: usize,
    /// Distinct keys, get and cas workloads (at least 1).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one())]
    pub keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Seconds to measure (fractions allowed); the run ends then whatever the server does.
    #[arg(long, default_value = "10", value_parser = positive_seconds)]
    pub duration: Duration,
    /// Seconds to run before measuring (connections warm, caches filled; 0 for none). Its
    /// calls are not counted; the writes among them are reported as warmup_ops.
    #[arg(long, default_value = "1", value_parser = seconds)]
    pub warmup: Duration,
    /// Open loop at this many calls per second over all connections (wrk2-style): calls are
    /// sent on schedule, and each latency runs from the call's intended start, so a stalling
    /// server is charged for the calls it delayed. Default: closed loop, as fast as answers
    /// come back. The calls in flight are still capped at --clients x --concurrency.
    #[arg(long, value_name = "R", value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Prefix of every key the run touches (put adds a random run id after it).
    #[arg(long, default_value = "bench-")]
    pub key_prefix: String,
    /// Print one JSON object instead of text (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// etcd target: serializable (member-local, possibly stale) reads instead of linearizable.
    #[arg(long)]
    pub serializable: bool,
    /// kv target: call through GrpcClient and its layers (retry, metrics, request ids,
    /// deadlines), as an application does, instead of bare gRPC calls: shows what the client
    /// stack costs.
    #[arg(long)]
    pub stack: bool,
}

fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// Parses `--warmup`: seconds, 0 or more (at most a day), fractions allowed.
fn seconds(arg: &str) -> Result<Duration, String> {
    match arg.parse::<f64>().map(Duration::try_from_secs_f64) {
        Ok(Ok(duration)) if duration <= Duration::from_secs(86_400) => Ok(duration),
        _ => Err(format!(
            "expected a number of seconds, 0 or more (at most 86400), got {arg}"
        )),
    }
}

/// Parses `--rate`: calls per second above 0, from 0.01 to 10⁹.
fn positive_rate(arg: &str) -> Result<f64, String> {
    match arg.parse::<f64>() {
        Ok(rate) if (0.01..=1e9).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "expected calls per second above 0 (0.01 to 1e9), got {arg}"
        )),
    }
}

/// Runs the benchmark and prints its report. Fails (exit 3) when most of the run failed (see
/// [`BenchReport::mostly_failed`]), after printing the report and the top causes.
pub async fn run(server: &Server, args: BenchArgs) -> Result<(), Failure> {
    let mut target = args
        .target
        .unwrap_or_else(|| BenchTarget::Kv(vec![server.url.clone()]));
    if args.stack && matches!(target, BenchTarget::Etcd(_)) {
        return Err(Failure::Usage(
            "--stack measures this project's client stack: give a kv:// target".into(),
        ));
    }
    if let (BenchTarget::Kv(urls), Some(_)) = (&mut target, &server.tls) {
        // TLS options were given: `kv://HOST:PORT` targets speak TLS too.
        for url in urls {
            if let Some(authority) = url.strip_prefix("http://") {
                *url = format!("https://{authority}");
            }
        }
    }
    let config = BenchConfig {
        target,
        workload: args.workload,
        clients: args.clients,
        concurrency: args.concurrency,
        keys: args.keys,
        value_size: args.value_size,
        duration: args.duration,
        warmup: args.warmup,
        rate: args.rate,
        key_prefix: args.key_prefix,
        serializable: args.serializable,
        call_timeout: server.timeout,
        token: server.token.clone(),
        tls: server.tls.clone(),
        stack: args.stack,
        progress: args.warmup + args.duration > Duration::from_secs(2),
    };
    let report = crate::bench::run(config)
        .await
        .map_err(|e| Failure::Failed(crate::error::with_causes(e.as_ref())))?;
    if args.json {
        let json = serde_json::to_string(&report).expect("a report serializes");
        println!("{json}");
    } else {
        let schedule = match report.rate {
            Some(rate) => format!(" (open loop at {rate} calls/s)"),
            None => String::new(),
        };
        println!(
            "{:.0} ops/s{schedule}, p50 {} us, p99 {} us, p99.9 {} us, {} errors, {} conflicts, \
             {} unfinished ({} ops in {:.1} s)",
            report.ops_per_sec,
            report.p50_us,
            report.p99_us,
            report.p999_us,
            report.errors,
            report.conflicts,
            report.unfinished,
            report.ops,
            report.seconds
        );
    }
    if report.errors > 0 {
        eprintln!("{}", causes(&report));
    }
    if report.mostly_failed() {
        return Err(Failure::Failed(format!(
            "most of the run failed: {} errors, {} cut off unanswered, {} answered, the last \
             answer {:.1} s into {:.1} s",
            report.errors,
            report.unfinished,
            report.ops + report.conflicts,
            report.last_answer_secs,
            report.seconds
        )));
    }
    Ok(())
}

/// The errors by code and the top causes, one line each.
fn causes(report: &BenchReport) -> String {
    let by_code: Vec<String> = report
        .errors_by_code
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    let mut text = format!("errors by code: {}", by_code.join(", "));
    for cause in &report.top_errors {
        text.push_str(&format!(
            "\n  {} x {}: {}",
            cause.count, cause.code, cause.message
        ));
    }
    text
}

/// `kvctl bench-server` flags.
#[derive(Debug, clap::Args)]
pub struct BenchServerArgs {
    /// Serve the bare baseline: kv.v1 in plain tonic, no layers and no storage (Get answers
    /// any key at version 1, Put answers version + 1). Required: the only kind of bench server
    /// so far.
    #[arg(long, required = true)]
    pub bare: bool,
    /// Address to listen on; port 0 picks a free port. Prints `listening on IP:PORT` when ready.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Bytes of the value every Get answers with (as a store holding `kvctl bench` values of
    /// this `--value-size` would).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
}

/// Serves the bare baseline until SIGINT or SIGTERM.
pub async fn serve(args: BenchServerArgs) -> Result<(), Failure> {
    let failed = |what: &str, e: &dyn std::error::Error| {
        Failure::Failed(format!("{what}: {}", crate::error::with_causes(e)))
    };
    let shutdown =
        crate::server::shutdown_signal().map_err(|e| failed("cannot handle SIGTERM", &e))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| failed(&format!("cannot listen on {}", args.listen), &e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| failed("cannot read the address bound", &e))?;
    crate::server::announce(&format!("listening on {addr}"));
    crate::bench::bare::serve_bare(listener, args.value_size, shutdown)
        .await
        .map_err(|e| failed("serving failed", &e))
}
