//! A small etcd v3 client: the two KV calls kvcore needs, spread over every member of a cluster.
//!
//! Why our own: the crates.io etcd clients compile etcd's protos with a system `protoc` in their
//! build scripts, so a fresh machine with only Rust could not build kvcore with etcd in it. We
//! compile the few messages we use (`proto/etcd/kv.proto`) with the vendored protoc instead.
//!
//! Every member given is used: calls go round-robin over the members that answered last. A
//! member that fails at the transport level (refused, reset, timed out, no leader) is set aside
//! and probed in the background until it serves a linearizable read again, so a dead member
//! costs the calls that found it dead, not one call in N forever. A call is sent again to the
//! next member only when that is provably harmless: reads always, writes only when the
//! connection was refused (the request never left this process). Any other failure of a write
//! is returned as is: it may have been applied.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tonic::{
    Code, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use crate::etcd::proto::{
    RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_client::KvClient,
};

pub mod ops;

/// Generated types of `proto/etcd/kv.proto` (etcd's package `etcdserverpb`, client side only).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("etcdserverpb");
}

/// How an [`EtcdClient`] talks to the cluster.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Deadline of one call to one member (a stopped member answers nothing).
    pub request_timeout: Duration,
    /// Deadline of one TCP connect.
    pub connect_timeout: Duration,
    /// How often a member that failed is probed until it serves again.
    pub probe_interval: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_millis(500),
        }
    }
}

/// The largest response we accept: a page of [`crate::limits`]-sized values with room to spare.
const MAX_RESPONSE_BYTES: usize = 128 << 20;

#[derive(Debug)]
struct Member {
    endpoint: String,
    kv: KvClient<Channel>,
    /// False from a transport failure until a probe read succeeds.
    healthy: AtomicBool,
    /// True while a probe task runs, so a burst of failures starts one probe, not many.
    probing: AtomicBool,
}

#[derive(Debug)]
struct Inner {
    members: Vec<Member>,
    next: AtomicUsize,
    options: EtcdOptions,
}

/// A client of an etcd cluster's KV service. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

/// An endpoint list that cannot become a client.
#[derive(Debug, thiserror::Error)]
#[error("invalid etcd endpoint {endpoint:?}: {reason}")]
pub struct EndpointError {
    endpoint: String,
    reason: String,
}

impl EtcdClient {
    /// A client of the members at `endpoints` (`HOST:PORT` or `http://HOST:PORT`). Connections
    /// are opened on first use, so this succeeds whether or not the cluster is up.
    pub fn new(endpoints: &[String], options: EtcdOptions) -> Result<Self, EndpointError> {
        if endpoints.is_empty() {
            return Err(EndpointError {
                endpoint: String::new(),
                reason: "no endpoint given".into(),
            });
        }
        let members = endpoints
            .iter()
            .map(|endpoint| {
                let url = if endpoint.contains("://") {
                    endpoint.clone()
                } else {
                    format!("http://{endpoint}")
                };
                let channel = Endpoint::from_shared(url)
                    .map_err(|e| EndpointError {
                        endpoint: endpoint.clone(),
                        reason: e.to_string(),
                    })?
                    .connect_timeout(options.connect_timeout)
                    .timeout(options.request_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(2))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                Ok(Member {
                    endpoint: endpoint.clone(),
                    kv: KvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES),
                    healthy: AtomicBool::new(true),
                    probing: AtomicBool::new(false),
                })
            })
            .collect::<Result<_, EndpointError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                members,
                next: AtomicUsize::new(0),
                options,
            }),
        })
    }

    /// The members this client was given, in order.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.inner.members.iter().map(|m| m.endpoint.as_str())
    }

    /// How many members currently count as serving.
    pub fn healthy_members(&self) -> usize {
        self.inner
            .members
            .iter()
            .filter(|m| m.healthy.load(Ordering::Relaxed))
            .count()
    }

    /// `Range`, sent again to the next member if one fails at the transport level (a read has
    /// no effect to repeat).
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        self.call(
            true,
            None,
            request,
            |mut kv, r| async move { kv.range(r).await },
        )
        .await
    }

    /// `Range` with at most `per_member` for each member tried: a member that does not answer
    /// in time is set aside like a failed one and the next is asked. For health checks, which
    /// must answer within their own deadline even when one member hangs.
    pub async fn range_within(
        &self,
        request: RangeRequest,
        per_member: Duration,
    ) -> Result<RangeResponse, Status> {
        let range = |mut kv: KvClient<Channel>, r| async move { kv.range(r).await };
        self.call(true, Some(per_member), request, range).await
    }

    /// `Txn`, sent again to another member only if the connection was refused; on any other
    /// failure it may have been applied.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        self.call(
            false,
            None,
            request,
            |mut kv, r| async move { kv.txn(r).await },
        )
        .await
    }

    async fn call<Req: Clone, Resp, F, Fut>(
        &self,
        idempotent: bool,
        per_member: Option<Duration>,
        request: Req,
        send: F,
    ) -> Result<Resp, Status>
    where
        F: Fn(KvClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let members = &self.inner.members;
        let mut last = None;
        for _ in 0..members.len() {
            let index = self.pick();
            let member = &members[index];
            let mut message = tonic::Request::new(request.clone());
            // A member that has lost its leader refuses at once instead of waiting for one.
            message
                .metadata_mut()
                .insert("hasleader", MetadataValue::from_static("true"));
            let sent = send(member.kv.clone(), message);
            let answer = match per_member {
                None => sent.await,
                Some(limit) => tokio::time::timeout(limit, sent).await.unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "no answer within {limit:?}"
                    )))
                }),
            };
            match answer {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if member_failed(&status) => {
                    self.set_aside(index);
                    let again = idempotent || never_sent(&status);
                    last = Some(with_member(status, &member.endpoint));
                    if !again {
                        break;
                    }
                }
                Err(status) => return Err(status),
            }
        }
        Err(last.expect("the loop runs at least once: a client has at least one member"))
    }

    /// The next member in round-robin order that counts as serving; if none does, the next
    /// one anyway (the call then fails fast, or succeeds if the cluster is back).
    fn pick(&self) -> usize {
        let members = &self.inner.members;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % members.len();
        (0..members.len())
            .map(|i| (start + i) % members.len())
            .find(|&i| members[i].healthy.load(Ordering::Relaxed))
            .unwrap_or(start)
    }

    /// Marks member `index` as failed and probes it until it serves a linearizable read.
    fn set_aside(&self, index: usize) {
        let member = &self.inner.members[index];
        member.healthy.store(false, Ordering::Relaxed);
        if member.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let member = &inner.members[index];
            loop {
                tokio::time::sleep(inner.options.probe_interval).await;
                let probe = RangeRequest {
                    key: b"\0".to_vec(),
                    count_only: true,
                    ..RangeRequest::default()
                };
                if member.kv.clone().range(probe).await.is_ok() {
                    member.healthy.store(true, Ordering::Relaxed);
                    member.probing.store(false, Ordering::Release);
                    tracing::info!(member = %member.endpoint, "etcd member serves again");
                    return;
                }
                // Stop probing once every client handle is gone (the store was dropped).
                if Arc::strong_count(&inner) == 1 {
                    return;
                }
            }
        });
        tracing::warn!(member = %member.endpoint, "etcd member failed: set aside until it serves");
    }
}

