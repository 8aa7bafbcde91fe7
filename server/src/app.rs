//! The HTTP application: one service for gRPC, gRPC-Web and the web page.
//!
//! Requests are split by what they are, not by path:
//! - gRPC (`content-type: application/grpc*`) and CORS preflights go to the gRPC side: the tonic
//!   services behind deadlines, tonic-web (gRPC-Web translation) and CORS. An unknown service or
//!   method there is answered `UNIMPLEMENTED`, as any gRPC client expects.
//!   Calls to `OrderManagement`, the hot path, go straight to its tonic service (natively) or
//!   through just tonic-web and CORS (gRPC-Web); health, reflection and unknown services go
//!   through tonic's router.
//! - Everything else is a plain web request and gets the static files, with 404s for what is not
//!   there. gRPC-Web and CORS never touch it: `GrpcWebLayer` would answer plain HTTP/1 with 400.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    http::{header, HeaderName, Method, StatusCode, Version},
    response::IntoResponse,
    routing::future::RouteFuture,
    Router,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use order_api::pb::order_management_server::OrderManagementServer;
use tonic::{body::Body as GrpcBody, codegen::BoxFuture, service::Routes};
use tonic_health::server::HealthReporter;
use tonic_web::GrpcWebService;
use tower::{service_fn, Layer, Service};
use tower_http::{
    cors::{AllowOrigin, Cors, CorsLayer},
    services::ServeDir,
    trace::TraceLayer,
};

use crate::{
    config::Config,
    deadline::{DeadlineFuture, DeadlineLayer, DeadlineService},
    service::OrderService,
};

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

/// The wire path prefix of the order service's RPCs.
const ORDERS_PREFIX: &str = "/OrderManagement/";

/// The order service's unary RPCs. Their gRPC-Web answers are one message and the trailers, so
/// they are sent whole, with a `Content-Length`, in one write; streaming answers are never
/// buffered.
const UNARY_ORDER_PATHS: [&str; 2] = ["/OrderManagement/getOrder", "/OrderManagement/addOrder"];

/// The health service, built with its reporter by [`health`].
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

/// The order service as native gRPC clients reach it: deadlines, then tonic.
type NativeOrders = DeadlineService<OrderManagementServer<OrderService>>;
/// The order service as non-browser gRPC-Web clients reach it: gRPC-Web translation, then as
/// natively.
type WebOrders = GrpcWebService<NativeOrders>;
/// The order service as browsers reach it: CORS, then as other gRPC-Web clients do.
type BrowserOrders = Cors<WebOrders>;

/// The whole application as one service. Cheap to clone (one clone per connection).
#[derive(Clone)]
pub struct App {
    native_orders: NativeOrders,
    web_orders: WebOrders,
    browser_orders: BrowserOrders,
    grpc: Router,
    files: Router,
}

/// Builds the application around `orders`; `health` is served beside it.
pub fn app(orders: OrderService, config: &Config, health: HealthServices) -> App {
    let orders = OrderManagementServer::new(orders)
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    let native_orders = DeadlineLayer.layer(orders.clone());
    let web_orders = tonic_web::GrpcWebLayer::new().layer(native_orders.clone());
    let browser_orders = cors(config).layer(web_orders.clone());
    App {
        native_orders,
        web_orders,
        browser_orders,
        grpc: grpc_router(orders, config, health),
        files: files_router(config),
    }
}

