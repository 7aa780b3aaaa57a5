//! Scale-out on etcd: several frontends behave as one store, and neither a dead frontend nor
//! etcd members killed mid-write lose or duplicate an acknowledged write: every run's history
//! is checked by the linearizability checker against the store's final state.
//!
//! The chaos and frontend tests use the shared cluster at `KV_TEST_ETCD` (started by
//! `scripts/test.sh`); the cluster-fault test starts a 3-member cluster of its own, on free
//! loopback ports, because it kills and restarts members. Without etcd the tests skip with a
//! message, and under `CI=true` they fail (see `common::etcd_endpoints`).

mod common;

use std::{
    io::{Read, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{etcd_endpoints, fresh_prefix, spawn_kv_server};
use kvcore::{
    ServerOptions,
    client::{ClientOptions, GrpcClient, PutOutcome},
    etcd::EtcdOptions,
    runner::{History, Op, OpKind, PutResult, ScenarioConfig, ServerRunner, checker},
    storage::{EtcdSpec, EtcdStorage, Storage},
};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

fn spec_on(endpoints: Vec<String>, test: &str) -> EtcdSpec {
    EtcdSpec {
        endpoints,
        prefix: fresh_prefix(test).trim_end_matches('/').to_owned(),
    }
}

/// The chaos scenario, request and response loss included, with 3 frontends on one etcd
/// cluster: linearizable, and the counters equal their acknowledged increments exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_over_three_frontends_is_linearizable_and_exactly_once() {
    let Some(endpoints) = etcd_endpoints() else {
        return;
    };
    let spec = spec_on(endpoints, "chaos");
    let config: ScenarioConfig = r#"{
      "clients": [
        { "name": "a", "keys": ["k1", "k2"], "client_packet_loss_rate": 5.0 },
        { "name": "b", "keys": ["k2", "k3"], "client_packet_loss_rate": 5.0 },
        { "name": "c", "keys": ["k1", "k3"], "client_packet_loss_rate": 5.0 },
        { "name": "d", "keys": ["k1", "k2", "k3"], "client_packet_loss_rate": 5.0 }
      ],
      "test_duration_seconds": 3,
      "server_packet_loss_rate": 10.0,
      "frontends": 3,
      "seed": 11
    }"#
    .parse()
    .expect("valid scenario");
    let mut stores: Vec<Arc<dyn Storage>> = Vec::new();
    for _ in 0..3 {
        stores.push(Arc::new(EtcdStorage::open(&spec).await.expect("open")));
    }
    let report = ServerRunner::with_frontends(stores, config, "127.0.0.1:0")
        .expect("3 handles for 3 frontends")
        .quiet()
        .run()
        .await
        .expect("the run completes");
    assert!(report.passed(), "{report}");
    let recovered: u64 = report.clients.iter().map(|c| c.recovered).sum();
    assert!(report.server_responses_dropped > 0, "{report}");
    assert!(recovered > 0, "lost answers were replayed: {report}");
    assert!(report.checked_ops > 100, "{report}");
}

/// What the writers did: every operation, for the linearizability checker, and progress.
#[derive(Debug, Default)]
struct Tally {
    /// Writes acknowledged per client, for progress checks.
    per_client: Vec<u64>,
    /// Writes whose answer was lost and came back from a frontend's replay.
    recovered: u64,
}

