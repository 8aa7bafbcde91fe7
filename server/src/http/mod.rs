//! Requests: the application service every connection serves ([`app`]), which sends each request
//! where [`route`] decides (a gRPC call in one of its transports, or the page), the page's static
//! files ([`files`]) and CORS for gRPC-Web and Connect from pages of the allowed origins
//! ([`cors`]).
//!
//! Below `net` (which serves it on each connection): it may use `grpc`, `orders`, `store` and the
//! top-level files, never `net`.

pub(crate) mod app;
pub(crate) mod cors;
pub(crate) mod files;
pub(crate) mod route;
