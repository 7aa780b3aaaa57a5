//! A faulting proxy in front of a kv.v1 server we did not start.
//!
//! Server-side faults cannot be injected into somebody else's process, so the runner puts one
//! of these on loopback in front of each target and points its clients at it. It forwards
//! every KvService call as it is (headers, body and trailers, `grpc-status-details-bin` and
//! `kv-replayed` included) over one HTTP/2 connection to the target, through our `FaultLayer`:
//! a dropped response is a write the target applied whose answer never arrives, which is what
//! tests a server's replay of retried writes. A [`Schedule`] adds phases in time on top: drop
//! rates for a while, or a pause that holds every call until it ends (a partition that heals).

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use grpc_layers::{
    deadline::DeadlineLayer,
    grpc::{GRPC_TIMEOUT, format_timeout, parse_timeout},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use grpc_layers::fault::{FaultConfig, FaultLayer, FaultStats};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Status,
    body::Body,
    server::NamedService,
    transport::{Channel, ClientTlsConfig, Server},
};

use super::{Phase, RunnerError};
use crate::{client::channel_endpoint, error::with_causes, server::KV_SERVICE, validate::PUT_PATH};

/// A fault schedule as the proxy applies it, from the moment the proxy starts.
#[derive(Debug)]
pub struct Schedule {
    phases: Vec<Phase>,
    /// The run's start, set by [`Schedule::start`]; before it nothing is in force.
    start: OnceLock<Instant>,
    dice: Mutex<StdRng>,
    injected: AtomicU64,
}

impl Schedule {
    /// `phases` (see [`Phase`]), in force once [`start`](Self::start) is called; `seed`
    /// drives the drop decisions.
    pub fn new(phases: Vec<Phase>, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            phases,
            start: OnceLock::new(),
            dice: Mutex::new(StdRng::seed_from_u64(seed)),
            injected: AtomicU64::new(0),
        })
    }

    /// Starts the clock the phases count from (the clients' start); later calls do nothing.
    pub fn start(&self, at: Instant) {
        let _ = self.start.set(at);
    }

    /// Seconds since the start, or `None` before it.
    fn now(&self) -> Option<(Instant, f64)> {
        let start = *self.start.get()?;
        Some((start, start.elapsed().as_secs_f64()))
    }

    /// Calls held, requests dropped and answers dropped so far because of the schedule.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn roll(&self, percent: f64) -> bool {
        percent > 0.0
            && self
                .dice
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random_bool((percent / 100.0).min(1.0))
    }

    /// When the pause in force now ends, if one is.
    fn paused_until(&self) -> Option<Instant> {
        let (start, now) = self.now()?;
        self.phases
            .iter()
            .filter(|p| p.pause && p.covers(now))
            .map(|p| start + Duration::from_secs_f64(p.at + p.duration))
            .max()
    }

    /// The drop rates in force now: (requests, responses).
    fn rates(&self) -> (f64, f64) {
        let Some((_, now)) = self.now() else {
            return (0.0, 0.0);
        };
        self.phases
            .iter()
            .filter(|p| p.covers(now))
            .fold((0.0, 0.0), |(req, resp), p| {
                (req.max(p.drop_requests), resp.max(p.drop_responses))
            })
    }

    fn count(&self) {
        self.injected.fetch_add(1, Ordering::Relaxed);
    }
}

/// Forwards each call to the target (through the schedule, if any).
#[derive(Clone, Debug)]
struct Forward {
    target: Channel,
    schedule: Option<Arc<Schedule>>,
}

fn dropped(what: &str) -> http::Response<Body> {
    Status::unavailable(format!("{what} dropped by the fault schedule")).into_http()
}

impl NamedService for Forward {
    const NAME: &'static str = KV_SERVICE;
}

