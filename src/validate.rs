//! The KV validation preset for `grpc_layers::validate`: the contract's limits as a layer.
//!
//! The same layer goes on the server stack (refusing bad requests before KvService runs) and on
//! the client stack (refusing them before any byte reaches the network).

use grpc_layers::validate::{FieldViolation, Refusal, Rules, ValidateLayer, wire};

use crate::limits;

/// Full path of `KvService.Get`.
pub const GET_PATH: &str = "/kv.v1.KvService/Get";
/// Full path of `KvService.Put`.
pub const PUT_PATH: &str = "/kv.v1.KvService/Put";

/// Validates Get and Put against [`limits`]; every other call passes through untouched.
///
/// The requests are read in place ([`wire::fields`]), not decoded: decoding them here, only
/// for tonic to decode them again for the service, cost 2 % of a call's CPU. The checks refuse
/// exactly the messages prost cannot decode (a test compares them on random bytes).
pub fn kv_validate_layer() -> ValidateLayer<Rules> {
    let rules = Rules::new()
        .wire_rule(GET_PATH, check_get)
        .wire_rule(PUT_PATH, check_put);
    ValidateLayer::new(rules)
}

/// `GetRequest { string key = 1; }`, read in place.
fn check_get(message: &[u8]) -> Result<(), Refusal> {
    let mut key = "";
    for field in wire::fields(message) {
        let field = field?;
        if field.number == 1 {
            key = field.string()?;
        }
    }
    refuse(limits::get_violations(key))
}

/// `PutRequest { string key = 1; string value = 2; uint64 version = 3; bytes request_id = 4; }`,
/// read in place. A field sent twice counts as its last copy, as when decoding.
fn check_put(message: &[u8]) -> Result<(), Refusal> {
    let (mut key, mut value_len, mut id_len) = ("", 0, 0);
    for field in wire::fields(message) {
        let field = field?;
        match field.number {
            1 => key = field.string()?,
            2 => value_len = field.string()?.len(),
            3 => {
                field.varint()?;
            }
            4 => id_len = field.bytes()?.len(),
            _ => {}
        }
    }
    refuse(limits::put_violations(key, value_len, id_len))
}

fn refuse(violations: Vec<FieldViolation>) -> Result<(), Refusal> {
    match violations.is_empty() {
        true => Ok(()),
        false => Err(Refusal::Violations(violations)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::proto::{GetRequest, PutRequest};

    /// What the wire checks say of `bytes` matches decoding them: malformed exactly when prost
    /// cannot decode them, and otherwise the violations of the decoded request.
    fn agrees_with_prost(bytes: &[u8]) {
        match (check_put(bytes), PutRequest::decode(bytes)) {
            (Err(Refusal::Malformed(_)), Err(_)) => {}
            (Ok(()), Ok(put)) => assert!(limits::check_put(&put).is_empty(), "{bytes:x?}"),
            (Err(Refusal::Violations(found)), Ok(put)) => {
                let expected = limits::check_put(&put);
                assert_eq!(format!("{found:?}"), format!("{expected:?}"), "{bytes:x?}")
            }
            (wire, prost) => panic!("{bytes:x?}: wire {wire:?}, prost {prost:?}"),
        }
        match (check_get(bytes), GetRequest::decode(bytes)) {
            (Err(Refusal::Malformed(_)), Err(_)) => {}
            (Ok(()), Ok(get)) => assert!(limits::check_get(&get).is_empty(), "{bytes:x?}"),
            (Err(Refusal::Violations(found)), Ok(get)) => {
                let expected = limits::check_get(&get);
                assert_eq!(format!("{found:?}"), format!("{expected:?}"), "{bytes:x?}")
            }
            (wire, prost) => panic!("{bytes:x?}: wire {wire:?}, prost {prost:?}"),
        }
    }

    /// A field of any wire type, under any number, with contents that may or may not fit.
    fn field() -> impl Strategy<Value = Vec<u8>> {
        let number = prop_oneof![1u64..=6, 0u64..40, Just(u64::from(u32::MAX) >> 3)];
        (number, 0u64..8, prop::collection::vec(any::<u8>(), 0..24)).prop_map(
            |(number, wire_type, body)| {
                let mut out = Vec::new();
                prost::encoding::encode_varint(number << 3 | wire_type, &mut out);
                if wire_type == 2 {
                    prost::encoding::encode_varint(body.len() as u64, &mut out);
                }
                out.extend(body);
                out
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Random bytes, mostly malformed.
        #[test]
        fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            agrees_with_prost(&bytes);
        }

        /// Requests, valid or not, with stray fields of every wire type mixed in, cut short or
        /// with a byte changed.
        #[test]
        fn requests_with_stray_fields(
            key in "[a-z\u{e9}]{0,3}",
            value_len in prop_oneof![0usize..4, Just(limits::MAX_VALUE_BYTES + 1)],
            version in any::<u64>(),
            id_len in prop_oneof![Just(0usize), Just(16), 0usize..20],
            extra in prop::collection::vec(field(), 0..4),
            cut in any::<prop::sample::Index>(),
            flip in any::<Option<(prop::sample::Index, u8)>>(),
        ) {
            let put = PutRequest {
                key,
                value: "v".repeat(value_len),
                version,
                request_id: vec![7; id_len],
            };
            let mut bytes = put.encode_to_vec();
            for field in extra {
                bytes.extend(field);
            }
            agrees_with_prost(&bytes);
            if let Some((at, byte)) = flip {
                let at = at.index(bytes.len().max(1)).min(bytes.len().saturating_sub(1));
                if let Some(b) = bytes.get_mut(at) {
                    *b = byte;
                }
                agrees_with_prost(&bytes);
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            agrees_with_prost(&bytes);
        }
    }

    /// Groups, nested to prost's recursion limit and past it, and mismatched group ends.
    #[test]
    fn groups_as_prost_reads_them() {
        for depth in [1, 2, 99, 100, 101] {
            let mut bytes = vec![0x2b; depth]; // start group 5
            bytes.extend([0x0a, 1, b'k']); // key "k"
            bytes.extend(vec![0x2c; depth]); // end group 5
            agrees_with_prost(&bytes);
        }
        agrees_with_prost(&[0x2b, 0x34]); // start group 5, end group 6
        agrees_with_prost(&[0x0b, 0x0c]); // key as a group
        agrees_with_prost(&[0x2c]); // an end without a start
    }
}
