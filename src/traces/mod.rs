//! Traces: the caller's W3C trace context in, OpenTelemetry spans out over OTLP. A sampled
//! inference call gets a span for the call, one for its wait in the model's queue, and one for
//! the batch run that served it, linked to every request the batch ran.
//!
//! Nothing here waits on the collector: finished spans go into a bounded queue that one task
//! drains to it; a full queue drops spans, and counts them.

pub mod context;
pub mod otlp;
pub mod tracer;

pub use tracer::{Sampled, Tracer};