/// Starts `clients` writers, each reading a key and writing a value of its own at the version
/// read, through `endpoints` (client `i` prefers endpoint `i mod n` and fails over to the
/// others), until `stop` is cancelled. Every operation goes into `history`.
fn start_writers(
    endpoints: &[String],
    clients: usize,
    keys: usize,
    stop: &CancellationToken,
    history: &Arc<History>,
) -> (Arc<Mutex<Tally>>, Vec<tokio::task::JoinHandle<()>>) {
    let tally = Arc::new(Mutex::new(Tally {
        per_client: vec![0; clients],
        ..Tally::default()
    }));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut order = endpoints.to_vec();
        order.rotate_left(i % endpoints.len());
        let options = ClientOptions {
            call_timeout: Duration::from_secs(5),
            cancel: stop.clone(),
            ..ClientOptions::default()
        };
        let client = GrpcClient::connect_any(&order, options).expect("valid endpoints");
        let (tally, stop, history) = (Arc::clone(&tally), stop.clone(), Arc::clone(history));
        let now = move || start.elapsed().as_nanos() as u64;
        let record = move |key: &str, call: u64, kind: OpKind| {
            history.record(Op {
                client: i,
                key: key.to_owned(),
                call,
                ret: now(),
                kind,
            })
        };
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                if stop.is_cancelled() {
                    break;
                }
                let key = format!("c{}", (i + n) % keys);
                let call = now();
                let current = match client.get(&key).await {
                    Ok(found) => found,
                    // A read that failed: nothing was written.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let seen = current.as_ref().map(|v| (v.value.clone(), v.version));
                record(&key, call, OpKind::Get(seen));
                let expected = current.map_or(0, |v| v.version);
                let value = format!("{i}-{n}");
                let call = now();
                let Ok(outcome) = client.put(&key, &value, expected).await else {
                    continue;
                };
                let outcome = match outcome {
                    PutOutcome::Written { version, .. } => {
                        tally.lock().unwrap().per_client[i] += 1;
                        PutResult::Written(version)
                    }
                    PutOutcome::Conflict { actual_version }
                    | PutOutcome::AlreadyExists { actual_version } => PutResult::Refused {
                        actual: actual_version,
                    },
                    PutOutcome::NotFound => PutResult::Refused { actual: 0 },
                    _ => PutResult::Maybe,
                };
                let put = OpKind::Put {
                    value,
                    expected,
                    request_id: None,
                    recovered: false,
                    outcome,
                };
                record(&key, call, put);
            }
            tally.lock().unwrap().recovered += client.counters().recovered;
        }));
    }
    (tally, tasks)
}

/// The whole history, checked against the final state as a versioned register per key: every
/// version was produced by exactly one write that was not reported refused, every read saw
/// the value of its version, in real-time order. A write applied twice, a lost acknowledged
/// write or a refusal of a write that was applied is a violation.
async fn assert_linearizable(store: &dyn Storage, history: &History) {
    let state = store.entries().await.expect("entries");
    let ops = history.ops();
    assert!(
        ops.len() > 50,
        "the writers did something: {} ops",
        ops.len()
    );
    let verdict = checker::check(&ops, &state);
    assert!(
        verdict.violations.is_empty(),
        "{} violations, first: {}",
        verdict.violations.len(),
        verdict.violations[0]
    );
}

/// Two kv-server processes over one cluster, each dropping a tenth of its Put answers, so the
/// clients keep failing over from one to the other and a lost answer's retry is replayed by
/// the other frontend. Then the first is killed with SIGKILL: its clients move to the second,
/// and nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_frontend_hands_its_clients_to_another() {
    let Some(endpoints) = etcd_endpoints() else {
        return;
    };
    let spec = spec_on(endpoints, "frontend-kill");
    let storage = format!("{}/{}", spec.endpoints.join(","), spec.prefix);
    let storage = format!("etcd:{storage}");
    let lossy = |seed: &'static str| {
        spawn_kv_server(&[
            "--storage",
            &storage,
            "--drop-response-rate",
            "10",
            "--fault-methods",
            "Put",
            "--fault-seed",
            seed,
        ])
    };
    let (mut first, first_addr) = lossy("1");
    let (mut second, second_addr) = lossy("2");
    let urls = [
        format!("http://{first_addr}"),
        format!("http://{second_addr}"),
    ];
    let stop = CancellationToken::new();
    let history = Arc::new(History::new());
    let (tally, tasks) = start_writers(&urls, 4, 3, &stop, &history);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().expect("SIGKILL the first frontend");
    first.wait().expect("reaped");
    let before: Vec<u64> = tally.lock().unwrap().per_client.clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    for task in tasks {
        task.await.expect("writer task");
    }
    second.kill().expect("stop the second frontend");
    second.wait().expect("reaped");

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        tally.recovered > 10,
        "lost answers were replayed: {tally:?}"
    );
    for (i, (&then, &now)) in before.iter().zip(&tally.per_client).enumerate() {
        assert!(
            now > then,
            "client {i} made progress after the kill: {then} -> {now}"
        );
    }
    let store = EtcdStorage::open(&spec).await.expect("open");
    assert_linearizable(&store, &history).await;
}

