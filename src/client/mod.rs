//! Clients of KvService: the layered channel stack and `GrpcClient` on top of it.

mod grpc;
mod stack;

pub use grpc::{ClientCounters, ClientError, ClientOptions, GrpcClient, PutOutcome, UpdateOutcome};
pub use stack::{ClientStack, KvChannel, default_retry_policy};
