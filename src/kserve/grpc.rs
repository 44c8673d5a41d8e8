//! `inference.GRPCInferenceService`: the Open Inference Protocol (KServe v2) with the Triton
//! extensions standard clients call. Thin handlers: decode, [`crate::serving::infer`], encode — the same
//! validation, queue and batching as `predictd.v1`.
//!
//! Replies carry outputs in `raw_output_contents`, as Triton does: tritonclient and
//! perf_analyzer read outputs only from there.

use std::sync::Arc;
use std::time::Instant;

use crate::edge::layers::Admission;
use tonic::{Request, Response, Status, Streaming};

use crate::edge::status::status;
use crate::edge::stream::{ReplyStream, answer_in_order, deadlines, trace};
use crate::edge::trace::traced;
use crate::engine::tensor::Tensor;
use crate::kserve::convert::{
    datatype_name, dtype_from_name, tensor_from_contents, tensor_from_raw, tensor_to_raw,
};
use crate::kserve::{model_info, repository};
use crate::proto::inference as pb;
use crate::serving::infer::{InferError, infer, inference_span};
use crate::serving::lifecycle::Lifecycle;
use crate::serving::registry::Registry;
use crate::traces::Sampled;

/// The GRPCInferenceService implementation.
#[derive(Debug, Clone)]
pub struct InferenceService {
    registry: Arc<Registry>,
    /// What loads and unloads models.
    lifecycle: Arc<Lifecycle>,
    /// The server's concurrency permits, shared with every inference service; each stream
    /// message takes one.
    admission: Admission,
}

impl InferenceService {
    /// A service answering from `registry`, changing it through `lifecycle`, and sharing the
    /// server's concurrency `permits`.
    pub fn new(registry: Arc<Registry>, lifecycle: Arc<Lifecycle>, admission: Admission) -> Self {
        InferenceService {
            registry,
            lifecycle,
            admission,
        }
    }
}

/// Decodes a request's inputs: from `raw_input_contents` (one entry per input, in order) when
/// it has any, else from each input's typed `contents`.
pub fn decode_inputs(
    request: &mut pb::ModelInferRequest,
    version: u64,
) -> Result<Vec<(String, Tensor)>, Status> {
    let raw = std::mem::take(&mut request.raw_input_contents);
    let decode_error = |input: &str, reason: Box<dyn std::error::Error + Send + Sync>| {
        status(&InferError::Decode {
            model: request.model_name.clone(),
            version,
            input: input.to_string(),
            reason,
        })
    };
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        let input = request.inputs.first().map_or("", |i| i.name.as_str());
        return Err(decode_error(
            input,
            format!(
                "the request has {} inputs but {} raw_input_contents entries; send one entry per input, in the order of inputs",
                request.inputs.len(),
                raw.len()
            )
            .into(),
        ));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in std::mem::take(&mut request.inputs) {
        let tensor = dtype_from_name(&input.datatype).and_then(|dtype| match raw.next() {
            Some(bytes) => tensor_from_raw(dtype, &input.shape, bytes),
            None => tensor_from_contents(dtype, &input.shape, input.contents.unwrap_or_default()),
        });
        match tensor {
            Ok(tensor) => inputs.push((input.name, tensor)),
            Err(e) => return Err(decode_error(&input.name, Box::new(e))),
        }
    }
    Ok(inputs)
}

async fn model_infer(
    registry: &Registry,
    mut request: pb::ModelInferRequest,
    deadline: Instant,
    trace: Option<Sampled>,
) -> Result<pb::ModelInferResponse, Status> {
    let catalog = registry.snapshot();
    let (version, scheduler) = catalog
        .resolve(&request.model_name, &request.model_version)
        .map_err(|e| status(&InferError::from(e)))?;
    tracing::Span::current().record("version", version);
    let inputs = decode_inputs(&mut request, version)?;
    let wanted: Vec<String> = request.outputs.into_iter().map(|o| o.name).collect();
    let outputs = infer(scheduler, inputs, &wanted, Some(deadline), trace)
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::ModelInferResponse {
        model_name: request.model_name,
        model_version: version.to_string(),
        id: request.id,
        parameters: Default::default(),
        raw_output_contents: outputs.iter().map(|(_, t)| tensor_to_raw(t)).collect(),
        outputs: outputs
            .into_iter()
            .map(
                |(name, tensor)| pb::model_infer_response::InferOutputTensor {
                    name,
                    datatype: datatype_name(tensor.dtype()).to_string(),
                    shape: tensor.wire_shape(),
                    ..Default::default()
                },
            )
            .collect(),
    })
}

