//! The one place where domain errors become gRPC statuses, and where clients read them back.
//!
//! Each code is chosen so that middleware can act on the `grpc-status` header alone: only
//! UNAVAILABLE is worth retrying as-is; the version conflicts carry a packed
//! `kv.v1.VersionMismatch` so a client never parses messages. (INVALID_ARGUMENT comes from the
//! validation layer, `crate::validate`.)

use prost::Message;
use tonic::{Code, Status};

use crate::{
    proto::VersionMismatch,
    storage::{Mismatch, StorageError},
};

/// Type URL of a packed [`VersionMismatch`] in `google.rpc.Status.details`.
pub const VERSION_MISMATCH_TYPE_URL: &str = "type.googleapis.com/kv.v1.VersionMismatch";

impl From<StorageError> for Status {
    fn from(err: StorageError) -> Self {
        match err {
            // Get of a key that was never written: the resource is absent.
            StorageError::NotFound => Status::not_found("key not found"),
            StorageError::Conflict(m) => mismatch_status(m),
            // Transient: the same request may succeed later, so retry layers may resend it.
            StorageError::Unavailable(msg) => Status::unavailable(msg),
            // Permanent: retrying cannot help; an operator must look.
            StorageError::Internal(msg) => Status::internal(msg),
        }
    }
}

fn mismatch_status(m: Mismatch) -> Status {
    let (code, message) = if m.actual == 0 {
        // Update of an absent key: what the write expected to replace does not exist.
        (
            Code::NotFound,
            format!("key not found: expected version {}", m.expected),
        )
    } else if m.expected == 0 {
        // Create of a key that exists.
        (
            Code::AlreadyExists,
            format!("key already exists at version {}", m.actual),
        )
    } else {
        // Someone else wrote first: the read-modify-write must restart (not retry as-is).
        (
            Code::Aborted,
            format!(
                "version mismatch: expected {}, actual {}",
                m.expected, m.actual
            ),
        )
    };
    let detail = VersionMismatch {
        expected_version: m.expected,
        actual_version: m.actual,
        replayable_from: m.replayable_from,
    };
    let status = tonic_types::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: VERSION_MISMATCH_TYPE_URL.to_owned(),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, status.encode_to_vec().into())
}

/// The packed [`VersionMismatch`] of a NOT_FOUND, ALREADY_EXISTS or ABORTED answer to Put.
pub fn version_mismatch(status: &Status) -> Option<VersionMismatch> {
    let details = tonic_types::Status::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .find(|any| any.type_url == VERSION_MISMATCH_TYPE_URL)
        .and_then(|any| VersionMismatch::decode(any.value.as_slice()).ok())
}

impl From<VersionMismatch> for Mismatch {
    fn from(m: VersionMismatch) -> Self {
        Mismatch {
            expected: m.expected_version,
            actual: m.actual_version,
            replayable_from: m.replayable_from,
        }
    }
}

/// `err` with every cause behind it, `a: b: c`, so "transport error" says why.
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = source.and_then(|e| e.source());
    }
    text
}
