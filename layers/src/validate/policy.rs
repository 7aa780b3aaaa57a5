//! What the validate layer checks: the [`Validator`] strategy and its presets.
//!
//! Validation is a decision about one decoded message, so it is a strategy the layer calls,
//! following tower-http's `ValidateRequestHeader`: presets for common checks ([`MaxMessageSize`],
//! prost [`Rules`] answering with `google.rpc.BadRequest` field violations), a closure for
//! anything else, and [`ForMethods`] to narrow any of them to some methods.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::grpc::{GrpcMethod, MethodFilter};

/// Default bound on a buffered request message: 4 MiB, tonic's default decoding limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Decides whether a request message may reach the inner service.
///
/// The layer reads the first message of the calls a validator [`applies_to`] and hands it over
/// undecoded; calls it does not apply to pass through unread (streams such as server reflection
/// must be left out, or they wait for a whole message before reaching the service).
///
/// [`applies_to`]: Validator::applies_to
pub trait Validator: Clone + Send + Sync + 'static {
    /// Whether calls to `method` are read and validated.
    fn applies_to(&self, method: &GrpcMethod) -> bool;

    /// Checks one message (the protobuf bytes, without the frame header). An `Err` is sent to
    /// the caller as is and the inner service is not called.
    fn validate(&self, method: &GrpcMethod, message: &[u8]) -> Result<(), Status>;

    /// Largest message buffered for `method`; longer ones are refused with
    /// `RESOURCE_EXHAUSTED` before being read, like grpc-go's receive limit.
    fn max_message_size(&self, _method: &GrpcMethod) -> usize {
        DEFAULT_MAX_MESSAGE_SIZE
    }
}

/// Any closure is a validator that applies to every method.
impl<F> Validator for F
where
    F: Fn(&GrpcMethod, &[u8]) -> Result<(), Status> + Clone + Send + Sync + 'static,
{
    fn applies_to(&self, _method: &GrpcMethod) -> bool {
        true
    }

    fn validate(&self, method: &GrpcMethod, message: &[u8]) -> Result<(), Status> {
        self(method, message)
    }
}

/// Narrows a validator to the methods a [`MethodFilter`] selects.
#[derive(Clone, Debug)]
pub struct ForMethods<V> {
    pub(crate) methods: MethodFilter,
    pub(crate) inner: V,
}

impl<V: Validator> Validator for ForMethods<V> {
    fn applies_to(&self, method: &GrpcMethod) -> bool {
        self.methods.matches(method.path()) && self.inner.applies_to(method)
    }

    fn validate(&self, method: &GrpcMethod, message: &[u8]) -> Result<(), Status> {
        self.inner.validate(method, message)
    }

    fn max_message_size(&self, method: &GrpcMethod) -> usize {
        self.inner.max_message_size(method)
    }
}

/// Refuses messages longer than a limit (with `RESOURCE_EXHAUSTED`), on every method.
#[derive(Clone, Copy, Debug)]
pub struct MaxMessageSize {
    pub(crate) limit: usize,
}

impl Validator for MaxMessageSize {
    fn applies_to(&self, _method: &GrpcMethod) -> bool {
        true
    }

    fn validate(&self, _method: &GrpcMethod, _message: &[u8]) -> Result<(), Status> {
        // The layer already refused anything over `max_message_size` before reading it.
        Ok(())
    }

    fn max_message_size(&self, _method: &GrpcMethod) -> usize {
        self.limit
    }
}

type Check = dyn Fn(&[u8]) -> Result<(), Status> + Send + Sync;

/// Per-method checks: decode the method's request type with prost ([`Rules::rule`]), or read
/// its fields in place ([`Rules::wire_rule`]), and list field violations.
///
/// Applies only to the methods that have a rule. A message that does not decode is answered
/// `INVALID_ARGUMENT` "malformed request message"; violations are answered `INVALID_ARGUMENT`
/// with a `google.rpc.BadRequest` detail listing them (read them back with
/// `tonic_types::StatusExt::get_details_bad_request`).
#[derive(Clone, Default)]
pub struct Rules {
    checks: Arc<HashMap<String, Arc<Check>, foldhash::fast::RandomState>>,
    /// The largest message read (default [`DEFAULT_MAX_MESSAGE_SIZE`]).
    limit: Option<usize>,
}

