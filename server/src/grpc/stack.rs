//! The one place where the gRPC layer stack is built. Every gRPC service (the order service, and
//! the `Routes` of health, reflection and `UNIMPLEMENTED` for anything else) goes through
//! [`stack`], so every gRPC call, whatever its service, has the same layers in the same order:
//!
//! - **native** (HTTP/2 gRPC): the edge ([`crate::grpc::edge`]: metrics, with every call counted and
//!   timed, refusals included; the host check against DNS rebinding; authentication, the
//!   caller's token and scope; deadlines, `grpc-timeout` and `--max-call-duration`), then the
//!   service;
//! - **web** (gRPC-Web without `Origin`, so not from a browser): tonic-web's translation, then as
//!   natively;
//! - **browser** (gRPC-Web from a page): CORS from the allowlist, then as gRPC-Web;
//! - **connect** (the Connect protocol, from a page or not): CORS, then the translation to gRPC
//!   ([`crate::grpc::connect`]), then as natively.
//!
//! A new check on every call goes into the edge, and a new layer into [`stack`], nowhere else.

use std::sync::Arc;

use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::Layer;
use tower_http::cors::Cors;

use crate::{
    grpc::connect::{ConnectService, Methods},
    grpc::edge::{EdgeLayer, EdgeService},
};

/// A gRPC service as native gRPC clients reach it.
pub(crate) type Native<S> = EdgeService<S>;
/// A gRPC service as gRPC-Web clients that are not browsers reach it.
pub(crate) type Web<S> = GrpcWebService<Native<S>>;
/// A gRPC service as browsers reach it.
pub(crate) type Browser<S> = Cors<Web<S>>;
/// A gRPC service as Connect clients reach it.
pub(crate) type Connect<S> = Cors<ConnectService<Native<S>>>;

/// One gRPC service in each of its three transports, sharing one inner service.
#[derive(Clone)]
pub(crate) struct Stack<S> {
    pub(crate) native: Native<S>,
    pub(crate) web: Web<S>,
    pub(crate) browser: Browser<S>,
    pub(crate) connect: Connect<S>,
}

/// What every stack is built from, made once: the edge (metrics, the hosts served, the token
/// checker and the server's ceiling on calls) and the CORS allowlist.
#[derive(Clone)]
pub(crate) struct Layers {
    pub(crate) edge: EdgeLayer,
    pub(crate) cors: tower_http::cors::CorsLayer,
    /// The message types of each method (for Connect's JSON) and `--max-message-size`.
    pub(crate) connect: (Arc<Methods>, usize),
}

/// Wraps `service` in the gRPC layers, once per transport.
pub(crate) fn stack<S: Clone>(service: S, layers: &Layers) -> Stack<S> {
    let native = layers.edge.layer(service);
    let web = GrpcWebLayer::new().layer(native.clone());
    let browser = layers.cors.layer(web.clone());
    let (methods, max_message_size) = &layers.connect;
    let connect = layers.cors.layer(ConnectService::new(
        native.clone(),
        methods.clone(),
        *max_message_size,
    ));
    Stack {
        native,
        web,
        browser,
        connect,
    }
}
