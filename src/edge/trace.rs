//! Runs a gRPC inference request in its span ([`crate::serving::infer::inference_span`]), recording
//! its latency and status code.

use std::future::Future;
use std::time::Instant;

use tonic::Status;
use tracing::{Instrument, Span};

/// Runs `request` in `span`, recording its latency and outcome.
pub async fn traced<T>(
    span: Span,
    request: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    async move {
        let started = Instant::now();
        let result = request.await;
        Span::current().record("latency_us", started.elapsed().as_micros() as u64);
        match &result {
            Ok(_) => tracing::debug!("predicted"),
            Err(e) => tracing::debug!(code = ?e.code(), "failed"),
        }
        result
    }
    .instrument(span)
    .await
}
