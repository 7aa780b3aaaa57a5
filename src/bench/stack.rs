//! The `kv://` target through the full client stack (`kvctl bench --stack`): `GrpcClient`
//! with its layers (retry, metrics, request ids, deadlines), as an application calls the
//! server, to show what the client side costs next to the raw gRPC calls of `KvTarget`.

use tonic::Status;

use super::{BoxError, OpResult, Outcome, Target};
use crate::client::{ClientError, ClientOptions, GrpcClient, PutOutcome};

/// One `GrpcClient` (one HTTP/2 connection) per [`Target::connect`].
#[derive(Clone)]
pub(super) struct StackTarget {
    client: GrpcClient,
}

/// A client error as the bench counts errors: by gRPC status.
fn status(err: ClientError) -> BoxError {
    match err {
        ClientError::Status(status) => Box::new(status),
        other => Box::new(Status::unknown(other.to_string())),
    }
}

/// A write whose fate the client could not prove is an error here: the bench cannot count it.
fn written(outcome: PutOutcome) -> Result<(Outcome, u64), BoxError> {
    match outcome {
        PutOutcome::Written { version, .. } => Ok((Outcome::Done, version)),
        PutOutcome::Conflict { actual_version } | PutOutcome::AlreadyExists { actual_version } => {
            Ok((Outcome::Conflict, actual_version))
        }
        PutOutcome::NotFound => Ok((Outcome::Conflict, 0)),
        _ => Err(Box::new(Status::unknown(
            "the write's outcome is unknown (retries ran out or the deadline passed)",
        ))),
    }
}

impl Target for StackTarget {
    async fn connect(url: &str, config: &super::BenchConfig) -> Result<Self, BoxError> {
        let token = config
            .token
            .as_ref()
            .and_then(|t| t.to_str().ok())
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_owned());
        let options = ClientOptions {
            call_timeout: config.call_timeout,
            token,
            tls: config.tls.clone(),
            ..ClientOptions::default()
        };
        Ok(Self {
            client: GrpcClient::connect(url, options).await?,
        })
    }

    async fn get(&mut self, key: String) -> OpResult {
        match self.client.get(&key).await.map_err(status)? {
            Some(_) => Ok(Outcome::Done),
            None => Ok(Outcome::Conflict),
        }
    }

    async fn create(&mut self, key: String, value: String) -> OpResult {
        let outcome = self.client.put(&key, &value, 0).await.map_err(status)?;
        Ok(written(outcome)?.0)
    }

    async fn cas(&mut self, key: String, value: String) -> OpResult {
        let found = self.client.get(&key).await.map_err(status)?;
        let version = found.map_or(0, |v| v.version);
        Ok(self.update(key, value, version).await?.0)
    }

    async fn update(
        &mut self,
        key: String,
        value: String,
        version: u64,
    ) -> Result<(Outcome, u64), BoxError> {
        let outcome = self
            .client
            .put(&key, &value, version)
            .await
            .map_err(status)?;
        written(outcome)
    }
}