/// All gRPC services (orders, health, reflection), behind deadlines, tonic-web and CORS, with
/// `UNIMPLEMENTED` for any other service.
fn grpc_router(
    orders: OrderManagementServer<OrderService>,
    config: &Config,
    health: HealthServices,
) -> Router {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(order_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    const VALID: &str = "the descriptor sets embedded at build time are valid";
    Routes::new(orders)
        .add_service(health)
        .add_service(reflection().build_v1().expect(VALID))
        .add_service(reflection().build_v1alpha().expect(VALID))
        .prepare()
        .into_axum_router()
        .layer(DeadlineLayer)
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(cors(config))
        .layer(TraceLayer::new_for_http())
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
        .not_found_service(service_fn(|_: axum::extract::Request| async {
            Ok::<_, Infallible>((StatusCode::NOT_FOUND, "404 not found\n").into_response())
        }));
    Router::new()
        .fallback_service(files)
        .layer(TraceLayer::new_for_http())
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Native gRPC (HTTP/2) to `OrderManagement`.
    NativeOrders,
    /// gRPC-Web to `OrderManagement` from a client that sent no `Origin`: not a browser, so
    /// CORS has nothing to say and is skipped.
    WebOrders,
    /// gRPC-Web to `OrderManagement` from a page (with `Origin`): through CORS.
    BrowserOrders,
    /// Any other gRPC or gRPC-Web call, or a CORS preflight.
    Grpc,
    /// A page request.
    Files,
}

impl Route {
    /// gRPC and gRPC-Web calls are recognised by content type on any path, so unknown services
    /// get `UNIMPLEMENTED`; CORS preflights go to the gRPC side (only gRPC-Web needs CORS).
    fn of<B>(request: &Request<B>) -> Route {
        let headers = request.headers();
        match headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()) {
            Some(content_type) if content_type.starts_with(b"application/grpc") => {
                if !request.uri().path().starts_with(ORDERS_PREFIX) {
                    Route::Grpc
                } else if content_type.starts_with(b"application/grpc-web") {
                    if headers.contains_key(header::ORIGIN) {
                        Route::BrowserOrders
                    } else {
                        Route::WebOrders
                    }
                } else if request.version() == Version::HTTP_2 {
                    Route::NativeOrders
                } else {
                    // Native gRPC needs HTTP/2; tonic-web answers this with 400.
                    Route::Grpc
                }
            }
            _ if request.method() == Method::OPTIONS
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) =>
            {
                Route::Grpc
            }
            _ => Route::Files,
        }
    }
}

impl App {
    /// Sends `request` to the service its route names. Only that service is cloned (each is a
    /// handle to shared state), so a call costs no more than the route it takes.
    fn route<B>(&self, request: Request<B>) -> AppFuture
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError> + std::fmt::Display + Send + 'static,
    {
        match Route::of(&request) {
            Route::NativeOrders => AppFuture::Native(self.native_orders.clone().call(request)),
            Route::WebOrders => {
                let unary = UNARY_ORDER_PATHS.contains(&request.uri().path());
                web(self.web_orders.clone().call(request), unary)
            }
            Route::BrowserOrders => {
                let unary = UNARY_ORDER_PATHS.contains(&request.uri().path());
                web(self.browser_orders.clone().call(request), unary)
            }
            Route::Grpc => AppFuture::Router(Box::pin(self.grpc.clone().call(request))),
            Route::Files => AppFuture::Router(Box::pin(self.files.clone().call(request))),
        }
    }
}

/// As a tower service, for tests and for embedding in other tower stacks.
impl<B> Service<Request<B>> for App
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + std::fmt::Display + Send + 'static,
{
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = AppFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every inner service is always ready: tonic's generated servers and axum's routers are.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> AppFuture {
        self.route(request)
    }
}

/// As a hyper service, which is how [`crate::serve`] runs it: hyper calls it by reference, so
/// nothing is cloned per call beyond the route taken.
impl hyper::service::Service<Request<hyper::body::Incoming>> for App {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = AppFuture;

    fn call(&self, request: Request<hyper::body::Incoming>) -> AppFuture {
        self.route(request)
    }
}

type NativeFuture = DeadlineFuture<BoxFuture<Response<GrpcBody>, Infallible>>;
type WebFuture = dyn Future<Output = Result<Response<GrpcBody>, Infallible>> + Send;

/// A gRPC-Web call's future: unary answers are sent whole.
fn web(
    call: impl Future<Output = Result<Response<GrpcBody>, Infallible>> + Send + 'static,
    unary: bool,
) -> AppFuture {
    if unary {
        AppFuture::Web(Box::pin(whole(call)))
    } else {
        AppFuture::Web(Box::pin(call))
    }
}

