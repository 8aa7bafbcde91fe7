//! The domain: the `OrderManagement` RPCs ([`service`]), all of `processOrders` ([`process`]),
//! and what every client stream is held to ([`client_stream`]). What an order may be
//! (`crate::order`), what the edge tells a call (`crate::call`) and the counts of what runs
//! (`crate::streams`) are top-level files, as the store uses them too.
//!
//! Below `grpc` (whose stack serves the service): it may use `store` and the top-level files,
//! never `grpc`, `http` or `net`.

pub(crate) mod client_stream;
pub(crate) mod process;
pub(crate) mod service;
