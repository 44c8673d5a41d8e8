//! The gRPC front end: one file per service, wire conversions, and the one mapping from our
//! errors to `tonic::Status`.

pub mod convert;
pub mod inference;
pub mod prediction;
pub mod status;
pub mod stream;
pub mod trace;
