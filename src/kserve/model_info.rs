//! What the Open Inference Protocol says about the server and its models — metadata, Triton's
//! model configuration, statistics, the repository index — built once from the catalog as
//! protocol messages. The gRPC service returns them as they are; REST renders them as JSON.

use crate::engine::repository::{Catalog, LookupError, MODEL_FILE, Slot, State};
use crate::engine::signature::TensorSpec;
use crate::engine::tensor::DType;
use crate::proto::inference as pb;
use crate::serving::scheduler::Scheduler;

use super::convert::datatype_name;

/// What `platform` says of every model: Triton's name for a model in ONNX format. Tools key on
/// it; `backend` says which engine really runs it.
pub const PLATFORM: &str = "onnxruntime_onnx";
/// The protocol extensions served: perf_analyzer reads statistics only when it is listed.
/// Loading and unloading answer only in explicit model control, as Triton's do.
pub const EXTENSIONS: &[&str] = &[
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "model_repository",
];

/// The server's identity and extensions.
pub fn server_metadata() -> pb::ServerMetadataResponse {
    pb::ServerMetadataResponse {
        name: "predictd".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    }
}

fn tensor_metadata(spec: &TensorSpec) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: spec.name.clone(),
        datatype: datatype_name(spec.dtype).to_string(),
        shape: spec.wire_shape(),
    }
}

/// A model version's metadata: its inputs and outputs with -1 for dynamic dimensions, and the
/// versions that can serve.
pub fn metadata(
    catalog: &Catalog<Scheduler>,
    name: &str,
    version: &str,
) -> Result<pb::ModelMetadataResponse, LookupError> {
    let (_, scheduler) = catalog.resolve(name, version)?;
    let signature = scheduler.model().signature();
    let versions = catalog
        .ready_versions(name)
        .map(|v| v.to_string())
        .collect();
    Ok(pb::ModelMetadataResponse {
        name: name.to_string(),
        versions,
        platform: PLATFORM.to_string(),
        inputs: signature.inputs.iter().map(tensor_metadata).collect(),
        outputs: signature.outputs.iter().map(tensor_metadata).collect(),
    })
}

fn config_type(dtype: DType) -> pb::DataType {
    match dtype {
        DType::Bool => pb::DataType::TypeBool,
        DType::U8 => pb::DataType::TypeUint8,
        DType::U16 => pb::DataType::TypeUint16,
        DType::U32 => pb::DataType::TypeUint32,
        DType::U64 => pb::DataType::TypeUint64,
        DType::I8 => pb::DataType::TypeInt8,
        DType::I16 => pb::DataType::TypeInt16,
        DType::I32 => pb::DataType::TypeInt32,
        DType::I64 => pb::DataType::TypeInt64,
        DType::F16 => pb::DataType::TypeFp16,
        DType::F32 => pb::DataType::TypeFp32,
        DType::F64 => pb::DataType::TypeFp64,
        DType::String => pb::DataType::TypeString,
    }
}

/// Dimensions as Triton's configuration states them: without the batch dimension when the
/// model batches (`max_batch_size` > 0), -1 for dynamic ones.
fn config_dims(spec: &TensorSpec, batching: bool) -> Vec<i64> {
    spec.wire_shape()
        .into_iter()
        .skip(usize::from(batching))
        .collect()
}

/// A model version's configuration in Triton's terms. A model with a batch dimension and
/// batching on reports `max_batch_size` and dynamic batching, and dims without the batch
/// dimension, which is what perf_analyzer and Triton clients expect of a batching model.
pub fn config(
    catalog: &Catalog<Scheduler>,
    name: &str,
    version: &str,
) -> Result<pb::ModelConfig, LookupError> {
    let (_, scheduler) = catalog.resolve(name, version)?;
    let model = scheduler.model();
    let signature = model.signature();
    let settings = scheduler.config();
    let max_batch_size = i32::try_from(settings.max_batch_size).unwrap_or(i32::MAX);
    let batching = max_batch_size > 0;
    let scheduling_choice = batching.then(|| {
        pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
            preferred_batch_size: model
                .fixed_batch_sizes()
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
                .collect(),
            max_queue_delay_microseconds: u64::try_from(settings.max_queue_delay.as_micros())
                .unwrap_or(u64::MAX),
            ..Default::default()
        })
    });
    Ok(pb::ModelConfig {
        name: name.to_string(),
        platform: PLATFORM.to_string(),
        backend: crate::engine::BACKEND.to_string(),
        max_batch_size,
        input: signature
            .inputs
            .iter()
            .map(|spec| pb::ModelInput {
                name: spec.name.clone(),
                data_type: config_type(spec.dtype) as i32,
                dims: config_dims(spec, batching),
                ..Default::default()
            })
            .collect(),
        output: signature
            .outputs
            .iter()
            .map(|spec| pb::ModelOutput {
                name: spec.name.clone(),
                data_type: config_type(spec.dtype) as i32,
                dims: config_dims(spec, batching),
                ..Default::default()
            })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: name.to_string(),
            count: i32::try_from(settings.workers).unwrap_or(i32::MAX),
            kind: pb::model_instance_group::Kind::Cpu as i32,
            ..Default::default()
        }],
        default_model_filename: MODEL_FILE.to_string(),
        scheduling_choice,
        model_transaction_policy: Some(pb::ModelTransactionPolicy { decoupled: false }),
        // The name Triton's onnxruntime backend gives the same setting.
        parameters: [(
            "intra_op_thread_count".to_string(),
            pb::ModelParameter {
                string_value: model.threads().to_string(),
            },
        )]
        .into(),
        ..Default::default()
    })
}

