//! `kvctl bench`: a load generator for a KvService server or etcd, closed- or open-loop.
//!
//! Each of `clients` connections runs `concurrency` workers that issue one operation at a time
//! for `warmup` (not counted), then for `duration`, recording every operation's latency in an
//! HdrHistogram. The report gives throughput, latency percentiles, errors and the client's own
//! CPU per operation. Version conflicts in the `cas` workload are the workload working as
//! intended, so they are counted apart from errors.
//!
//! Closed loop (the default), each worker issues its next call when the last one returns. With
//! a `rate`, the loop is open, as in wrk2: the workers share a schedule of intended start times
//! at that rate, and a call that is late because the previous call in its slot had not returned
//! has its latency counted from when it was due, so a server that stalls is charged for the
//! calls it held up (coordinated omission) instead of being sent fewer. Calls still unsent at
//! the end are counted (`unsent`).
//!
//! Both targets run the same loop and are measured the same way: a `Target` only knows how to
//! do one operation of each workload. On etcd the operations keep our
//! semantics, so the numbers compare like for like: a create is a transaction
//! `version(key) == 0 → put`, and a cas reads the key, then puts it in a transaction comparing
//! etcd's per-key `version` (its count of writes since creation, as ours) with the one read.

use std::{
    collections::{BTreeMap, HashMap},
    error::Error,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

pub mod bare;
mod etcd;
mod kv;
mod stack;

use kv::KvTarget;

type BoxError = Box<dyn Error + Send + Sync>;

/// What each call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWorkload {
    /// Reads of preloaded keys.
    Get,
    /// Creates of fresh keys (version 0): raw write throughput.
    Put,
    /// Read-modify-write of shared keys: a Get, then a Put naming the version read.
    Cas,
    /// Each call in flight owns a key and writes it again with the version it got back, with a
    /// request id, as `GrpcClient` does: the steady state of optimistic concurrency.
    Update,
}

/// The system under load, parsed from `kv://HOST:PORT[,HOST:PORT…]` or
/// `etcd://HOST:PORT[,HOST:PORT…]`. With several addresses (frontends of one store, members of
/// one cluster), connection `i` goes to address `i mod n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchTarget {
    /// KvService servers at these URLs, e.g. `http://127.0.0.1:50051`.
    Kv(Vec<String>),
    /// etcd members at `HOST:PORT`.
    Etcd(Vec<String>),
}

impl FromStr for BenchTarget {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let addrs = |list: &str| -> Result<Vec<String>, String> {
            list.split(',')
                .map(|addr| match addr {
                    "" => Err(format!("target {spec:?} has an empty HOST:PORT")),
                    addr => Ok(addr.to_owned()),
                })
                .collect()
        };
        match spec.split_once("://") {
            Some((_, "")) => Err(format!("target {spec:?} has no HOST:PORT")),
            Some(("kv", list)) => Ok(Self::Kv(
                addrs(list)?
                    .iter()
                    .map(|a| crate::client::endpoint_url(a, false))
                    .collect::<Result<_, _>>()?,
            )),
            Some(("etcd", list)) => Ok(Self::Etcd(addrs(list)?)),
            _ => Err(format!(
                "unknown target {spec:?} (expected kv://HOST:PORT or etcd://HOST:PORT)"
            )),
        }
    }
}

/// A benchmark run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The system under load.
    pub target: BenchTarget,
    /// What each call does.
    pub workload: BenchWorkload,
    /// Connections.
    pub clients: usize,
    /// Calls in flight per connection.
    pub concurrency: usize,
    /// Distinct keys (get and cas workloads).
    pub keys: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// How long to measure.
    pub duration: Duration,
    /// How long to run before measuring (calls started then are not counted, but their writes
    /// are in the store: see [`BenchReport::warmup_ops`]).
    pub warmup: Duration,
    /// Open loop: calls per second over all connections, each call's latency measured from
    /// its intended start. `None`: closed loop, as fast as the answers come.
    pub rate: Option<f64>,
    /// Prefix of every key the run touches: get and cas use `{prefix}{n}`, put uses
    /// `{prefix}{random run id}-{n}` so that every run creates keys nobody wrote before, and
    /// update `{prefix}slot{n}`, one key per call in flight (a key left by an earlier run is
    /// taken up at its version after one conflict).
    pub key_prefix: String,
    /// etcd target only: reads are serializable (member-local, possibly stale) instead of
    /// linearizable.
    pub serializable: bool,
    /// The longest one call (or connect) may take; a call past it counts as an error. The run
    /// ends at `duration` whatever the target does.
    pub call_timeout: Duration,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// The `authorization` value sent with every call to a kv target (`Bearer <token>`).
    pub token: Option<crate::client::Bearer>,
    /// TLS settings for `https://` kv targets (`None`: the system's roots).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// kv targets: call through `GrpcClient` and its layers instead of the bare generated
    /// client, to measure what the client stack costs.
    pub stack: bool,
}

