//! Calls: the one gRPC layer stack every gRPC service goes through ([`stack`]), and every check a
//! call passes in it, in the edge ([`edge`]): metrics ([`metrics`]), the `Host` check against DNS
//! rebinding ([`host`]), tokens and scopes ([`auth`]), deadlines ([`deadline`]) and gzip
//! ([`compress`]); the request body a service reads, and unary gRPC-Web answers sent whole
//! ([`body`]); the Connect protocol, translated to gRPC at the edge ([`connect`]); and the
//! methods served, from the embedded descriptors ([`methods`]).
//!
//! Below `http` (which sends calls here) and above `orders` (the services behind the stack): it
//! may use `orders`, `store` and the top-level files, never `http` or `net`.

pub(crate) mod auth;
pub(crate) mod body;
pub(crate) mod compress;
pub(crate) mod connect;
pub(crate) mod deadline;
pub(crate) mod edge;
pub(crate) mod host;
pub(crate) mod methods;
pub(crate) mod metrics;
pub(crate) mod stack;
