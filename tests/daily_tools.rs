//! kvctl and kv-server as daily tools, run as a user runs them: no hangs, causes printed,
//! honest exit codes, quiet logs.

mod common;

use std::{
    io::{BufRead, BufReader, Write as _},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{kvctl, ready_addr, spawn_kv_server, spawn_kv_server_to};

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {name}");
}

fn stop(mut child: Child) {
    signal(&child, "-TERM");
    child.wait().expect("waiting for kv-server");
}

/// A server stopped with SIGSTOP; continued and stopped for good when dropped, so a failing
/// assertion does not leave a frozen process behind.
struct Frozen(Child);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A stopped server (SIGSTOP) and a listener that accepts but never answers: kvctl gives up
/// within its --timeout with exit 3, for get, put and every bench workload alike.
#[test]
fn kvctl_never_hangs() {
    let (server, addr) = spawn_kv_server(&[]);
    signal(&server, "-STOP");
    let _frozen = Frozen(server);
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    for endpoint in [addr.as_str(), silent_addr.as_str()] {
        let bench = |workload| {
            vec![
                "--timeout",
                "1",
                "bench",
                "--duration",
                "1",
                "--workload",
                workload,
            ]
        };
        for args in [
            vec!["--timeout", "1", "get", "k"],
            vec!["--timeout", "1", "put", "k", "v"],
            bench("get"),
            bench("put"),
            bench("cas"),
            bench("update"),
        ] {
            let began = Instant::now();
            let (code, _, err) = kvctl(endpoint, &args);
            let took = began.elapsed();
            assert_eq!(code, 3, "{endpoint} {args:?}: {err}");
            assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
            assert!(
                err.contains("within 1 s") || err.contains("most of the run failed"),
                "{args:?}: {err}"
            );
        }
    }
}

/// `--endpoint` takes what kv-server prints (HOST:PORT) as well as http:// URLs; malformed
/// endpoints are usage errors; a refused connection says so. (https:// is in `tls.rs`.)
#[test]
fn kvctl_endpoint_forms_and_causes() {
    let (server, addr) = spawn_kv_server(&[]);
    let (code, out, err) = kvctl(&addr, &["put", "greeting", "hello"]);
    assert_eq!((code, out.as_str()), (0, "written: version 1\n"), "{err}");
    let (code, out, _) = kvctl(&format!("http://{addr}"), &["get", "greeting"]);
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    for (endpoint, message) in [
        ("127.0.0.1".to_owned(), "expected HOST:PORT"),
        (format!("grpc://{addr}"), "unknown scheme"),
    ] {
        let (code, _, err) = kvctl(&endpoint, &["get", "greeting"]);
        assert_eq!(code, 2, "{endpoint}: {err}");
        assert!(err.contains(message), "{endpoint}: {err}");
    }
    let (code, _, err) = kvctl(&addr, &["bench", "--target", "kv://127.0.0.1"]);
    assert_eq!(code, 2, "bench targets take the same forms: {err}");
    stop(server);
    let (code, _, err) = kvctl(&addr, &["get", "greeting"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("Connection refused"),
        "the cause is shown: {err}"
    );
}

/// Values too large for a command line go through --value-file (stdin here) and come back
/// byte for byte through --output.
#[test]
fn kvctl_large_values_through_files() {
    let (server, addr) = spawn_kv_server(&[]);
    let value: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut put = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--endpoint", &addr, "put", "big", "--value-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("kvctl put");
    put.stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .expect("writing the value");
    let out = put.wait_with_output().expect("kvctl put");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "written: version 1\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("big.out");
    let (code, out, err) = kvctl(&addr, &["get", "big", "--output", path.to_str().unwrap()]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", "version 1\n"));
    assert_eq!(std::fs::read_to_string(&path).expect("output file"), value);
    let (code, _, err) = kvctl(&addr, &["put", "k", "v", "--value-file", "-"]);
    assert_eq!(code, 2, "VALUE and --value-file together: {err}");
    stop(server);
}

/// `kvctl bench --workload update` on kv-server, bare and through the client stack
/// (`--stack`): each of the 8 calls in flight owns a key and writes it again with the version
/// it got back, so nothing conflicts, the versions the store holds add up to the writes
/// counted, and the JSON reports the client's CPU per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_bench_update_writes_own_keys() {
    let (server, addr) = spawn_kv_server(&[]);
    let client = kvcore::client::GrpcClient::connect(
        &format!("http://{addr}"),
        kvcore::client::ClientOptions::default(),
    )
    .await
    .expect("connect");
    for (prefix, stack) in [("upd-", None), ("stack-", Some("--stack"))] {
        let mut args = vec![
            "bench",
            "--workload",
            "update",
            "--clients",
            "2",
            "--concurrency",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--key-prefix",
            prefix,
            "--json",
        ];
        args.extend(stack);
        let (code, out, err) = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || kvctl(&addr, &args)
        })
        .await
        .expect("kvctl");
        assert_eq!(code, 0, "{prefix}: {err}");
        let report: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        let ops = report["ops"].as_u64().unwrap();
        let warmup_ops = report["warmup_ops"].as_u64().unwrap();
        let unfinished = report["unfinished"].as_u64().unwrap();
        assert!(ops > 100 && warmup_ops > 0, "{report}");
        assert_eq!(report["conflicts"].as_u64(), Some(0), "{report}");
        assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
        let cpu = report["client_cpu_us_per_op"].as_f64().unwrap();
        assert!(cpu > 0.0 && cpu < 10_000.0, "{report}");
        let mut written = 0;
        for slot in 0..8 {
            let key = format!("{prefix}slot{slot}");
            written += client.get(&key).await.expect("read").expect(&key).version;
        }
        // The warm-up's writes are in the store, not in `ops`.
        let ops = ops + warmup_ops;
        assert!(
            written >= ops && written <= ops + unfinished,
            "{prefix}: {written}: {report}"
        );
    }
    let (code, _, err) = kvctl(
        &addr,
        &["bench", "--stack", "--target", "etcd://127.0.0.1:1"],
    );
    assert_eq!(code, 2, "{err}");
    stop(server);
}

