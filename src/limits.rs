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
    get_violations(&request.key)
}

/// [`check_get`] of a request with this key (the validation layer reads it in place).
pub(crate) fn get_violations(key: &str) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    check_key(key, &mut violations);
    violations
}

/// Every limit a `PutRequest` violates (empty when it is valid).
pub fn check_put(request: &PutRequest) -> Vec<FieldViolation> {
    put_violations(&request.key, request.value.len(), request.request_id.len())
}

/// [`check_put`] of a request with this key and these lengths of value and request id (the
/// validation layer reads them in place).
pub(crate) fn put_violations(key: &str, value_len: usize, id_len: usize) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    check_key(key, &mut violations);
    if value_len > MAX_VALUE_BYTES {
        let len = value_len;
        violations.push(FieldViolation::new(
            "value",
            format!("value is {len} bytes; the limit is {MAX_VALUE_BYTES}"),
        ));
    }
    if id_len != 0 && id_len != REQUEST_ID_BYTES {
        violations.push(FieldViolation::new(
            "request_id",
            format!("request_id is {id_len} bytes; it must be empty or {REQUEST_ID_BYTES}"),
        ));
    }
    violations
}