/// One etcd member process of a test cluster.
struct Member {
    args: Vec<String>,
    client_port: u16,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Member {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("member log");
        let child = Command::new("etcd")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (scripts/test.sh installs it)");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
    }

    /// Whether this member says it is the leader (its Prometheus metrics, over plain HTTP).
    fn is_leader(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body.lines().any(|l| l.trim() == "etcd_server_is_leader 1")
    }
}

/// Free loopback ports, released for the caller to bind (a small race, fine in tests).
fn free_ports(n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Opens the store, waiting up to 20 s for a cluster that is still starting.
async fn open_when_up(spec: &EtcdSpec) -> EtcdStorage {
    for _ in 0..100 {
        if let Ok(store) = EtcdStorage::open(spec).await {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the test cluster did not come up within 20 s")
}

/// A 3-member cluster on free loopback ports, data in `dir`.
fn start_cluster(dir: &Path) -> Vec<Member> {
    let ports = free_ports(6);
    let peer = |i: usize| format!("http://127.0.0.1:{}", ports[3 + i]);
    let cluster: Vec<String> = (0..3).map(|i| format!("f{i}={}", peer(i))).collect();
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let client = format!("http://127.0.0.1:{}", ports[i]);
            Member {
                args: [
                    "--name",
                    &format!("f{i}"),
                    "--data-dir",
                    &dir.join(format!("f{i}")).display().to_string(),
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer(i),
                    "--initial-advertise-peer-urls",
                    &peer(i),
                    "--initial-cluster",
                    &cluster.join(","),
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "kvcore-faults",
                    // Elections in well under a second, so the test spends its time writing.
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ]
                .map(String::from)
                .to_vec(),
                client_port: ports[i],
                log: dir.join(format!("f{i}.log")),
                child: None,
            }
        })
        .collect();
    for member in &mut members {
        member.start();
    }
    members
}

/// Starts a frontend in this process over `spec`, checking health every 100 ms.
async fn frontend(spec: &EtcdSpec) -> (String, oneshot::Sender<()>) {
    let options = EtcdOptions {
        request_timeout: Duration::from_secs(2),
        probe_interval: Duration::from_millis(200),
        ..EtcdOptions::default()
    };
    let store = EtcdStorage::open_with(spec, options, 32)
        .await
        .expect("open");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel();
    let options = ServerOptions::default().health_interval(Duration::from_millis(100));
    tokio::spawn(kvcore::serve(listener, Arc::new(store), options, async {
        let _ = stopped.await;
    }));
    (url, stop)
}

async fn health(url: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: "kv.v1.KvService".into(),
    };
    let answer = client.check(request).await.ok()?.into_inner();
    ServingStatus::try_from(answer.status).ok()
}

