//! Shared gRPC-over-HTTP/2 helpers: method names, status codes, timeouts, frames and bodies.
//!
//! The layers in this crate never see a decoded message type; they see HTTP requests whose
//! path names the method and responses whose `grpc-status` (in the headers of a Trailers-Only
//! response, otherwise in the trailers) names the outcome. Keeping that knowledge here means each
//! layer reads the wire the same way, and the rules for it live in one place.

mod body;
mod frame;
mod timeout;

use std::collections::BTreeSet;
use std::fmt;

use http::{HeaderMap, HeaderName, Uri, uri::PathAndQuery};
use tonic::{Code, Status};

pub use body::{OnStatus, PrefixedBody, ReplayBody, StatusBody};
pub(crate) use frame::split_frame;
pub use frame::{FRAME_HEADER_LEN, Frame, FrameError, decode_frame, encode_frame, frame_len};
pub use timeout::{GRPC_TIMEOUT, format_timeout, parse_timeout};

/// The error type of every layer: a `tonic::Status` (or an inner service's error) boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Boxes a status as a [`BoxError`] so tonic recovers its code on both sides of the wire.
pub fn status_error(status: Status) -> BoxError {
    Box::new(status)
}

/// The code of the first `tonic::Status` in an error's source chain, if any.
pub fn status_in_chain(err: &(dyn std::error::Error + 'static)) -> Option<Code> {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(status) = err.downcast_ref::<Status>() {
            return Some(status.code());
        }
        source = err.source();
    }
    None
}

/// The code of the `tonic::Status` inside an error, or `UNKNOWN`, as tonic maps unknown errors.
pub fn error_code(err: &(dyn std::error::Error + 'static)) -> Code {
    status_in_chain(err).unwrap_or(Code::Unknown)
}

/// The `grpc-status` carried by `headers`: present in Trailers-Only responses and in trailers.
pub fn status_code(headers: &HeaderMap) -> Option<Code> {
    // A `HeaderName`, not tonic's `&str`: looked up twice a call, and a `&str` is parsed anew
    // each time.
    const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    headers
        .get(GRPC_STATUS)
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// The canonical upper-case name of a code (`"OK"`, `"UNAVAILABLE"`), as metrics label it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Splits a gRPC path `/pkg.Service/Method` into `("pkg.Service", "Method")`, without allocating.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    // memchr, not `split_once('/')` (the char searcher cost ~200 instructions a call) nor a
    // byte loop (~130): this runs several times per call (method filters, metrics). '/' is
    // ASCII, so the split is on a character boundary.
    let rest = path.strip_prefix('/')?;
    let slash = memchr::memchr(b'/', rest.as_bytes())?;
    let (service, method) = (&rest[..slash], &rest[slash + 1..]);
    if service.is_empty() || method.is_empty() || memchr::memchr(b'/', method.as_bytes()).is_some()
    {
        return None;
    }
    Some((service, method))
}

/// A gRPC method named by a request's URI path, e.g. `/kv.v1.KvService/Put`.
///
/// Cloning is cheap: the path shares the request URI's buffer.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GrpcMethod {
    path: PathAndQuery,
    slash: usize,
}

impl GrpcMethod {
    /// Parses the method from a request URI; `None` unless the path is `/service/method`.
    pub fn from_uri(uri: &Uri) -> Option<Self> {
        let path = uri.path_and_query()?;
        Self::from_path_and_query(path.clone())
    }

    /// Parses a path such as `/kv.v1.KvService/Put`.
    pub fn parse(path: &str) -> Option<Self> {
        Self::from_path_and_query(PathAndQuery::try_from(path).ok()?)
    }

    fn from_path_and_query(path: PathAndQuery) -> Option<Self> {
        let (service, _) = split_path(path.path())?;
        let slash = service.len() + 1;
        Some(Self { path, slash })
    }

    /// The full path, `/kv.v1.KvService/Put`.
    pub fn path(&self) -> &str {
        self.path.path()
    }

    /// The fully qualified service name, `kv.v1.KvService`.
    pub fn service(&self) -> &str {
        &self.path()[1..self.slash]
    }

    /// The bare method name, `Put`.
    pub fn method(&self) -> &str {
        &self.path()[self.slash + 1..]
    }
}

impl fmt::Debug for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GrpcMethod").field(&self.path()).finish()
    }
}

impl fmt::Display for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// Which calls a layer acts on; the others pass through untouched.
///
/// Select by service (`MethodFilter::service("kv.v1.KvService")`) to keep health checks and
/// server reflection out of a layer's reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MethodFilter {
    /// Every call, including paths that are not gRPC methods.
    #[default]
    All,
    /// Calls whose bare method name (`"Put"`) or full path (`"/kv.v1.KvService/Put"`) is listed.
    Only(BTreeSet<String>),
    /// Every method of the listed fully qualified services (`"kv.v1.KvService"`).
    Services(BTreeSet<String>),
}

impl MethodFilter {
    /// Selects the listed methods, by bare name (`"Put"`) or full path (`"/kv.v1.KvService/Put"`).
    pub fn only<I, T>(methods: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self::Only(methods.into_iter().map(Into::into).collect())
    }

    /// Selects every method of one service, e.g. `"kv.v1.KvService"`.
    pub fn service(service: impl Into<String>) -> Self {
        Self::Services(BTreeSet::from([service.into()]))
    }

    /// Whether the call with this URI path is selected. Allocation-free.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => match split_path(path) {
                Some((_, method)) => names.contains(path) || names.contains(method),
                None => false,
            },
            Self::Services(services) => {
                split_path(path).is_some_and(|(service, _)| services.contains(service))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed path splits into service and method; anything else is not a gRPC method.
    #[test]
    fn parses_method_paths() {
        let method = GrpcMethod::parse("/kv.v1.KvService/Put").expect("valid path");
        assert_eq!(method.service(), "kv.v1.KvService");
        assert_eq!(method.method(), "Put");
        assert_eq!(method.path(), "/kv.v1.KvService/Put");
        for bad in ["/", "/svc", "/svc/", "//m", "/a/b/c", "svc/m"] {
            assert!(GrpcMethod::parse(bad).is_none(), "{bad} should not parse");
        }
    }

    /// Filters match bare names, full paths and services, and never match non-gRPC paths.
    #[test]
    fn filters_match_names_paths_and_services() {
        let only = MethodFilter::only(["Put", "/kv.v1.KvService/Get"]);
        assert!(only.matches("/kv.v1.KvService/Put"));
        assert!(only.matches("/other.Svc/Put"));
        assert!(only.matches("/kv.v1.KvService/Get"));
        assert!(!only.matches("/other.Svc/Get"));
        let service = MethodFilter::service("kv.v1.KvService");
        assert!(service.matches("/kv.v1.KvService/Delete"));
        assert!(!service.matches("/grpc.health.v1.Health/Check"));
        assert!(!service.matches("/metrics"));
        assert!(MethodFilter::All.matches("/metrics"));
    }

    /// Codes found in a source chain are recovered; anything else maps to UNKNOWN like tonic.
    #[test]
    fn recovers_codes_from_errors() {
        let err = status_error(Status::unavailable("x"));
        assert_eq!(error_code(&*err), Code::Unavailable);
        let other: BoxError = "plain".into();
        assert_eq!(error_code(&*other), Code::Unknown);
    }
}
