//! Compiles `proto/` once for every crate in the workspace.
//!
//! The client half is always generated and builds for wasm32 (no transport). The server half is
//! generated only with the `server` feature, which the native server enables. The file descriptor
//! set is kept for gRPC server reflection (and tells the server which methods are unary). With the
//! `serde` feature every message also gets serde derives.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = PathBuf::from("proto/order_management.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    if env::var_os("PROTOC").is_none() {
        // A vendored protoc: nothing to install, on any machine.
        env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(env::var_os("CARGO_FEATURE_SERVER").is_some())
        .build_transport(false)
        // prost's codec with buffers sized for these messages (`order_api::codec`).
        .codec_path("crate::codec::OrderCodec")
        .file_descriptor_set_path(out_dir.join("order_management_descriptor.bin"))
        // JSON for every message with the `serde` feature: the proto's JSON names (lowerCamel,
        // as `buf curl` prints them), missing fields at their defaults, unknown fields refused.
        .type_attribute(
            ".",
            "#[cfg_attr(feature = \"serde\", derive(serde::Serialize, serde::Deserialize), serde(rename_all = \"camelCase\", default, deny_unknown_fields))]",
        )
        .compile_protos(&[proto], &includes)?;
    Ok(())
}
