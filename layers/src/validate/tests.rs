use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use prost::Message;
use tonic::Code;
use tonic::body::Body;
use tonic_types::StatusExt;
use tower::{Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::grpc::{MethodFilter, encode_frame};

type Mock = mock::Mock<Request<Body>, Response<()>>;
type Handle = mock::Handle<Request<Body>, Response<()>>;

type Stream = StreamBody<
    tokio_stream::wrappers::ReceiverStream<Result<http_body::Frame<Bytes>, tonic::Status>>,
>;

const PUT: &str = "/kv.v1.KvService/Put";

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

fn rules() -> ValidateLayer<Rules> {
    ValidateLayer::prost::<PutRequest, _>(PUT, |req| {
        if req.key.is_empty() {
            return Err(vec![FieldViolation::new("key", "must not be empty")]);
        }
        Ok(())
    })
}

fn request(path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .body(Full::new(body))
        .expect("valid request")
}

fn service<V: Validator>(layer: ValidateLayer<V>) -> (Validate<Mock, V>, Handle) {
    let (mock, handle) = mock::pair();
    (tower::Layer::layer(&layer, mock), handle)
}

/// Answers the inner service's next call and returns the body it was given.
async fn forwarded(handle: &mut Handle) -> Bytes {
    let (req, respond) = handle.next_request().await.expect("inner called");
    respond.send_response(Response::new(()));
    req.into_body()
        .collect()
        .await
        .expect("body readable")
        .to_bytes()
}

/// Calls `svc` and returns the status code of the refusal.
async fn refusal<V: Validator>(
    svc: &mut Validate<Mock, V>,
    req: Request<Full<Bytes>>,
) -> tonic::Status {
    let err = ServiceExt::<Request<Full<Bytes>>>::ready(svc)
        .await
        .expect("ready")
        .call(req)
        .await
        .expect_err("refused");
    tonic::Status::from_error(err)
}

/// A prost rule refuses with INVALID_ARGUMENT and a BadRequest field violation; inner not called.
#[tokio::test]
async fn prost_rule_rejects_with_field_violation() {
    let (mut svc, mut handle) = service(rules());
    let bad = PutRequest {
        key: String::new(),
        value: b"v".to_vec(),
    };
    let status = refusal(&mut svc, request(PUT, encode_frame(&bad.encode_to_vec()))).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status
        .get_details_bad_request()
        .expect("BadRequest details");
    assert_eq!(details.field_violations.len(), 1);
    assert_eq!(details.field_violations[0].field, "key");
    assert_eq!(details.field_violations[0].description, "must not be empty");
    drop(svc);
    assert!(handle.next_request().await.is_none(), "inner never called");
}

/// A valid message reaches the inner service with a byte-identical body.
#[tokio::test]
async fn valid_message_reaches_inner_unchanged() {
    let (mut svc, mut handle) =
        service(rules().rule::<PutRequest, _>("/kv.v1.KvService/Get", |_| Ok(())));
    let good = PutRequest {
        key: "k".into(),
        value: vec![1, 2, 3],
    };
    let sent = encode_frame(&good.encode_to_vec());
    let fut = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .expect("ready")
        .call(request(PUT, sent.clone()));
    let (result, received) = tokio::join!(fut, forwarded(&mut handle));
    result.expect("valid request passes");
    assert_eq!(received, sent);
}

/// A method the validator does not apply to is forwarded before its body has even ended.
#[tokio::test]
async fn non_applicable_method_is_not_buffered() {
    let (mut svc, mut handle) = service(rules());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, tonic::Status>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::builder()
        .uri("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        .body(body)
        .expect("valid request");
    let fut = ServiceExt::<Request<Stream>>::ready(&mut svc)
        .await
        .expect("ready")
        .call(req);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"partial"))))
        .await
        .expect("body open");
    let inner = async {
        let (req, respond) = handle
            .next_request()
            .await
            .expect("forwarded while body is open");
        respond.send_response(Response::new(()));
        req
    };
    let (result, req) = tokio::join!(fut, inner);
    result.expect("passes through");
    let mut body = req.into_body();
    let first = body.frame().await.expect("a frame").expect("no error");
    assert_eq!(
        first.into_data().expect("data"),
        Bytes::from_static(b"partial")
    );
    drop(tx);
}

