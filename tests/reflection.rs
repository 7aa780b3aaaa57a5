//! Server reflection in both protocol versions: tools that speak only v1alpha (grpcurl before
//! 1.8.8, evans, grpcui, Postman, Python's grpc_reflection) see the same services as v1
//! clients, and both can fetch the descriptors of our error details and google.rpc's.

mod common;

use tokio_stream::StreamExt;

/// Asks one reflection version (`$pb` is its generated module) for the service list and for the
/// file defining each of `symbols`, and returns (service names, each file's package and
/// message names).
macro_rules! ask {
    ($pb:path, $url:expr, $symbols:expr) => {{
        use $pb::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let channel = tonic::transport::Channel::from_shared($url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut client = ServerReflectionClient::new(channel);
        let mut requests = vec![MessageRequest::ListServices(String::new())];
        requests.extend(
            $symbols
                .iter()
                .map(|s: &&str| MessageRequest::FileContainingSymbol(s.to_string())),
        );
        let requests: Vec<_> = requests
            .into_iter()
            .map(|message| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(message),
            })
            .collect();
        let count = requests.len();
        let mut answers = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect("reflection stream")
            .into_inner();
        let (mut services, mut files) = (Vec::new(), Vec::new());
        for _ in 0..count {
            let answer = answers.next().await.expect("an answer").expect("no error");
            match answer.message_response.expect("a response") {
                MessageResponse::ListServicesResponse(list) => {
                    services.extend(list.service.into_iter().map(|s| s.name));
                }
                MessageResponse::FileDescriptorResponse(found) => {
                    let descriptor = found.file_descriptor_proto.first().expect("a file");
                    let file: prost_types::FileDescriptorProto =
                        prost::Message::decode(descriptor.as_slice()).expect("a descriptor");
                    let messages: Vec<String> = file
                        .message_type
                        .into_iter()
                        .filter_map(|m| m.name)
                        .collect();
                    files.push((file.package.unwrap_or_default(), messages));
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
        (services, files)
    }};
}

/// v1 and v1alpha list the same services and resolve the KV and google.rpc error types.
#[tokio::test]
async fn both_reflection_versions_serve_services_and_error_details() {
    let server = common::start_server().await;
    let symbols = ["kv.v1.VersionMismatch", "google.rpc.BadRequest"];
    let v1 = ask!(tonic_reflection::pb::v1, server.url(), symbols);
    let v1alpha = ask!(tonic_reflection::pb::v1alpha, server.url(), symbols);
    for (version, (services, files)) in [("v1", &v1), ("v1alpha", &v1alpha)] {
        let own = format!("grpc.reflection.{version}.ServerReflection");
        for service in ["kv.v1.KvService", "grpc.health.v1.Health", own.as_str()] {
            assert!(
                services.iter().any(|s| s == service),
                "{version}: {services:?}"
            );
        }
        for ((package, messages), (want_package, want_message)) in files
            .iter()
            .zip([("kv.v1", "VersionMismatch"), ("google.rpc", "BadRequest")])
        {
            assert_eq!(package, want_package, "{version}");
            assert!(
                messages.iter().any(|m| m == want_message),
                "{version}: {messages:?}"
            );
        }
        assert_eq!(files.len(), 2, "{version}");
    }
    server.stop().await;
}
