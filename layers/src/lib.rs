//! Tower layers for any gRPC service: authentication, fault injection, validation, metrics,
//! retry and load shedding.
//!
//! Every layer works on plain `http::Request<B>` / `http::Response<B>`, so the same layer
//! stacks on a server (`tonic::transport::Server::builder().layer(..)`) and around a client
//! `Channel` (`tower::ServiceBuilder::new().layer(..).service(channel)` handed to a generated
//! client). They learn the method from the URI path (`/pkg.Service/Method`) and the outcome from
//! `grpc-status` in the response headers or trailers; none of them knows any proto.
//!
//! Errors a layer produces itself are `tonic::Status` values boxed as [`BoxError`]: on the
//! server tonic's `RecoverError` turns them into real status responses, and on the client
//! `tonic::Status::from_error` recovers the exact code.
//!
//! Modules: [`grpc`] (shared wire helpers) · [`auth`] · [`fault`] · [`validate`] · [`metrics`] · [`retry`]
//! · [`shed`] (load shedding) · [`deadline`] (server-side deadlines).

pub mod auth;
pub mod deadline;
pub mod fault;
pub mod grpc;
pub mod metrics;
pub mod retry;
pub mod shed;
pub mod validate;

pub use grpc::{BoxError, GrpcMethod, MethodFilter};
