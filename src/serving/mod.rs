//! Serving: what stands between a protocol's decoded request and the engine. Per-model worker
//! threads behind bounded queues, batching, counters, the live catalog, and the one request
//! path every protocol shares.

mod batching;
pub mod histogram;
pub mod infer;
pub mod lifecycle;
pub mod memory;
pub mod registry;
pub mod scheduler;
pub mod stats;
pub mod watch;
