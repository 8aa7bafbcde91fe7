//! `order-server`: the OrderManagement service of the tutorial on one port, for browsers
//! (gRPC-Web), services and command-line tools (native gRPC) and people (the web page).
//!
//! The modules, in layers from the socket down to the database. Each folder's `mod.rs` says what
//! it owns; a module uses only its own folder, the folders below it and the top-level files, and
//! no two modules use each other:
//! - `net`: bytes and sockets: [`run`] and [`serve`], the accept loop, graceful shutdown and health
//!   (`server`), the open connections and their limit (`connections`), TLS (`tls`), hyper's timer
//!   (`timer`);
//! - `http`: requests: the application service ([`App`], built by [`app()`]) sending each request
//!   where `route` decides, a gRPC target in one of its transports or the page (`files`), and
//!   CORS (`cors`);
//! - `grpc`: calls: the one gRPC layer stack (`stack`) and its edge (`edge`), which checks every
//!   call in order with `metrics`, `host` (DNS rebinding), `auth` (JWT bearer tokens and scopes),
//!   `deadline` and `compress` (gzip both ways); request bodies whose reset is an error and unary
//!   gRPC-Web answers sent whole (`body`); the Connect protocol (`connect`); the methods served
//!   (`methods`);
//! - `orders`: the domain: the `OrderManagement` RPCs ([`OrderService`], `service`), all of
//!   `processOrders` (`process`), what every client stream is held to (`client_stream`);
//! - `store`: the orders in a database, embedded SQLite or PostgreSQL ([`Store`]); every write on a
//!   task of its own that commits only while its call still wants it, with its idempotency key
//!   ([`Key`]) in the same transaction.
//!
//! Beside them, the top-level files every layer may use: `config` (the typed command line, [`Config`]), `error` (the
//! service's errors and their gRPC statuses), `telemetry` (logging through `tracing`), `order`
//! (validation of the orders clients send), `call` (what the edge hands a call's service: its
//! [`Caller`], deadline and message counters) and `streams` (counts of what runs).
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
    store::{Answer, Key, OpenError, Store, StoreOptions, MAX_KEY_CHARS, PREFETCH_BYTES},
};