/// The result of a run (`kvctl bench --json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Operations per second that did what they were asked (conflicts not included; a cas
    /// operation is one Get plus one Put).
    pub ops_per_sec: f64,
    /// Median latency of one answered operation (done or conflict), microseconds, from its
    /// start (open loop: its intended start).
    pub p50_us: u64,
    /// 90th percentile latency, microseconds.
    pub p90_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: u64,
    /// The slowest answered operation, microseconds.
    pub max_us: u64,
    /// The open loop's intended calls per second (`None`: closed loop).
    pub rate: Option<f64>,
    /// Calls that failed for a reason other than a version conflict (timeouts included), after
    /// the warm-up.
    pub errors: u64,
    /// Operations that wrote (put, cas) or found (get) their key.
    pub ops: u64,
    /// Operations that did so during the warm-up, not counted anywhere else (the writes among
    /// them are in the store as well).
    pub warmup_ops: u64,
    /// Calls of the warm-up that failed (not in `errors`; like them, they may have written).
    pub warmup_errors: u64,
    /// Open loop: calls that were due before the end but never sent, because the call before
    /// them in their slot had not returned (the target held them up). Their latency is not in
    /// the percentiles, so a run with many of them understates them.
    pub unsent: u64,
    /// Operations answered with a version conflict, an existing key (put) or a missing key
    /// (get): the store working as intended, counted apart from `ops`.
    pub conflicts: u64,
    /// When the last answered call returned, seconds after the warm-up.
    pub last_answer_secs: f64,
    /// Calls still in flight when the run ended (or failing as it ended): cut off, so whether
    /// they wrote is unknown. A store holds at least `ops + warmup_ops` and may hold up to
    /// `ops + warmup_ops + unfinished + errors + warmup_errors` of the run's writes (a call that
    /// timed out or lost its connection may have written too).
    pub unfinished: u64,
    /// Errors by gRPC status code name (`Unavailable`, …), `timeout` or `transport`.
    pub errors_by_code: BTreeMap<String, u64>,
    /// The most frequent error messages, most frequent first (at most 5).
    pub top_errors: Vec<ErrorCause>,
    /// Seconds measured (the warm-up not included).
    pub seconds: f64,
    /// CPU this process (the load generator) used after the warm-up, user and system, seconds.
    pub client_cpu_secs: f64,
    /// `client_cpu_secs` per answered operation, microseconds: how light the client is.
    pub client_cpu_us_per_op: f64,
}

/// One kind of error and how often it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorCause {
    /// The status code name, `timeout` or `transport`.
    pub code: String,
    /// The message (cut at 200 characters).
    pub message: String,
    /// How many calls failed this way.
    pub count: u64,
}

impl BenchReport {
    /// Whether most of the run failed: errors outnumber the answered operations, nothing was
    /// answered at all, or calls failed or hung and the target answered none in the second half
    /// of the run (it died or stopped; the back-off keeps the error count low then, and a hung
    /// target makes no errors, only calls cut off at the end, so counting errors alone would
    /// hide both).
    pub fn mostly_failed(&self) -> bool {
        let answered = self.ops + self.conflicts;
        let stalled = self.errors + self.unfinished;
        self.errors > answered
            || (answered == 0 && stalled > 0)
            || (stalled > 0 && self.last_answer_secs < self.seconds / 2.0)
    }
}

/// Sorts an error into (code, message) for the report.
fn classify(err: &BoxError) -> (String, String) {
    let (code, message) = match err.downcast_ref::<tonic::Status>() {
        Some(status) => {
            // The message alone can be "tcp connect error"; the reason is in its sources.
            let mut message = status.message().to_owned();
            if let Some(cause) = std::error::Error::source(status) {
                message = format!("{message}: {}", crate::error::with_causes(cause));
            }
            (format!("{:?}", status.code()), message)
        }
        None if err.is::<tokio::time::error::Elapsed>() => (
            "timeout".to_owned(),
            "no answer within --timeout".to_owned(),
        ),
        None => (
            "transport".to_owned(),
            crate::error::with_causes(err.as_ref()),
        ),
    };
    let message = match message.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    };
    (code, message)
}

