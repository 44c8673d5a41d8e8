//! The Open Inference Protocol over HTTP/JSON (KServe v2 REST), with Triton's binary tensor
//! data extension: what tritonclient's HTTP client, curl and browsers speak. Handlers decode,
//! call [`crate::serving::infer`] — the same validation, queue and batching as gRPC — and encode.
//!
//! Errors are `{"error": "..."}` with the status for their kind ([`crate::edge::status`]).
//! Deadlines and the concurrency limit are the edge stack's, as for gRPC
//! ([`crate::edge::layers`]): handlers only read the deadline it set.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::map_request_body::MapRequestBodyLayer;

use crate::edge::layers::Deadlines;
use crate::edge::status::ApiError;
use crate::engine::repository::LookupError;
use crate::error::{Classify, ErrorKind};
use crate::kserve::json::{decode_request, encode_response};
use crate::kserve::{model_info, repository};
use crate::proto::inference as pb;
use crate::serving::infer::{InferError, infer, inference_span};
use crate::serving::lifecycle::Lifecycle;
use crate::serving::registry::Registry;
use crate::traces::Sampled;
use tracing::Instrument;

/// The header that carries the JSON part's length when binary data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// What every handler shares.
#[derive(Debug, Clone)]
struct Rest {
    registry: Arc<Registry>,
    lifecycle: Arc<Lifecycle>,
    max_body_bytes: usize,
}

/// The REST routes, answering from `registry` and changing it through `lifecycle`. Bodies
/// larger than `max_body_bytes` are refused with 413. The server puts the edge stack in front
/// of them.
pub fn router(registry: Arc<Registry>, lifecycle: Arc<Lifecycle>, max_body_bytes: usize) -> Router {
    let state = Rest {
        registry,
        lifecycle,
        max_body_bytes,
    };
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .route("/v2/models/{model}", get(metadata))
        .route("/v2/models/{model}/versions/{version}", get(metadata_of))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_of),
        )
        .route("/v2/models/{model}/config", get(config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(config_of),
        )
        .route("/v2/models/{model}/stats", get(statistics))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(statistics_of),
        )
        .route("/v2/models/{model}/infer", post(infer_latest))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // gzip and deflate bodies, as tritonclient's request_compression_algorithm sends
        // them. The body limit above counts the bytes decompressed, so a small bomb cannot
        // make the server hold more than a plain body could.
        .layer(MapRequestBodyLayer::new(Body::new))
        .layer(RequestDecompressionLayer::new().gzip(true).deflate(true))
        .with_state(state)
}

/// An error reply the handler words itself: `{"error": message}`.
fn error(kind: ErrorKind, message: impl std::fmt::Display) -> Response {
    tracing::debug!(error = %message, "request refused");
    ApiError::new(kind, message.to_string()).into_response()
}

fn failed<E: Classify + std::error::Error + 'static>(e: &E) -> Response {
    ApiError::from_error(e).into_response()
}

fn json_reply(value: Value) -> Response {
    axum::Json(value).into_response()
}

async fn not_found() -> Response {
    error(
        ErrorKind::NotFound,
        "no such endpoint; see the KServe v2 REST protocol (e.g. GET /v2, POST /v2/models/{model}/infer)",
    )
}

async fn server_metadata() -> Response {
    let m = model_info::server_metadata();
    json_reply(json!({ "name": m.name, "version": m.version, "extensions": m.extensions }))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(rest): State<Rest>) -> StatusCode {
    if rest.registry.is_serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn metadata_json(m: &pb::ModelMetadataResponse) -> Value {
    let tensors = |ts: &[pb::model_metadata_response::TensorMetadata]| -> Vec<Value> {
        ts.iter()
            .map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape }))
            .collect()
    };
    json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    })
}

fn model_metadata(rest: &Rest, model: &str, version: &str) -> Response {
    match model_info::metadata(&rest.registry.snapshot(), model, version) {
        Ok(m) => json_reply(metadata_json(&m)),
        Err(e) => failed(&e),
    }
}

async fn metadata(State(rest): State<Rest>, Path(model): Path<String>) -> Response {
    model_metadata(&rest, &model, "")
}

