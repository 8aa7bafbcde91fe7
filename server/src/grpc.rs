//! The one place where the gRPC layer stack is built. Every gRPC service (the order service, and
//! the `Routes` of health, reflection and `UNIMPLEMENTED` for anything else) goes through
//! [`stack`], so every gRPC call, whatever its service, has the same layers in the same order:
//!
//! - **native** (HTTP/2 gRPC): deadlines (`grpc-timeout`), then the service;
//! - **web** (gRPC-Web without `Origin`, so not from a browser): tonic-web's translation, then as
//!   natively;
//! - **browser** (gRPC-Web from a page): CORS from the allowlist, then as gRPC-Web.
//!
//! A new layer (authentication, metrics) goes into [`stack`] and nowhere else.

use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::Layer;
use tower_http::cors::Cors;

use crate::{
    config::Config,
    cors::cors,
    deadline::{DeadlineLayer, DeadlineService},
};

/// A gRPC service as native gRPC clients reach it.
pub(crate) type Native<S> = DeadlineService<S>;
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

/// Wraps `service` in the gRPC layers, once per transport.
pub(crate) fn stack<S: Clone>(service: S, config: &Config) -> Stack<S> {
    let native = DeadlineLayer.layer(service);
    let web = GrpcWebLayer::new().layer(native.clone());
    let browser = cors(config).layer(web.clone());
    Stack {
        native,
        web,
        browser,
    }
}
