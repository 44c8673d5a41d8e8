//! The span every inference request runs in, whichever protocol brought it, so log lines and
//! traces look the same for all of them.

use std::future::Future;
use std::time::Instant;

use tonic::Status;
use tracing::{Instrument, Span, field};

/// A span for one inference request on `model`; the version, row count and latency are
/// recorded as they become known.
pub fn inference_span(model: &str) -> Span {
    tracing::info_span!(
        "predict",
        model = %model,
        version = field::Empty,
        rows = field::Empty,
        latency_us = field::Empty,
    )
}

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