/// A bench whose server is killed mid-run, and one whose every call is refused, exit 3 with
/// the errors counted by code and their causes printed; 0 connections are refused up front.
#[test]
fn kvctl_bench_fails_honestly() {
    let (mut server, addr) = spawn_kv_server(&[]);
    let mut bench = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--endpoint", &addr, "--timeout", "1"])
        .args(["bench", "--workload", "put", "--duration", "4", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvctl bench");
    // Kill the server once the first progress line shows the bench under way, however slow
    // this machine is today.
    let mut progress = BufReader::new(bench.stderr.take().expect("stderr"));
    let mut err = String::new();
    progress.read_line(&mut err).expect("a progress line");
    assert!(err.starts_with("[  1.0s]"), "{err}");
    server.kill().expect("SIGKILL kv-server");
    server.wait().expect("reaped");
    std::io::Read::read_to_string(&mut progress, &mut err).expect("the rest of stderr");
    let out = bench.wait_with_output().expect("kvctl bench");
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("errors by code"), "{err}");
    assert!(err.contains("most of the run failed"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["last_answer_secs"].as_f64().unwrap() < 1.5,
        "{report}"
    );
    assert!(
        !report["top_errors"].as_array().unwrap().is_empty(),
        "{report}"
    );

    let (server, addr) = spawn_kv_server(&[]);
    let args = [
        "bench",
        "--workload",
        "put",
        "--value-size",
        "2000000",
        "--duration",
        "1",
    ];
    let (code, _, err) = kvctl(&addr, &args);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("ResourceExhausted"),
        "the cause is named: {err}"
    );
    assert!(err.contains("exceeds the limit"), "{err}");
    for flag in ["--clients", "--concurrency", "--keys"] {
        let (code, _, err) = kvctl(&addr, &["bench", flag, "0"]);
        assert_eq!(code, 2, "{flag} 0: {err}");
    }
    stop(server);
}

/// A conflict-heavy bench (8 writers on 2 keys), and one shed by the in-flight limit, leave
/// no ERROR line and no line per call in the server's log: conflicts and refusals are the
/// protocol working, not server failures.
#[test]
fn conflicts_are_not_logged_as_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("kv-server.log");
    let file = std::fs::File::create(&log).expect("log file");
    let (server, addr) = spawn_kv_server_to(&["--max-in-flight", "4"], Stdio::from(file));
    let args = [
        "bench",
        "--workload",
        "cas",
        "--keys",
        "2",
        "--clients",
        "2",
        "--concurrency",
        "4",
        "--duration",
        "1",
        "--json",
    ];
    let (code, out, err) = kvctl(&addr, &args);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert!(report["conflicts"].as_u64().unwrap() > 0, "{report}");
    let (code, _, _) = kvctl(&addr, &["get", "never-written"]);
    assert_eq!(code, 1);
    let shed = [
        "bench",
        "--clients",
        "2",
        "--concurrency",
        "32",
        "--duration",
        "1",
        "--json",
    ];
    let (_, out, err) = kvctl(&addr, &shed);
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    let refused = report["errors_by_code"]["ResourceExhausted"].as_u64();
    assert!(
        refused.is_some_and(|n| n > 0),
        "over the limit: {report} {err}"
    );
    stop(server);
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(!logs.contains("ERROR"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "no colour codes when stderr is a file"
    );
    assert!(logs.lines().count() < 20, "{} lines", logs.lines().count());
}

/// `--metrics-listen 127.0.0.1:0` prints the address it got after the ready line, and
/// `--log-format json` writes one JSON object a line.
#[test]
fn kv_server_prints_metrics_address_and_json_logs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("kv-server.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
        .spawn()
        .expect("kv-server");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a ready line").expect("utf-8");
    let second = lines.next().expect("a metrics line").expect("utf-8");
    assert!(first.starts_with("listening on 127.0.0.1:"), "{first}");
    let metrics = second
        .strip_prefix("metrics on ")
        .unwrap_or_else(|| panic!("{second}"));
    let mut stream = std::net::TcpStream::connect(metrics).expect("metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("answer");
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    stop(server);
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(logs.lines().count() >= 2, "{logs}");
    for line in logs.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(entry["level"].is_string(), "{line}");
    }
}

/// `kvctl bench-server --bare`, the baseline the compare script measures beside kv-server:
/// it announces its address as kv-server does, every bench workload runs against it without
/// an error or a conflict (it stores nothing: Put answers the version a store would, Get any
/// key at version 1), and SIGTERM stops it cleanly.
#[test]
fn kvctl_bench_server_bare_serves_every_workload() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["bench-server", "--bare", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting kvctl bench-server");
    let addr = ready_addr(&mut server);
    for workload in ["get", "put", "cas", "update"] {
        let args = [
            "bench",
            "--workload",
            workload,
            "--clients",
            "2",
            "--concurrency",
            "4",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--json",
        ];
        let (code, out, err) = kvctl(&addr, &args);
        assert_eq!(code, 0, "{workload}: {err}");
        let report: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        assert!(report["ops"].as_u64().unwrap() > 100, "{workload}: {out}");
        assert_eq!(report["errors"].as_u64(), Some(0), "{workload}: {out}");
        assert_eq!(report["conflicts"].as_u64(), Some(0), "{workload}: {out}");
    }
    signal(&server, "-TERM");
    let status = server.wait().expect("waiting for bench-server");
    assert!(status.success(), "SIGTERM ends it cleanly: {status}");
}

/// With debug logs on (`RUST_LOG=kvcore=debug`) each failed call is traced ("call failed",
/// with its status); at the default level the trace layer is not in the stack at all (it cost
/// 3 % of a call to write nothing), and a client's refusal logs nothing.
#[test]
fn debug_logs_trace_failed_calls() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (filter, traced) in [(Some("kvcore=debug"), true), (None, false)] {
        let log = dir.path().join(format!("kv-server-{traced}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_kv-server"));
        command
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(file);
        if let Some(filter) = filter {
            command.env("RUST_LOG", filter);
        }
        let mut server = command.spawn().expect("starting kv-server");
        let addr = ready_addr(&mut server);
        let (code, _, _) = kvctl(&addr, &["get", "never-written"]);
        assert_eq!(code, 1, "not found");
        stop(server);
        let logs = std::fs::read_to_string(&log).expect("reading the logs");
        assert_eq!(logs.contains("call failed"), traced, "{filter:?}: {logs}");
    }
}
