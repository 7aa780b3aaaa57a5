//! The `kv://` target: this project's server.

use tonic::{Code, Status, transport::Channel};

use super::{BoxError, OpResult, Outcome, Target};
use crate::{
    client::{Bearer, authorized, channel_endpoint},
    proto::{GetRequest, PutRequest, kv_service_client::KvServiceClient},
};

/// This project's server, one HTTP/2 connection per [`Target::connect`].
#[derive(Clone)]
pub(super) struct KvTarget {
    client: KvServiceClient<Channel>,
    token: Option<Bearer>,
}

impl Target for KvTarget {
    async fn connect(url: &str, config: &super::BenchConfig) -> Result<Self, BoxError> {
        let channel = channel_endpoint(url, config.tls.as_ref())?
            .connect()
            .await?;
        Ok(Self {
            client: KvServiceClient::new(channel),
            token: config.token.clone(),
        })
    }

    async fn get(&mut self, key: String) -> OpResult {
        let request = authorized(GetRequest { key }, self.token.as_ref());
        outcome(self.client.get(request).await)
    }

    async fn create(&mut self, key: String, value: String) -> OpResult {
        let put = PutRequest {
            key,
            value,
            version: 0,
            request_id: vec![],
        };
        outcome(self.client.put(authorized(put, self.token.as_ref())).await)
    }

    async fn update(
        &mut self,
        key: String,
        value: String,
        version: u64,
    ) -> Result<(Outcome, u64), BoxError> {
        let put = PutRequest {
            key: key.clone(),
            value,
            version,
            request_id: rand::random::<[u8; 16]>().to_vec(),
        };
        match self.client.put(authorized(put, self.token.as_ref())).await {
            Ok(written) => Ok((Outcome::Done, written.into_inner().version)),
            // Anything but a conflict is an error.
            Err(s) if !is_conflict(&s) => Err(s.into()),
            Err(s) => {
                // A conflict says where the key is (its VersionMismatch detail), or we ask.
                let now = match crate::error::version_mismatch(&s) {
                    Some(m) => m.actual_version,
                    None => self.version_of(key).await?,
                };
                Ok((Outcome::Conflict, now))
            }
        }
    }

    async fn cas(&mut self, key: String, value: String) -> OpResult {
        let version = self.version_of(key.clone()).await?;
        Ok(self.update(key, value, version).await?.0)
    }
}

impl KvTarget {
    /// The version `key` is at now, read after a conflict that did not say.
    async fn version_of(&mut self, key: String) -> Result<u64, BoxError> {
        let read = authorized(GetRequest { key }, self.token.as_ref());
        match self.client.get(read).await {
            Ok(found) => Ok(found.into_inner().version),
            Err(s) if s.code() == Code::NotFound => Ok(0),
            Err(s) => Err(s.into()),
        }
    }
}

/// Sorts a call's status: the codes a version mismatch or a missing key come back with are
/// conflicts (see `crate::error`), anything else is an error.
fn outcome<T>(result: Result<T, Status>) -> OpResult {
    match result {
        Ok(_) => Ok(Outcome::Done),
        Err(s) if is_conflict(&s) => Ok(Outcome::Conflict),
        Err(s) => Err(s.into()),
    }
}

fn is_conflict(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Aborted | Code::AlreadyExists | Code::NotFound
    )
}
