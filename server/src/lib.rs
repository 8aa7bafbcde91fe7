//! `order-server`: the OrderManagement service of the tutorial on one port, for browsers
//! (gRPC-Web), services and command-line tools (native gRPC) and people (the web page).
//!
//! Modules:
//! - `config`: the typed command line and environment ([`Config`]);
//! - `server`: [`run`] and [`serve`], the accept loop, graceful shutdown, health status;
//!   `connections`: the limit on open connections, idle ones shed first; `tls`: TLS on the same
//!   port, its certificate reloaded on demand; `timer`: hyper's timer, on the coarse clock;
//! - `app`: the application service ([`App`], built by [`app()`]) that sends each request where
//!   `route` decides: a gRPC target in one of its transports, or the page;
//! - `grpc`: the one gRPC layer stack every gRPC service goes through: `cors`, tonic-web, then
//!   `edge`, which checks every call in order with `metrics` (counted and timed), `host` (DNS
//!   rebinding: which `Host`s are answered), `auth` (JWT bearer tokens and scopes) and
//!   `deadline` (`grpc-timeout` and the server's ceiling on every call, streams included), and
//!   `compress` (gzip messages both ways, and gzip content for browsers);
//! - `body`: unary gRPC-Web answers sent whole, request bodies whose reset is an error (never a
//!   clean end of a client stream); `files`: the static page;
//! - `service`: the `OrderManagement` RPCs ([`OrderService`]); `process`: all of
//!   `processOrders`; `order`: validation of the orders clients send; `streams`: the count of
//!   open response streams and of running writes;
//! - `store`: the orders in a database, embedded SQLite or PostgreSQL ([`Store`]); every write
//!   on a task of its own that commits only while its call still wants it, with its idempotency
//!   key ([`Key`]) in the same transaction;
//! - `error`: the service's errors and their gRPC statuses;
//! - `telemetry`: logging through `tracing`.
//!
//! [`run`] serves on a listener the caller binds until the caller's shutdown future completes, so
//! tests bind `127.0.0.1:0` and stop the server whenever they like.

mod call;
mod config;
mod error;
mod grpc;
mod http;
mod net;
mod order;
mod orders;
mod store;
mod streams;
pub mod telemetry;

pub use crate::{
    call::{Caller, READ_SCOPE, WRITE_SCOPE},
    config::{Command, Config, TokenArgs},
    grpc::auth::{read_secret, sign_token, AuthError},
    http::app::{app, App, AppFuture},
    http::cors::{CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS},
    net::server::{run, run_with_reload, serve, serve_with_reload, RunError},
    net::tls::TlsError,
    orders::service::OrderService,
    store::{Answer, Key, OpenError, Store, StoreOptions, MAX_KEY_CHARS},
};
