//! Bad input from outside the process, over real sockets, against the real binary on a durable
//! backend: garbage, HTTP/1.1, broken HTTP/2 framing, floods (rapid reset, CONTINUATION,
//! SETTINGS, PING), idle and slowloris connections, and malformed gRPC calls. Every case gets a
//! defined answer (a gRPC status, an HTTP error or a closed connection) within its time limit; a
//! well-behaved client is served throughout (its p99 is printed); and the stored data is
//! unchanged, checked again after a restart.

mod common;

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use common::raw::{Answer, PREFACE, field, frame, grpc_frame, h2_call, hpack, whole};
use kvcore::client::{ClientOptions, GrpcClient, UpdateOutcome};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

/// How long any one case may take to get its answer.
const LIMIT: Duration = Duration::from_secs(5);

/// [`h2_call`] within this suite's time limit.
async fn call(addr: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    h2_call(addr, path, headers, body, LIMIT).await
}

fn start(log: &Path) -> (Child, String) {
    let storage = format!("file:{}", log.display());
    common::spawn_kv_server(&[
        "--storage",
        &storage,
        // Short keepalive and idle timeout, so half-open, silent and slowloris connections
        // are dropped within the test.
        "--keepalive-interval",
        "1",
        "--keepalive-timeout",
        "1",
        "--idle-timeout",
        "2",
    ])
}

/// How the server met a connection-level case.
#[derive(Debug, PartialEq, Eq)]
enum Met {
    /// It closed the connection (or refused it).
    Closed,
    /// It answered (its SETTINGS, a GOAWAY, an HTTP error) but kept the connection open.
    AnsweredOpen,
    /// Nothing at all within `LIMIT`.
    Silent,
}

/// Writes `bytes` on a fresh connection (ignoring write errors: the server may close early)
/// and reads until the server closes or `LIMIT` passes.
async fn raw(addr: &str, bytes: &[u8]) -> Met {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return Met::Closed;
    };
    let _ = tcp.write_all(bytes).await;
    let mut buf = vec![0; 64 * 1024];
    let deadline = Instant::now() + LIMIT;
    let mut answered = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Met::Closed,
            Ok(Ok(_)) => answered = true,
            Err(_) => break,
        }
    }
    if answered {
        Met::AnsweredOpen
    } else {
        Met::Silent
    }
}

/// One malformed call: its name, path, extra headers, body, and the codes it may get.
type Call = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
    &'static [i32],
);

