//! Code generated from `proto/` by build.rs. Generated code is fenced off here, the only place
//! where the documentation and visibility lints are relaxed.
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// predictd's own API.
pub mod predictd {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("predictd.v1");
    }
}

/// The Open Inference Protocol (KServe v2) with Triton's extensions, wire-compatible with
/// Triton's `inference` package.
pub mod inference {
    tonic::include_proto!("inference");
}

/// Google's shared API types.
pub mod google {
    /// `google.rpc.Status`.
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// OpenTelemetry's protocol (OTLP), nested as its packages are so that the generated paths
/// between them resolve.
pub mod opentelemetry {
    /// `opentelemetry.proto`.
    pub mod proto {
        /// Attribute values and instrumentation scopes.
        pub mod common {
            /// Version 1.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        /// What produced the telemetry.
        pub mod resource {
            /// Version 1.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        /// Spans.
        pub mod trace {
            /// Version 1.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.trace.v1");
            }
        }
        /// The services collectors offer.
        pub mod collector {
            /// Traces.
            pub mod trace {
                /// Version 1.
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                }
            }
        }
    }
}

/// The path of every gRPC method in `proto/`, by service: `methods::prediction_service::PREDICT`
/// is `"/predictd.v1.PredictionService/Predict"`.
pub mod methods {
    include!(concat!(env!("OUT_DIR"), "/methods.rs"));
}

/// The encoded descriptors of every service in `proto/`, with comments, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/predictd_descriptor.bin"));
