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

/// The path of every gRPC method in `proto/`, by service: `methods::prediction_service::PREDICT`
/// is `"/predictd.v1.PredictionService/Predict"`.
pub mod methods {
    include!(concat!(env!("OUT_DIR"), "/methods.rs"));
}

/// The encoded descriptors of every service in `proto/`, with comments, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/predictd_descriptor.bin"));