/// A frame that arrives in pieces, after the call was made, is joined, judged whole, and
/// reaches the inner service byte for byte; a bad one split the same way is still refused.
#[tokio::test]
async fn frame_in_pieces_is_judged_whole() {
    let good = PutRequest {
        key: "k".into(),
        value: vec![7; 100],
    };
    let bad = PutRequest {
        key: String::new(),
        value: vec![7; 100],
    };
    for (message, passes) in [(good, true), (bad, false)] {
        let (mut svc, mut handle) = service(rules());
        let sent = encode_frame(&message.encode_to_vec());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<_, tonic::Status>>(4);
        let req = Request::builder()
            .uri(PUT)
            .body(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .expect("valid request");
        let fut = ServiceExt::<Request<Stream>>::ready(&mut svc)
            .await
            .expect("ready")
            .call(req);
        let pieces = [sent.slice(..3), sent.slice(3..40), sent.slice(40..)];
        // Owns the sender: the body ends when the last piece is sent.
        let feed = async move {
            for piece in pieces {
                tokio::task::yield_now().await;
                tx.send(Ok(http_body::Frame::data(piece)))
                    .await
                    .expect("body open");
            }
        };
        if passes {
            let (result, (), received) = tokio::join!(fut, feed, forwarded(&mut handle));
            result.expect("the whole frame passes");
            assert_eq!(received, sent);
        } else {
            let (result, ()) = tokio::join!(fut, feed);
            let status = tonic::Status::from_error(result.expect_err("refused"));
            assert_eq!(status.code(), Code::InvalidArgument);
            drop(svc);
            assert!(handle.next_request().await.is_none(), "inner never called");
        }
    }
}

/// A request refused as it came gives back the readiness its call was given: in front of a
/// buffer of one slot, another clone of the service can take that slot at once.
#[tokio::test]
async fn a_refusal_releases_the_readiness_it_was_given() {
    let (mock, _handle) = mock::pair::<Request<Body>, Response<()>>();
    let buffer = tower::buffer::Buffer::new(mock, 1);
    let mut first = tower::Layer::layer(&rules(), buffer);
    let mut second = first.clone();
    let bad = PutRequest {
        key: String::new(),
        value: vec![7; 10],
    };
    let err = ServiceExt::<Request<Full<Bytes>>>::ready(&mut first)
        .await
        .expect("ready")
        .call(request(PUT, encode_frame(&bad.encode_to_vec())))
        .await
        .expect_err("refused");
    assert_eq!(tonic::Status::from_error(err).code(), Code::InvalidArgument);
    let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut second);
    tokio::time::timeout(std::time::Duration::from_secs(5), ready)
        .await
        .expect("the buffer's slot was released")
        .expect("ready");
}

/// A body that is not a whole gRPC frame is refused with INVALID_ARGUMENT.
#[tokio::test]
async fn malformed_frame_is_invalid_argument() {
    let (mut svc, _handle) = service(rules());
    for body in [&[0u8, 0, 0, 0, 9, 1, 2][..], &[0, 0][..], &[][..]] {
        let status = refusal(&mut svc, request(PUT, Bytes::copy_from_slice(body))).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{body:?}");
        assert!(status.message().starts_with("malformed request message"));
    }
    let garbage = encode_frame(&[0xff, 0xff, 0xff]);
    let status = refusal(&mut svc, request(PUT, garbage)).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("malformed request message"));
}

/// Oversized messages are refused with RESOURCE_EXHAUSTED before they are read.
#[tokio::test]
async fn oversized_message_is_resource_exhausted() {
    let (mut svc, _handle) = service(ValidateLayer::max_message_size(4));
    let status = refusal(&mut svc, request(PUT, encode_frame(b"12345"))).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
}

/// A closure validator narrowed to one service leaves other services alone.
#[tokio::test]
async fn custom_closure_respects_method_filter() {
    let layer = ValidateLayer::custom(|_: &GrpcMethod, msg: &[u8]| {
        if msg.is_empty() {
            Err(tonic::Status::invalid_argument("empty"))
        } else {
            Ok(())
        }
    })
    .for_methods(MethodFilter::service("kv.v1.KvService"));
    let (mut svc, mut handle) = service(layer);
    let status = refusal(&mut svc, request(PUT, encode_frame(b""))).await;
    assert_eq!(status.message(), "empty");
    let fut = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .expect("ready")
        .call(request("/other.Svc/Put", encode_frame(b"")));
    let inner = async {
        let (_, respond) = handle.next_request().await.expect("inner called");
        respond.send_response(Response::new(()));
    };
    let (result, ()) = tokio::join!(fut, inner);
    result.expect("other services pass");
}