const GET: &str = "/kv.v1.KvService/Get";
const PUT: &str = "/kv.v1.KvService/Put";
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNIMPLEMENTED: i32 = 12;
const INTERNAL: i32 = 13;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_defined_answers_and_harms_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("kv.log");
    let (mut server, addr) = start(&log);
    let url = format!("http://{addr}");

    // Data that must come through unchanged.
    let seed = GrpcClient::connect(&url, ClientOptions::default())
        .await
        .expect("connect");
    for n in 0..10 {
        seed.put(&format!("seed{n}"), &format!("value {n}"), 0)
            .await
            .expect("seed write");
    }

    // A well-behaved client, incrementing its counter the whole time.
    let stop = CancellationToken::new();
    let steady = {
        let options = ClientOptions {
            cancel: stop.clone(),
            ..ClientOptions::default()
        };
        let client = GrpcClient::connect(&url, options).await.expect("connect");
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut latencies, mut acked, mut failed) = (Vec::new(), 0u64, 0u64);
            while !stop.is_cancelled() {
                let began = Instant::now();
                let bump = |v: Option<&str>| {
                    (v.map_or(0, |v| v.parse::<u64>().expect("n")) + 1).to_string()
                };
                match client.update("steady", bump).await {
                    Ok(UpdateOutcome::Written { .. }) => acked += 1,
                    Err(kvcore::client::ClientError::Cancelled) => break,
                    // Stopped mid-write by the test itself: an unknown outcome, not a failure.
                    Ok(UpdateOutcome::Maybe { .. }) if stop.is_cancelled() => break,
                    other => {
                        eprintln!("well-behaved client: {other:?}");
                        failed += 1
                    }
                }
                latencies.push(began.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (latencies, acked, failed)
        })
    };

    let mut rng_state = 0x9e37_79b9_u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect()
    };
    let settings = frame(4, 0, 0, &[]);
    let with_preface = |frames: &[Vec<u8>]| -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend_from_slice(&settings);
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    };
    let request_headers: Vec<u8> = [
        hpack(":method", "POST"),
        hpack(":scheme", "http"),
        hpack(":path", GET),
        hpack(":authority", "kv"),
        hpack("content-type", "application/grpc"),
    ]
    .concat();

    // Connection-level cases: each must end in a closed connection or an answer, never a hang.
    let mut raw_cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", noise(4096)),
        ("HTTP/1.1 GET", b"GET / HTTP/1.1\r\nHost: kv\r\n\r\n".to_vec()),
        (
            "HTTP/1.1 POST to a gRPC path",
            b"POST /kv.v1.KvService/Get HTTP/1.1\r\nHost: kv\r\nContent-Length: 5\r\n\r\n\0\0\0\0\0"
                .to_vec(),
        ),
        ("preface then garbage", [PREFACE, &noise(512)].concat()),
        ("half a preface", PREFACE[..10].to_vec()),
        ("SETTINGS of a bad length", with_preface(&[frame(4, 0, 0, &[0, 1, 2])])),
        ("frame longer than allowed", with_preface(&[[vec![0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1], noise(64)].concat()])),
        ("HEADERS on stream 0", with_preface(&[frame(1, 4, 0, &request_headers)])),
        ("DATA on an idle stream", with_preface(&[frame(0, 1, 7, b"hello")])),
        ("even (server) stream id", with_preface(&[frame(1, 5, 2, &request_headers)])),
        ("undecodable header block", with_preface(&[frame(1, 5, 1, &noise(64))])),
        ("WINDOW_UPDATE of 0", with_preface(&[frame(8, 0, 0, &[0, 0, 0, 0])])),
    ];
    // Floods: CONTINUATION without end, SETTINGS and PING by the thousand.
    let mut continuation = vec![frame(1, 0, 1, &request_headers)];
    continuation.extend((0..5000).map(|_| {
        frame(
            9,
            0,
            1,
            &hpack("x-flood", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        )
    }));
    raw_cases.push(("CONTINUATION flood", with_preface(&continuation)));
    let settings_flood: Vec<Vec<u8>> = (0..10_000).map(|_| frame(4, 0, 0, &[])).collect();
    raw_cases.push(("SETTINGS flood", with_preface(&settings_flood)));
    let ping_flood: Vec<Vec<u8>> = (0..10_000).map(|_| frame(6, 0, 0, &[0; 8])).collect();
    raw_cases.push(("PING flood", with_preface(&ping_flood)));
    let mut count = 0;
    for (name, bytes) in &raw_cases {
        let began = Instant::now();
        let met = raw(&addr, bytes).await;
        assert_ne!(
            met,
            Met::Silent,
            "{name}: no answer and no close within {LIMIT:?}"
        );
        eprintln!("{name}: {met:?} after {:?}", began.elapsed());
        count += 1;
    }

    // Rapid reset (CVE-2023-44487): open and cancel streams as fast as possible.
    {
        let tcp = TcpStream::connect(&addr).await.expect("connect");
        let (mut client, connection) = h2::client::handshake(tcp).await.expect("handshake");
        let connection = tokio::spawn(connection);
        let mut sent = 0;
        for _ in 0..2000 {
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}{GET}"))
                .header("content-type", "application/grpc")
                .body(())
                .expect("request");
            let Ok(ready) = client.clone().ready().await else {
                break;
            };
            client = ready;
            let Ok((_, mut stream)) = client.send_request(request, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        drop(client);
        let ended = tokio::time::timeout(LIMIT, connection).await;
        eprintln!(
            "rapid reset: {sent} streams opened and reset; connection ended: {}",
            ended.is_ok()
        );
        count += 1;
    }

    // Hundreds of idle connections, and slowloris ones trickling a preface: the server closes
    // every one of them after the idle timeout (2 s), while the steady client goes on.
    {
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(TcpStream::connect(&addr).await.expect("connect"));
        }
        let mut slow = Vec::new();
        for _ in 0..30 {
            slow.push(TcpStream::connect(&addr).await.expect("connect"));
        }
        for byte in &PREFACE[..12] {
            for conn in &mut slow {
                let _ = conn.write_all(&[*byte]).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut waits = tokio::task::JoinSet::new();
        for mut conn in idle.into_iter().chain(slow) {
            waits.spawn(async move {
                // The server's SETTINGS may come first; then the end of the stream (or a reset).
                let mut buf = [0u8; 1024];
                while let Ok(1..) = conn.read(&mut buf).await {}
            });
        }
        // Every one of the 330 ends within the limit (the timeout is the check).
        tokio::time::timeout(Duration::from_secs(10), waits.join_all())
            .await
            .expect("the server closes idle and slowloris connections after --idle-timeout");
        count += 2;
    }

    // Malformed gRPC calls: each gets a defined status.
    let key = |k: &[u8]| field(1, k);
    let cases: Vec<Call> = vec![
        (
            "unknown method",
            "/kv.v1.KvService/Nope",
            vec![],
            whole(&key(b"a")),
            &[UNIMPLEMENTED],
        ),
        (
            "unknown service",
            "/x.Y/Z",
            vec![],
            whole(&[]),
            &[UNIMPLEMENTED],
        ),
        (
            "a service's name without a method",
            "/kv.v1.KvService",
            vec![],
            whole(&key(b"a")),
            &[UNIMPLEMENTED],
        ),
        (
            "unknown method of health",
            "/grpc.health.v1.Health/Nope",
            vec![],
            whole(&[]),
            &[UNIMPLEMENTED],
        ),
        (
            "undecodable protobuf",
            GET,
            vec![],
            whole(&[0xff, 0xff, 0xff, 0x0f]),
            &[INVALID_ARGUMENT],
        ),
        (
            "invalid UTF-8 in a key",
            GET,
            vec![],
            whole(&key(&[0xc3, 0x28, 0xff])),
            &[INVALID_ARGUMENT],
        ),
        (
            "truncated message",
            GET,
            vec![],
            grpc_frame(0, 10, &key(b"a")),
            &[INVALID_ARGUMENT],
        ),
        (
            "prefix longer than the body",
            GET,
            vec![],
            grpc_frame(0, 1000, b"abc"),
            &[INVALID_ARGUMENT],
        ),
        (
            "prefix over the limit",
            GET,
            vec![],
            grpc_frame(0, 100 << 20, b"abc"),
            &[RESOURCE_EXHAUSTED],
        ),
        (
            "compressed flag, no encoding",
            GET,
            vec![],
            grpc_frame(1, 3, &key(b"a")),
            &[UNIMPLEMENTED, INTERNAL],
        ),
        (
            "oversized message",
            PUT,
            vec![],
            whole(&[key(b"big"), field(2, &vec![b'v'; 2 << 20])].concat()),
            &[RESOURCE_EXHAUSTED],
        ),
        (
            "no message at all",
            GET,
            vec![],
            vec![],
            &[INVALID_ARGUMENT, INTERNAL, UNIMPLEMENTED],
        ),
        (
            "half a frame header",
            GET,
            vec![],
            vec![0, 0],
            &[INVALID_ARGUMENT],
        ),
        (
            "two messages in a unary call",
            GET,
            vec![],
            [whole(&key(b"a")), whole(&key(b"b"))].concat(),
            &[INVALID_ARGUMENT, INTERNAL, UNIMPLEMENTED, 5],
        ),
        ("empty key", GET, vec![], whole(&[]), &[INVALID_ARGUMENT]),
        (
            "key over 1 KiB",
            GET,
            vec![],
            whole(&key(&vec![b'k'; 1025])),
            &[INVALID_ARGUMENT],
        ),
        (
            "request id of 17 bytes",
            PUT,
            vec![],
            whole(&[key(b"a"), field(2, b"v"), field(4, &[7; 17])].concat()),
            &[INVALID_ARGUMENT],
        ),
        (
            "malformed grpc-timeout",
            GET,
            vec![("grpc-timeout", "soon")],
            whole(&key(b"missing")),
            &[5, INTERNAL, INVALID_ARGUMENT],
        ),
        (
            "huge grpc-timeout",
            GET,
            vec![("grpc-timeout", "99999999H")],
            whole(&key(b"missing")),
            &[5],
        ),
        (
            "unknown grpc-encoding",
            GET,
            vec![("grpc-encoding", "lz77")],
            grpc_frame(1, 3, b"abc"),
            &[UNIMPLEMENTED, INTERNAL],
        ),
    ];
    for (name, path, headers, body, allowed) in &cases {
        let answer = call(&addr, path, headers, body.clone()).await;
        let ok = matches!(answer, Answer::Grpc(code) if allowed.contains(&code));
        assert!(ok, "{name}: {answer:?}, expected one of {allowed:?}");
        count += 1;
    }
    // Wrong content type and oversized metadata: an HTTP refusal, a status or a reset.
    let text = call(
        &addr,
        GET,
        &[("content-type", "text/plain")],
        b"hello".to_vec(),
    )
    .await;
    assert!(
        matches!(text, Answer::Http(415) | Answer::Grpc(_) | Answer::Closed),
        "content type: {text:?}"
    );
    let big = "m".repeat(64 * 1024);
    let metadata = call(&addr, GET, &[("x-big", &big)], whole(&key(b"a"))).await;
    assert!(
        matches!(metadata, Answer::Http(_) | Answer::Grpc(_) | Answer::Closed),
        "{metadata:?}"
    );
    count += 2;
    eprintln!("{count} bad-input cases answered");
    assert!(count >= 30, "at least 30 cases");

    // The well-behaved client was served throughout.
    stop.cancel();
    let (mut latencies, acked, failed) = steady.await.expect("steady client");
    latencies.sort_unstable();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    eprintln!("well-behaved client: {acked} increments, {failed} failed, p99 {p99:?}");
    assert!(acked > 0, "served during the attacks");
    assert_eq!(failed, 0, "never refused or lost");

    // The stored data is unchanged, before and after a restart.
    let check = |url: String| async move {
        let client = GrpcClient::connect(&url, ClientOptions::default())
            .await
            .expect("connect");
        for n in 0..10 {
            let found = client
                .get(&format!("seed{n}"))
                .await
                .expect("get")
                .expect("present");
            assert_eq!(
                (found.value.as_str(), found.version),
                (format!("value {n}").as_str(), 1)
            );
        }
        let steady = client.get("steady").await.expect("get").expect("present");
        assert_eq!(
            steady.value,
            steady.version.to_string(),
            "the counter is exact"
        );
        steady.version
    };
    let before = check(url).await;
    assert!(before >= acked, "every acknowledged increment is stored");
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(server.wait().expect("exit").success());
    let (mut again, addr) = start(&log);
    let after = check(format!("http://{addr}")).await;
    assert_eq!(after, before, "the same after a restart");
    let _ = again.kill();
    let _ = again.wait();
}
