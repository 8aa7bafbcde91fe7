//! The HTTP application: one service for gRPC, gRPC-Web and the web page.
//!
//! [`Route::of`] decides where each request goes; this file only sends it there:
//! - the order service (the hot path) through its gRPC stack, straight to its tonic service;
//! - health, reflection and any other service through tonic's `Routes`, behind the same stack
//!   ([`crate::grpc::stack::stack`] builds both), `UNIMPLEMENTED` for unknown services;
//! - everything else to the static files ([`crate::http::files`]), which gRPC-Web and CORS never touch.
//!
//! Unary gRPC-Web answers are sent whole ([`crate::grpc::body::whole`]); which methods are unary comes
//! from the embedded descriptor sets.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use order_api::pb::order_management_server::OrderManagementServer;
use tonic::{body::Body as GrpcBody, codegen::BoxFuture, service::Routes};
use tonic_health::server::HealthReporter;
use tower::Service;

use tracing::{info, warn};

use crate::{
    config::Config,
    grpc::auth::{Auth, AuthConfig, AuthError},
    grpc::body::whole,
    grpc::compress::{accepts_gzip, gzip_stream},
    grpc::connect::Methods,
    grpc::deadline::Deadlines,
    grpc::edge::{Edge, EdgeFuture, EdgeLayer},
    grpc::host::Hosts,
    grpc::methods::MethodPaths,
    grpc::metrics::Metrics,
    grpc::stack::{stack, Layers, Stack},
    http::cors::cors,
    http::files::files,
    http::route::{Route, Target, Transport},
    orders::service::OrderService,
};

/// The whole application as one service. Cheap to clone (every part is a handle).
#[derive(Clone)]
pub struct App {
    orders: Stack<OrderManagementServer<OrderService>>,
    other: Stack<Routes>,
    files: Router,
    unary: Arc<MethodPaths>,
    health: HealthReporter,
    metrics: Option<Arc<Metrics>>,
}

/// Builds the application around `orders`, with the health and reflection services beside it.
/// Fails only on an authentication key that cannot be used.
pub fn app(orders: OrderService, config: &Config) -> Result<App, AuthError> {
    let auth = Auth::new(&AuthConfig::of(config))?;
    match &auth {
        None => warn!("authentication is OFF: anyone who can reach this port can read and change every order (see --auth-secret-file, --auth-public-key)"),
        Some((_, algorithm)) => info!(
            ?algorithm,
            issuer = ?config.auth_issuer,
            audience = ?config.auth_audience,
            public_reads = config.public_reads,
            "authentication on: every order call needs a bearer token"
        ),
    }
    let metrics =
        (!config.no_metrics).then(|| Metrics::new(orders.store().clone(), orders.stream_count()));
    let hosts = Hosts::new(config.listen, &config.allowed_hosts);
    let layers = Layers {
        edge: EdgeLayer(Arc::new(Edge {
            metrics: metrics.clone(),
            hosts: hosts.clone(),
            auth: auth.map(|(auth, _)| auth),
            deadlines: Deadlines {
                max: config.max_call_duration(),
                streamed: MethodPaths::response_streams(),
            },
            methods: MethodPaths::all(),
            max_message_size: config.max_message_size,
        })),
        cors: cors(config),
        connect: (Arc::new(Methods::new()), config.max_message_size),
    };
    let health = HealthReporter::new();
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health.clone()),
    );
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(order_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    const VALID: &str = "the descriptor sets embedded at build time are valid";
    let other = Routes::new(health_service)
        .add_service(reflection().build_v1().expect(VALID))
        .add_service(reflection().build_v1alpha().expect(VALID))
        .prepare();
    let orders =
        OrderManagementServer::new(orders.with_stream_idle_timeout(config.stream_idle_timeout))
            .max_decoding_message_size(config.max_message_size)
            .max_encoding_message_size(config.max_message_size);
    Ok(App {
        orders: stack(orders, &layers),
        other: stack(other, &layers),
        files: files(config, hosts, metrics.clone()),
        metrics,
        unary: Arc::new(MethodPaths::unary()),
        health,
    })
}

