//! kv-server and kvctl as users run them: real processes, health, reflection, signals.

mod common;

use std::{
    process::{Child, Command},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use kvcore::{
    ServerOptions,
    proto::{PutRequest, kv_service_client::KvServiceClient},
    server::Limits,
    storage::{MemoryStorage, Storage, StorageError, Versioned, Write, Written},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore, oneshot},
};
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use common::{kvctl, spawn_kv_server as spawn_server};

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
    child.wait().expect("waiting for kv-server")
}

/// The binary prints its address, serves health and reflection, and exits 0 on SIGTERM.
#[tokio::test]
async fn kv_server_serves_health_and_reflection_then_stops_on_sigterm() {
    let (mut child, addr) = spawn_server(&[]);
    let url = format!("http://{addr}");

    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let check = tonic_health::pb::HealthCheckRequest {
        service: "kv.v1.KvService".into(),
    };
    let status = health.check(check).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.expect("one answer").unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"kv.v1.KvService".to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    drop(responses);

    // The client's connection stays open (and idle): shutdown must not wait for it to leave.
    let exit = tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    assert!(exit.success(), "exit status 0 after SIGTERM");
    drop((reflection, health));
}

/// kvctl puts and gets, and reports refusals in one line with exit code 1.
#[test]
fn kvctl_put_get_and_refusals() {
    let (mut child, addr) = spawn_server(&[]);
    assert_eq!(
        kvctl(&addr, &["put", "greeting", "hello"]).1,
        "written: version 1\n"
    );
    let (code, out, _) = kvctl(&addr, &["get", "greeting"]);
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (code, out, _) = kvctl(&addr, &["put", "greeting", "bye", "--version", "1"]);
    assert_eq!((code, out.as_str()), (0, "written: version 2\n"));

    let (code, _, err) = kvctl(&addr, &["put", "greeting", "x", "--version", "1"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "kvctl: version mismatch: expected 1, actual 2\n")
    );
    let (code, _, err) = kvctl(&addr, &["put", "greeting", "x"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "kvctl: key already exists at version 2\n")
    );
    let (code, _, err) = kvctl(&addr, &["get", "missing"]);
    assert_eq!((code, err.as_str()), (1, "kvctl: key not found\n"));
    assert!(terminate(&mut child).success());

    let (code, _, err) = kvctl(&addr, &["get", "greeting"]);
    assert_eq!(code, 3, "server gone: {err}");
    assert!(err.starts_with("kvctl: cannot connect to"), "{err}");
}

/// A storage spec the binary cannot open is a clear error and a non-zero exit.
#[test]
fn kv_server_rejects_bad_storage_spec() {
    let out = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args(["--listen", "127.0.0.1:0", "--storage", "disk:/tmp/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid storage spec \"disk:/tmp/x\": unknown backend"),
        "{err}"
    );
}

/// A backend whose writes wait for the test to let them through, to have calls in flight at
/// shutdown without guessing how long anything takes.
struct GatedStorage {
    inner: MemoryStorage,
    /// Told when a write has reached the store.
    arrived: Notify,
    /// One permit per write let through.
    gate: Semaphore,
}

impl GatedStorage {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStorage::new(),
            arrived: Notify::new(),
            gate: Semaphore::new(0),
        })
    }
}

#[async_trait]
impl Storage for GatedStorage {
    async fn get(&self, key: &str) -> Result<Versioned, StorageError> {
        self.inner.get(key).await
    }
    async fn put(&self, write: Write) -> Result<Written, StorageError> {
        self.arrived.notify_one();
        self.gate
            .acquire()
            .await
            .expect("the gate is never closed")
            .forget();
        self.inner.put(write).await
    }
    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        self.inner.entries().await
    }
}

fn put_k() -> PutRequest {
    PutRequest {
        key: "k".into(),
        value: "v".into(),
        version: 0,
        request_id: vec![],
    }
}

/// Shutdown lets a call already in flight finish and answer.
#[tokio::test]
async fn shutdown_finishes_in_flight_calls() {
    let storage = GatedStorage::new();
    let server = common::start_server_with(storage.clone()).await;
    let mut client: KvServiceClient<_> = server.client().await;
    let call = tokio::spawn(async move { client.put(put_k()).await });
    storage.arrived.notified().await;
    let stopped = tokio::spawn(server.stop());
    // Let the shutdown begin before the write may finish (sooner only makes the test weaker).
    tokio::time::sleep(Duration::from_millis(50)).await;
    storage.gate.add_permits(1);
    let answer = call.await.unwrap().expect("in-flight put answered");
    assert_eq!(answer.into_inner().version, 1);
    stopped.await.expect("the server stops");
    assert_eq!(storage.inner.get("k").await.unwrap().version, 1);
}

