//! `kv-server`: serves `kv.v1.KvService` (plus health and reflection) over gRPC.
//!
//! Flags only; all behaviour lives in the library (`kvcore::serve`).

use std::process::ExitCode;

use clap::Parser;
use kvcore::storage::StorageSpec;
use tokio::net::TcpListener;

/// A versioned key-value gRPC server with optimistic concurrency control.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port. Prints `listening on IP:PORT` when ready.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: String,
    /// Storage backend: memory | file:PATH | redb:PATH | etcd:HOST:PORT[,HOST:PORT...].
    #[arg(long, default_value = "memory")]
    storage: StorageSpec,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kv-server: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let storage = args.storage.open().await?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, storage = %args.storage, "kv-server starting");
    println!("listening on {addr}");
    kvcore::serve(listener, storage, shutdown_signal()).await?;
    tracing::info!("kv-server stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received: finishing in-flight calls");
}
