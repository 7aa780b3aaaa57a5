//! The request limits of the wire contract, checked before storage is touched.
//!
//! One function per request type returns every violated limit at once, as
//! `google.rpc.BadRequest` field violations, so a caller fixes its request in one round trip.
//! The validation layer (server and client stacks) calls these; nothing else should.

use tonic_types::FieldViolation;

use crate::proto::{GetRequest, PutRequest};

/// Longest accepted key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest accepted value, in bytes of UTF-8 (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Length of a request id; an empty request id means "no de-duplication".
pub const REQUEST_ID_BYTES: usize = 16;

fn check_key(key: &str, violations: &mut Vec<FieldViolation>) {
    if key.is_empty() {
        violations.push(FieldViolation::new("key", "key must not be empty"));
    } else if key.len() > MAX_KEY_BYTES {
        let len = key.len();
        violations.push(FieldViolation::new(
            "key",
            format!("key is {len} bytes; the limit is {MAX_KEY_BYTES}"),
        ));
    }
}

/// Every limit a `GetRequest` violates (empty when it is valid).
pub fn check_get(request: &GetRequest) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    check_key(&request.key, &mut violations);
    violations
}

/// Every limit a `PutRequest` violates (empty when it is valid).
pub fn check_put(request: &PutRequest) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    check_key(&request.key, &mut violations);
    if request.value.len() > MAX_VALUE_BYTES {
        let len = request.value.len();
        violations.push(FieldViolation::new(
            "value",
            format!("value is {len} bytes; the limit is {MAX_VALUE_BYTES}"),
        ));
    }
    let id_len = request.request_id.len();
    if id_len != 0 && id_len != REQUEST_ID_BYTES {
        violations.push(FieldViolation::new(
            "request_id",
            format!("request_id is {id_len} bytes; it must be empty or {REQUEST_ID_BYTES}"),
        ));
    }
    violations
}
