//! `predictd.v1.PredictionService`: thin handlers that decode, call [`crate::serving::infer`], encode.

use std::sync::Arc;
use std::time::Instant;

use crate::edge::layers::Admission;
use tonic::{Request, Response, Status, Streaming};

use crate::edge::status::{status, to_rpc};
use crate::edge::stream::{ReplyStream, answer_in_order, deadlines, trace};
use crate::edge::trace::traced;
use crate::engine::repository::State;
use crate::proto::predictd::v1 as pb;
use crate::serving::infer::{InferError, infer, inference_span};
use crate::serving::registry::Registry;
use crate::traces::Sampled;
use crate::v1::convert::{is_raw, spec_to_wire, tensor_from_wire, tensor_to_wire};

/// The PredictionService implementation.
#[derive(Debug, Clone)]
pub struct PredictionService {
    registry: Arc<Registry>,
    /// The server's concurrency permits. Unary calls take theirs in the tower stack; each
    /// stream message takes one here, so one stream cannot starve unary clients.
    admission: Admission,
}

impl PredictionService {
    /// A service answering from `registry`, sharing the server's concurrency `permits`.
    pub fn new(registry: Arc<Registry>, admission: Admission) -> Self {
        PredictionService {
            registry,
            admission,
        }
    }
}

/// Runs one request end to end, in its own span.
async fn predict(
    registry: &Registry,
    request: pb::PredictRequest,
    deadline: Option<Instant>,
    trace: Option<Sampled>,
) -> Result<pb::PredictResponse, Status> {
    let span = inference_span(&request.model);
    traced(span, run(registry, request, deadline, trace)).await
}

async fn run(
    registry: &Registry,
    request: pb::PredictRequest,
    deadline: Option<Instant>,
    trace: Option<Sampled>,
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
                    reason: Box::new(e),
                }));
            }
        }
    }
    let outputs = infer(scheduler, inputs, &request.outputs, deadline, trace)
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

#[tonic::async_trait]
impl pb::prediction_service_server::PredictionService for PredictionService {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let deadline = deadlines(&request).for_work_starting(Instant::now());
        let trace = trace(&request);
        predict(&self.registry, request.into_inner(), Some(deadline), trace)
            .await
            .map(Response::new)
    }

    type PredictStreamStream = ReplyStream<pb::PredictStreamResponse>;

    async fn predict_stream(
        &self,
        request: Request<Streaming<pb::PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        let registry = Arc::clone(&self.registry);
        // Every message's work goes under the stream's span.
        let trace = trace(&request);
        let answer = move |request: pb::PredictRequest, deadline| {
            let registry = Arc::clone(&registry);
            let trace = trace.clone();
            async move {
                let id = request.id.clone();
                let result = match predict(&registry, request, Some(deadline), trace).await {
                    Ok(response) => pb::predict_stream_response::Result::Response(response),
                    Err(status) => pb::predict_stream_response::Result::Error(to_rpc(&status)),
                };
                pb::PredictStreamResponse {
                    id,
                    result: Some(result),
                }
            }
        };
        let refuse = |request: pb::PredictRequest, status: Status| pb::PredictStreamResponse {
            id: request.id,
            result: Some(pb::predict_stream_response::Result::Error(to_rpc(&status))),
        };
        answer_in_order(request, self.admission.clone(), answer, refuse).map(Response::new)
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
                    .map(|(version, _)| {
                        let (state, reason) = entry.status(*version);
                        let state = match state {
                            State::Loading => pb::ModelState::Loading,
                            State::Ready => pb::ModelState::Ready,
                            State::Failed => pb::ModelState::Failed,
                            State::Unloaded => pb::ModelState::Unloaded,
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
            .ready_versions(&request.model)
            .rev()
            .map(|v| v.to_string())
            .collect();
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