/// Waits up to `limit` for every frontend to report `want`.
async fn wait_health(urls: &[String], want: ServingStatus, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let mut all = true;
        for url in urls {
            all &= health(url).await == Some(want);
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Writes go on while a follower is killed with SIGKILL, then the leader, then every member is
/// stopped for two seconds and restarted. Nothing acknowledged is lost or doubled, the
/// frontends report NOT_SERVING while etcd is gone, and they recover by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_faults_during_writes_lose_nothing() {
    if etcd_endpoints().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut members = start_cluster(dir.path());
    let endpoints: Vec<String> = members
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.client_port))
        .collect();
    let spec = spec_on(endpoints, "faults");
    let store = open_when_up(&spec).await;
    let mut urls = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..2 {
        let (url, stop) = frontend(&spec).await;
        urls.push(url);
        stops.push(stop);
    }
    let stop = CancellationToken::new();
    let history = Arc::new(History::new());
    let (tally, tasks) = start_writers(&urls, 4, 4, &stop, &history);
    let acked = |tally: &Mutex<Tally>| -> u64 { tally.lock().unwrap().per_client.iter().sum() };
    let phase = Duration::from_millis(1500);
    tokio::time::sleep(phase).await;

    let leader = (0..3)
        .find(|&i| members[i].is_leader())
        .expect("the cluster has a leader");
    let follower = (leader + 1) % 3;
    members[follower].kill();
    let before = acked(&tally);
    tokio::time::sleep(phase).await;
    assert!(acked(&tally) > before, "writes go on without a follower");
    members[follower].start();
    tokio::time::sleep(phase).await;

    let leader = (0..3)
        .find(|&i| members[i].is_leader())
        .expect("a leader after the follower rejoined");
    members[leader].kill();
    let before = acked(&tally);
    tokio::time::sleep(2 * phase).await;
    assert!(acked(&tally) > before, "writes go on after the leader died");
    members[leader].start();
    tokio::time::sleep(phase).await;

    for member in &mut members {
        member.kill();
    }
    assert!(
        wait_health(&urls, ServingStatus::NotServing, Duration::from_secs(10)).await,
        "frontends report NOT_SERVING while etcd is down"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for member in &mut members {
        member.start();
    }
    assert!(
        wait_health(&urls, ServingStatus::Serving, Duration::from_secs(20)).await,
        "frontends recover by themselves when etcd returns"
    );
    let before = acked(&tally);
    tokio::time::sleep(phase).await;
    assert!(acked(&tally) > before, "writes go on after the restart");

    stop.cancel();
    for task in tasks {
        task.await.expect("writer task");
    }
    assert_linearizable(&store, &history).await;
    for stop in stops {
        let _ = stop.send(());
    }
    for member in &mut members {
        member.kill();
    }
}

/// An etcd whose space quota is used up refuses writes with UNAVAILABLE and a message saying
/// what the operator must do, keeps serving reads, and loses nothing it acknowledged.
#[tokio::test]
async fn a_full_etcd_refuses_writes_and_serves_reads() {
    if etcd_endpoints().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(2);
    let client = format!("http://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let mut member = Member {
        args: [
            "--name",
            "full",
            "--data-dir",
            &dir.path().join("full").display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("full={peer}"),
            "--quota-backend-bytes",
            "4194304",
        ]
        .map(String::from)
        .to_vec(),
        client_port: ports[0],
        log: dir.path().join("full.log"),
        child: None,
    };
    member.start();
    let spec = spec_on(vec![format!("127.0.0.1:{}", ports[0])], "quota");
    let store = open_when_up(&spec).await;
    let value = "q".repeat(1 << 20);
    let mut written = Vec::new();
    let refusal = loop {
        let key = format!("big{}", written.len());
        match store
            .put(kvcore::storage::Write::new(&key, value.clone(), 0))
            .await
        {
            Ok(_) => written.push(key),
            Err(err) => break err,
        }
        assert!(written.len() < 64, "a 4 MiB quota never filled up");
    };
    assert!(
        matches!(refusal, kvcore::storage::StorageError::Unavailable(_)),
        "{refusal:?}"
    );
    assert!(
        refusal.to_string().contains("etcdctl alarm disarm"),
        "{refusal}"
    );
    assert!(!written.is_empty(), "some writes fit before the quota");
    for key in &written {
        assert_eq!(
            store.get(key).await.expect("reads still work").value.len(),
            1 << 20
        );
    }
    store
        .check()
        .await
        .expect("a full etcd still serves reads: health stays SERVING");
    member.kill();
}
