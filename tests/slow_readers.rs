//! Clients that never read their answers: HTTP/2 clients that ask for 1 MiB values on hundreds
//! of streams and never grant flow control. The server's memory stays bounded by the in-flight
//! limit (an answer not taken holds its place), the stalled connections are closed after the
//! request timeout, the memory is given back, and a well-behaved client is served again.
//! Measured on the real binary: its RSS is read from /proc.

mod common;

use std::time::{Duration, Instant};

use common::raw::{field, whole};
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
    let client = GrpcClient::connect(&format!("http://{addr}"), ClientOptions::default())
        .await
        .expect("connect");
    client
        .put("big", &"x".repeat(1 << 20), 0)
        .await
        .expect("a 1 MiB value");
    client.get("big").await.expect("warm-up read");
    let baseline = rss_mib(pid);

    // 8 connections x 200 streams, each asking for the 1 MiB value; nobody reads an answer.
    // (h2 grants flow control only as a body is read, so after 64 KiB the server may send no
    // more on each connection.)
    let body = bytes::Bytes::from(whole(&field(1, b"big")));
    let mut held = Vec::new();
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
    }

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
    eprintln!(
        "slow readers: RSS {:.0} MiB after the stalled connections closed",
        rss_mib(pid)
    );
    child.kill().expect("kill");
    let _ = child.wait();
}
