//! The layer that wraps services in [`Validate`], with constructors for each preset.

use std::sync::Arc;

use tonic::Status;
use tonic_types::FieldViolation;
use tower::Layer;

use super::{ForMethods, MaxMessageSize, Rules, Validate, Validator};
use crate::grpc::{GrpcMethod, MethodFilter};

/// Applies [`Validate`] with validator `V` to services.
#[derive(Clone, Debug)]
pub struct ValidateLayer<V> {
    validator: Arc<V>,
}

impl<V: Validator> ValidateLayer<V> {
    /// Validates with any [`Validator`].
    pub fn new(validator: V) -> Self {
        Self {
            validator: Arc::new(validator),
        }
    }

    /// Narrows the validator to the methods `methods` selects (e.g. leave out reflection).
    pub fn for_methods(self, methods: MethodFilter) -> ValidateLayer<ForMethods<V>> {
        let inner = Arc::unwrap_or_clone(self.validator);
        ValidateLayer::new(ForMethods { methods, inner })
    }
}

impl<F> ValidateLayer<F>
where
    F: Fn(&GrpcMethod, &[u8]) -> Result<(), Status> + Clone + Send + Sync + 'static,
{
    /// Validates every method's first message with a closure; narrow it with
    /// [`for_methods`](ValidateLayer::for_methods) when streams share the server.
    pub fn custom(check: F) -> Self {
        Self::new(check)
    }
}

impl ValidateLayer<MaxMessageSize> {
    /// Refuses request messages longer than `limit` bytes with `RESOURCE_EXHAUSTED`.
    pub fn max_message_size(limit: usize) -> Self {
        Self::new(MaxMessageSize { limit })
    }
}

impl ValidateLayer<Rules> {
    /// Validates requests of the method at `path` decoded as `M`; add more with
    /// [`rule`](ValidateLayer::rule).
    pub fn prost<M, F>(path: impl Into<String>, check: F) -> Self
    where
        M: prost::Message + Default,
        F: Fn(&M) -> Result<(), Vec<FieldViolation>> + Send + Sync + 'static,
    {
        Self::new(Rules::new().rule::<M, F>(path, check))
    }

    /// Adds the rule for another method (see [`Rules::rule`]).
    pub fn rule<M, F>(self, path: impl Into<String>, check: F) -> Self
    where
        M: prost::Message + Default,
        F: Fn(&M) -> Result<(), Vec<FieldViolation>> + Send + Sync + 'static,
    {
        let rules = Arc::unwrap_or_clone(self.validator);
        Self::new(rules.rule::<M, F>(path, check))
    }

    /// Refuses messages longer than `limit` bytes (see [`Rules::limit`]).
    pub fn limit(self, limit: usize) -> Self {
        Self::new(Arc::unwrap_or_clone(self.validator).limit(limit))
    }
}

impl<S, V> Layer<S> for ValidateLayer<V> {
    type Service = Validate<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        Validate::from_arc(inner, self.validator.clone())
    }
}