/// Runs the benchmark.
pub async fn run(config: BenchConfig) -> Result<BenchReport, BoxError> {
    match &config.target {
        BenchTarget::Kv(urls) if config.stack => drive::<stack::StackTarget>(urls, &config).await,
        BenchTarget::Kv(urls) => drive::<KvTarget>(urls, &config).await,
        BenchTarget::Etcd(_) if config.stack => {
            Err("--stack measures this project's client stack: give a kv:// target".into())
        }
        BenchTarget::Etcd(addrs) => drive::<etcd::EtcdTarget>(addrs, &config).await,
    }
}

/// How one operation ended; an `Err` counts as an error.
enum Outcome {
    Done,
    /// The version did not match (or the key was missing).
    Conflict,
}

type OpResult = Result<Outcome, BoxError>;

/// One connection to the system under load, cloned by each of its workers.
trait Target: Clone + Send + Sync + 'static {
    /// Opens a connection, failing if the system cannot be reached.
    fn connect(
        addr: &str,
        config: &BenchConfig,
    ) -> impl Future<Output = Result<Self, BoxError>> + Send;
    /// Reads `key`; a missing key is a conflict.
    fn get(&mut self, key: String) -> impl Future<Output = OpResult> + Send;
    /// Creates `key`; an existing key is a conflict.
    fn create(&mut self, key: String, value: String) -> impl Future<Output = OpResult> + Send;
    /// Reads `key` (absent: version 0), then writes it if its version is still the one read.
    fn cas(&mut self, key: String, value: String) -> impl Future<Output = OpResult> + Send;
    /// Writes `key` if it is at `version` (0: absent), with a fresh request id; returns the
    /// outcome and the version the key is at now (the one written, or the one found).
    fn update(
        &mut self,
        key: String,
        value: String,
        version: u64,
    ) -> impl Future<Output = Result<(Outcome, u64), BoxError>> + Send;
}

/// Counters every worker adds to, read by the progress line.
#[derive(Debug, Default)]
struct Tally {
    next: AtomicU64,
    done: AtomicU64,
    warmup_done: AtomicU64,
    warmup_errors: AtomicU64,
    unsent: AtomicU64,
    conflicts: AtomicU64,
    errors: AtomicU64,
    unfinished: AtomicU64,
    /// Microseconds into the run of the last answered call.
    last_answer_us: AtomicU64,
}

/// What one worker saw: answered latencies (microseconds) and its errors by (code, message).
#[derive(Debug)]
struct WorkerLog {
    latencies: Histogram<u64>,
    errors: HashMap<(String, String), u64>,
}

impl WorkerLog {
    fn new() -> Self {
        Self {
            latencies: latency_histogram(),
            errors: HashMap::new(),
        }
    }
}

/// 3 significant figures, growing as needed: exact to 0.1 % at any latency.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures are supported")
}

