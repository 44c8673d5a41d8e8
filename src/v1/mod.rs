//! `predictd.v1`, predictd's own gRPC protocol: wire tensors ⇄ engine tensors, and the service.

pub mod convert;
pub mod service;