/// Waits for the whole answer of `call` and sends it with a `Content-Length`: over HTTP/1.1 that
/// is one write instead of a chunked stream of several.
async fn whole(
    call: impl Future<Output = Result<Response<GrpcBody>, Infallible>>,
) -> Result<Response<GrpcBody>, Infallible> {
    let (parts, body) = call.await?.into_parts();
    Ok(match body.collect().await {
        Ok(collected) => Response::from_parts(
            parts,
            GrpcBody::new(http_body_util::Full::new(collected.to_bytes())),
        ),
        // The message could not be produced: answer with the status instead.
        Err(status) => status.into_http(),
    })
}

/// The response future of [`App`], one variant per route, so no route pays for another's boxing.
pub enum AppFuture {
    /// Native gRPC to the order service.
    Native(NativeFuture),
    /// gRPC-Web to the order service; boxed, as CORS makes its future large.
    Web(Pin<Box<WebFuture>>),
    /// Through an axum router (other gRPC services, the page); boxed to keep this enum small.
    Router(Pin<Box<RouteFuture<Infallible>>>),
}

impl Future for AppFuture {
    type Output = Result<Response<GrpcBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every variant's future is `Unpin` (boxed, or made of boxes), so the enum is too and
        // can be matched through `get_mut`.
        match self.get_mut() {
            AppFuture::Native(future) => Pin::new(future).poll(cx),
            AppFuture::Web(future) => future.as_mut().poll(cx),
            AppFuture::Router(future) => future
                .as_mut()
                .poll(cx)
                .map(|result| result.map(|response| response.map(GrpcBody::new))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        method: Method,
        path: &str,
        content_type: Option<&str>,
        version: Version,
    ) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(path).version(version);
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn requests_are_routed_by_kind() {
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        let cases = [
            (
                Method::POST,
                "/OrderManagement/getOrder",
                Some("application/grpc"),
                HTTP_2,
                Route::NativeOrders,
            ),
            (
                Method::POST,
                "/OrderManagement/getOrder",
                Some("application/grpc+proto"),
                HTTP_2,
                Route::NativeOrders,
            ),
            (
                Method::POST,
                "/OrderManagement/getOrder",
                Some("application/grpc"),
                HTTP_11,
                Route::Grpc,
            ),
            (
                Method::POST,
                "/OrderManagement/getOrder",
                Some("application/grpc-web"),
                HTTP_11,
                Route::WebOrders,
            ),
            (
                Method::POST,
                "/OrderManagement/getOrder",
                Some("application/grpc-web-text"),
                HTTP_2,
                Route::WebOrders,
            ),
            (
                Method::POST,
                "/grpc.health.v1.Health/Check",
                Some("application/grpc"),
                HTTP_2,
                Route::Grpc,
            ),
            (
                Method::POST,
                "/Nope/x",
                Some("application/grpc-web"),
                HTTP_11,
                Route::Grpc,
            ),
            (
                Method::POST,
                "/OrderManagement/getOrder",
                Some("text/plain"),
                HTTP_11,
                Route::Files,
            ),
            (
                Method::GET,
                "/OrderManagement/getOrder",
                None,
                HTTP_11,
                Route::Files,
            ),
            (Method::GET, "/", None, HTTP_2, Route::Files),
        ];
        for (method, path, content_type, version, route) in cases {
            let request = request(method.clone(), path, content_type, version);
            assert_eq!(
                Route::of(&request),
                route,
                "{method} {path} {content_type:?} {version:?}"
            );
        }
        let mut from_page = request(
            Method::POST,
            "/OrderManagement/getOrder",
            Some("application/grpc-web"),
            HTTP_11,
        );
        from_page
            .headers_mut()
            .insert(header::ORIGIN, "http://127.0.0.1:50051".parse().unwrap());
        assert_eq!(Route::of(&from_page), Route::BrowserOrders);

        let mut preflight = request(
            Method::OPTIONS,
            "/OrderManagement/getOrder",
            None,
            Version::HTTP_11,
        );
        preflight.headers_mut().insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            "POST".parse().unwrap(),
        );
        assert_eq!(Route::of(&preflight), Route::Grpc);
    }
}