/// The measurement loop both targets share.
async fn drive<T: Target>(addrs: &[String], config: &BenchConfig) -> Result<BenchReport, BoxError> {
    let value = "x".repeat(config.value_size);
    let limit = config.call_timeout;
    let mut connections = Vec::new();
    for c in 0..config.clients.max(1) {
        let addr = &addrs[c % addrs.len()];
        let connected = tokio::time::timeout(limit, T::connect(addr, config))
            .await
            .map_err(|_| format!("no answer from {addr} within {} s", limit.as_secs_f64()))?;
        connections.push(connected?);
    }
    let keys = config.keys.max(1) as u64;
    let prefix: Arc<str> = config.key_prefix.as_str().into();
    if config.workload == BenchWorkload::Get {
        let mut target = connections[0].clone();
        for k in 0..keys {
            // Conflict: the key is there from an earlier run, which is as good.
            let create = target.create(format!("{prefix}{k}"), value.clone());
            match tokio::time::timeout(limit, create).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("preloading keys failed: {e}").into()),
                Err(_) => {
                    let secs = limit.as_secs_f64();
                    return Err(format!("preloading keys failed: no answer within {secs} s").into());
                }
            }
        }
    }
    let run_id: u64 = rand::random();
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let measured_from = start + config.warmup;
    let deadline = measured_from
        .checked_add(config.duration)
        .ok_or("the run would end past what this clock can count: give a shorter --duration")?;
    let slots = config.clients.max(1) * config.concurrency.max(1);
    // Open loop: slot i's calls are intended at start + (i + k * slots) / rate, k = 0, 1, ...
    let every = config
        .rate
        .map(|rate| Duration::from_secs_f64(slots as f64 / rate));
    let mut workers = Vec::new();
    // The client's CPU is counted from the end of the warm-up, as its calls are.
    let cpu_before = tokio::spawn(async move {
        tokio::time::sleep_until(measured_from.into()).await;
        cpu_time()
    });
    for (c, connection) in connections.iter().enumerate() {
        for slot in 0..config.concurrency.max(1) {
            let slot = c * config.concurrency.max(1) + slot;
            let mut target = connection.clone();
            let (tally, value, prefix) = (tally.clone(), value.clone(), prefix.clone());
            let workload = config.workload;
            let mut intended = every.map(|every| start + every.mul_f64(slot as f64 / slots as f64));
            workers.push(tokio::spawn(async move {
                let mut log = WorkerLog::new();
                let mut backoff = MIN_BACKOFF;
                // The update workload: this slot's own key, and the version it last saw.
                let own_key = format!("{prefix}slot{slot}");
                let mut version = 0;
                loop {
                    // A call due later waits for its time; its latency then counts from when it
                    // was sent, since the timer's own lateness (up to a millisecond or so) is the
                    // load generator's, not the target's. A call already due when the last one
                    // returned is late because of the target: it starts at once, and its
                    // latency counts from when it was due.
                    let late = match intended {
                        Some(at) if at > Instant::now() => {
                            tokio::time::sleep_until(at.min(deadline).into()).await;
                            false
                        }
                        Some(_) => true,
                        None => false,
                    };
                    let now = Instant::now();
                    let Some(left) = deadline.checked_duration_since(now) else {
                        if let (Some(at), Some(every)) = (intended, every) {
                            // Due before the end, never sent: the target held this slot up.
                            let due = deadline.saturating_duration_since(at);
                            let unsent = (due.as_secs_f64() / every.as_secs_f64()).ceil() as u64;
                            tally.unsent.fetch_add(unsent, Ordering::Relaxed);
                        }
                        break;
                    };
                    let began = match intended {
                        Some(at) if late => at,
                        _ => now,
                    };
                    if let (Some(at), Some(every)) = (&mut intended, every) {
                        *at += every;
                    }
                    let n = tally.next.fetch_add(1, Ordering::Relaxed);
                    let key = match workload {
                        BenchWorkload::Put => format!("{prefix}{run_id:x}-{n}"),
                        BenchWorkload::Update => own_key.clone(),
                        _ => format!("{prefix}{}", n % keys),
                    };
                    let call = async {
                        match workload {
                            BenchWorkload::Get => target.get(key).await,
                            BenchWorkload::Put => target.create(key, value.clone()).await,
                            BenchWorkload::Cas => target.cas(key, value.clone()).await,
                            BenchWorkload::Update => {
                                let (outcome, now) =
                                    target.update(key, value.clone(), version).await?;
                                version = now;
                                Ok(outcome)
                            }
                        }
                    };
                    let result = match tokio::time::timeout(limit.min(left), call).await {
                        // Failed as the run ended: the calls cut off then are reset, and a
                        // server that sees many resets at once may close their connection
                        // (HTTP/2 rapid-reset protection), failing this call with them. That
                        // says nothing about the target: the call is unfinished.
                        Ok(Err(_)) if Instant::now() >= deadline => {
                            tally.unfinished.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(result) => result,
                        // Cut off by the end of the run, not by the target: not an error.
                        Err(_) if left < limit => {
                            tally.unfinished.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(elapsed) => Err(elapsed.into()),
                    };
                    match result {
                        Ok(outcome) => {
                            let warmup = began < measured_from;
                            let counter = match outcome {
                                Outcome::Done if warmup => Some(&tally.warmup_done),
                                Outcome::Done => Some(&tally.done),
                                Outcome::Conflict if warmup => None,
                                Outcome::Conflict => Some(&tally.conflicts),
                            };
                            if let Some(counter) = counter {
                                counter.fetch_add(1, Ordering::Relaxed);
                            }
                            if !warmup {
                                let micros = (began.elapsed().as_micros() as u64).max(1);
                                // It grows to any latency; past u64 it would refuse.
                                if log.latencies.record(micros).is_err() {
                                    log.latencies.saturating_record(micros);
                                }
                            }
                            let at = measured_from.elapsed().as_micros() as u64;
                            tally.last_answer_us.fetch_max(at, Ordering::Relaxed);
                            backoff = MIN_BACKOFF;
                        }
                        Err(_) if began < measured_from => {
                            tally.warmup_errors.fetch_add(1, Ordering::Relaxed);
                            let left = deadline.saturating_duration_since(Instant::now());
                            tokio::time::sleep(backoff.min(left)).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        Err(err) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                            *log.errors.entry(classify(&err)).or_default() += 1;
                            // A failing target is not hammered in a tight loop.
                            let left = deadline.saturating_duration_since(Instant::now());
                            tokio::time::sleep(backoff.min(left)).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                log
            }));
        }
    }
    let progress = config.progress.then(|| {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let (mut last, mut was_warming) = (0, true);
            loop {
                tick.tick().await;
                let warming = Instant::now() < measured_from;
                if was_warming && !warming {
                    last = 0; // the counted operations start from 0
                }
                was_warming = warming;
                let done = match warming {
                    true => tally.warmup_done.load(Ordering::Relaxed),
                    false => tally.done.load(Ordering::Relaxed),
                };
                eprintln!(
                    "[{:>5.1}s] {}{done} ops ({}/s), {} conflicts, {} errors",
                    start.elapsed().as_secs_f64(),
                    if warming {
                        "warm-up, not counted: "
                    } else {
                        ""
                    },
                    done.saturating_sub(last),
                    tally.conflicts.load(Ordering::Relaxed),
                    tally.errors.load(Ordering::Relaxed),
                );
                last = done;
            }
        })
    });
    let mut latencies = latency_histogram();
    let mut causes: HashMap<(String, String), u64> = HashMap::new();
    for worker in workers {
        let log = worker.await?;
        latencies.add(&log.latencies)?;
        for (cause, count) in log.errors {
            *causes.entry(cause).or_default() += count;
        }
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let seconds = measured_from.elapsed().as_secs_f64();
    let cpu = cpu_time().saturating_sub(cpu_before.await?);
    let mut errors_by_code = BTreeMap::new();
    for ((code, _), count) in &causes {
        *errors_by_code.entry(code.clone()).or_default() += count;
    }
    let mut top_errors: Vec<ErrorCause> = causes
        .into_iter()
        .map(|((code, message), count)| ErrorCause {
            code,
            message,
            count,
        })
        .collect();
    top_errors.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.message.cmp(&b.message))
    });
    top_errors.truncate(5);
    let done = tally.done.load(Ordering::Relaxed);
    let answered = done + tally.conflicts.load(Ordering::Relaxed);
    Ok(BenchReport {
        client_cpu_secs: cpu.as_secs_f64(),
        client_cpu_us_per_op: if answered == 0 {
            0.0
        } else {
            cpu.as_secs_f64() * 1e6 / answered as f64
        },
        ops_per_sec: done as f64 / seconds,
        p50_us: latencies.value_at_quantile(0.5),
        p90_us: latencies.value_at_quantile(0.9),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
        max_us: latencies.max(),
        rate: config.rate,
        warmup_ops: tally.warmup_done.load(Ordering::Relaxed),
        warmup_errors: tally.warmup_errors.load(Ordering::Relaxed),
        unsent: tally.unsent.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        ops: done,
        conflicts: tally.conflicts.load(Ordering::Relaxed),
        unfinished: tally.unfinished.load(Ordering::Relaxed),
        last_answer_secs: tally.last_answer_us.load(Ordering::Relaxed) as f64 / 1e6,
        errors_by_code,
        top_errors,
        seconds,
    })
}

/// CPU time this process has used so far, user and system (`getrusage`).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given, which points
    // to one; RUSAGE_SELF is always a valid `who`.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The first pause after a failed call; it doubles on each failure in a row.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause after a failed call.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    /// `--target` specs parse to the target they name, and bad ones are refused with a reason.
    #[test]
    fn parses_targets() {
        assert_eq!(
            "kv://127.0.0.1:50051".parse(),
            Ok(BenchTarget::Kv(vec!["http://127.0.0.1:50051".into()]))
        );
        assert_eq!(
            "kv://a:1,b:2".parse(),
            Ok(BenchTarget::Kv(vec![
                "http://a:1".into(),
                "http://b:2".into()
            ]))
        );
        assert_eq!(
            "etcd://127.0.0.1:2379,h:2".parse(),
            Ok(BenchTarget::Etcd(vec![
                "127.0.0.1:2379".into(),
                "h:2".into()
            ]))
        );
        assert!("kv://a:1,".parse::<BenchTarget>().is_err());
        let unknown = "redis://127.0.0.1:6379".parse::<BenchTarget>();
        assert!(unknown.unwrap_err().contains("unknown target"));
        assert!("kv://".parse::<BenchTarget>().is_err());
    }
}
