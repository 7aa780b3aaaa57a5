//! Serving the accepted connections over HTTP/2, with hyper.
//!
//! tonic's own `serve` wraps the stack once more for every connection (its error recovery, a
//! `grpc-timeout` layer, a layer that copies the connection's info into every request), boxes
//! that, and clones the box for every request. Here each connection gets the stack with its
//! [`Activity`](super::conn::Activity) record around it, and each request a plain clone of that
//! (reference counts; nothing allocated), as hyper-util's glue makes. 1.3k–1.5k fewer
//! instructions a call, of about 50k.
//!
//! The clone is deliberate: calling the connection's stack in place (it is only ever called
//! from the connection's task) saved 0.7k more, but it ran every layer's `call` on the
//! connection's task, which also reads and writes every frame of the connection. A gRPC client
//! usually sends all its calls over one connection, so that task is the one that cannot spread
//! over cores; the clone leaves the layers to the call's own task, as tonic does.
//!
//! Kept from tonic's `serve`: a service's error becomes the call's status (tonic's
//! `RecoverError`); HTTP/2 only; keepalive pings and the stream limit; at shutdown the listener
//! closes at once, every connection being served is told to go away, and the calls in flight
//! finish (connections accepted but not yet served, or still in their TLS handshake, are
//! closed, as under tonic). Unlike tonic's, the drain is bounded: connections still open a
//! request timeout later (a stream that never ends by itself, like a health `Watch`) are
//! closed. Not needed: tonic's `grpc-timeout` layer, as `DeadlineLayer` inside
//! the stack applies a client's timeout (and the server's cap) to every call.
//!
//! hyper's keepalive bookkeeping reads its timer's clock on every frame it receives and every
//! time it polls a connection, five times a call, and polls its sleep every time too; its
//! timer here is tokio's with the coarse clock of [`super::clock`] for those reads, and sleeps
//! that cost next to nothing to poll before they ring.
//!
//! One difference: hyper's cap on the streams h2 itself resets because of a client's errors
//! (flow-control violations, frames for streams it has already closed and forgotten, streams
//! past the limit) stays on: 1,024 over a connection's life, then GOAWAY. tonic turns it off;
//! hyper advises keeping it (RUSTSEC-2024-0003). Answers the server ends early (a request over
//! the size limit refused before it is read) count only when the client keeps sending on more
//! than 50 such streams within a second, which a well-behaved client never does.

use std::{future::Future, pin::pin};

use bytes::Bytes;
use grpc_layers::BoxError;
use http::{Request, Response};
use hyper::server::conn::http2;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::task::JoinSet;
use tonic::{body::Body, service::RecoverError};
use tower::{Service, ServiceExt};

use super::{
    Limits,
    clock::CoarseTimer,
    conn::{ActivityService, Incoming},
};

/// Serves every connection `incoming` yields through `stack` until `shutdown` completes; then
/// stops accepting and returns once every connection has closed (each is asked to go away,
/// and finishes the calls it has open), or after `limits.request_timeout`, closing the rest.
pub(crate) async fn serve<S, B>(
    mut incoming: Incoming,
    stack: S,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(CoarseTimer)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    let connections = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let conn = tokio::select! {
            () = &mut shutdown => break,
            conn = incoming.next() => match conn {
                Some(conn) => conn,
                None => break,
            },
            // Forget the connections that have closed.
            Some(_) = tasks.join_next() => continue,
        };
        let service = ActivityService::new(stack.clone(), conn.activity());
        let service = RecoverError::new(service).map_request(body as fn(_) -> _);
        let service = TowerToHyperService::new(service);
        let connection = connections.watch(http2.serve_connection(TokioIo::new(conn), service));
        tasks.spawn(async move {
            if let Err(err) = connection.await {
                // Debug, so the cause (an I/O error, a protocol error) is printed too.
                tracing::debug!(?err, "a connection ended with an error");
            }
        });
    }
    // Closes the listener: a client connecting now is refused, not left waiting.
    drop(incoming);
    // Every call ends within the request timeout, so what is still open after it is a stream
    // that would never end by itself (a health `Watch`): it must not hold the shutdown up.
    let grace = limits.request_timeout;
    if tokio::time::timeout(grace, connections.shutdown())
        .await
        .is_err()
    {
        // Count only the connections still open.
        while tasks.try_join_next().is_some() {}
        tracing::warn!(
            connections = tasks.len(),
            ?grace,
            "connections still open a request timeout after shutdown began: closing them"
        );
        tasks.shutdown().await;
    }
}

/// A request's body as the stack takes it.
fn body(req: Request<hyper::body::Incoming>) -> Request<Body> {
    req.map(Body::new)
}
