//! Bytes and sockets: the accept loop and graceful shutdown ([`server`]), the open connections
//! and their limit ([`connections`]), TLS on the same port ([`tls`]) and hyper's timer on the
//! coarse clock ([`timer`]).
//!
//! The top layer: it may use every folder below it (`http` for the application it serves,
//! `grpc`, `orders`, `store`) and the top-level files; nothing below uses it.

pub(crate) mod connections;
pub(crate) mod server;
pub(crate) mod timer;
pub(crate) mod tls;
