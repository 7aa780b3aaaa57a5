//! The `etcd://` target: etcd itself, through our own etcd client (one per [`Target::connect`]).

use crate::etcd::{
    EtcdClient, EtcdOptions,
    ops::{put, version_is},
    proto::{RangeRequest, TxnRequest},
};

use super::{BoxError, OpResult, Outcome, Target};

#[derive(Clone)]
pub(super) struct EtcdTarget {
    client: EtcdClient,
    serializable: bool,
}

impl Target for EtcdTarget {
    async fn connect(addr: &str, config: &super::BenchConfig) -> Result<Self, BoxError> {
        let client = EtcdClient::new(&[addr.to_owned()], EtcdOptions::default())?;
        // The channel dials lazily: ask once, so an unreachable etcd fails here rather
        // than as a run made only of errors.
        client
            .range(RangeRequest {
                key: b"\0".to_vec(),
                count_only: true,
                ..RangeRequest::default()
            })
            .await
            .map_err(|e| {
                format!(
                    "cannot reach etcd at {addr}: {}",
                    crate::error::with_causes(&e)
                )
            })?;
        Ok(Self {
            client,
            serializable: config.serializable,
        })
    }

    async fn get(&mut self, key: String) -> OpResult {
        let read = RangeRequest {
            serializable: self.serializable,
            ..single(key)
        };
        let found = self.client.range(read).await?;
        Ok(match found.kvs.as_slice() {
            [] => Outcome::Conflict,
            _ => Outcome::Done,
        })
    }

    async fn create(&mut self, key: String, value: String) -> OpResult {
        self.put_at_version(key, value, 0).await
    }

    async fn update(
        &mut self,
        key: String,
        value: String,
        version: u64,
    ) -> Result<(Outcome, u64), BoxError> {
        let outcome = self
            .put_at_version(key.clone(), value, version as i64)
            .await?;
        Ok(match outcome {
            Outcome::Done => (Outcome::Done, version + 1),
            Outcome::Conflict => {
                let found = self.client.range(single(key)).await?;
                let now = found.kvs.first().map_or(0, |kv| kv.version as u64);
                (Outcome::Conflict, now)
            }
        })
    }

    async fn cas(&mut self, key: String, value: String) -> OpResult {
        let found = self.client.range(single(key.clone())).await?;
        let version = found.kvs.first().map_or(0, |kv| kv.version);
        self.put_at_version(key, value, version).await
    }
}

fn single(key: String) -> RangeRequest {
    RangeRequest {
        key: key.into_bytes(),
        ..RangeRequest::default()
    }
}

impl EtcdTarget {
    /// Puts `key` if etcd's count of writes to it (0: absent) is `version`, like our Put
    /// naming an expected version.
    async fn put_at_version(&mut self, key: String, value: String, version: i64) -> OpResult {
        let key = key.into_bytes();
        let txn = TxnRequest {
            compare: vec![version_is(&key, version)],
            success: vec![put(key, value.into_bytes())],
            failure: Vec::new(),
        };
        let answer = self.client.txn(txn).await?;
        Ok(if answer.succeeded {
            Outcome::Done
        } else {
            Outcome::Conflict
        })
    }
}
