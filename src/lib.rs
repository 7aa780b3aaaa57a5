//! The core of versioned key-value stores: a gRPC service with optimistic concurrency
//! control, pluggable storage, and the server entry point.
//!
//! Every key carries a version counting its writes. A write names the version it expects to
//! replace and fails, with the actual version attached, if someone else wrote first; a write
//! that carries a request id is applied at most once however often it is retried.
//!
//! Modules, in the order a request flows: [`proto`] (the wire contract) → [`server`] (the
//! layer stack and `serve`) → [`validate`] (the KV rules for the validation layer, from
//! [`limits`]) → [`service`] (KvService) → [`storage`] (the `Storage` trait and backends), with
//! [`error`] mapping failures to statuses; the etcd backend reaches its cluster through
//! [`etcd`]. The generic layers live in the `grpc-layers` crate.
//! On the other side, [`client`] (the channel stack and `GrpcClient`) and [`runner`] (chaos
//! scenarios with a linearizability checker), with [`bench`](mod@bench) and [`cli`] behind `kvctl`.

pub mod bench;
pub mod cli;
pub mod client;
pub mod error;
pub mod etcd;
pub mod limits;
pub mod runner;
pub mod server;
pub mod service;
pub mod storage;
pub mod validate;

/// Generated types of `proto/kv/v1/kv.proto` (package `kv.v1`): messages, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("kv.v1");

    /// The encoded descriptor set of `kv.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kv_descriptor");
}

pub use server::{ServeError, ServerOptions, serve};
pub use service::KvService;
pub use storage::{MemoryStorage, Storage};
