//! TLS and mutual TLS on the real binaries, over real sockets: the matrix of right and wrong
//! clients (plaintext to TLS, TLS to plaintext, a client trusting another CA, mTLS without a
//! certificate, with one from another CA, with an expired one, with a good one), a TLS
//! handshake that never comes, and SIGHUP rotation of the certificate and the token together
//! (a bad new certificate is refused and the old one stays). Certificates are made per run with
//! rcgen.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    kvctl,
    pki::{Ca, write},
};
use kvcore::client::{ClientOptions, GrpcClient, PutOutcome, tls_from_files};
use tokio::io::AsyncReadExt;

/// A kv-server child, killed on drop, with its log file.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let log = dir.join(format!("kv-server-{}.log", rand::random::<u32>()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_kv-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            // The connection-level decisions (handshake failures, idle closes) are at debug.
            .env("RUST_LOG", "info,kvcore=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("kv-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("kv-server did not start: {line:?}"))
            .to_owned();
        Self { child, addr, log }
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The files of one test: two CAs, a server certificate from `a`, client certificates from
/// `a` (good and expired) and from `b`.
struct Pki {
    dir: tempfile::TempDir,
    ca_a: PathBuf,
    ca_b: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client: (PathBuf, PathBuf),
    client_b: (PathBuf, PathBuf),
    client_expired: (PathBuf, PathBuf),
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (Ca::new("test CA a"), Ca::new("test CA b"));
        let d = dir.path();
        let (server_cert, server_key) = a.leaf_files(d, "server", false);
        Self {
            ca_a: write(d, "ca-a.crt", &a.pem),
            ca_b: write(d, "ca-b.crt", &b.pem),
            server_cert,
            server_key,
            client: a.leaf_files(d, "client", false),
            client_b: b.leaf_files(d, "client-b", false),
            client_expired: a.leaf_files(d, "client-expired", true),
            dir,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn server_args(&self) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
        vec![
            "--tls-cert".into(),
            s(&self.server_cert),
            "--tls-key".into(),
            s(&self.server_key),
        ]
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// kvctl `put KEY VALUE` with extra global flags; (exit code, stderr).
fn put(endpoint: &str, flags: &[&str], key: &str) -> (i32, String) {
    let mut args = flags.to_vec();
    args.extend(["--timeout", "3", "put", key, "v"]);
    let (code, _, stderr) = kvctl(endpoint, &args);
    eprintln!("kvctl put {key}: exit {code}: {}", stderr.trim());
    (code, stderr)
}

#[test]
fn tls_matrix_over_real_sockets() {
    let pki = Pki::new();
    let tls = Server::start(pki.path(), &strs(&pki.server_args()));
    let plain = Server::start(pki.path(), &[]);
    let https = format!("https://{}", tls.addr);

    // A client trusting the server's CA gets through, with https:// or with HOST:PORT + --ca.
    let (code, stderr) = put(&https, &["--ca", p(&pki.ca_a)], "k1");
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = put(&tls.addr, &["--ca", p(&pki.ca_a)], "k2");
    assert_eq!(code, 0, "{stderr}");

    // Plaintext to the TLS server: no answer that passes for one.
    let (code, stderr) = put(&format!("http://{}", tls.addr), &[], "k3");
    assert_eq!(code, 3, "plaintext to TLS: {stderr}");

    // TLS to the plaintext server.
    let (code, stderr) = put(&plain.addr, &["--ca", p(&pki.ca_a)], "k4");
    assert_eq!(code, 3, "TLS to plaintext: {stderr}");

    // A client trusting another CA refuses the server's certificate.
    let (code, stderr) = put(&https, &["--ca", p(&pki.ca_b)], "k5");
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    // TLS options with a plaintext URL are a usage error, not a silent downgrade.
    let (code, stderr) = put(
        &format!("http://{}", tls.addr),
        &["--ca", p(&pki.ca_a)],
        "k6",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("use https://"), "{stderr}");

    // Files that hold no certificate or key are usage errors that name the file.
    let junk = write(pki.path(), "junk.pem", "not PEM at all\n");
    let (code, stderr) = put(&https, &["--ca", p(&junk)], "k7");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("junk.pem: holds no CERTIFICATE"),
        "{stderr}"
    );
    let cert = p(&pki.client.0);
    let (code, stderr) = put(
        &https,
        &["--ca", p(&pki.ca_a), "--cert", cert, "--key", p(&junk)],
        "k8",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("junk.pem: holds no usable private key"),
        "{stderr}"
    );

    // The keys written over TLS are there; the refused ones are not.
    for (key, want) in [("k1", 0), ("k2", 0), ("k3", 1), ("k4", 1), ("k5", 1)] {
        let (code, _, stderr) = kvctl(&https, &["--ca", p(&pki.ca_a), "get", key]);
        assert_eq!(code, want, "get {key}: {stderr}");
    }
}

#[test]
fn mutual_tls_matrix_over_real_sockets() {
    let pki = Pki::new();
    let mut args = pki.server_args();
    args.extend(["--tls-client-ca".into(), pki.ca_a.display().to_string()]);
    let server = Server::start(pki.path(), &strs(&args));
    let https = format!("https://{}", server.addr);
    let ca = ["--ca", p(&pki.ca_a)];
    fn with<'a>(ca: &[&'a str], (cert, key): &'a (PathBuf, PathBuf)) -> Vec<&'a str> {
        let mut flags = ca.to_vec();
        flags.extend(["--cert", p(cert), "--key", p(key)]);
        flags
    }