/// Whether a status says the member (or its path to a leader) failed, rather than the request.
fn member_failed(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    )
}

/// Whether the request provably never reached the member: the connection was refused.
fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = error.source();
    }
    false
}

/// The status with the member that gave it named in the message.
fn with_member(status: Status, endpoint: &str) -> Status {
    Status::new(
        status.code(),
        format!("etcd member {endpoint}: {}", status.message()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls go round-robin over every member, and a member set aside is skipped until it is
    /// healthy again.
    #[tokio::test]
    async fn picks_round_robin_and_skips_failed_members() {
        let endpoints: Vec<String> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .map(String::from)
            .to_vec();
        let client = EtcdClient::new(&endpoints, EtcdOptions::default()).expect("valid");
        let picks: Vec<usize> = (0..6).map(|_| client.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        client.inner.members[1]
            .healthy
            .store(false, Ordering::Relaxed);
        let picks: Vec<usize> = (0..4).map(|_| client.pick()).collect();
        assert!(!picks.contains(&1), "a failed member was picked: {picks:?}");
        for m in &client.inner.members {
            m.healthy.store(false, Ordering::Relaxed);
        }
        let picks: Vec<usize> = (0..3).map(|_| client.pick()).collect();
        assert_eq!(picks.len(), 3, "with every member down, calls still go out");
    }

    /// A refused connection proves the request never left; the status names the member.
    #[tokio::test]
    async fn a_refused_connection_is_recognised() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let client =
            EtcdClient::new(std::slice::from_ref(&addr), EtcdOptions::default()).expect("valid");
        let err = client
            .txn(TxnRequest::default())
            .await
            .expect_err("nothing listens there");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains(&addr), "{err:?}");
        assert_eq!(client.healthy_members(), 0);
        let member = &client.inner.members[0];
        let status = member
            .kv
            .clone()
            .txn(TxnRequest::default())
            .await
            .expect_err("still nothing there");
        assert!(never_sent(&status), "{status:?}");
    }

    /// A write that reached a member and failed there is not sent again (it may have been
    /// applied); one refused at connect is sent to the next member.
    #[tokio::test]
    async fn only_refused_writes_go_to_the_next_member() {
        use std::sync::atomic::AtomicUsize;
        // A member that accepts connections and closes them at once.
        let hangup = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let hangup_addr = hangup.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = hangup.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        let refused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let refused_addr = refused.local_addr().expect("addr").to_string();
        drop(refused);

        let both = [refused_addr.clone(), hangup_addr.clone()];
        let client = EtcdClient::new(&both, EtcdOptions::default()).expect("valid");
        let err = client
            .txn(TxnRequest::default())
            .await
            .expect_err("no etcd");
        assert!(
            err.message().contains(&hangup_addr),
            "went on to the next: {err:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let hangup_first = [hangup_addr.clone(), refused_addr];
        let client = EtcdClient::new(&hangup_first, EtcdOptions::default()).expect("valid");
        let err = client
            .txn(TxnRequest::default())
            .await
            .expect_err("no etcd");
        assert!(err.message().contains(&hangup_addr), "not resent: {err:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "one connection, no second try"
        );
    }

    /// An empty endpoint list and a malformed endpoint are refused.
    #[test]
    fn rejects_bad_endpoints() {
        assert!(EtcdClient::new(&[], EtcdOptions::default()).is_err());
        let bad = EtcdClient::new(&["http://[bad".into()], EtcdOptions::default());
        assert!(bad.is_err());
    }
}