impl Rules {
    /// No rules yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the rule for the method at `path` (`/kv.v1.KvService/Put`), whose
    /// request type is `M`.
    pub fn rule<M, F>(mut self, path: impl Into<String>, check: F) -> Self
    where
        M: prost::Message + Default,
        F: Fn(&M) -> Result<(), Vec<FieldViolation>> + Send + Sync + 'static,
    {
        let path = path.into();
        let name = path.rsplit('/').next().unwrap_or_default().to_owned();
        let check = move |bytes: &[u8]| {
            let message = M::decode(bytes).map_err(|err| {
                Status::invalid_argument(format!("malformed request message: {err}"))
            })?;
            check(&message).map_err(|violations| bad_request(&name, violations))
        };
        Arc::make_mut(&mut self.checks).insert(path, Arc::new(check));
        self
    }

    /// Adds (or replaces) the rule for the method at `path` as a check of the message's wire
    /// bytes, read in place with [`wire::fields`](super::wire::fields): no decoding and no
    /// allocation, for checks of lengths, scalars and UTF-8 that would otherwise build the
    /// whole message only for tonic to decode it again.
    ///
    /// The check must refuse every message the service's decoding would, or a malformed one
    /// reaches tonic (which answers INTERNAL): read *all* the fields, pass their errors on with
    /// `?`, and read the ones you use through [`Field`](super::wire::Field)'s accessors, which
    /// check wire types and UTF-8 as prost does. Refusals are answered as [`Rules::rule`]'s.
    pub fn wire_rule<F>(mut self, path: impl Into<String>, check: F) -> Self
    where
        F: Fn(&[u8]) -> Result<(), Refusal> + Send + Sync + 'static,
    {
        let path = path.into();
        let name = path.rsplit('/').next().unwrap_or_default().to_owned();
        let check = move |bytes: &[u8]| match check(bytes) {
            Ok(()) => Ok(()),
            Err(Refusal::Malformed(err)) => Err(Status::invalid_argument(format!(
                "malformed request message: {err}"
            ))),
            Err(Refusal::Violations(violations)) => Err(bad_request(&name, violations)),
        };
        Arc::make_mut(&mut self.checks).insert(path, Arc::new(check));
        self
    }

    /// Refuses messages of the ruled methods longer than `limit` bytes with
    /// `RESOURCE_EXHAUSTED`, before reading them (default [`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// Why a [`Rules::wire_rule`] check refused a message.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// It is not valid protobuf (or not the message type): `INVALID_ARGUMENT`
    /// "malformed request message".
    Malformed(super::wire::Malformed),
    /// It breaks these rules: `INVALID_ARGUMENT` with `BadRequest` details.
    Violations(Vec<FieldViolation>),
}

impl From<super::wire::Malformed> for Refusal {
    fn from(err: super::wire::Malformed) -> Self {
        Refusal::Malformed(err)
    }
}

/// The one place a list of violations becomes a status: INVALID_ARGUMENT, because the caller
/// sent a request that can never succeed as is, with the violations as `BadRequest` details.
fn bad_request(method: &str, violations: Vec<FieldViolation>) -> Status {
    let summary: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    let message = format!("invalid {method} request: {}", summary.join("; "));
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(violations),
    )
}

impl Validator for Rules {
    fn applies_to(&self, method: &GrpcMethod) -> bool {
        self.checks.contains_key(method.path())
    }

    fn validate(&self, method: &GrpcMethod, message: &[u8]) -> Result<(), Status> {
        match self.checks.get(method.path()) {
            Some(check) => check(message),
            None => Ok(()),
        }
    }

    fn max_message_size(&self, _method: &GrpcMethod) -> usize {
        self.limit.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.checks.keys()).finish()
    }
}
