//! A real server on `127.0.0.1:0`, called by the generated client over native gRPC and over
//! gRPC-Web (HTTP/1.1, binary and text mode).

mod common;

use common::{get_order, Db, TestServer};
use http::uri::PathAndQuery;
use order_api::pb::{order_management_client::OrderManagementClient, Order};
use rstest::rstest;
use tonic::{Code, Request};

fn assert_is_106(order: &Order) {
    assert_eq!(order.id, "106");
    assert_eq!(order.items, ["Amazon Echo", "Apple iPhone XS"]);
    assert_eq!(order.destination, "Mountain View, CA");
    assert_eq!(order.price, 300.0);
}

#[rstest]
#[tokio::test]
async fn get_order_over_every_transport(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    assert_is_106(
        &get_order(server.native().await, "106")
            .await
            .expect("native"),
    );
    assert_is_106(
        &get_order(server.grpc_web(), "106")
            .await
            .expect("gRPC-Web, binary"),
    );
    assert_is_106(
        &get_order(server.grpc_web_text(), "106")
            .await
            .expect("gRPC-Web, text"),
    );
    server.stop().await.expect("clean stop");
}

#[rstest]
#[tokio::test]
async fn every_sample_order_is_served(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let mut client = server.native().await;
    for (id, first_item, price) in [
        ("102", "Google Pixel 3A", 1800.0),
        ("103", "Apple Watch S4", 400.0),
        ("104", "Google Home Mini", 400.0),
        ("105", "Amazon Echo", 30.0),
        ("106", "Amazon Echo", 300.0),
    ] {
        let order = client
            .get_order(id.to_string())
            .await
            .expect(id)
            .into_inner();
        assert_eq!(order.id, id);
        assert_eq!(order.items[0], first_item);
        assert_eq!(order.price, price);
    }
}

/// Messages are decoded and encoded in buffers that start at `order_api::codec::BUFFER_SIZE` and
/// grow: an order many times that size arrives whole on every transport, both ways.
#[tokio::test]
async fn an_order_larger_than_the_codec_buffer_is_served_whole_on_every_transport() {
    let server = TestServer::start().await;
    let big = Order {
        id: "BIG-1".into(),
        // Within the validation limits (100 items of 200 characters, a description of 2000):
        // about 40 KB, two bytes a character.
        items: (0..100)
            .map(|i| format!("item {i:03}: {}", "\u{e9}".repeat(180)))
            .collect(),
        description: "\u{e8}".repeat(1_900),
        price: 12.5,
        destination: "Paris, FR".into(),
    };
    let size = prost::Message::encoded_len(&big);
    assert!(size > 30 * order_api::codec::BUFFER_SIZE, "{size} bytes");
    let id = server
        .native()
        .await
        .add_order(big.clone())
        .await
        .expect("a large order is taken")
        .into_inner();
    assert_eq!(id, "BIG-1");
    let answers = [
        ("native", get_order(server.native().await, "BIG-1").await),
        ("gRPC-Web", get_order(server.grpc_web(), "BIG-1").await),
        (
            "gRPC-Web text",
            get_order(server.grpc_web_text(), "BIG-1").await,
        ),
    ];
    for (transport, answer) in answers {
        assert_eq!(answer.expect(transport), big, "{transport}");
    }
}

#[rstest]
#[tokio::test]
async fn unknown_order_is_not_found_on_every_transport(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let statuses = [
        get_order(server.native().await, "999").await,
        get_order(server.grpc_web(), "999").await,
        get_order(server.grpc_web_text(), "999").await,
    ];
    for status in statuses {
        let status = status.expect_err("999 does not exist");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), r#"order "999" not found"#);
    }
}

#[rstest]
#[tokio::test]
async fn not_found_echoes_only_a_short_prefix_of_the_id(
    #[values(Db::Sqlite, Db::Postgres)] db: Db,
) {
    let server = TestServer::start_on(db).await;
    let id = "x".repeat(100_000);
    let status = server
        .native()
        .await
        .get_order(id)
        .await
        .expect_err("no such order");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().len() < 80, "{}", status.message());
}

