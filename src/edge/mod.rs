//! The edge: what every call passes through before and after its protocol's handler, for gRPC
//! and REST alike. The tower layers, the one table from errors to gRPC codes and HTTP statuses,
//! and the plumbing of bidirectional streams.

pub mod auth;
pub mod counting;
pub mod layers;
pub mod request_span;
pub mod routes;
pub mod status;
pub mod stream;
pub mod tls;
pub mod trace;
