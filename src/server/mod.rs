//! The server entry point: `serve(listener, storage, options, shutdown)`, and its layer stack.
//!
//! The binary, the runner, the examples and the tests all start servers through this one
//! function, so they run exactly the same stack. A call passes, outermost first:
//!
//! | layer | why there |
//! |---|---|
//! | tower-http `TraceLayer` (gRPC), when debug logs are on | one span per call, whatever happens below; failures at debug |
//! | `MetricsLayer::server()`, unless [`ServerOptions::without_metrics`] | counts every call, refused and faulted ones included |
//! | `AuthLayer` (bearer tokens, when configured) | unauthenticated calls go no further; health is open |
//! | `ShedLayer` (KvService only) | calls past the in-flight limit are refused at once |
//! | `DeadlineLayer` | a call ends at its `grpc-timeout` or the server's limit: DEADLINE_EXCEEDED |
//! | `ValidateLayer` (KV rules) | bad (or oversized) requests never reach faults or storage |
//! | `FaultLayer`, when it can inject anything | injected loss around the service only (health and reflection are spared) |
//! | KvService, `grpc.health.v1`, reflection (v1 and v1alpha) | picked by the service name in the path (`routes.rs`, not tonic's axum router) |
//!
//! Around it all, each connection counts its open calls and untaken answers for its timers
//! (`conn.rs`, which also caps connections and does the TLS handshake), and hyper serves the
//! connections (`http2.rs`, not tonic's `serve`: see there why).

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use grpc_layers::{
    BoxError, MethodFilter,
    auth::{AuthLayer, Tokens},
    deadline::DeadlineLayer,
    fault::{FaultConfig, FaultConfigError, FaultLayer, FaultStats},
    metrics::{MetricsHandle, MetricsLayer},
    shed::{ShedLayer, ShedStats},
};
use http_body_util::Either as EitherBody;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tower::{
    ServiceBuilder,
    layer::util::Stack,
    util::{Either, MapErrLayer, MapResponseLayer},
};
use tower_http::{classify::GrpcFailureClass, trace::TraceLayer};

use self::routes::{Routes, Services};
use crate::{
    proto::{FILE_DESCRIPTOR_SET, kv_service_server::KvServiceServer},
    service::KvService,
    storage::{Storage, StorageError},
    validate::kv_validate_layer,
};

/// The gRPC service name faults apply to by default.
pub const KV_SERVICE: &str = "kv.v1.KvService";

mod clock;
mod conn;
mod http2;
mod limits;
mod routes;
mod tls;

pub use limits::Limits;
pub use tls::{ServerTls, TlsError, TlsFiles};

/// How the server stack is configured. `ServerOptions::default()` injects no faults and has
/// the default [`Limits`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    faults: FaultLayer,
    metrics: MetricsLayer,
    collect_metrics: bool,
    health_interval: Duration,
    limits: Limits,
    shed: ShedLayer,
    tokens: Option<Tokens>,
    tls: Option<ServerTls>,
}

fn shed_layer(limits: &Limits) -> ShedLayer {
    ShedLayer::with_methods(limits.max_in_flight, MethodFilter::service(KV_SERVICE))
}

/// A fault layer that injects nothing (the default of both the server and the client stack).
pub(crate) fn no_faults() -> FaultLayer {
    let none = FaultConfig::new(0).methods(MethodFilter::service(KV_SERVICE));
    FaultLayer::new(none).expect("a fault config without faults is valid")
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            faults: no_faults(),
            metrics: MetricsLayer::server(),
            collect_metrics: true,
            health_interval: Duration::from_secs(1),
            shed: shed_layer(&Limits::default()),
            limits: Limits::default(),
            tokens: None,
            tls: None,
        }
    }
}

impl ServerOptions {
    /// Injects faults as `config` says. Give it `MethodFilter::service(KV_SERVICE)` (or a subset
    /// of its methods) to keep health checks and reflection unfaulted.
    pub fn faults(mut self, config: FaultConfig) -> Result<Self, FaultConfigError> {
        self.faults = FaultLayer::new(config)?;
        Ok(self)
    }