    let (code, stderr) = put(&https, &ca, "no-cert");
    assert_eq!(code, 3, "mTLS without a client certificate: {stderr}");
    let (code, stderr) = put(&https, &with(&ca, &pki.client_b), "other-ca");
    assert_eq!(code, 3, "mTLS with another CA's certificate: {stderr}");
    let (code, stderr) = put(&https, &with(&ca, &pki.client_expired), "expired");
    assert_eq!(code, 3, "mTLS with an expired certificate: {stderr}");
    let (code, stderr) = put(&https, &with(&ca, &pki.client), "good");
    assert_eq!(code, 0, "mTLS with a good certificate: {stderr}");

    // The server says why, at debug.
    let log = server.log();
    for reason in [
        "sent no certificates",
        "UnknownIssuer",
        "certificate expired",
    ] {
        assert!(log.contains(reason), "no {reason} in the log:\n{log}");
    }

    // Only the good client's write is stored.
    for (key, want) in [("good", 0), ("no-cert", 1), ("other-ca", 1), ("expired", 1)] {
        let (code, _, stderr) = kvctl(&https, &[with(&ca, &pki.client), vec!["get", key]].concat());
        assert_eq!(code, want, "get {key}: {stderr}");
    }
}

/// A TCP connection that never starts its TLS handshake is dropped after
/// `--handshake-timeout`, and a plaintext one that never sends a request after
/// `--idle-timeout`; a client that idles past the timeout simply reconnects.
#[tokio::test]
async fn silent_connections_are_closed() {
    let pki = Pki::new();
    let mut args = pki.server_args();
    args.extend(["--handshake-timeout", "1", "--idle-timeout", "2"].map(String::from));
    let tls = Server::start(pki.path(), &strs(&args));
    let plain = Server::start(pki.path(), &["--idle-timeout", "1"]);

    for (addr, within) in [
        (&tls.addr, Duration::from_secs(4)),
        (&plain.addr, Duration::from_secs(4)),
    ] {
        let began = Instant::now();
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(within, async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {} // the plaintext server's SETTINGS
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{addr}: a silent connection stayed open");
        assert!(
            began.elapsed() >= Duration::from_millis(900),
            "closed too early"
        );
    }

    // A TLS client idle past the timeout is served again on its next call.
    let options = ClientOptions {
        tls: Some(tls_from_files(Some(&pki.ca_a), None).expect("tls")),
        ..ClientOptions::default()
    };
    let client = GrpcClient::connect(&format!("https://{}", tls.addr), options)
        .await
        .expect("connect over TLS");
    assert!(matches!(
        client.put("idle", "1", 0).await.expect("put"),
        PutOutcome::Written { version: 1, .. }
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        tls.log().contains("closing an idle connection"),
        "the client's connection was closed:\n{}",
        tls.log()
    );
    let read = client
        .get("idle")
        .await
        .expect("a get after the idle timeout");
    assert_eq!(read.map(|v| v.version), Some(1));
}

/// One SIGHUP rotates the certificate and the token together; a bad certificate file is then
/// refused with an error, and the server keeps the certificate in force.
#[test]
fn sighup_rotates_certificate_and_token() {
    let pki = Pki::new();
    let d = pki.path();
    let tokens = write(d, "tokens", "old-token\n");
    let old_token = write(d, "old.token", "old-token\n");
    let new_token = write(d, "new.token", "new-token\n");
    let mut args = pki.server_args();
    args.extend(["--auth-token-file".into(), tokens.display().to_string()]);
    let server = Server::start(d, &strs(&args));
    let https = format!("https://{}", server.addr);

    // Before: CA a and the old token.
    let trust_a = ["--ca", p(&pki.ca_a), "--token-file", p(&old_token)];
    let (code, stderr) = put(&https, &trust_a, "before");
    assert_eq!(code, 0, "{stderr}");

    // The new certificate comes from CA c, written over the files in place.
    let c = Ca::new("test CA c");
    let ca_c = write(d, "ca-c.crt", &c.pem);
    let (cert, key) = c.leaf("kv-server rotated", false);
    std::fs::write(&pki.server_cert, cert).expect("new cert");
    std::fs::write(&pki.server_key, key).expect("new key");
    std::fs::write(&tokens, "new-token\n").expect("new tokens");
    server.hangup();

    let trust_c = ["--ca", p(&ca_c), "--token-file", p(&new_token)];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, stderr) = put(&https, &trust_c, "after");
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "rotation not seen: {stderr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The old CA and the old token are out.
    let (code, stderr) = put(&https, &trust_a, "old-cert");
    assert_eq!(code, 3, "the old certificate is still served: {stderr}");
    let (code, stderr) = put(
        &https,
        &["--ca", p(&ca_c), "--token-file", p(&old_token)],
        "old-token",
    );
    assert_eq!(code, 1, "the old token still works: {stderr}");
    assert!(stderr.contains("unauthenticated"), "{stderr}");

    // A broken certificate file is refused; the rotated certificate stays in force.
    std::fs::write(&pki.server_cert, "not a certificate\n").expect("broken cert");
    server.hangup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("TLS files refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, stderr) = put(&https, &trust_c, "after-bad-file");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !server.log().contains("new-token"),
        "a token reached the log"
    );
}
