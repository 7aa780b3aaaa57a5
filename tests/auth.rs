//! Bearer-token authentication on the real binary, over real sockets: every way to get the
//! header wrong is UNAUTHENTICATED, health stays open, kvctl and `GrpcClient` send the token,
//! SIGHUP rotates the tokens (and refuses a bad file), and no token ever reaches the logs or
//! the metrics.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::kvctl;
use kvcore::{
    client::{ClientOptions, GrpcClient, PutOutcome},
    proto::{GetRequest, kv_service_client::KvServiceClient},
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Server {
    child: Child,
    addr: String,
    metrics: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(tokens: &Path, log: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--auth-token-file")
        .arg(tokens)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).expect("log file")))
        .spawn()
        .expect("kv-server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut line = || lines.next().expect("a line").expect("utf-8");
    let addr = line()
        .strip_prefix("listening on ")
        .expect("ready")
        .to_owned();
    let metrics = line()
        .strip_prefix("metrics on ")
        .expect("metrics")
        .to_owned();
    Server {
        child,
        addr,
        metrics,
    }
}

/// One Get with `authorization` set as given (or not at all); the code it got.
async fn get_with(channel: &Channel, authorization: Option<&str>) -> Code {
    let mut request = tonic::Request::new(GetRequest {
        key: "never-written".into(),
    });
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ascii"));
    }
    match KvServiceClient::new(channel.clone()).get(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Waits until `authorization` gets `want` (a SIGHUP reload is asynchronous).
async fn until(channel: &Channel, authorization: &str, want: Code) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if get_with(channel, Some(authorization)).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn bearer_tokens_matrix_rotation_and_secrecy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    let log = dir.path().join("kv-server.log");
    std::fs::write(&tokens, "# ops team\nalpha-token-7f3a\nbeta-token-91c2\n").expect("tokens");
    let server = start(&tokens, &log);
    let url = format!("http://{}", server.addr);
    let channel = Channel::from_shared(url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");

    for (authorization, want) in [
        (None, Code::Unauthenticated),
        (Some("Bearer wrong-token"), Code::Unauthenticated),
        (Some("Bearer alpha-token"), Code::Unauthenticated),
        (Some("Bearer alpha-token-7f3a0"), Code::Unauthenticated),
        (Some("alpha-token-7f3a"), Code::Unauthenticated),
        (Some("Basic alpha-token-7f3a"), Code::Unauthenticated),
        (Some("Bearer alpha-token-7f3a"), Code::NotFound),
        (Some("Bearer beta-token-91c2"), Code::NotFound),
    ] {
        assert_eq!(
            get_with(&channel, authorization).await,
            want,
            "{authorization:?}"
        );
    }
    let check = HealthCheckRequest {
        service: "kv.v1.KvService".into(),
    };
    HealthClient::new(channel.clone())
        .check(check)
        .await
        .expect("health is open without a token");

    // kvctl: without a token it is refused (exit 1) and says how to give one.
    let (code, _, err) = kvctl(&server.addr, &["put", "k", "v"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("unauthenticated") && err.contains("--token-file"),
        "{err}"
    );
    let client_token = dir.path().join("client-token");
    std::fs::write(&client_token, "beta-token-91c2\n").expect("client token");
    let with_token = ["--token-file", client_token.to_str().expect("utf-8 path")];
    let (code, out, err) = kvctl(
        &server.addr,
        &[&with_token[..], &["put", "k", "v"]].concat(),
    );
    assert_eq!((code, out.as_str()), (0, "written: version 1\n"), "{err}");

    // GrpcClient sends its token with every call.
    let options = ClientOptions {
        token: Some("alpha-token-7f3a".into()),
        ..ClientOptions::default()
    };
    let client = GrpcClient::connect(&url, options).await.expect("connect");
    let outcome = client.put("k", "w", 1).await.expect("put");
    assert!(
        matches!(outcome, PutOutcome::Written { version: 2, .. }),
        "{outcome:?}"
    );

    // SIGHUP rotation: alpha out, gamma in.
    std::fs::write(&tokens, "beta-token-91c2\ngamma-token-c0de\n").expect("rotated tokens");
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    };
    hangup();
    assert!(
        until(&channel, "Bearer gamma-token-c0de", Code::NotFound).await,
        "gamma in"
    );
    assert!(
        until(&channel, "Bearer alpha-token-7f3a", Code::Unauthenticated).await,
        "alpha out"
    );
    // A bad new file is refused with an error, and the tokens in force stay.
    std::fs::write(&tokens, "# nobody\n").expect("empty token file");
    hangup();
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .expect("log")
        .contains("token file refused")
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the refusal is logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get_with(&channel, Some("Bearer gamma-token-c0de")).await,
        Code::NotFound
    );

    // No token anywhere in the logs (at debug) or the metrics.
    let mut metrics = std::net::TcpStream::connect(&server.metrics).expect("metrics");
    metrics
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut page = String::new();
    metrics.read_to_string(&mut page).expect("page");
    assert!(
        page.contains("grpc_code=\"UNAUTHENTICATED\""),
        "refusals are counted"
    );
    let logs = std::fs::read_to_string(&log).expect("log");
    for secret in ["alpha-token-7f3a", "beta-token-91c2", "gamma-token-c0de"] {
        assert!(!logs.contains(secret), "a token in the log");
        assert!(!page.contains(secret), "a token in the metrics");
    }
}
