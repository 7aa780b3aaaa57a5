//! Builders for the requests kvcore sends to etcd, so the storage backend, the bench target and
//! the tests spell a Txn the same way.

use bytes::Bytes;

use crate::etcd::proto::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, compare, request_op,
};

/// A Txn condition: `key`'s etcd version (its count of writes, 0 = absent) equals `version`.
pub fn version_is(key: &[u8], version: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Version as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::Version(version)),
    }
}

/// A Txn operation putting `value` at `key`. The value is `Bytes`, so the copies a Txn needs
/// to be sent to another member cost a reference count, not the value.
pub fn put(key: Vec<u8>, value: impl Into<Bytes>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value: value.into(),
            lease: 0,
        })),
    }
}

/// A Txn operation deleting the single key `key`.
pub fn delete(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key,
                range_end: Vec::new(),
            },
        )),
    }
}

/// A Txn operation reading the single key `key` (without its value when `keys_only`).
pub fn range(key: Vec<u8>, keys_only: bool) -> RequestOp {
    read(RangeRequest {
        key,
        keys_only,
        ..RangeRequest::default()
    })
}

/// A Txn operation making the read `range`.
pub fn read(range: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range)),
    }
}

/// A read of every key that starts with `prefix`.
pub fn prefix_range(prefix: Vec<u8>) -> RangeRequest {
    RangeRequest {
        range_end: prefix_end(&prefix),
        key: prefix,
        ..RangeRequest::default()
    }
}

/// The end of the range of every key starting with `prefix` (etcd's "prefix plus one").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefix ends follow etcd's rule, carrying past 0xff bytes.
    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
