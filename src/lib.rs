//! predictd: a model-inference server for ONNX models, in pure Rust.
//!
//! Layers, each using only those below it:
//! - [`engine`]: tensors, signatures, opening and running models (the only folder that names
//!   the ONNX runtime underneath); a plain library shared by `predictd serve`, `predictd batch` and Python.
//! - [`traces`]: W3C trace context in, OTLP spans out (used by the layers above it).
//! - [`serving`]: schedulers, counters, the live registry and the protocol-neutral request path.
//! - [`v1`], [`kserve`]: one folder per protocol, wire ⇄ tensors and services; [`metrics`]: the
//!   Prometheus page, read from the same counters.
//! - [`edge`]: the tower stack both transports share, and the one error table.
//! - [`columns`], [`batch`]: Arrow columns ⇄ tensors, and offline scoring.
//! - [`server`], [`config`]: assembly and flags.

pub mod batch;
pub mod columns;
pub mod config;
pub mod edge;
pub mod engine;
pub mod error;
pub mod kserve;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod serving;
pub mod traces;
pub mod v1;
