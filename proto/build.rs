//! Compiles the protocol with protox (pure Rust, no system `protoc`) and writes the descriptor set
//! that the services register for gRPC reflection. Every generated client and server uses the codec
//! in `src/codec.rs`.
use std::{env, path::PathBuf};

const PROTOS: &[&str] = &["proto/embeddingmap/v1/embedding_map.proto", "proto/embeddingmap/api/v1/api.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build's own rerun switch does not cover the files, so name each one.
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("embeddingmap_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    // Our codec (src/codec.rs): prost's, with a message that does not decode as INVALID_ARGUMENT.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::Codec")
        // The map's parameters are shown as they are in the HTTP JSON (api-service's map_json).
        .type_attribute("embeddingmap.v1.MapParameters", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
