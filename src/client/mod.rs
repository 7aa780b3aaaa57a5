//! Clients of KvService: the layered channel stack and `GrpcClient` on top of it.

mod endpoint;
mod failover;
mod grpc;
mod stack;

pub use endpoint::{Bearer, authorized, bearer, channel_endpoint, endpoint_url, tls_from_files};
pub use failover::{Failover, FailoverFuture};
pub use grpc::{ClientCounters, ClientError, ClientOptions, GrpcClient, PutOutcome, UpdateOutcome};
pub use stack::{ClientStack, KvChannel, default_retry_policy};
