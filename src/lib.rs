//! The OrderManagement contract, generated from `proto/order_management.proto` by the root
//! `build.rs`.
//!
//! This crate is the single owner of the generated code: the server (`server/`, with the `server`
//! feature) and the browser client (`web-client/`, built for wasm32) both use these types, so
//! there is exactly one definition of every message. The client half has no transport of its own:
//! give it a tonic `Channel` natively or a `tonic_web_wasm_client::Client` in the browser.

/// Messages and the client (and, with the `server` feature, the server) of `OrderManagement`.
///
/// The proto has no `package` line, so everything lives at the root of the generated module and
/// the wire path of `getOrder` is `/OrderManagement/getOrder`, as in the original tutorial.
#[allow(missing_docs, non_camel_case_types, clippy::all)]
pub mod pb {
    tonic::include_proto!("_");
}

/// The encoded `FileDescriptorSet` of the proto (with its imports), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/order_management_descriptor.bin"));
