//! The KV validation preset for `grpc_layers::validate`: the contract's limits as a layer.
//!
//! The same layer goes on the server stack (refusing bad requests before KvService runs) and on
//! the client stack (refusing them before any byte reaches the network).

use grpc_layers::validate::{Rules, ValidateLayer};

use crate::{
    limits,
    proto::{GetRequest, PutRequest},
};

/// Full path of `KvService.Get`.
pub const GET_PATH: &str = "/kv.v1.KvService/Get";
/// Full path of `KvService.Put`.
pub const PUT_PATH: &str = "/kv.v1.KvService/Put";

/// Validates Get and Put against [`limits`]; every other call passes through untouched.
pub fn kv_validate_layer() -> ValidateLayer<Rules> {
    ValidateLayer::prost::<GetRequest, _>(GET_PATH, |req| as_result(limits::check_get(req)))
        .rule::<PutRequest, _>(PUT_PATH, |req| as_result(limits::check_put(req)))
}

fn as_result<T>(violations: Vec<T>) -> Result<(), Vec<T>> {
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}