/// Runs one request end to end, in its own span.
async fn traced_infer(
    registry: &Registry,
    request: pb::ModelInferRequest,
    deadline: Instant,
    trace: Option<Sampled>,
) -> Result<pb::ModelInferResponse, Status> {
    let span = inference_span(&request.model_name);
    traced(span, model_infer(registry, request, deadline, trace)).await
}

/// A stream message's failure, as the protocol carries it: in the stream, which goes on.
fn stream_error(request: pb::ModelInferRequest, status: Status) -> pb::ModelStreamInferResponse {
    pb::ModelStreamInferResponse {
        error_message: status.message().to_string(),
        // The id lets clients match the error to their request.
        infer_response: Some(pb::ModelInferResponse {
            model_name: request.model_name,
            model_version: request.model_version,
            id: request.id,
            ..Default::default()
        }),
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "predictd does not implement {what}; it serves inference, metadata, configuration, statistics and the model repository"
    ))
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _request: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.registry.is_serving(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let catalog = self.registry.snapshot();
        // An unknown model is an error; a known one that cannot serve is "not ready".
        let ready = match catalog.resolve(&request.name, &request.version) {
            Ok(_) => true,
            Err(e @ crate::engine::repository::LookupError::NotReady { .. }) => {
                tracing::debug!(error = %e, "model not ready");
                false
            }
            Err(e) => return Err(status(&InferError::from(e))),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(model_info::server_metadata()))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        model_info::metadata(&self.registry.snapshot(), &request.name, &request.version)
            .map(Response::new)
            .map_err(|e| status(&InferError::from(e)))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = deadlines(&request).for_work_starting(Instant::now());
        let trace = trace(&request);
        traced_infer(&self.registry, request.into_inner(), deadline, trace)
            .await
            .map(Response::new)
    }

    type ModelStreamInferStream = ReplyStream<pb::ModelStreamInferResponse>;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let registry = Arc::clone(&self.registry);
        // Every message's work goes under the stream's span.
        let trace = trace(&request);
        let answer = move |request: pb::ModelInferRequest, deadline| {
            let registry = Arc::clone(&registry);
            let trace = trace.clone();
            async move {
                let echo = pb::ModelInferRequest {
                    model_name: request.model_name.clone(),
                    model_version: request.model_version.clone(),
                    id: request.id.clone(),
                    ..Default::default()
                };
                match traced_infer(&registry, request, deadline, trace).await {
                    Ok(response) => pb::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(response),
                    },
                    Err(status) => stream_error(echo, status),
                }
            }
        };
        answer_in_order(request, self.admission.clone(), answer, stream_error).map(Response::new)
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let request = request.into_inner();
        model_info::config(&self.registry.snapshot(), &request.name, &request.version)
            .map(|config| {
                Response::new(pb::ModelConfigResponse {
                    config: Some(config),
                })
            })
            .map_err(|e| status(&InferError::from(e)))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        model_info::statistics(&self.registry.snapshot(), &request.name, &request.version)
            .map(Response::new)
            .map_err(|e| status(&InferError::from(e)))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: model_info::index(&self.registry.snapshot(), request.ready),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let request = request.into_inner();
        let load = repository::from_grpc(&request.model_name, request.parameters)
            .map_err(|e| status(&e))?;
        self.lifecycle
            .load(&request.model_name, load)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let request = request.into_inner();
        self.lifecycle
            .unload(&request.model_name)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _request: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        Err(unimplemented("system shared memory"))
    }

    async fn system_shared_memory_register(
        &self,
        _request: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        Err(unimplemented("system shared memory"))
    }

    async fn system_shared_memory_unregister(
        &self,
        _request: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        Err(unimplemented("system shared memory"))
    }

    async fn cuda_shared_memory_status(
        &self,
        _request: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        Err(unimplemented("CUDA shared memory"))
    }

    async fn cuda_shared_memory_register(
        &self,
        _request: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        Err(unimplemented("CUDA shared memory"))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _request: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        Err(unimplemented("CUDA shared memory"))
    }

    async fn trace_setting(
        &self,
        _request: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        Err(unimplemented(
            "TraceSetting (set PREDICTD_LOG for request traces)",
        ))
    }

    async fn log_settings(
        &self,
        _request: Request<pb::LogSettingsRequest>,
    ) -> Result<Response<pb::LogSettingsResponse>, Status> {
        Err(unimplemented("LogSettings (set PREDICTD_LOG at start-up)"))
    }
}
