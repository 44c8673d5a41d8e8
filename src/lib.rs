//! predictd: a model-inference server for ONNX models, in pure Rust.
//!
//! The engine — [`tensor`], [`signature`], [`model`], [`repository`] — is a plain library with
//! no async runtime or RPC types in it, so `predictd serve`, offline scoring and the Python
//! package share it. The serving side — [`scheduler`], [`registry`], [`infer`], [`grpc`],
//! [`kserve`], [`server`] — puts worker threads and the RPC front ends in front of it.

pub mod batch;
pub mod columns;
pub mod config;
mod dense;
pub mod error;
pub mod grpc;
pub mod infer;
pub mod kserve;
pub mod middleware;
pub mod model;
pub mod onnx_ml;
pub mod proto;
pub mod registry;
pub mod repository;
pub mod rest;
mod row_ops;
pub mod scheduler;
pub mod server;
pub mod signature;
pub mod stats;
pub mod tensor;