async fn metadata_of(
    State(rest): State<Rest>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    model_metadata(&rest, &model, &version)
}

/// 200 when the version can serve; 400 when it exists but cannot (yet); 404 when unknown.
fn readiness(rest: &Rest, model: &str, version: &str) -> Response {
    match rest.registry.snapshot().resolve(model, version) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e @ LookupError::NotReady { .. }) => error(ErrorKind::InvalidArgument, e),
        Err(e) => failed(&e),
    }
}

async fn model_ready(State(rest): State<Rest>, Path(model): Path<String>) -> Response {
    readiness(&rest, &model, "")
}

async fn model_ready_of(
    State(rest): State<Rest>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    readiness(&rest, &model, &version)
}

/// Triton's configuration JSON: enum values by name, the scheduling choice as its own key.
fn config_json(c: &pb::ModelConfig) -> Value {
    let type_name = |t: i32| {
        pb::DataType::try_from(t)
            .map(|t| t.as_str_name())
            .unwrap_or("TYPE_INVALID")
    };
    let mut out = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| json!({
            "name": i.name,
            "data_type": type_name(i.data_type),
            "format": "FORMAT_NONE",
            "dims": i.dims,
            "is_shape_tensor": i.is_shape_tensor,
            "allow_ragged_batch": i.allow_ragged_batch,
            "optional": i.optional,
        })).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| json!({
            "name": o.name,
            "data_type": type_name(o.data_type),
            "dims": o.dims,
            "label_filename": o.label_filename,
            "is_shape_tensor": o.is_shape_tensor,
        })).collect::<Vec<_>>(),
        "instance_group": c.instance_group.iter().map(|g| json!({
            "name": g.name,
            "kind": pb::model_instance_group::Kind::try_from(g.kind)
                .map(|k| k.as_str_name())
                .unwrap_or("KIND_AUTO"),
            "count": g.count,
        })).collect::<Vec<_>>(),
        "default_model_filename": c.default_model_filename,
        "model_transaction_policy": {
            "decoupled": c.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled),
        },
    });
    if let Some(pb::model_config::SchedulingChoice::DynamicBatching(d)) = &c.scheduling_choice {
        out["dynamic_batching"] = json!({
            "preferred_batch_size": d.preferred_batch_size,
            "max_queue_delay_microseconds": d.max_queue_delay_microseconds,
            "preserve_ordering": d.preserve_ordering,
        });
    }
    out
}

fn model_config(rest: &Rest, model: &str, version: &str) -> Response {
    match model_info::config(&rest.registry.snapshot(), model, version) {
        Ok(c) => json_reply(config_json(&c)),
        Err(e) => failed(&e),
    }
}

async fn config(State(rest): State<Rest>, Path(model): Path<String>) -> Response {
    model_config(&rest, &model, "")
}

async fn config_of(
    State(rest): State<Rest>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    model_config(&rest, &model, &version)
}

/// Statistics as JSON numbers throughout: perf_analyzer reads them as unsigned integers.
fn statistics_json(r: &pb::ModelStatisticsResponse) -> Value {
    let duration = |d: &Option<pb::StatisticDuration>| {
        let d = d.unwrap_or_default();
        json!({ "count": d.count, "ns": d.ns })
    };
    let stats: Vec<Value> = r
        .model_stats
        .iter()
        .map(|s| {
            let i = s.inference_stats.unwrap_or_default();
            json!({
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": duration(&i.success),
                    "fail": duration(&i.fail),
                    "queue": duration(&i.queue),
                    "compute_input": duration(&i.compute_input),
                    "compute_infer": duration(&i.compute_infer),
                    "compute_output": duration(&i.compute_output),
                    "cache_hit": duration(&i.cache_hit),
                    "cache_miss": duration(&i.cache_miss),
                },
                "batch_stats": [],
            })
        })
        .collect();
    json!({ "model_stats": stats })
}

fn model_statistics(rest: &Rest, model: &str, version: &str) -> Response {
    match model_info::statistics(&rest.registry.snapshot(), model, version) {
        Ok(s) => json_reply(statistics_json(&s)),
        Err(e) => failed(&e),
    }
}

