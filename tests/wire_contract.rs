//! Every row of the status-code table (DESIGN.md §3) over real loopback gRPC.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::{start_server, start_server_with};
use kvcore::{
    error::version_mismatch,
    limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES},
    proto::{GetRequest, PutRequest, VersionMismatch},
    storage::{Storage, StorageError, Versioned, Write, Written},
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

fn put(key: &str, value: &str, version: u64) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        version,
        request_id: vec![],
    }
}

fn get(key: &str) -> GetRequest {
    GetRequest { key: key.into() }
}

fn mismatch(status: &Status) -> (u64, u64) {
    let m: VersionMismatch = version_mismatch(status)
        .unwrap_or_else(|| panic!("no VersionMismatch detail in {status:?}"));
    (m.expected_version, m.actual_version)
}

fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    bad.field_violations.into_iter().map(|v| v.field).collect()
}

/// Get of a key never written is NOT_FOUND without a detail.
#[tokio::test]
async fn get_absent_is_not_found() {
    let server = start_server().await;
    let status = server.client().await.get(get("nope")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(version_mismatch(&status).is_none());
    server.stop().await;
}

/// Create, read back, update: versions count writes.
#[tokio::test]
async fn put_then_get_counts_versions() {
    let server = start_server().await;
    let mut client = server.client().await;
    assert_eq!(
        client
            .put(put("k", "a", 0))
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    assert_eq!(
        client
            .put(put("k", "b", 1))
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );
    let got = client.get(get("k")).await.unwrap().into_inner();
    assert_eq!((got.value.as_str(), got.version), ("b", 2));
    server.stop().await;
}

/// The three version conflicts carry their code and a packed VersionMismatch.
#[tokio::test]
async fn conflicts_carry_version_mismatch() {
    let server = start_server().await;
    let mut client = server.client().await;

    let status = client.put(put("k", "x", 3)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "update of an absent key");
    assert_eq!(mismatch(&status), (3, 0));

    client.put(put("k", "a", 0)).await.unwrap();
    client.put(put("k", "b", 1)).await.unwrap();

    let status = client.put(put("k", "x", 0)).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::AlreadyExists,
        "create of an existing key"
    );
    assert_eq!(mismatch(&status), (0, 2));

    let status = client.put(put("k", "x", 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "stale update");
    assert_eq!(mismatch(&status), (1, 2));

    let detail = version_mismatch(&status).unwrap();
    assert_eq!(detail.replayable_from, 1, "every writer of k is remembered");
    server.stop().await;
}

/// Keys and values at exactly the limits are accepted; one byte more is INVALID_ARGUMENT.
#[tokio::test]
async fn size_limits_are_exact() {
    let server = start_server().await;
    let mut client = server.client().await;
    let key_max = "k".repeat(MAX_KEY_BYTES);
    let value_max = "v".repeat(MAX_VALUE_BYTES);
    client
        .put(put(&key_max, &value_max, 0))
        .await
        .expect("limits are inclusive");
    let got = client.get(get(&key_max)).await.unwrap().into_inner();
    assert_eq!(got.value.len(), MAX_VALUE_BYTES);

    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    let status = client.put(put(&long_key, "v", 0)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["key"]);
    let status = client.get(get(&long_key)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["key"]);

    let long_value = "v".repeat(MAX_VALUE_BYTES + 1);
    let status = client.put(put("k2", &long_value, 0)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["value"]);
    assert_eq!(
        client.get(get("k2")).await.unwrap_err().code(),
        Code::NotFound
    );

    // Multi-byte characters count in bytes, not characters.
    let emoji_key = "🦀".repeat(MAX_KEY_BYTES / 4 + 1);
    let status = client.put(put(&emoji_key, "v", 0)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["key"]);
    server.stop().await;
}

/// Empty keys and request ids of the wrong length are refused, every violation at once.
#[tokio::test]
async fn malformed_requests_name_their_fields() {
    let server = start_server().await;
    let mut client = server.client().await;
    assert_eq!(
        violated_fields(&client.get(get("")).await.unwrap_err()),
        ["key"]
    );
    for len in [1, 15, 17, 32] {
        let mut request = put("k", "v", 0);
        request.request_id = vec![0; len];
        let status = client.put(request).await.unwrap_err();
        assert_eq!(
            violated_fields(&status),
            ["request_id"],
            "id of {len} bytes"
        );
    }
    let mut request = put("", &"v".repeat(MAX_VALUE_BYTES + 1), 0);
    request.request_id = vec![1; 3];
    let status = client.put(request).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["key", "value", "request_id"]);
    assert_eq!(
        client.get(get("k")).await.unwrap_err().code(),
        Code::NotFound,
        "nothing written"
    );
    server.stop().await;
}

/// A retried Put answers with the original version, whether current or since overwritten.
#[tokio::test]
async fn request_ids_replay() {
    let server = start_server().await;
    let mut client = server.client().await;
    let mut first = put("k", "first", 0);
    first.request_id = vec![0xA1; 16];
    assert_eq!(
        client
            .put(first.clone())
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    assert_eq!(
        client
            .put(first.clone())
            .await
            .unwrap()
            .into_inner()
            .version,
        1,
        "current"
    );

    let mut second = put("k", "second", 1);
    second.request_id = vec![0xB2; 16];
    client.put(second.clone()).await.unwrap();
    client.put(put("k", "third", 2)).await.unwrap();
    assert_eq!(
        client.put(first).await.unwrap().into_inner().version,
        1,
        "overwritten"
    );
    assert_eq!(
        client.put(second).await.unwrap().into_inner().version,
        2,
        "overwritten"
    );

    let got = client.get(get("k")).await.unwrap().into_inner();
    assert_eq!(
        (got.value.as_str(), got.version),
        ("third", 3),
        "replays wrote nothing"
    );
    server.stop().await;
}

/// Commas, newlines, NUL and emoji survive the wire byte for byte.
#[tokio::test]
async fn odd_content_round_trips() {
    let server = start_server().await;
    let mut client = server.client().await;
    for (key, value) in [
        ("a,b", "1,2,3"),
        ("multi\nline", "x\ny\r\n"),
        ("nul\0", "\0\0"),
        ("🔑", "🦀 ✓"),
        ("space ", " "),
    ] {
        client.put(put(key, value, 0)).await.unwrap();
        let got = client.get(get(key)).await.unwrap().into_inner();
        assert_eq!(got.value.as_bytes(), value.as_bytes(), "key {key:?}");
    }
    server.stop().await;
}

/// A backend that always fails the same way.
struct FailingStorage(StorageError);

#[async_trait]
impl Storage for FailingStorage {
    async fn get(&self, _: &str) -> Result<Versioned, StorageError> {
        Err(self.0.clone())
    }
    async fn put(&self, _: Write) -> Result<Written, StorageError> {
        Err(self.0.clone())
    }
    async fn entries(&self) -> Result<Vec<(String, Versioned)>, StorageError> {
        Ok(vec![])
    }
}

/// Storage failures become UNAVAILABLE (transient) or INTERNAL (permanent).
#[tokio::test]
async fn storage_failures_map_to_codes() {
    for (err, code) in [
        (
            StorageError::Unavailable("disk busy".into()),
            Code::Unavailable,
        ),
        (
            StorageError::Internal("checksum mismatch".into()),
            Code::Internal,
        ),
    ] {
        let server = start_server_with(Arc::new(FailingStorage(err))).await;
        let mut client = server.client().await;
        assert_eq!(client.get(get("k")).await.unwrap_err().code(), code);
        assert_eq!(client.put(put("k", "v", 0)).await.unwrap_err().code(), code);
        server.stop().await;
    }
}