#[rstest]
#[tokio::test]
async fn empty_id_is_invalid(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    let status = server
        .native()
        .await
        .get_order(String::new())
        .await
        .expect_err("empty id");
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// Calls `path` with a StringValue through the generated code's own machinery.
async fn call_path<T>(client: T, origin: &str, path: &'static str) -> tonic::Status
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::with_origin(client, origin.parse().unwrap());
    grpc.ready().await.map_err(Into::into).expect("ready");
    let codec = tonic_prost::ProstCodec::<String, Order>::default();
    grpc.unary(
        Request::new("106".to_string()),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .expect_err("no such method")
}

#[rstest]
#[tokio::test]
async fn unknown_service_or_method_is_unimplemented(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    let server = TestServer::start_on(db).await;
    for path in ["/NoSuchService/getOrder", "/OrderManagement/noSuchMethod"] {
        let channel = server.channel().await;
        let status = call_path(channel, &server.url(), path).await;
        assert_eq!(status.code(), Code::Unimplemented, "native {path}");

        let web = tower::ServiceBuilder::new()
            .layer(tonic_web::GrpcWebClientLayer::new())
            .service(common::http1_client());
        let status = call_path(web, &server.url(), path).await;
        assert_eq!(status.code(), Code::Unimplemented, "grpc-web {path}");
    }
}

#[rstest]
#[tokio::test]
async fn health_reports_serving(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let server = TestServer::start_on(db).await;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel);
    for service in ["", "OrderManagement"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[rstest]
#[tokio::test]
async fn reflection_lists_the_service_and_describes_it(#[values(Db::Sqlite, Db::Postgres)] db: Db) {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let server = TestServer::start_on(db).await;
    let channel = server.channel().await;
    let mut reflection = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("OrderManagement".into()),
    ]
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .expect("reflection")
        .into_inner();

    let listed = responses.message().await.unwrap().unwrap().message_response;
    let Some(MessageResponse::ListServicesResponse(list)) = listed else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"OrderManagement"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let file = responses.message().await.unwrap().unwrap().message_response;
    let Some(MessageResponse::FileDescriptorResponse(file)) = file else {
        panic!("expected a file descriptor, got {file:?}");
    };
    // The service's file, and wrappers.proto which it imports, so tools can build StringValue.
    let all = file.file_descriptor_proto.concat();
    assert!(all.windows(8).any(|w| w == b"getOrder"));
    assert!(all.windows(23).any(|w| w == b"google/protobuf/wrapper"));
}

/// The `grpc-status` of a gRPC-Web answer: in the headers (trailers-only) or in its trailer frame.
fn grpc_web_status(headers: &http::HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(status) = headers.get("grpc-status") {
        return Some(status.to_str().ok()?.to_owned());
    }
    let mut rest = body;
    while rest.len() >= 5 {
        let length = u32::from_be_bytes(rest[1..5].try_into().ok()?) as usize;
        let frame = rest.get(5..5 + length)?;
        if rest[0] & 0x80 != 0 {
            let text = std::str::from_utf8(frame).ok()?;
            return text
                .lines()
                .find_map(|line| line.trim().strip_prefix("grpc-status:"))
                .map(|s| s.trim().to_owned());
        }
        rest = &rest[5 + length..];
    }
    None
}

#[tokio::test]
async fn every_rpc_of_the_descriptor_is_served_over_grpc_web_and_unary_answers_have_a_length() {
    use prost::Message;
    let server = TestServer::start().await;
    let set = prost_types::FileDescriptorSet::decode(order_api::FILE_DESCRIPTOR_SET).unwrap();
    let service = set
        .file
        .iter()
        .flat_map(|file| &file.service)
        .find(|service| service.name() == order_api::pb::order_management_server::SERVICE_NAME)
        .expect("the order service is in the descriptor");
    assert_eq!(service.method.len(), 6);
    let client = common::http1_client::<http_body_util::Full<bytes::Bytes>>();
    for method in &service.method {
        let path = format!("/{}/{}", service.name(), method.name());
        // One empty message: valid protobuf for every request type.
        let request = http::Request::post(format!("{}{path}", server.url()))
            .header("content-type", "application/grpc-web+proto")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            )))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let (parts, body) = response.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        let status = grpc_web_status(&parts.headers, &body).expect("a grpc-status");
        assert_ne!(status, "12", "{path} is not routed to the order service");
        let unary = !method.client_streaming() && !method.server_streaming();
        let has_length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
        let trailers_only = parts.headers.contains_key("grpc-status");
        if unary {
            assert!(has_length, "{path}: a unary answer is sent whole");
        } else if !trailers_only {
            assert!(!has_length, "{path}: a stream is sent as it comes");
        }
    }
}

#[tokio::test]
async fn the_axum_router_top_level_serves_the_same() {
    let mut config = order_server::Config::for_tests();
    config.axum_router = true;
    let server = TestServer::start_with(config).await;
    assert_is_106(&get_order(server.native().await, "106").await.unwrap());
    assert_is_106(&get_order(server.grpc_web(), "106").await.unwrap());
    let web = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(common::http1_client());
    let status = call_path(web, &server.url(), "/Nope/x").await;
    assert_eq!(status.code(), Code::Unimplemented);
    let page = common::http1_client::<http_body_util::Empty<bytes::Bytes>>()
        .get(format!("{}/", server.url()).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
}

#[tokio::test]
async fn native_calls_for_a_host_this_loopback_server_does_not_answer_are_permission_denied() {
    let server = TestServer::start().await;
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    let channel_for = |host: &str| {
        tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .origin(format!("http://{host}:{port}").parse().unwrap())
    };
    let channel = channel_for("rebind.attacker.example")
        .connect()
        .await
        .unwrap();
    let error = OrderManagementClient::new(channel)
        .get_order("106".to_string())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
    assert!(
        error.message().contains("rebind.attacker.example"),
        "{error:?}"
    );

    let channel = channel_for("localhost").connect().await.unwrap();
    let order = OrderManagementClient::new(channel)
        .get_order("106".to_string())
        .await
        .unwrap();
    assert_is_106(order.get_ref());
}
