//! The server entry point: `serve(listener, storage, options, shutdown)`.
//!
//! The binary, the runner, the examples and the tests all start servers through this one
//! function, so they run exactly the same stack: KvService plus `grpc.health.v1` and server
//! reflection (so `grpcurl -plaintext ADDR list` works).

use std::{future::Future, sync::Arc};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::{
    proto::{FILE_DESCRIPTOR_SET, kv_service_server::KvServiceServer},
    service::KvService,
    storage::{Storage, StorageError},
};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptor set.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Flushing storage at shutdown failed: acknowledged writes may not be durable.
    #[error("flushing storage at shutdown failed: {0}")]
    Flush(#[from] StorageError),
}

/// Serves KvService on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight calls finish, and flushes `storage`.
pub async fn serve(
    listener: TcpListener,
    storage: Arc<dyn Storage>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KvServiceServer<KvService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(KvService::new(Arc::clone(&storage)).into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    storage.flush().await?;
    Ok(())
}
