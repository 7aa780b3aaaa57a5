//! The `kv://` target: this project's server.

use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};

use super::{BoxError, OpResult, Outcome, Target};
use crate::proto::{GetRequest, PutRequest, kv_service_client::KvServiceClient};

/// This project's server, one HTTP/2 connection per [`Target::connect`].
#[derive(Clone)]
pub(super) struct KvTarget(KvServiceClient<Channel>);

impl Target for KvTarget {
    async fn connect(url: &str, _: &super::BenchConfig) -> Result<Self, BoxError> {
        let channel = Endpoint::from_shared(url.to_owned())?.connect().await?;
        Ok(Self(KvServiceClient::new(channel)))
    }

    async fn get(&mut self, key: String) -> OpResult {
        outcome(self.0.get(GetRequest { key }).await)
    }

    async fn create(&mut self, key: String, value: String) -> OpResult {
        let put = PutRequest {
            key,
            value,
            version: 0,
            request_id: vec![],
        };
        outcome(self.0.put(put).await)
    }

    async fn cas(&mut self, key: String, value: String) -> OpResult {
        let version = match self.0.get(GetRequest { key: key.clone() }).await {
            Ok(found) => found.into_inner().version,
            Err(s) if s.code() == Code::NotFound => 0,
            Err(s) => return Err(s.into()),
        };
        let put = PutRequest {
            key,
            value,
            version,
            request_id: rand::random::<[u8; 16]>().to_vec(),
        };
        outcome(self.0.put(put).await)
    }
}

/// Sorts a call's status: the codes a version mismatch or a missing key come back with are
/// conflicts (see `crate::error`), anything else is an error.
fn outcome<T>(result: Result<T, Status>) -> OpResult {
    match result {
        Ok(_) => Ok(Outcome::Done),
        Err(s)
            if matches!(
                s.code(),
                Code::Aborted | Code::AlreadyExists | Code::NotFound
            ) =>
        {
            Ok(Outcome::Conflict)
        }
        Err(s) => Err(s.into()),
    }
}
