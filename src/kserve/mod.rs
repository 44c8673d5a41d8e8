//! The Open Inference Protocol (KServe v2), shared by its gRPC and REST front ends: tensor
//! conversions and what the protocol reports about the server and its models.

pub mod convert;
pub mod json;
pub mod model_info;
