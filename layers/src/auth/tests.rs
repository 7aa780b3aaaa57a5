use http::{Request, Response};
use tonic::Code;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::grpc::status_in_chain;

fn request(path: &str, authorization: Option<&str>) -> Request<()> {
    let mut builder = Request::builder().uri(path);
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    builder.body(()).expect("valid request")
}

/// Sends one call; `Ok` when it reached the inner service, else the refusal's code.
async fn call<S>(
    svc: &mut S,
    handle: &mut mock::Handle<Request<()>, Response<()>>,
    req: Request<()>,
) -> Result<(), Code>
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError>,
{
    let fut = svc.ready().await.expect("ready").call(req);
    tokio::pin!(fut);
    tokio::select! {
        result = &mut fut => result.map(drop).map_err(|e| status_in_chain(&*e).expect("a status")),
        next = handle.next_request() => {
            let (_, respond) = next.expect("the call went in");
            respond.send_response(Response::new(()));
            fut.await.map(drop).map_err(|e| status_in_chain(&*e).expect("a status"))
        }
    }
}

/// Only `Bearer <one of the tokens>` gets in: a missing header, another scheme, a wrong token,
/// a prefix or an extension of a right one are all UNAUTHENTICATED, never reaching the service.
#[tokio::test]
async fn only_a_whole_right_token_gets_in() {
    let tokens = Tokens::new(["s3cret-one", "s3cret-two"]).expect("valid tokens");
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let mut svc = AuthLayer::bearer(tokens).layer(mock);
    for (header, expected) in [
        (Some("Bearer s3cret-one"), Ok(())),
        (Some("Bearer s3cret-two"), Ok(())),
        (None, Err(Code::Unauthenticated)),
        (Some("s3cret-one"), Err(Code::Unauthenticated)),
        (Some("Basic s3cret-one"), Err(Code::Unauthenticated)),
        (Some("Bearer s3cret"), Err(Code::Unauthenticated)),
        (Some("Bearer s3cret-one2"), Err(Code::Unauthenticated)),
        (Some("Bearer "), Err(Code::Unauthenticated)),
        (Some("bearer s3cret-one"), Err(Code::Unauthenticated)),
    ] {
        let got = call(&mut svc, &mut handle, request("/a.S/M", header)).await;
        assert_eq!(got, expected, "{header:?}");
    }
}

/// Replacing the set takes effect at once; a bad replacement changes nothing.
#[tokio::test]
async fn tokens_rotate_without_a_restart() {
    let tokens = Tokens::parse("# team tokens\nold-token\n\n").expect("valid tokens");
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let mut svc = AuthLayer::bearer(tokens.clone()).layer(mock);
    let old = || request("/a.S/M", Some("Bearer old-token"));
    let new = || request("/a.S/M", Some("Bearer new-token"));
    assert_eq!(call(&mut svc, &mut handle, old()).await, Ok(()));
    tokens.replace_from("old-token\nnew-token\n").expect("both");
    assert_eq!(call(&mut svc, &mut handle, new()).await, Ok(()));
    tokens.replace_from("new-token\n").expect("new only");
    assert_eq!(
        call(&mut svc, &mut handle, old()).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(tokens.replace_from("# nothing\n"), Err(TokensError::Empty));
    assert_eq!(
        tokens.replace(["bad token"]),
        Err(TokensError::Unprintable { line: 1 })
    );
    assert_eq!(
        call(&mut svc, &mut handle, new()).await,
        Ok(()),
        "the old set stayed"
    );
    assert_eq!(
        format!("{tokens:?}"),
        "Tokens(1 accepted)",
        "Debug never prints tokens"
    );
}

/// Calls the filter leaves out (health) pass without a token; a custom strategy decides the
/// rest.
#[tokio::test]
async fn unselected_calls_pass_and_custom_strategies_decide() {
    let only_admin = |headers: &http::HeaderMap| match headers.get("x-role") {
        Some(role) if role == "admin" => Ok(()),
        _ => Err(tonic::Status::permission_denied("admins only")),
    };
    let layer = AuthLayer::custom(only_admin).methods(crate::MethodFilter::service("a.S"));
    let (mock, mut handle) = mock::pair::<Request<()>, Response<()>>();
    let mut svc = layer.layer(mock);
    let health = request("/grpc.health.v1.Health/Check", None);
    assert_eq!(call(&mut svc, &mut handle, health).await, Ok(()));
    let plain = request("/a.S/M", None);
    assert_eq!(
        call(&mut svc, &mut handle, plain).await,
        Err(Code::PermissionDenied)
    );
    let mut admin = request("/a.S/M", None);
    admin
        .headers_mut()
        .insert("x-role", "admin".parse().expect("header"));
    assert_eq!(call(&mut svc, &mut handle, admin).await, Ok(()));
}