async fn all_statistics(State(rest): State<Rest>) -> Response {
    model_statistics(&rest, "", "")
}

async fn statistics(State(rest): State<Rest>, Path(model): Path<String>) -> Response {
    model_statistics(&rest, &model, "")
}

async fn statistics_of(
    State(rest): State<Rest>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    model_statistics(&rest, &model, &version)
}

async fn repository_index(State(rest): State<Rest>, body: Bytes) -> Response {
    // The body is optional: `{"ready": true}` lists only the ready versions.
    let ready = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("ready").and_then(Value::as_bool))
        .unwrap_or(false);
    let models: Vec<Value> = model_info::index(&rest.registry.snapshot(), ready)
        .into_iter()
        .map(|m| {
            let mut entry = json!({ "name": m.name, "version": m.version, "state": m.state });
            if !m.reason.is_empty() {
                entry["reason"] = json!(m.reason);
            }
            entry
        })
        .collect();
    json_reply(Value::Array(models))
}

async fn load(State(rest): State<Rest>, Path(model): Path<String>, body: Bytes) -> Response {
    let outcome = match repository::from_json(&model, &body) {
        Ok(request) => rest.lifecycle.load(&model, request).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => ApiError::from_error(&e).into_response(),
    }
}

async fn unload(State(rest): State<Rest>, Path(model): Path<String>) -> Response {
    match rest.lifecycle.unload(&model).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => ApiError::from_error(&e).into_response(),
    }
}

async fn infer_latest(
    State(rest): State<Rest>,
    Path(model): Path<String>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(rest, model, String::new(), &extensions, headers, body).await
}

async fn infer_version(
    State(rest): State<Rest>,
    Path((model, version)): Path<(String, String)>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(rest, model, version, &extensions, headers, body).await
}

async fn run_infer(
    rest: Rest,
    model: String,
    version: String,
    extensions: &Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                ErrorKind::TooLarge,
                format!(
                    "model '{model}': the request body is over the server's limit of {} bytes (--max-message-bytes; a compressed body counts decompressed)",
                    rest.max_body_bytes
                ),
            );
        }
        Err(rejection) => {
            return error(
                ErrorKind::InvalidArgument,
                format!(
                    "model '{model}': the request body cannot be read: {}",
                    rejection.body_text()
                ),
            );
        }
    };
    // The edge stack's deadline: its own timer answers 504, and the scheduler drops the
    // request if it is still queued by then.
    let deadline = extensions
        .get::<Deadlines>()
        .map(|d| d.for_work_starting(Instant::now()));
    let trace = extensions.get::<Sampled>().cloned();
    let span = inference_span(&model);
    async move {
        let started = Instant::now();
        let response = infer_body(&rest, &model, &version, deadline, trace, &headers, body).await;
        tracing::Span::current().record("latency_us", started.elapsed().as_micros() as u64);
        tracing::debug!(status = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await
}

async fn infer_body(
    rest: &Rest,
    model: &str,
    version: &str,
    deadline: Option<Instant>,
    trace: Option<Sampled>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let catalog = rest.registry.snapshot();
    let (number, scheduler) = match catalog.resolve(model, version) {
        Ok(found) => found,
        Err(e) => return failed(&InferError::from(e)),
    };
    tracing::Span::current().record("version", number);
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                return error(
                    ErrorKind::InvalidArgument,
                    format!(
                        "model '{model}' version {number}: {HEADER_LENGTH} must be a byte count, got {v:?}"
                    ),
                );
            }
        },
    };
    let mut request = match decode_request(body, header_length) {
        Ok(r) => r,
        Err(e) => {
            return error(
                ErrorKind::InvalidArgument,
                format!("model '{model}' version {number}: {e}"),
            );
        }
    };
    let run = infer(
        scheduler,
        std::mem::take(&mut request.inputs),
        &request.wanted,
        deadline,
        trace,
    );
    let outputs = match run.await {
        Ok(outputs) => outputs,
        Err(e) => return failed(&e),
    };
    let (body, json_length) = encode_response(model, number, &request, &outputs);
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    match json_length {
        Some(length) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(HEADER_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    response
}