impl tower::Service<http::Request<Body>> for Forward {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let target = self.target.clone();
        let schedule = self.schedule.clone();
        Box::pin(async move {
            let is_put = request.uri().path() == PUT_PATH;
            let mut drop_response = false;
            if let Some(schedule) = &schedule {
                // Back-to-back or overlapping pauses hold the call until the last one ends.
                let arrived = Instant::now();
                let mut held = false;
                while let Some(until) = schedule.paused_until() {
                    held = true;
                    tokio::time::sleep_until(until.into()).await;
                }
                if held {
                    schedule.count();
                    // The target gets what is left of the caller's deadline, not all of it.
                    if let Some(timeout) =
                        request.headers().get(GRPC_TIMEOUT).and_then(parse_timeout)
                    {
                        match timeout.checked_sub(arrived.elapsed()) {
                            Some(left) if !left.is_zero() => {
                                request
                                    .headers_mut()
                                    .insert(GRPC_TIMEOUT, format_timeout(left));
                            }
                            _ => {
                                return Ok(Status::deadline_exceeded(
                                    "the deadline passed while the fault schedule held the call",
                                )
                                .into_http());
                            }
                        }
                    }
                }
                let (requests, responses) = schedule.rates();
                if schedule.roll(requests) {
                    schedule.count();
                    return Ok(dropped("request"));
                }
                drop_response = is_put && schedule.roll(responses);
            }
            match tower::ServiceExt::oneshot(target, request).await {
                Ok(_) if drop_response => {
                    if let Some(schedule) = &schedule {
                        schedule.count();
                    }
                    Ok(dropped("answer"))
                }
                Ok(response) => Ok(response),
                // The caller sees what it would have seen talking to the target directly:
                // tonic's mapping of the transport error (a refused connection is UNAVAILABLE,
                // a reset stream CANCELLED or INTERNAL, and so on).
                Err(err) => Ok(Status::from_error(Box::new(err)).into_http()),
            }
        })
    }
}

/// A running proxy on loopback; [`FaultProxy::stop`] it when done.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    stats: FaultStats,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) to `target` (`http://HOST:PORT`, or
    /// `https://…` with `tls`), injecting `faults` into the calls they select (use
    /// `FaultConfig::new(seed)` for none). Connects to the target on the first call.
    pub async fn start(
        target: &str,
        tls: Option<&ClientTlsConfig>,
        faults: FaultConfig,
    ) -> Result<Self, RunnerError> {
        Self::start_with_schedule(target, tls, faults, None).await
    }

    /// [`start`](Self::start), also applying `schedule` (outside the steady faults: a paused
    /// call is held before anything else happens to it).
    pub async fn start_with_schedule(
        target: &str,
        tls: Option<&ClientTlsConfig>,
        faults: FaultConfig,
        schedule: Option<Arc<Schedule>>,
    ) -> Result<Self, RunnerError> {
        let channel = channel_endpoint(target, tls)
            .map_err(|e| RunnerError::Other(format!("target {target}: {}", with_causes(&e))))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let faults = FaultLayer::new(faults).map_err(|e| {
            RunnerError::Config(super::ConfigError::Invalid {
                field: "server_packet_loss_rate".into(),
                reason: e.to_string(),
            })
        })?;
        let stats = faults.stats();
        let listener =
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|source| RunnerError::Bind {
                    addr: "127.0.0.1:0".into(),
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|e| RunnerError::Other(e.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Server::builder()
                // A call past its grpc-timeout ends with DEADLINE_EXCEEDED, as at the target.
                .layer(DeadlineLayer::new())
                .layer(faults)
                .add_service(Forward {
                    target: channel,
                    schedule,
                })
                .serve_with_incoming_shutdown(crate::server::incoming(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(Self {
            addr,
            stats,
            stop,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` + [`addr`](Self::addr).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the fault layer injected so far.
    pub fn stats(&self) -> FaultStats {
        self.stats.clone()
    }

    /// Stops accepting and waits for the calls in flight.
    pub async fn stop(self) -> Result<(), RunnerError> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| RunnerError::Other(format!("the proxy failed: {e}")))?
            .map_err(|e| RunnerError::Other(format!("the proxy failed: {}", with_causes(&e))))
    }
}
