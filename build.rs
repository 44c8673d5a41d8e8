//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler, so no system `protoc`)
//! and tonic-prost-build, and writes the file descriptor set that server reflection serves.

use std::{env, path::PathBuf};

/// The .proto files that define predictd's services, relative to `proto/`.
const PROTOS: &[&str] = &["predictd/v1/predict.proto", "inference/grpc_service.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // Source info keeps the .proto comments in the descriptors, so `grpcurl describe` and
    // rustdoc show them; imports make the set self-contained for reflection clients.
    let descriptors = protox::Compiler::new(["proto"])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    std::fs::write(
        out_dir.join("predictd_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .bytes(".predictd.v1.Tensor.raw")
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(descriptors)?;
    Ok(())
}
