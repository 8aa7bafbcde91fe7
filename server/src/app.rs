//! The HTTP application: one router for gRPC, gRPC-Web and the web page.
//!
//! Requests are split by what they are, not by path:
//! - gRPC (`content-type: application/grpc*`) and CORS preflights go to the gRPC side, which is the
//!   tonic services wrapped in tonic-web (gRPC-Web translation) and CORS. An unknown service or
//!   method there is answered `UNIMPLEMENTED`, as any gRPC client expects.
//! - Everything else is a plain web request and gets the static files, with 404s for what is not
//!   there. gRPC-Web and CORS never touch it: `GrpcWebLayer` would answer plain HTTP/1 with 400.

use std::{convert::Infallible, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderName, Method, StatusCode},
    response::IntoResponse,
    Router,
};
use order_api::pb::order_management_server::OrderManagementServer;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use tower::{service_fn, ServiceExt};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    services::ServeDir,
    trace::TraceLayer,
};

use crate::{config::Config, deadline::DeadlineLayer, service::OrderService};

/// Request headers a gRPC-Web client in a browser sends and CORS must allow.
pub const CORS_ALLOW_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    HeaderName::from_static("x-grpc-web"),
    HeaderName::from_static("x-user-agent"),
    HeaderName::from_static("grpc-timeout"),
];

/// Response headers a browser client must be able to read: the call's status is in them.
pub const CORS_EXPOSE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("grpc-status"),
    HeaderName::from_static("grpc-message"),
    HeaderName::from_static("grpc-status-details-bin"),
];

/// How long a browser may cache a preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Builds the whole application around `orders`; `health` is served beside it.
pub fn app(orders: OrderService, config: &Config, health: HealthServices) -> Router {
    let grpc = grpc_router(orders, config, health);
    let files = files_router(config);
    let split = service_fn(move |request: Request| {
        let target = if is_grpc(&request) {
            grpc.clone()
        } else {
            files.clone()
        };
        async move { Ok::<_, Infallible>(target.oneshot(request).await.into_response()) }
    });
    Router::new()
        .fallback_service(split)
        .layer(TraceLayer::new_for_http())
}

/// The health service, built with its reporter by [`crate::run`].
pub type HealthServices =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

/// Makes the health service and the reporter that sets its statuses.
pub fn health() -> (HealthReporter, HealthServices) {
    let reporter = HealthReporter::new();
    let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
    (
        reporter,
        tonic_health::pb::health_server::HealthServer::new(service),
    )
}

/// gRPC and gRPC-Web: the order service, health and reflection, behind deadlines, tonic-web and
/// CORS.
fn grpc_router(orders: OrderService, config: &Config, health: HealthServices) -> Router {
    let orders = OrderManagementServer::new(orders)
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(order_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    const VALID: &str = "the descriptor sets embedded at build time are valid";
    let routes = Routes::new(orders)
        .add_service(health)
        .add_service(reflection().build_v1().expect(VALID))
        .add_service(reflection().build_v1alpha().expect(VALID))
        .prepare();
    routes
        .into_axum_router()
        .layer(DeadlineLayer)
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(cors(config))
}

fn cors(config: &Config) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(config.cors_origins.iter().cloned()))
        .allow_methods([Method::POST])
        .allow_headers(CORS_ALLOW_HEADERS)
        .expose_headers(CORS_EXPOSE_HEADERS)
        .max_age(CORS_MAX_AGE)
}

/// The web page: files of the static folder, `index.html` for folders, plain 404s otherwise.
/// `ServeDir` refuses paths that climb out of the folder (`..`).
fn files_router(config: &Config) -> Router {
    let files = ServeDir::new(&config.static_dir)
        .append_index_html_on_directories(true)
        .not_found_service(service_fn(|_: Request| async {
            Ok::<_, Infallible>((StatusCode::NOT_FOUND, "404 not found\n").into_response())
        }));
    Router::new().fallback_service(files)
}

/// True for requests the gRPC side answers: gRPC and gRPC-Web calls (by content type, on any
/// path, so unknown services get `UNIMPLEMENTED`) and CORS preflights (only gRPC-Web needs CORS).
fn is_grpc(request: &Request<Body>) -> bool {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| value.as_bytes());
    let grpc_content = content_type.is_some_and(|value| value.starts_with(b"application/grpc"));
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    grpc_content || preflight
}
