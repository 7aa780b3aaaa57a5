//! Shared helpers for integration tests: real servers on 127.0.0.1:0.
#![allow(dead_code, missing_docs)]

pub mod pki;
pub mod raw;

use std::{net::SocketAddr, sync::Arc};

use kvcore::{
    ServerOptions,
    proto::kv_service_client::KvServiceClient,
    storage::{MemoryStorage, Storage},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// A server running in this process; dropping it without `stop` aborts nothing, so call it.
pub struct TestServer {
    /// Where clients connect: the server, or with `KV_TEST_VIA_PROXY=1` the chaos runner's
    /// faulting proxy (no faults) in front of it.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), kvcore::ServeError>>,
    proxy: Option<kvcore::runner::proxy::FaultProxy>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> KvServiceClient<Channel> {
        KvServiceClient::connect(self.url())
            .await
            .expect("connecting to the test server")
    }

    /// Shuts down gracefully and returns what `serve` returned.
    pub async fn stop(mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.stop().await.expect("the proxy stops");
        }
        let _ = self.stop.take().expect("stop called once").send(());
        self.task
            .await
            .expect("server task panicked")
            .expect("server stopped with an error");
    }
}

/// Starts a server on the in-memory backend.
pub async fn start_server() -> TestServer {
    start_server_with(Arc::new(MemoryStorage::new())).await
}

/// Starts a server over `storage` on 127.0.0.1:0.
pub async fn start_server_with(storage: Arc<dyn Storage>) -> TestServer {
    start_server_opts(storage, ServerOptions::default()).await
}

/// Starts a server over `storage` with the given stack options on 127.0.0.1:0.
pub async fn start_server_opts(storage: Arc<dyn Storage>, options: ServerOptions) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(kvcore::serve(listener, storage, options, async {
        let _ = stopped.await;
    }));
    // KV_TEST_VIA_PROXY=1: the same tests, through the proxy `kvctl chaos` puts in front of
    // servers it did not start, prove that it forwards every byte of the contract.
    let proxy = match std::env::var("KV_TEST_VIA_PROXY").as_deref() {
        Ok("1") => Some(
            kvcore::runner::proxy::FaultProxy::start(
                &format!("http://{addr}"),
                None,
                grpc_layers::fault::FaultConfig::new(0),
            )
            .await
            .expect("the proxy starts"),
        ),
        _ => None,
    };
    TestServer {
        addr: proxy.as_ref().map_or(addr, |p| p.addr()),
        stop: Some(stop),
        task,
        proxy,
    }
}

/// Starts the `kv-server` binary on 127.0.0.1:0 with `extra` flags; returns it with the address
/// from its ready line.
pub fn spawn_kv_server(extra: &[&str]) -> (std::process::Child, String) {
    spawn_kv_server_to(extra, std::process::Stdio::null())
}

/// [`spawn_kv_server`] with its stderr (the logs) going to `stderr`.
pub fn spawn_kv_server_to(
    extra: &[&str],
    stderr: std::process::Stdio,
) -> (std::process::Child, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        // The tests read the default (info) logs, whatever the caller's environment says.
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting kv-server");
    let addr = ready_addr(&mut child);
    (child, addr)
}

/// The address in the `listening on IP:PORT` line a server (kv-server, `kvctl bench-server`)
/// prints first on its piped stdout.
pub fn ready_addr(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the ready line");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned()
}

/// The etcd cluster to test against (`KV_TEST_ETCD=HOST:PORT[,HOST:PORT…]`, which
/// `scripts/test.sh` sets), or `None` to skip. Under `CI=true` a missing etcd is a failure.
pub fn etcd_endpoints() -> Option<Vec<String>> {
    match std::env::var("KV_TEST_ETCD") {
        Ok(list) if !list.is_empty() => Some(list.split(',').map(str::to_owned).collect()),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("etcd not running: run scripts/test.sh (KV_TEST_ETCD is unset)")
        }
        _ => {
            eprintln!(
                "skipping: etcd not running: run scripts/test.sh, or set \
                 KV_TEST_ETCD=HOST:PORT[,HOST:PORT...]"
            );
            None
        }
    }
}

/// A key prefix no earlier run used, ending in `/`.
pub fn fresh_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("kvtest/{test}/{}-{nanos}-{n}/", std::process::id())
}

/// Runs the `kvctl` binary against `endpoint` (HOST:PORT or a URL, as given) and returns
/// (exit code, stdout, stderr).
pub fn kvctl(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--endpoint", endpoint])
        .args(args)
        .output()
        .expect("running kvctl");
    (
        out.status.code().expect("kvctl exited normally"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
