//! `kvctl get` and `kvctl put`: one call each, bounded by `--timeout`.

use std::{
    io::{Read, Write as _},
    path::PathBuf,
};

use crate::{
    cli::{Failure, Server, connect, no_answer},
    client::authorized,
    proto::{GetRequest, PutRequest, kv_service_client::KvServiceClient},
};

/// `kvctl get` flags.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The key to read.
    pub key: String,
    /// Write the value to this file instead of stdout (no newline added).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// `kvctl put` flags.
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// The key to write.
    pub key: String,
    /// The new value (or use --value-file for large or binary-unsafe input).
    #[arg(required_unless_present = "value_file")]
    pub value: Option<String>,
    /// Read the value from this file; `-` reads stdin. Values up to 1 MiB, UTF-8.
    #[arg(long, value_name = "PATH", conflicts_with = "value")]
    pub value_file: Option<PathBuf>,
    /// The version the key must have now; 0 creates the key.
    #[arg(long, default_value_t = 0)]
    pub version: u64,
}

/// Runs `fut` within the server's timeout, or fails with "no answer from URL". (The one
/// deadline: a `grpc-timeout` on the request would make tonic end the call first with a vaguer
/// CANCELLED.)
async fn bounded<T>(
    server: &Server,
    fut: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(server.timeout, fut)
        .await
        .unwrap_or_else(|_| Err(no_answer(&server.url, server.timeout)))
}

/// Prints the value (stdout, or `--output`) and the version (stderr).
pub async fn get(server: &Server, args: GetArgs) -> Result<(), Failure> {
    let found = bounded(server, async {
        let mut client = KvServiceClient::new(connect(server).await?);
        let request = authorized(GetRequest { key: args.key }, server.token.as_ref());
        Ok(client.get(request).await?.into_inner())
    })
    .await?;
    match &args.output {
        // A path we cannot write is the command line's problem, not the server's.
        Some(path) => std::fs::write(path, found.value.as_bytes())
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?,
        None => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`kvctl get k | head -c1`) is the reader's choice, not a failure.
            let _ = writeln!(out, "{}", found.value);
        }
    }
    eprintln!("version {}", found.version);
    Ok(())
}

/// Writes with a fresh request id and prints the version written.
pub async fn put(server: &Server, args: PutArgs) -> Result<(), Failure> {
    let value = match (args.value, &args.value_file) {
        (Some(value), None) => value,
        (None, Some(path)) => read_value(path)?,
        _ => {
            return Err(Failure::Usage(
                "give VALUE or --value-file, not both".into(),
            ));
        }
    };
    let put = PutRequest {
        key: args.key,
        value,
        version: args.version,
        request_id: rand::random::<[u8; 16]>().to_vec(),
    };
    let written = bounded(server, async {
        let mut client = KvServiceClient::new(connect(server).await?);
        Ok(client
            .put(authorized(put, server.token.as_ref()))
            .await?
            .into_inner())
    })
    .await?;
    println!("written: version {}", written.version);
    Ok(())
}

/// The value in `path` (`-`: stdin). Values are strings on the wire, so the bytes must be UTF-8.
fn read_value(path: &PathBuf) -> Result<String, Failure> {
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|e| {
        Failure::Usage(format!(
            "{} is not UTF-8 (byte {}): values are UTF-8 strings",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}
