//! Clients that never read their answers, measured on the real binary (its RSS read from
//! /proc):
//! - HTTP/2 clients that ask for 1 MiB values on hundreds of streams and never grant flow
//!   control, while fresh health checks keep arriving on the same connections: memory stays
//!   bounded by the in-flight limit (an answer not taken holds its place), the connections are
//!   closed after the request timeout (the oldest waiting answer decides, not the newest), and
//!   a well-behaved client is served again;
//! - a client that grants huge windows and then stops reading its socket: the server's writes
//!   block, and it closes the connection after the request timeout;
//! - a health Watch, which waits on the server and not on the client, is not taken for either.

mod common;

use std::time::{Duration, Instant};

use common::raw::{field, frame, whole};
use kvcore::client::{ClientOptions, GrpcClient};

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// A client of the server at `addr`, which now holds a 1 MiB value at "big".
async fn with_big_value(addr: &str) -> GrpcClient {
    let client = GrpcClient::connect(&format!("http://{addr}"), ClientOptions::default())
        .await
        .expect("connect");
    client
        .put("big", &"x".repeat(1 << 20), 0)
        .await
        .expect("a 1 MiB value");
    client
}

const CONNECTIONS: usize = 8;
const STREAMS: usize = 200;
const MAX_IN_FLIGHT: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_stay_bounded() {
    let (mut child, addr) = common::spawn_kv_server(&[
        "--max-in-flight",
        &MAX_IN_FLIGHT.to_string(),
        "--request-timeout",
        "2",
    ]);
    let pid = child.id();
    let client = with_big_value(&addr).await;
    client.get("big").await.expect("warm-up read");
    let baseline = rss_mib(pid);

    // 8 connections x 200 streams, each asking for the 1 MiB value; nobody reads an answer.
    // (h2 grants flow control only as a body is read, so after 64 KiB the server may send no
    // more on each connection.)
    let body = bytes::Bytes::from(whole(&field(1, b"big")));
    let mut held = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let (mut h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(connection);
        for _ in 0..STREAMS {
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}/kv.v1.KvService/Get"))
                .header("te", "trailers")
                .header("content-type", "application/grpc")
                .body(())
                .expect("request");
            h2 = h2.ready().await.expect("a stream");
            let (response, mut send) = h2.send_request(request, false).expect("send");
            send.send_data(body.clone(), true).expect("body");
            held.push((response, send));
        }
        connections.push(h2);
    }

    // Meanwhile, and until the connections close, a health check arrives on every connection
    // every 300 ms: fresh answers must not hide the old ones waiting.
    let check_uri = format!("http://{addr}/grpc.health.v1.Health/Check");
    let done = tokio_util::sync::CancellationToken::new();
    let checking = done.clone();
    let checker = tokio::spawn(async move {
        let mut checks = Vec::new();
        while !checking.is_cancelled() {
            let mut open = 0;
            for h2 in &mut connections {
                let request = http::Request::builder()
                    .method("POST")
                    .uri(&check_uri)
                    .header("te", "trailers")
                    .header("content-type", "application/grpc")
                    .body(())
                    .expect("request");
                if let Ok((response, mut send)) = h2.send_request(request, false) {
                    let _ = send.send_data(bytes::Bytes::from(whole(&[])), true);
                    checks.push((response, send));
                    open += 1;
                }
            }
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        checks.len()
    });

    // The peak while they sit there, sampled for 1.5 s (less than the 2 s request timeout).
    let mut peak = baseline;
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(1500) {
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each answer not taken holds one place: about 3 copies of 1 MiB each (the stored value,
    // the response message, its encoding), so 64 places are about 200 MiB. Without the bound
    // the 1600 answers took over 3 GiB.
    let bound = 3.0 * MAX_IN_FLIGHT as f64 + 64.0;
    eprintln!(
        "slow readers: RSS {baseline:.0} MiB before, peak {peak:.0} MiB with {} unread 1 MiB \
         answers (bound {bound:.0} MiB above the start)",
        CONNECTIONS * STREAMS
    );
    assert!(
        peak - baseline < bound,
        "RSS grew by {:.0} MiB",
        peak - baseline
    );

    // Past the request timeout the stalled connections are closed: their streams end, the
    // memory goes back, and a well-behaved client is served (it may be refused while the
    // places are still held).
    let deadline = Instant::now() + Duration::from_secs(15);
    let served = loop {
        match client.get("big").await {
            Ok(Some(read)) => break read,
            other => {
                assert!(Instant::now() < deadline, "never served again: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(served.value.len(), 1 << 20);
    done.cancel();
    let mut ended = 0;
    for (response, _send) in held {
        match tokio::time::timeout(Duration::from_secs(5), response).await {
            Ok(Err(_)) => ended += 1,
            Ok(Ok(response)) => {
                // An answer head arrived (or a refusal); its body must end, not hang.
                let mut body = response.into_body();
                let drained = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(chunk) = body.data().await {
                        if chunk.is_err() {
                            break;
                        }
                    }
                })
                .await;
                assert!(drained.is_ok(), "a stalled stream stayed open");
                ended += 1;
            }
            Err(_) => panic!("a stalled stream stayed open"),
        }
    }
    assert_eq!(ended, CONNECTIONS * STREAMS);
    let checks = checker.await.expect("the checker");
    assert!(checks > CONNECTIONS, "health checks were sent: {checks}");
    eprintln!(
        "slow readers: RSS {:.0} MiB after the stalled connections closed",
        rss_mib(pid)
    );
    child.kill().expect("kill");
    let _ = child.wait();
}

/// A gRPC request's header block: HPACK literals without indexing (no Huffman).
fn request_headers(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "x"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// A client that opens huge flow-control windows, asks for 1 MiB on 100 streams and never
/// reads its socket: the server's writes block, and the connection is closed after the
/// request timeout (its buffered answers with it), while other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_socket_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut child, addr) = common::spawn_kv_server(&["--request-timeout", "2"]);
    let pid = child.id();
    let client = with_big_value(&addr).await;
    let baseline = rss_mib(pid);

    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let max_window: u32 = (1 << 31) - 1;
    let mut settings = vec![0, 4]; // SETTINGS_INITIAL_WINDOW_SIZE
    settings.extend_from_slice(&max_window.to_be_bytes());
    bytes.extend(frame(4, 0, 0, &settings));
    bytes.extend(frame(8, 0, 0, &(max_window - 65_535).to_be_bytes()));
    let get = whole(&field(1, b"big"));
    for n in 0..100u32 {
        let stream = 2 * n + 1;
        bytes.extend(frame(
            1,
            0x4,
            stream,
            &request_headers("/kv.v1.KvService/Get"),
        ));
        bytes.extend(frame(0, 0x1, stream, &get));
    }
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    silent.write_all(&bytes).await.expect("the requests");

    let mut peak = baseline;
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(1500) {
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Others are served meanwhile.
    let read = client.get("big").await.expect("a get meanwhile");
    assert_eq!(read.map(|v| v.value.len()), Some(1 << 20));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Closed by the server: reading now finds what it had sent, then the end.
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n @ 1..) = silent.read(&mut buf).await {
            got += n;
        }
    })
    .await;
    eprintln!(
        "non-reading client: RSS {baseline:.0} MiB before, peak {peak:.0} MiB; {} MiB had \
         reached its socket when the server closed it",
        got >> 20
    );
    assert!(
        ended.is_ok(),
        "the server kept a client that stopped reading"
    );
    assert!(
        got < 100 << 20,
        "the server sent every answer: nothing was held back"
    );
    child.kill().expect("kill");
    let _ = child.wait();
}

/// A health Watch waits on the server, not on the client: the connection stays open well past
/// the request timeout, and both the watch and calls on the same connection go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_not_a_slow_reader() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let (mut child, addr) = common::spawn_kv_server(&["--request-timeout", "1"]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("a status").expect("one");
    assert_eq!(first.status, 1, "SERVING");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet = tokio::time::timeout(Duration::from_millis(200), watch.message()).await;
    assert!(quiet.is_err(), "the watch ended: {quiet:?}");
    let mut kv = kvcore::proto::kv_service_client::KvServiceClient::new(channel);
    let missing = kv
        .get(kvcore::proto::GetRequest { key: "k".into() })
        .await
        .expect_err("not found");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    child.kill().expect("kill");
    let _ = child.wait();
}
