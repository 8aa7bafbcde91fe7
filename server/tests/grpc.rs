//! A real server on `127.0.0.1:0`, called by the generated client over native gRPC and over
//! gRPC-Web (HTTP/1.1, binary and text mode).

mod common;

use common::{get_order, Db, TestServer};
use http::uri::PathAndQuery;
use order_api::pb::Order;
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