impl App {
    /// What the metrics are recorded in, unless `--no-metrics`.
    pub(crate) fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Sets what `grpc.health.v1` reports.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// Sends `request` where its route says. Only the service taken is cloned (each is a handle
    /// to shared state), so a call costs no more than its route.
    fn route<B>(&self, request: Request<B>) -> AppFuture
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError> + std::fmt::Display + Send + 'static,
    {
        let unary = || self.unary.contains(request.uri().path());
        match Route::of(&request) {
            Route::Grpc(Target::Orders, Transport::Native) => {
                AppFuture::Orders(self.orders.native.clone().call(request))
            }
            Route::Grpc(Target::Orders, Transport::Web) => {
                let unary = unary();
                web(self.orders.web.clone().call(request), unary, false)
            }
            Route::Grpc(Target::Orders, Transport::Browser) => {
                let (unary, gzip) = (unary(), accepts_gzip(request.headers()));
                web(self.orders.browser.clone().call(request), unary, gzip)
            }
            Route::Grpc(Target::Orders, Transport::Connect) => {
                AppFuture::Boxed(Box::pin(self.orders.connect.clone().call(request)))
            }
            Route::Grpc(Target::Other, Transport::Connect) => {
                AppFuture::Boxed(Box::pin(self.other.connect.clone().call(request)))
            }
            Route::Grpc(Target::Other, Transport::Native) => {
                AppFuture::Boxed(Box::pin(self.other.native.clone().call(request)))
            }
            Route::Grpc(Target::Other, Transport::Web) => {
                let unary = unary();
                web(self.other.web.clone().call(request), unary, false)
            }
            Route::Grpc(Target::Other, Transport::Browser) => {
                let (unary, gzip) = (unary(), accepts_gzip(request.headers()));
                web(self.other.browser.clone().call(request), unary, gzip)
            }
            Route::Page => {
                let page = self.files.clone().call(request);
                AppFuture::Boxed(Box::pin(async move {
                    page.await.map(|response| response.map(GrpcBody::new))
                }))
            }
        }
    }
}

/// The same application behind an axum `Router` at the top: the order service's paths
/// (`/OrderManagement/{*method}`, from the generated service name) mounted with `route_service`,
/// everything else as the fallback, no per-call tracing span. Only for measuring what the
/// hand-written top level is worth (`--axum-router`).
pub fn router(app: App) -> Router {
    let orders = format!(
        "/{}/{{*method}}",
        order_api::pb::order_management_server::SERVICE_NAME
    );
    Router::new()
        .route_service(&orders, app.clone())
        .fallback_service(app)
}

/// A gRPC-Web call's future: unary answers are sent whole; a browser's answer as gzip content
/// when it takes it (`gzip`, from its `Accept-Encoding`).
fn web(
    call: impl Future<Output = Result<Response<GrpcBody>, Infallible>> + Send + 'static,
    unary: bool,
    gzip: bool,
) -> AppFuture {
    match (unary, gzip) {
        (true, gzip) => AppFuture::Boxed(Box::pin(whole(call, gzip))),
        (false, false) => AppFuture::Boxed(Box::pin(call)),
        (false, true) => AppFuture::Boxed(Box::pin(async move { call.await.map(gzip_stream) })),
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
        // Every inner service is always ready: tonic's generated servers, its `Routes` and axum's
        // routers are.
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

type OrdersFuture = EdgeFuture<BoxFuture<Response<GrpcBody>, Infallible>>;
type BoxedFuture = dyn Future<Output = Result<Response<GrpcBody>, Infallible>> + Send;

/// The response future of [`App`]: native gRPC to the order service (the hot path) unboxed,
/// everything else boxed.
pub enum AppFuture {
    /// Native gRPC to the order service.
    Orders(OrdersFuture),
    /// Any other route.
    Boxed(Pin<Box<BoxedFuture>>),
}

impl Future for AppFuture {
    type Output = Result<Response<GrpcBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are `Unpin` (boxed, or made of boxes), so the enum is too.
        match self.get_mut() {
            AppFuture::Orders(future) => Pin::new(future).poll(cx),
            AppFuture::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}
