//! The response future of [`Validate`](super::Validate): read a frame, judge it, then call.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, request::Parts};
use http_body::Body as _;
use pin_project_lite::pin_project;
use tonic::Status;
use tonic::body::Body;
use tower::Service;

use super::Validator;
use crate::grpc::{
    BoxError, FRAME_HEADER_LEN, GrpcMethod, PrefixedBody, ReplayBody, frame_len, split_frame,
    status_error,
};

pin_project! {
    /// Response future of [`Validate`](super::Validate).
    pub struct ResponseFuture<S: Service<Request<Body>>, V> {
        #[pin]
        state: State<S, V>,
    }
}

/// A request whose first frame is being read, to be judged before the call is made.
pub(super) struct Reading {
    method: GrpcMethod,
    parts: Parts,
    body: Body,
    read: Read,
    trailers: Option<HeaderMap>,
}

/// A request that was not whole when it came: the service and the rules go with it.
struct Pending<S, V> {
    svc: S,
    validator: Arc<V>,
    reading: Reading,
}

/// The bytes read so far: usually the body's first chunk, kept as it came (no copy); joined
/// only when the frame spans chunks.
enum Read {
    One(Bytes),
    Joined(BytesMut),
}

impl Read {
    fn bytes(&self) -> &[u8] {
        match self {
            Read::One(bytes) => bytes,
            Read::Joined(buf) => buf,
        }
    }

    fn push(&mut self, data: Bytes) {
        match self {
            Read::One(first) if first.is_empty() => *first = data,
            Read::One(first) => {
                let mut buf = BytesMut::with_capacity(first.len() + data.len());
                buf.extend_from_slice(first);
                buf.extend_from_slice(&data);
                *self = Read::Joined(buf);
            }
            Read::Joined(buf) => buf.extend_from_slice(&data),
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Read::One(bytes) => bytes,
            Read::Joined(buf) => buf.freeze(),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<Body>>, V> {
        // Reading the request body until the first frame is complete.
        // Boxed: the request's head is large, and the futures of the layers outside this one
        // are built around it and moved a few times on their way to hyper.
        Reading { pending: Option<Box<Pending<S, V>>> },
        // Validation passed (or did not apply); the inner service is working.
        Inner { #[pin] fut: S::Future },
        // Refused; the error is returned on the first poll.
        Failed { error: Option<BoxError> },
    }
}

impl<S: Service<Request<Body>>, V> State<S, V> {
    /// The state once the first frame has been judged: calling the service, or refused.
    fn judged(call: Result<S::Future, BoxError>) -> Self {
        match call {
            Ok(fut) => State::Inner { fut },
            Err(error) => State::Failed { error: Some(error) },
        }
    }
}

impl<S: Service<Request<Body>>, V> ResponseFuture<S, V> {
    pub(super) fn inner(fut: S::Future) -> Self {
        let state = State::Inner { fut };
        Self { state }
    }

    /// The first frame was judged when the call came: the inner call, or the refusal.
    pub(super) fn judged(call: Result<S::Future, BoxError>) -> Self {
        let state = State::judged(call);
        Self { state }
    }

    /// The first frame is still on its way: read it, judge it, then call `svc`.
    pub(super) fn pending(svc: S, validator: Arc<V>, reading: Reading) -> Self {
        let pending = Pending {
            svc,
            validator,
            reading,
        };
        let state = State::Reading {
            pending: Some(Box::new(pending)),
        };
        Self { state }
    }
}

/// The status for a body that is not one well-formed gRPC frame.
fn malformed(reason: impl fmt::Display) -> BoxError {
    status_error(Status::invalid_argument(format!(
        "malformed request message: {reason}"
    )))
}

impl Reading {
    pub(super) fn new(method: GrpcMethod, parts: Parts, body: Body) -> Self {
        Self {
            method,
            parts,
            body,
            read: Read::One(Bytes::new()),
            trailers: None,
        }
    }

    /// Reads until the first frame is whole and returns its length, or the refusal.
    pub(super) fn poll_frame<V: Validator>(
        &mut self,
        validator: &V,
        cx: &mut Context<'_>,
    ) -> Poll<Result<usize, BoxError>> {
        let limit = validator.max_message_size(&self.method);
        loop {
            if let Some(len) = frame_len(self.read.bytes()) {
                if len - FRAME_HEADER_LEN > limit {
                    let message = format!(
                        "request message of {} bytes exceeds the limit of {limit} bytes",
                        len - FRAME_HEADER_LEN
                    );
                    return Poll::Ready(Err(status_error(Status::resource_exhausted(message))));
                }
                if self.read.bytes().len() >= len {
                    return Poll::Ready(Ok(len));
                }
            }
            if self.trailers.is_some() {
                return Poll::Ready(Err(malformed("body ended inside the first frame")));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.read.push(data),
                    Err(frame) => self.trailers = Some(frame.into_trailers().unwrap_or_default()),
                },
                Some(Err(status)) => return Poll::Ready(Err(status_error(status))),
                None => return Poll::Ready(Err(malformed("body ended inside the first frame"))),
            }
        }
    }

    /// Judges the first `len` bytes and, if they pass, gives back the request with every byte
    /// read, to be passed on.
    pub(super) fn finish<V: Validator>(
        self,
        validator: &V,
        len: usize,
    ) -> Result<Request<Body>, BoxError> {
        let Self {
            method,
            parts,
            body,
            read,
            trailers,
        } = self;
        let (compressed, message) = split_frame(&read.bytes()[..len]).map_err(malformed)?;
        if compressed {
            let status = Status::unimplemented("compressed request messages cannot be validated");
            return Err(status_error(status));
        }
        validator.validate(&method, message).map_err(status_error)?;
        let body = forward(read.freeze(), body, trailers);
        Ok(Request::from_parts(parts, body))
    }
}

/// The body the inner service gets: the bytes already read, then the rest of the original.
fn forward(read: Bytes, rest: Body, trailers: Option<HeaderMap>) -> Body {
    match trailers {
        // The original body has ended; its trailers follow the data.
        Some(trailers) => Body::new(ReplayBody::new(read, Some(trailers))),
        None => Body::new(PrefixedBody::new(read, rest)),
    }
}

impl<S, V> Future for ResponseFuture<S, V>
where
    S: Service<Request<Body>>,
    S::Error: Into<BoxError>,
    V: Validator,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Reading { pending } => {
                    let held = pending.as_mut().expect("a reading future holds its call");
                    let read = ready!(held.reading.poll_frame(&*held.validator, cx));
                    let Pending {
                        mut svc,
                        validator,
                        reading,
                    } = *pending.take().expect("a reading future holds its call");
                    let request = read.and_then(|len| reading.finish(&*validator, len));
                    state.set(State::judged(request.map(|request| svc.call(request))));
                }
                StateProj::Inner { fut } => return fut.poll(cx).map_err(Into::into),
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .expect("a failed future is polled to completion once");
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

impl<S: Service<Request<Body>>, V> fmt::Debug for ResponseFuture<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
