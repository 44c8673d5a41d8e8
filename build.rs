//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler, so no system `protoc`)
//! and tonic-prost-build, and writes the file descriptor set that server reflection serves.

use std::{env, path::PathBuf};

/// The .proto files that define predictd's services, relative to `proto/`.
const PROTOS: &[&str] = &["predictd/v1/predict.proto", "inference/grpc_service.proto"];
/// OpenTelemetry's trace collector service (OTLP), vendored from opentelemetry-proto v1.11.0.
const OTLP_PROTOS: &[&str] = &["opentelemetry/proto/collector/trace/v1/trace_service.proto"];

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

    std::fs::write(out_dir.join("methods.rs"), method_constants(&descriptors))?;

    tonic_prost_build::configure()
        .bytes(".predictd.v1.Tensor.raw")
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(descriptors)?;

    // OpenTelemetry's collector protocol, for exporting traces (the client) and for tests'
    // receivers (the server). Kept out of the reflection set: predictd does not serve it.
    let otlp = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .open_files(OTLP_PROTOS)?
        .file_descriptor_set();
    tonic_prost_build::configure()
        .bytes(".opentelemetry.proto.trace.v1.Span.trace_id")
        .bytes(".opentelemetry.proto.trace.v1.Span.span_id")
        .bytes(".opentelemetry.proto.trace.v1.Span.parent_span_id")
        .bytes(".opentelemetry.proto.trace.v1.Span.Link.trace_id")
        .bytes(".opentelemetry.proto.trace.v1.Span.Link.span_id")
        .compile_fds(otlp)?;
    Ok(())
}

/// One module per service, one constant per method holding the path gRPC routes it by
/// (`/package.Service/Method`), so that the edge picks methods by name the compiler checks.
fn method_constants(descriptors: &prost_types::FileDescriptorSet) -> String {
    let mut out = String::new();
    for file in &descriptors.file {
        let package = file.package();
        for service in &file.service {
            out.push_str(&format!(
                "/// The methods of `{package}.{}`.\npub mod {} {{\n",
                service.name(),
                snake(service.name())
            ));
            for method in &service.method {
                out.push_str(&format!(
                    "    /// `{}`.\n    pub const {}: &str = \"/{package}.{}/{}\";\n",
                    method.name(),
                    snake(method.name()).to_uppercase(),
                    service.name(),
                    method.name()
                ));
            }
            out.push_str("}\n");
        }
    }
    out
}

/// `GRPCInferenceService` → `grpc_inference_service`, `ModelInfer` → `model_infer`.
fn snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        let prev_lower = i > 0 && chars[i - 1].is_lowercase();
        if c.is_uppercase() && i > 0 && (prev_lower || next_lower) {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