    /// How often the backend is asked whether it can serve ([`Storage::check`]); the answer
    /// is what `grpc.health.v1` reports. Default: 1 s.
    pub fn health_interval(mut self, every: Duration) -> Self {
        self.health_interval = every;
        self
    }

    /// Requires `authorization: Bearer <token>` with one of `tokens` on every KvService and
    /// reflection call (health stays open for load balancers); others get UNAUTHENTICATED
    /// before any other layer but the trace and the metrics sees them. `tokens` is shared:
    /// replacing its contents (on SIGHUP, say) takes effect at once.
    pub fn auth(mut self, tokens: Tokens) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Serves over TLS (mutual TLS when `tls` names a client CA). `tls` is shared: a
    /// [`ServerTls::reload`] (on SIGHUP, say) applies to the connections that arrive after it.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Replaces the resource limits (see [`Limits`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.shed = shed_layer(&limits);
        self.limits = limits;
        self
    }

    /// How many calls the in-flight limit let through and refused so far.
    pub fn shed_stats(&self) -> ShedStats {
        self.shed.stats()
    }

    /// What the fault layer injected so far. (A configuration that injects nothing leaves the
    /// layer out of the stack, so it counts no passed calls either.)
    pub fn fault_stats(&self) -> FaultStats {
        self.faults.stats()
    }

    /// Leaves the metrics layer out of the stack, for a server whose metrics nobody reads:
    /// it costs about 2 % of a call's CPU (counters, a histogram, clock reads, the response's
    /// code looked up), and its counters are shared by every core. [`metrics`](Self::metrics)
    /// then reads zeros. kv-server does this unless `--metrics-listen` is given.
    pub fn without_metrics(mut self) -> Self {
        self.collect_metrics = false;
        self
    }

    /// The server's gRPC metrics, readable in-process and as Prometheus text.
    pub fn metrics(&self) -> MetricsHandle {
        self.metrics.handle()
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor set.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Flushing storage at shutdown failed: acknowledged writes may not be durable.
    #[error("flushing storage at shutdown failed: {0}")]
    Flush(#[from] StorageError),
}

/// Serves KvService on `listener` through the stack `options` describes until `shutdown`
/// completes, then stops accepting, lets in-flight calls finish, and flushes `storage`.
///
/// `grpc.health.v1` reports SERVING while [`Storage::check`] succeeds and NOT_SERVING while it
/// fails (for KvService and for the whole server, `""`); calls are served either way.
pub async fn serve(
    listener: TcpListener,
    storage: Arc<dyn Storage>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KvServiceServer<KvService>>().await;
    let watcher = tokio::spawn(watch_health(
        Arc::clone(&storage),
        health,
        options.health_interval,
    ));
    // Both reflection versions: grpcurl before 1.8.8, evans, grpcui, Postman and Python's
    // grpc_reflection speak only v1alpha. google.rpc's error details are registered so tools
    // can decode the BadRequest of an INVALID_ARGUMENT, not only our VersionMismatch.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // Every outcome a client causes (conflicts, refusals, bad requests, shed or timed-out
    // calls, and UNKNOWN, which here means a request body lost with its connection when the
    // client went away) is traced at debug only, so the layer is there only when those logs
    // are on: it cost 3 % of a call's CPU (a span, clock reads, the status classified) to
    // write nothing at info. Storage failures are logged by the service, with their message,
    // whatever the level. Nothing of ours answers DATA_LOSS; with debug logs on, one from
    // anywhere would be logged here as an ERROR.
    let debug_logs = tracing::enabled!(tracing::Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace", tracing::Level::DEBUG);
    let trace = TraceLayer::new_for_grpc().on_failure(
        |class: GrpcFailureClass, latency: Duration, _: &tracing::Span| match class {
            GrpcFailureClass::Status(status) if status.code_raw() == 15 => {
                tracing::error!(%status, ?latency, "call failed")
            }
            other => tracing::debug!(%other, ?latency, "call failed"),
        },
    );
    let trace = present_if(debug_logs, trace);
    let metrics = present_if(options.collect_metrics, options.metrics);
    let bounds = &options.limits;
    // Present only when tokens are configured: without them the stack has no auth step at all.
    let auth = options.tokens.map(|tokens| {
        AuthLayer::bearer(tokens).methods(MethodFilter::Services(
            [
                KV_SERVICE,
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
            .map(String::from)
            .into(),
        ))
    });
    let routes = Routes::new(Services {
        kv: KvService::new(Arc::clone(&storage))
            .into_server()
            .max_decoding_message_size(bounds.max_message_bytes),
        health: health_service,
        reflection_v1,
        reflection_v1alpha,
    });
    // Outermost first. Each connection adds its activity record around it (see `http2`).
    let stack = ServiceBuilder::new()
        .layer(trace)
        .layer(metrics)
        .layer(tower::util::option_layer(auth))
        .layer(options.shed)
        .layer(DeadlineLayer::at_most(bounds.request_timeout))
        .layer(kv_validate_layer().limit(bounds.max_message_bytes))
        // Present only when it can inject something: a layer that never does still rolls and
        // counts every call on a counter all cores share.
        .layer(match options.faults.config().is_noop() {
            false => Either::Left(options.faults),
            true => Either::Right(MapErrLayer::new(never as fn(_) -> _)),
        })
        .service(routes);
    let incoming = conn::incoming(listener, bounds, options.tls);
    http2::serve(incoming, stack, bounds, shutdown).await;
    watcher.abort();
    storage.flush().await?;
    Ok(())
}

/// The response mapping that marks a body as the present layer's ...
type LeftBody<B, U> = fn(http::Response<B>) -> http::Response<EitherBody<B, U>>;
/// ... or as the inner one, the layer being absent.
type RightBody<B, U> = fn(http::Response<U>) -> http::Response<EitherBody<B, U>>;
/// A layer that may be left out; see [`present_if`].
type MaybeLayer<L, B, U> =
    Either<Stack<L, MapResponseLayer<LeftBody<B, U>>>, MapResponseLayer<RightBody<B, U>>>;

/// `layer` when `present`, else nothing. Either way the response body is an Either of the two
/// (the layer's body, or the inner one), so the stack has one type.
fn present_if<L, B, U>(present: bool, layer: L) -> MaybeLayer<L, B, U> {
    match present {
        true => Either::Left(Stack::new(
            layer,
            MapResponseLayer::new(|response: http::Response<B>| response.map(EitherBody::Left)),
        )),
        false => Either::Right(MapResponseLayer::new(|response: http::Response<U>| {
            response.map(EitherBody::Right)
        })),
    }
}

/// A fault layer's error type for an inner service that has no errors.
fn never(never: Infallible) -> BoxError {
    match never {}
}

/// Asks `storage` every `interval` whether it can serve and reports the answer on health.
async fn watch_health(
    storage: Arc<dyn Storage>,
    health: tonic_health::server::HealthReporter,
    interval: Duration,
) {
    use tonic_health::ServingStatus;
    let mut serving = true;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer =
            match tokio::time::timeout(interval.max(Duration::from_secs(2)), storage.check()).await
            {
                Ok(answer) => answer,
                Err(_) => Err(StorageError::Unavailable(
                    "the health check timed out".into(),
                )),
            };
        if answer.is_ok() == serving {
            continue;
        }
        serving = answer.is_ok();
        let status = match &answer {
            Ok(()) => {
                tracing::info!("storage serves again: health SERVING");
                ServingStatus::Serving
            }
            Err(err) => {
                tracing::warn!(%err, "storage cannot serve: health NOT_SERVING");
                ServingStatus::NotServing
            }
        };
        health.set_service_status("", status).await;
        health.set_service_status(KV_SERVICE, status).await;
    }
}

/// Prints one line on stdout for whoever started us. A reader that has gone (a closed pipe)
/// must not take the server down with it, so write errors are ignored.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Completes on SIGINT or SIGTERM. The handlers are installed here, at once, not when the
/// future is first polled: a signal sent right after the `listening on` line must stop the
/// server cleanly (flushing storage), not kill it outright or go unseen.
pub fn shutdown_signal() -> Result<impl Future<Output = ()>, std::io::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received: finishing in-flight calls");
    })
}

/// Accepted connections with Nagle's algorithm off: small unary answers must not wait for the
/// peer's delayed ACK (a 40 ms stall per call otherwise).
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves `metrics` as Prometheus text at `GET /metrics` on `listener` until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: MetricsHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render_prometheus(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