/// Once shutdown begins, the listener closes at once (a new client is refused, not left
/// waiting), the call in flight still gets its answer, and `serve` returns once it has.
#[tokio::test]
async fn shutdown_refuses_new_clients_at_once_and_drains() {
    let storage = GatedStorage::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(kvcore::serve(
        listener,
        storage.clone(),
        ServerOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut client = KvServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let call = tokio::spawn(async move { client.put(put_k()).await });
    storage.arrived.notified().await;
    stop.send(()).unwrap();
    let refused = async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("new connections refused once shutdown began");
    // The write is still held at the gate: the listener closed before the drain ended.
    assert!(!call.is_finished() && !server.is_finished());
    storage.gate.add_permits(1);
    let answer = call.await.unwrap().expect("in-flight put answered");
    assert_eq!(answer.into_inner().version, 1);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returned once its calls were done")
        .unwrap()
        .expect("serve stopped cleanly");
    assert_eq!(storage.inner.get("k").await.unwrap().version, 1);
}

/// Serves a memory store within `limits` on 127.0.0.1:0: its address, the sender that stops
/// it, and its task.
async fn serve_with(
    limits: Limits,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), kvcore::ServeError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(kvcore::serve(
        listener,
        Arc::new(MemoryStorage::new()),
        ServerOptions::default().limits(limits),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop, server)
}

/// A stream that never ends by itself (a health `Watch`) does not hold the shutdown up: what
/// is still open a request timeout after it began is closed, and `serve` returns.
#[tokio::test]
async fn shutdown_closes_endless_streams_after_the_request_timeout() {
    let (addr, stop, server) = serve_with(Limits {
        request_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch opened")
        .into_inner();
    let first = watch.next().await.expect("a first status").unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let began = std::time::Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("serve returned although the watch never ends")
        .unwrap()
        .expect("serve stopped cleanly");
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "the watch was closed before its grace (the request timeout) was over"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch ended with the server");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

/// How one raw connection met the server's keepalive.
#[derive(Debug)]
struct Pinged {
    /// When each PING arrived, from the connection's start.
    pings: Vec<Duration>,
    /// When the server closed the connection (GOAWAY or end of stream), if it did in time.
    closed: Option<Duration>,
}

/// Opens a raw HTTP/2 connection with one call that never sends its body (so the connection is
/// never idle), answers the server's PINGs if `answer`, and reads for `watch`.
async fn keepalive_client(addr: std::net::SocketAddr, answer: bool, watch: Duration) -> Pinged {
    use common::raw::{PREFACE, frame, hpack};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let began = tokio::time::Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let headers: Vec<u8> = [
        hpack(":method", "POST"),
        hpack(":scheme", "http"),
        hpack(":path", "/kv.v1.KvService/Get"),
        hpack(":authority", "localhost"),
        hpack("content-type", "application/grpc"),
        hpack("te", "trailers"),
    ]
    .concat();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(4, 0, 0, &[]));
    hello.extend(frame(1, 4, 1, &headers)); // END_HEADERS, not END_STREAM
    tcp.write_all(&hello).await.unwrap();
    let mut pinged = Pinged {
        pings: Vec::new(),
        closed: None,
    };
    let read = async {
        let mut head = [0u8; 9];
        while tcp.read_exact(&mut head).await.is_ok() {
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                break;
            }
            match (head[3], head[4]) {
                (4, 0) => tcp.write_all(&frame(4, 1, 0, &[])).await.unwrap(), // SETTINGS: ack
                (6, 0) => {
                    pinged.pings.push(began.elapsed());
                    if answer {
                        tcp.write_all(&frame(6, 1, 0, &payload)).await.unwrap();
                    }
                }
                (7, _) => break, // GOAWAY
                _ => {}
            }
        }
        began.elapsed()
    };
    pinged.closed = tokio::time::timeout(watch, read).await.ok();
    pinged
}

/// HTTP/2 keepalive: a client with an open call hears a PING every interval; one that answers
/// stays connected, one that does not is closed once the keepalive timeout has passed.
#[tokio::test]
async fn keepalive_pings_busy_clients_and_closes_the_ones_that_never_answer() {
    let limits = Limits {
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    assert!(
        limits.idle_timeout >= Duration::from_secs(10)
            && limits.request_timeout >= Duration::from_secs(10)
    );
    let (addr, stop, server) = serve_with(limits).await;
    let watch = Duration::from_millis(4500);
    let (answering, silent) = tokio::join!(
        keepalive_client(addr, true, watch),
        keepalive_client(addr, false, watch),
    );
    eprintln!("answering: {answering:?}\nsilent: {silent:?}");
    // Pinged after an interval of quiet, and again after each answer's interval.
    assert!(answering.closed.is_none(), "{answering:?}");
    assert!(answering.pings.len() >= 3, "{answering:?}");
    assert!(
        answering.pings[0] >= Duration::from_millis(900),
        "{answering:?}"
    );
    for pair in answering.pings.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(900),
            "{answering:?}"
        );
    }
    // One PING, then closed a keepalive timeout later.
    let (ping, closed) = (silent.pings.first(), silent.closed);
    let (Some(ping), Some(closed)) = (ping, closed) else {
        panic!("the silent client was not pinged and closed: {silent:?}");
    };
    assert_eq!(silent.pings.len(), 1, "{silent:?}");
    assert!(closed - *ping >= Duration::from_millis(900), "{silent:?}");
    stop.send(()).unwrap();
    server.await.unwrap().expect("serve stopped cleanly");
}

/// Fault flags reach the server stack, and `--metrics-listen` serves Prometheus text.
#[test]
fn kv_server_fault_and_metrics_flags() {
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (mut child, addr) = spawn_server(&[
        "--drop-request-rate",
        "100",
        "--fault-methods",
        "Put",
        "--fault-seed",
        "7",
        "--metrics-listen",
        &metrics_addr,
    ]);
    let (code, _, err) = kvctl(&addr, &["put", "k", "v"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("injected request loss"), "{err}");
    let (code, _, err) = kvctl(&addr, &["get", "k"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "kvctl: key not found\n"),
        "Get is not faulted"
    );

    use std::io::{Read, Write as _};
    let mut http = std::net::TcpStream::connect(&metrics_addr).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: kv\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    http.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.lines()
            .any(|l| l.starts_with("grpc_server_handled_total")
                && l.contains("grpc_method=\"Put\"")
                && l.contains("grpc_code=\"UNAVAILABLE\"")
                && l.ends_with(" 1")),
        "{page}"
    );
    assert!(terminate(&mut child).success());
}

/// Out-of-range rates and unknown fault methods are refused at start with the flag's name.
#[test]
fn kv_server_rejects_bad_fault_flags() {
    for (flags, message) in [
        (["--drop-request-rate", "150"], "invalid fault flags"),
        (
            ["--fault-methods", "Delete"],
            "--fault-methods: unknown method \"Delete\"",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kv-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{flags:?}: {err}");
    }
}

/// `kvctl bench --json` loads a real server and prints the documented fields.
#[test]
fn kvctl_bench_reports_json() {
    let (mut child, addr) = spawn_server(&[]);
    for workload in ["get", "put", "cas"] {
        let target = format!("kv://{addr}");
        let args = [
            "bench",
            "--target",
            &target,
            "--workload",
            workload,
            "--clients",
            "2",
            "--concurrency",
            "4",
            "--keys",
            "8",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--json",
        ];
        let (code, out, err) = kvctl(&addr, &args);
        assert_eq!(code, 0, "{workload}: {err}");
        let report: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        assert!(
            report["ops_per_sec"].as_f64().unwrap() > 0.0,
            "{workload}: {out}"
        );
        let percentiles: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
            .iter()
            .map(|p| report[p].as_u64().expect(p))
            .collect();
        assert!(
            percentiles[0] > 0 && percentiles.is_sorted(),
            "{workload}: {out}"
        );
        assert!(report["rate"].is_null(), "closed loop: {out}");
        assert!(report["warmup_ops"].as_u64().is_some(), "{out}");
        assert_eq!(report["errors"].as_u64(), Some(0), "{workload}: {out}");
        if workload == "cas" {
            assert!(
                report["conflicts"].as_u64().unwrap() > 0,
                "8 workers on 2 keys conflict"
            );
        }
    }
    assert!(terminate(&mut child).success());
}

/// Bad `kvctl bench` flags are usage errors (exit 2) that say what is wrong.
#[test]
fn kvctl_bench_refuses_bad_flags() {
    let addr = "127.0.0.1:1";
    let cases = vec![
        (
            vec!["bench", "--target", "redis://127.0.0.1:6379"],
            "unknown target",
        ),
        (
            vec!["bench", "--duration", "0"],
            "positive number of seconds",
        ),
        (vec!["bench", "--warmup=-1"], "0 or more"),
        (vec!["bench", "--warmup", "soon"], "0 or more"),
        (vec!["bench", "--rate", "0"], "calls per second above 0"),
        (vec!["bench", "--rate", "inf"], "calls per second above 0"),
        (vec!["bench", "--rate", "1e-30"], "calls per second above 0"),
        (vec!["bench", "--warmup", "1e30"], "at most 86400"),
        (vec!["bench-server"], "--bare"),
    ];
    for (args, message) in cases {
        let (code, _, err) = kvctl(addr, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}
