//! `predictd.v1.PredictionService`: thin handlers that decode, call [`crate::infer`], encode.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, field};

use super::convert::{is_raw, spec_to_wire, tensor_from_wire, tensor_to_wire};
use super::status::{status, to_rpc};
use crate::infer::{InferError, infer};
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
}

impl PredictionService {
    /// A service answering from `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        PredictionService { registry }
    }
}

/// Runs one request end to end, in its own span.
async fn predict(
    registry: &Registry,
    request: pb::PredictRequest,
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
        let result = run(registry, request).await;
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
    let outputs = infer(scheduler, inputs, &request.outputs)
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
        predict(&self.registry, request.into_inner())
            .await
            .map(Response::new)
    }

    type PredictStreamStream = ReplyStream;

    async fn predict_stream(
        &self,
        request: Request<Streaming<pb::PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        let registry = Arc::clone(&self.registry);
        let replies = request
            .into_inner()
            .map(move |message| {
                let registry = Arc::clone(&registry);
                async move {
                    // A message that cannot be read ends the stream: the transport is broken.
                    let request = message?;
                    let id = request.id.clone();
                    let result = match predict(&registry, request).await {
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
        Ok(Response::new(Box::pin(replies)))
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
