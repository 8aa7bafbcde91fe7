//! Compiles `proto/` once for every crate in the workspace.
//!
//! The client half is always generated and builds for wasm32 (no transport). The server half is
//! generated only with the `server` feature, which the native server enables. The file descriptor
//! set is kept for gRPC server reflection (and tells the server which methods are unary). With the
//! `serde` feature every message also gets serde impls for protobuf's canonical JSON mapping
//! (pbjson-build, from the same descriptor set).

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
        .compile_protos(&[proto], &includes)?;
    if env::var_os("CARGO_FEATURE_SERDE").is_some() {
        // Protobuf's JSON mapping, as Connect, `buf curl` and every other library read and write
        // it: lowerCamel names out, either name in, defaults written out, unknown fields refused.
        // The proto has no package: the impls go to one file `lib.rs` includes beside the types.
        // pbjson-build wants every file to name a package. Ours has none (the wire paths must
        // stay the tutorial's), so pbjson-build is shown it under `pb`, the module the types and
        // these impls are included in: only the Rust names matter to it, never the wire.
        let encoded = std::fs::read(out_dir.join("order_management_descriptor.bin"))?;
        let mut set = <prost_types::FileDescriptorSet as prost::Message>::decode(&encoded[..])?;
        for file in set.file.iter_mut().filter(|file| file.package.is_none()) {
            file.package = Some("pb".into());
            let fields = file
                .message_type
                .iter_mut()
                .flat_map(|m| m.field.iter_mut());
            for name in fields.filter_map(|field| field.type_name.as_mut()) {
                if !name.starts_with(".google.") {
                    name.insert_str(0, ".pb");
                }
            }
        }
        let descriptors = prost::Message::encode_to_vec(&set);
        pbjson_build::Builder::new()
            .register_descriptors(&descriptors)?
            .exclude([".google"])
            .emit_fields()
            .generate(&["."], |_package| {
                std::fs::File::create(out_dir.join("order_management.serde.rs"))
            })?;
    }
    Ok(())
}
