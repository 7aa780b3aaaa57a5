//! Fuzzing the decoders of untrusted input in this crate, on the stable toolchain: proptest
//! drives each with arbitrary bytes and checks it never panics, never accepts a malformed input
//! as valid, and answers with the codes its docs promise.
//!
//! CI runs proptest's default 256 cases per target; `PROPTEST_CASES=100000 cargo test -p
//! grpc-layers --test fuzz` is the long run. A failure prints a minimal input to replay.

use bytes::Bytes;
use grpc_layers::grpc::{decode_frame, encode_frame, format_timeout, frame_len, parse_timeout};
use grpc_layers::validate::{FieldViolation, ValidateLayer};
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use proptest::prelude::*;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tower::{Layer, Service, ServiceExt};

proptest! {
    /// Any header value: parsed or refused, never a panic; what parses is the documented form.
    #[test]
    fn grpc_timeout_parser(value in "\\PC{0,12}", raw in proptest::collection::vec(any::<u8>(), 0..12)) {
        let parsed = HeaderValue::from_str(&value).ok().and_then(|h| parse_timeout(&h));
        if let Some(timeout) = parsed {
            prop_assert!(value.len() <= 9 && value[..value.len() - 1].bytes().all(|b| b.is_ascii_digit()));
            prop_assert!(timeout.as_secs() <= 99_999_999 * 3600);
        }
        if let Ok(header) = HeaderValue::from_bytes(&raw) {
            let _ = parse_timeout(&header);
        }
    }

    /// Formatting never lengthens a deadline, and what it writes parses back.
    #[test]
    fn grpc_timeout_round_trip(nanos in any::<u64>()) {
        let timeout = std::time::Duration::from_nanos(nanos);
        let back = parse_timeout(&format_timeout(timeout)).expect("we parse what we write");
        prop_assert!(back <= timeout);
    }

    /// Any bytes: one whole frame or a precise error; a decoded frame is exactly its header's
    /// length, and the length is read, never trusted to allocate.
    #[test]
    fn frame_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let buf = Bytes::from(bytes.clone());
        match decode_frame(&buf) {
            Ok(frame) => {
                prop_assert!(bytes[0] <= 1);
                prop_assert_eq!(frame_len(&bytes), Some(bytes.len()));
                prop_assert_eq!(frame.message.len(), bytes.len() - 5);
            }
            Err(_) => prop_assert!(frame_len(&bytes) != Some(bytes.len()) || bytes[0] > 1),
        }
    }

    /// The validation layer's frame reader, fed any bytes in any chunking: it forwards exactly
    /// what was sent, or refuses with INVALID_ARGUMENT, RESOURCE_EXHAUSTED or UNIMPLEMENTED, and
    /// never reads past the size limit.
    #[test]
    fn validation_frame_reader(
        message in proptest::collection::vec(any::<u8>(), 0..80),
        header in proptest::option::of(proptest::array::uniform5(any::<u8>())),
        cuts in proptest::collection::vec(0usize..100, 0..4),
    ) {
        let mut body = match header {
            Some(header) => header.to_vec(),
            None => encode_frame(&message).to_vec(),
        };
        if header.is_some() {
            body.extend_from_slice(&message);
        }
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(validate(body.clone(), cuts));
        match outcome {
            Ok(seen) => prop_assert_eq!(seen, body),
            Err(code) => prop_assert!(
                matches!(code, Code::InvalidArgument | Code::ResourceExhausted | Code::Unimplemented),
                "{code:?}"
            ),
        }
    }
}

/// Sends `body`, cut into chunks at `cuts`, through a validation layer (health requests, a
/// service name of at most 16 bytes, messages of at most 40 bytes); `Ok` with the bytes the
/// inner service read, or the refusal's code.
async fn validate(body: Vec<u8>, mut cuts: Vec<usize>) -> Result<Vec<u8>, Code> {
    cuts.retain(|&c| c < body.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([body.len()]) {
        chunks.push(Ok::<_, std::convert::Infallible>(http_body::Frame::data(
            Bytes::copy_from_slice(&body[start..cut]),
        )));
        start = cut;
    }
    let body = tonic::body::Body::new(StreamBody::new(tokio_stream::iter(chunks)));
    let rules =
        ValidateLayer::prost::<HealthCheckRequest, _>("/grpc.health.v1.Health/Check", |req| {
            match req.service.len() {
                0..=16 => Ok(()),
                _ => Err(vec![FieldViolation::new("service", "too long")]),
            }
        })
        .limit(40);
    let inner = tower::service_fn(|req: Request<tonic::body::Body>| async move {
        let seen = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec());
        Ok::<_, grpc_layers::BoxError>(Response::new(seen.unwrap_or_default()))
    });
    let mut svc = rules.layer(inner);
    let request = Request::builder()
        .uri("/grpc.health.v1.Health/Check")
        .body(body)
        .expect("request");
    let ready = ServiceExt::<Request<tonic::body::Body>>::ready(&mut svc)
        .await
        .expect("ready");
    match ready.call(request).await {
        Ok(response) => Ok(response.into_body()),
        Err(err) => Err(grpc_layers::grpc::error_code(&*err)),
    }
}
