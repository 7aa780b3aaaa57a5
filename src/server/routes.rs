//! Each call to its service, by the service name in its path.
//!
//! tonic's `Routes` is an axum router: for every call it matches the path against a pattern
//! (`/{service}/{*rest}`), decodes and stores the captured rest of it in the request's
//! extensions, and boxes the request and response bodies into axum's and back into tonic's.
//! Without it a call costs 3.6k–3.7k fewer instructions (of 48k–51k), and nothing here
//! uses what it captures. A gRPC path is `/{service}/{method}`, and kv-server serves four
//! services, so [`Routes`] compares the service part ([`split_path`]) with their names and
//! hands the request, as it is, to the service tonic generated; that service matches the
//! method (and answers UNIMPLEMENTED for one it does not have), as under tonic's router. A
//! path naming no service we serve, or not of that shape, is answered UNIMPLEMENTED too, as
//! tonic's router answers it.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use grpc_layers::grpc::split_path;
use http::{Request, Response};
use tonic::{Status, body::Body, codegen::BoxFuture, server::NamedService};
use tower::Service;

use crate::{proto::kv_service_server::KvServiceServer, service::KvService};

/// kv.v1 and the services beside it: health and reflection (v1 and v1alpha). Their types are
/// tonic's generated servers; health's and reflection's implementations cannot be named,
/// hence the parameters.
#[derive(Debug)]
pub(crate) struct Services<H, R1, R1a> {
    pub(crate) kv: KvServiceServer<KvService>,
    pub(crate) health: H,
    pub(crate) reflection_v1: R1,
    pub(crate) reflection_v1alpha: R1a,
}

/// The router: the services behind one reference count, as the stack (this included) is
/// cloned for every request, and each clone of a generated server is a reference count more,
/// in memory every core touches.
#[derive(Debug)]
pub(crate) struct Routes<H, R1, R1a>(Arc<Services<H, R1, R1a>>);

impl<H, R1, R1a> Routes<H, R1, R1a> {
    pub(crate) fn new(services: Services<H, R1, R1a>) -> Self {
        Self(Arc::new(services))
    }
}

impl<H, R1, R1a> Clone for Routes<H, R1, R1a> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<H, R1, R1a> Service<Request<Body>> for Routes<H, R1, R1a>
where
    H: Generated,
    R1: Generated,
    R1a: Generated,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = CallFuture;

    /// Always ready: tonic's generated servers are (their `poll_ready` returns `Ready` at
    /// once), so `call` needs no readiness of the one it picks.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// The chosen service is cloned to be called (a generated server's `call` takes `&mut`,
    /// and clones its implementation into the call's future anyway).
    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let services = &*self.0;
        // A path of another shape names no service: answered UNIMPLEMENTED below.
        let service = split_path(req.uri().path()).map_or("", |(service, _)| service);
        if service == <KvServiceServer<KvService> as NamedService>::NAME {
            services.kv.clone().call(req)
        } else if service == H::NAME {
            services.health.clone().call(req)
        } else if service == R1::NAME {
            services.reflection_v1.clone().call(req)
        } else if service == R1a::NAME {
            services.reflection_v1alpha.clone().call(req)
        } else {
            Box::pin(std::future::ready(
                Ok(Status::unimplemented("").into_http()),
            ))
        }
    }
}

/// The future of a call to a server tonic generated (boxed by the generated code).
pub(crate) type CallFuture = BoxFuture<Response<Body>, Infallible>;

/// What a server tonic generated is, as a service of [`Routes`].
pub(crate) trait Generated:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = CallFuture>
    + NamedService
    + Clone
{
}

impl<S> Generated for S where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = CallFuture>
        + NamedService
        + Clone
{
}