fn duration(count: u64, ns: u64) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count, ns })
}

/// Statistics of one model version, from the counters its scheduler keeps.
fn version_statistics(name: &str, version: u64, scheduler: &Scheduler) -> pb::ModelStatistics {
    let s = scheduler.stats().snapshot();
    let ran = s.succeeded + s.failed;
    pb::ModelStatistics {
        name: name.to_string(),
        version: version.to_string(),
        last_inference: s.last_answer_ms,
        inference_count: s.rows,
        execution_count: s.batches,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.succeeded, s.total_ns),
            // Failed runs are counted; their time is in the totals above, not split out.
            fail: duration(s.failed + s.expired, 0),
            queue: duration(ran, s.queue_ns),
            // Stacking a batch's inputs and splitting its outputs; wire tensors are converted
            // on the RPC threads, outside these clocks.
            compute_input: duration(ran, s.input_ns),
            compute_infer: duration(ran, s.compute_ns),
            compute_output: duration(ran, s.output_ns),
            cache_hit: duration(0, 0),
            cache_miss: duration(0, 0),
        }),
        batch_stats: Vec::new(),
        memory_usage: Vec::new(),
    }
}

/// Statistics of every ready version matching `name` and `version` (empty: all).
pub fn statistics(
    catalog: &Catalog<Scheduler>,
    name: &str,
    version: &str,
) -> Result<pb::ModelStatisticsResponse, LookupError> {
    if name.is_empty() {
        let model_stats = catalog
            .models
            .iter()
            .flat_map(|(name, entry)| {
                entry
                    .versions
                    .iter()
                    .filter_map(move |(v, slot)| match slot {
                        Slot::Ready(s) => Some(version_statistics(name, *v, s)),
                        _ => None,
                    })
            })
            .collect();
        return Ok(pb::ModelStatisticsResponse { model_stats });
    }
    if !version.is_empty() {
        let (v, scheduler) = catalog.resolve(name, version)?;
        return Ok(pb::ModelStatisticsResponse {
            model_stats: vec![version_statistics(name, v, scheduler)],
        });
    }
    // Every ready version; resolving "latest" names a missing or unready model precisely.
    catalog.resolve(name, "")?;
    let model_stats = catalog
        .models
        .get(name)
        .into_iter()
        .flat_map(|entry| &entry.versions)
        .filter_map(|(v, slot)| match slot {
            Slot::Ready(s) => Some(version_statistics(name, *v, s)),
            _ => None,
        })
        .collect();
    Ok(pb::ModelStatisticsResponse { model_stats })
}

/// Every model version with its state; only the ready ones if `ready_only`.
pub fn index(
    catalog: &Catalog<Scheduler>,
    ready_only: bool,
) -> Vec<pb::repository_index_response::ModelIndex> {
    catalog
        .models
        .iter()
        .flat_map(|(name, entry)| {
            entry.versions.keys().map(move |v| {
                // Triton's words: clients compare them.
                let (state, reason) = entry.status(*v);
                let state = match state {
                    State::Ready => "READY",
                    State::Loading => "LOADING",
                    State::Failed | State::Unloaded => "UNAVAILABLE",
                };
                pb::repository_index_response::ModelIndex {
                    name: name.clone(),
                    version: v.to_string(),
                    state: state.to_string(),
                    reason,
                }
            })
        })
        .filter(|m| !ready_only || m.state == "READY")
        .collect()
}
