//! The engine: tensors, signatures, opening and running models. A plain library, used alike by
//! `predictd serve`, `predictd batch` and the Python package, with no async runtime, RPC or
//! Arrow type in it. It is the only folder that names tract (CI checks this).

/// The engine that runs the models, as the KServe protocol's model configuration names it.
pub const BACKEND: &str = "tract";

pub mod model;
pub mod onnx_ml;
pub mod open;
pub mod repository;
mod rewrite;
mod shared_weights;
pub mod signature;
pub mod tensor;
pub mod threads;
pub mod warmup;
