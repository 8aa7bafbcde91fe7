//! The one place where the gRPC layer stack is built. Every gRPC service (the order service, and
//! the `Routes` of health, reflection and `UNIMPLEMENTED` for anything else) goes through
//! [`stack`], so every gRPC call, whatever its service, has the same layers in the same order:
//!
//! - **native** (HTTP/2 gRPC): metrics (every call counted and timed, refusals included), the
//!   host check (DNS rebinding), authentication (the caller's token and scope), deadlines
//!   (`grpc-timeout` and `--max-call-duration`), then the service;
//! - **web** (gRPC-Web without `Origin`, so not from a browser): tonic-web's translation, then as
//!   natively;
//! - **browser** (gRPC-Web from a page): CORS from the allowlist, then as gRPC-Web.
//!
//! A new layer (authentication, metrics) goes into [`stack`] and nowhere else.

use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::Layer;
use tower_http::cors::Cors;

use crate::{
    auth::{AuthLayer, AuthService},
    deadline::{DeadlineLayer, DeadlineService},
    host::{HostLayer, HostService},
    metrics::{MetricsLayer, MetricsService},
};

/// A gRPC service as native gRPC clients reach it.
pub(crate) type Native<S> = MetricsService<HostService<AuthService<DeadlineService<S>>>>;
/// A gRPC service as gRPC-Web clients that are not browsers reach it.
pub(crate) type Web<S> = GrpcWebService<Native<S>>;
/// A gRPC service as browsers reach it.
pub(crate) type Browser<S> = Cors<Web<S>>;

/// One gRPC service in each of its three transports, sharing one inner service.
#[derive(Clone)]
pub(crate) struct Stack<S> {
    pub(crate) native: Native<S>,
    pub(crate) web: Web<S>,
    pub(crate) browser: Browser<S>,
}

/// What every stack is built from: the metrics registry, the hosts served, the CORS allowlist, the token checker and
/// the server's ceiling on calls, made once.
#[derive(Clone)]
pub(crate) struct Layers {
    pub(crate) metrics: MetricsLayer,
    pub(crate) hosts: HostLayer,
    pub(crate) cors: tower_http::cors::CorsLayer,
    pub(crate) auth: AuthLayer,
    pub(crate) deadline: DeadlineLayer,
}

/// Wraps `service` in the gRPC layers, once per transport.
pub(crate) fn stack<S: Clone>(service: S, layers: &Layers) -> Stack<S> {
    let native = layers.metrics.layer(
        layers
            .hosts
            .layer(layers.auth.layer(layers.deadline.layer(service))),
    );
    let web = GrpcWebLayer::new().layer(native.clone());
    let browser = layers.cors.layer(web.clone());
    Stack {
        native,
        web,
        browser,
    }
}
