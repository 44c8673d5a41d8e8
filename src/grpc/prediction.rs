//! `predictd.v1.PredictionService`: thin handlers that decode, call [`crate::infer`], encode.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, field};

use super::convert::{is_raw, spec_to_wire, tensor_from_wire, tensor_to_wire};
use super::status::{status, to_rpc};
use crate::infer::{InferError, infer};
use crate::middleware::{Deadlines, deadline_exceeded, overloaded};
use crate::proto::predictd::v1 as pb;
use crate::registry::Registry;
use crate::repository::Slot;

/// How many messages of one stream may be in flight at once. Replies still leave in request
/// order; the window lets a stream keep the model's workers busy instead of waiting on each
/// round trip.
const STREAM_WINDOW: usize = 64;

/// The PredictionService implementation.
#[derive(Debug, Clone)]
pub struct PredictionService {
    registry: Arc<Registry>,
    /// The server's concurrency permits. Unary calls take theirs in the tower stack; each
    /// stream message takes one here, so one stream cannot starve unary clients.
    permits: Arc<Semaphore>,
}

impl PredictionService {
    /// A service answering from `registry`, sharing the server's concurrency `permits`.
    pub fn new(registry: Arc<Registry>, permits: Arc<Semaphore>) -> Self {
        PredictionService { registry, permits }
    }
}

/// The deadlines the deadline layer attached to a call (none when called without the stack).
fn deadlines<T>(request: &Request<T>) -> Deadlines {
    request
        .extensions()
        .get::<Deadlines>()
        .copied()
        .unwrap_or(Deadlines {
            client: None,
            request_timeout: Duration::MAX,
        })
}

/// Runs one request end to end, in its own span.
async fn predict(
    registry: &Registry,
    request: pb::PredictRequest,
    deadline: Option<Instant>,
) -> Result<pb::PredictResponse, Status> {
    let span = tracing::info_span!(
        "predict",
        model = %request.model,
        version = field::Empty,
        rows = field::Empty,
        latency_us = field::Empty,
    );
    async move {
        let started = Instant::now();
        let result = run(registry, request, deadline).await;
        let span = tracing::Span::current();
        span.record("latency_us", started.elapsed().as_micros() as u64);
        match &result {
            Ok(_) => tracing::debug!("predicted"),
            Err(e) => tracing::debug!(code = ?e.code(), "failed"),
        }
        result
    }
    .instrument(span)
    .await
}

async fn run(
    registry: &Registry,
    request: pb::PredictRequest,
    deadline: Option<Instant>,
) -> Result<pb::PredictResponse, Status> {
    let catalog = registry.snapshot();
    let (version, scheduler) = catalog
        .resolve(&request.model, &request.version)
        .map_err(|e| status(&InferError::from(e)))?;
    tracing::Span::current().record("version", version);

    let raw = request.inputs.values().any(is_raw);
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (name, wire) in request.inputs {
        match tensor_from_wire(wire) {
            Ok(tensor) => inputs.push((name, tensor)),
            Err(e) => {
                return Err(status(&InferError::Decode {
                    model: request.model,
                    version,
                    input: name,
                    reason: e.to_string(),
                }));
            }
        }
    }
    let outputs = infer(scheduler, inputs, &request.outputs, deadline)
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::PredictResponse {
        model: request.model,
        version: version.to_string(),
        id: request.id,
        outputs: outputs
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor_to_wire(tensor, raw)))
            .collect(),
    })
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::PredictStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::prediction_service_server::PredictionService for PredictionService {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let deadline = deadlines(&request).for_work_starting(Instant::now());
        predict(&self.registry, request.into_inner(), Some(deadline))
            .await
            .map(Response::new)
    }

    type PredictStreamStream = ReplyStream;

    async fn predict_stream(
        &self,
        request: Request<Streaming<pb::PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        let deadlines = deadlines(&request);
        let registry = Arc::clone(&self.registry);
        let permits = Arc::clone(&self.permits);
        let replies = request
            .into_inner()
            .map(move |message| {
                let registry = Arc::clone(&registry);
                let permits = Arc::clone(&permits);
                async move {
                    // A message that cannot be read ends the stream: the transport is broken.
                    let request = message?;
                    let id = request.id.clone();
                    // Each message answers by the stream's deadline or --request-timeout.
                    let deadline = deadlines.for_work_starting(Instant::now());
                    let result = match permits.try_acquire_owned() {
                        Ok(_permit) => predict(&registry, request, Some(deadline)).await,
                        Err(_) => Err(overloaded()),
                    };
                    let result = match result {
                        Ok(response) => pb::predict_stream_response::Result::Response(response),
                        Err(status) => pb::predict_stream_response::Result::Error(to_rpc(&status)),
                    };
                    Ok(pb::PredictStreamResponse {
                        id,
                        result: Some(result),
                    })
                }
            })
            .buffered(STREAM_WINDOW);
        // The stream itself ends at the client's deadline, with DEADLINE_EXCEEDED.
        let replies: ReplyStream = match deadlines.client {
            None => Box::pin(replies),
            Some(at) => Box::pin(
                replies
                    .take_until(tokio::time::sleep_until(at.into()))
                    .chain(
                        stream::once(async move { Instant::now() >= at }).filter_map(
                            move |expired| async move {
                                expired.then(|| Err(deadline_exceeded(&deadlines)))
                            },
                        ),
                    ),
            ),
        };
        Ok(Response::new(replies))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let catalog = self.registry.snapshot();
        let models = catalog
            .models
            .iter()
            .map(|(name, entry)| pb::ModelSummary {
                name: name.clone(),
                versions: entry
                    .versions
                    .iter()
                    .rev()
                    .map(|(version, slot)| {
                        let (state, reason) = match slot {
                            Slot::Loading => (pb::ModelState::Loading, String::new()),
                            Slot::Ready(_) => (pb::ModelState::Ready, String::new()),
                            Slot::Failed(reason) => (pb::ModelState::Failed, reason.clone()),
                        };
                        pb::ModelVersionStatus {
                            version: version.to_string(),
                            state: state as i32,
                            reason,
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn get_model_metadata(
        &self,
        request: Request<pb::GetModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadata>, Status> {
        let request = request.into_inner();
        let catalog = self.registry.snapshot();
        let (version, scheduler) = catalog
            .resolve(&request.model, &request.version)
            .map_err(|e| status(&InferError::from(e)))?;
        let signature = scheduler.model().signature();
        let versions = catalog
            .models
            .get(&request.model)
            .map(|entry| {
                entry
                    .versions
                    .iter()
                    .rev()
                    .filter(|(_, slot)| matches!(slot, Slot::Ready(_)))
                    .map(|(v, _)| v.to_string())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(pb::ModelMetadata {
            name: request.model,
            version: version.to_string(),
            versions,
            inputs: signature.inputs.iter().map(spec_to_wire).collect(),
            outputs: signature.outputs.iter().map(spec_to_wire).collect(),
            batchable: signature.batchable(),
        }))
    }
}
