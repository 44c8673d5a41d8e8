//! The Open Inference Protocol (KServe v2) with Triton's extensions: its gRPC and REST faces side
//! by side, their tensor conversions, and what the protocol reports about the server and models.

pub mod convert;
pub mod grpc;
pub mod json;
mod json_data;
pub mod model_info;
pub mod repository;
pub mod rest;
