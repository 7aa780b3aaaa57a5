//! The `etcd://` target: etcd through `etcd-client`, one channel per [`Target::connect`].

use etcd_client::{Client, Compare, CompareOp, KvClient, Txn, TxnOp};

use super::{BoxError, OpResult, Outcome, Target};

#[derive(Clone)]
pub(super) struct EtcdTarget(KvClient);

impl Target for EtcdTarget {
    async fn connect(addr: &str) -> Result<Self, BoxError> {
        let mut client = Client::connect([addr], None).await?;
        // The channel dials lazily: ask once, so an unreachable etcd fails here rather
        // than as a run made only of errors.
        client
            .status()
            .await
            .map_err(|e| format!("cannot reach etcd at {addr}: {e}"))?;
        Ok(Self(client.kv_client()))
    }

    async fn get(&mut self, key: String) -> OpResult {
        let found = self.0.get(key, None).await?;
        Ok(match found.kvs() {
            [] => Outcome::Conflict,
            _ => Outcome::Done,
        })
    }

    async fn create(&mut self, key: String, value: String) -> OpResult {
        self.put_at_version(key, value, 0).await
    }

    async fn cas(&mut self, key: String, value: String) -> OpResult {
        let found = self.0.get(key.as_str(), None).await?;
        let version = found.kvs().first().map_or(0, |kv| kv.version());
        self.put_at_version(key, value, version).await
    }
}

impl EtcdTarget {
    /// Puts `key` if etcd's count of writes to it (0: absent) is `version`, like our Put
    /// naming an expected version.
    async fn put_at_version(&mut self, key: String, value: String, version: i64) -> OpResult {
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, version)])
            .and_then([TxnOp::put(key, value, None)]);
        let answer = self.0.txn(txn).await?;
        Ok(if answer.succeeded() {
            Outcome::Done
        } else {
            Outcome::Conflict
        })
    }
}
