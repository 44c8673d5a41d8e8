//! The protocol-neutral request path: validate named tensors against the model, queue them,
//! wait for the run, pick the requested outputs. Every front end decodes its wire format and
//! then comes here, so validation and execution exist once.

use std::time::Instant;

use crate::engine::model::RunError;
use crate::engine::repository::LookupError;
use crate::engine::signature::InputError;
use crate::engine::tensor::Tensor;
use crate::error::{Classify, ErrorKind};
use crate::serving::scheduler::{JobError, ScheduleError, Scheduler};
use crate::traces::Sampled;

/// Why one inference request failed. Messages name the model and version; front ends add
/// nothing but their own code for the [`ErrorKind`].
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// No servable model version by that name.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// A wire tensor could not be decoded.
    #[error("model '{model}' version {version}: input '{input}': {reason}")]
    Decode {
        /// The model asked for.
        model: String,
        /// Its version.
        version: u64,
        /// The tensor's name.
        input: String,
        /// What was wrong with it, in the protocol's own terms.
        reason: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The tensors do not fit the model's signature.
    #[error("model '{model}' version {version}: {error}")]
    Input {
        /// The model asked for.
        model: String,
        /// Its version.
        version: u64,
        /// What does not fit.
        error: InputError,
    },
    /// The model's queue refused the request.
    #[error(transparent)]
    Schedule(ScheduleError),
    /// The model failed while running.
    #[error("model '{model}' version {version}: {error}")]
    Run {
        /// The model.
        model: String,
        /// Its version.
        version: u64,
        /// What failed.
        #[source]
        error: RunError,
    },
    /// The deadline passed while the request was queued; it was not run.
    #[error(
        "model '{model}' version {version}: the deadline (the client's grpc-timeout, or the server's --request-timeout, whichever came first) passed while the request waited for a worker; it was not run"
    )]
    Expired {
        /// The model.
        model: String,
        /// Its version.
        version: u64,
    },
    /// A worker dropped the request without answering: a bug.
    #[error("the request was lost by a model worker: this is a bug")]
    Lost,
}

impl Classify for InferError {
    fn kind(&self) -> ErrorKind {
        match self {
            InferError::Lookup(e) => e.kind(),
            InferError::Decode { .. } => ErrorKind::InvalidArgument,
            InferError::Input { error, .. } => error.kind(),
            InferError::Schedule(e) => e.kind(),
            InferError::Run { error, .. } => error.kind(),
            InferError::Expired { .. } => ErrorKind::DeadlineExceeded,
            InferError::Lost => ErrorKind::Internal,
        }
    }
}

/// The span every inference request runs in, whichever protocol brought it, so log lines look
/// the same for all of them; the version, row count and latency are recorded as they become
/// known.
pub fn inference_span(model: &str) -> tracing::Span {
    tracing::info_span!(
        "predict",
        model = %model,
        version = tracing::field::Empty,
        rows = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    )
}

/// Validates `inputs` against the scheduler's model, runs it if it can start before
/// `deadline`, and returns the outputs named in `wanted` (all when empty), in the order asked
/// for. Dropping the future withdraws the request: if it has not started, it never runs. A
/// sampled call's `trace` gets the spans of its queue wait and batch run.
pub async fn infer(
    scheduler: &Scheduler,
    inputs: impl IntoIterator<Item = (String, Tensor)>,
    wanted: &[String],
    deadline: Option<Instant>,
    trace: Option<Sampled>,
) -> Result<Vec<(String, Tensor)>, InferError> {
    let model = scheduler.model();
    let input_error = |error| InferError::Input {
        model: model.name().to_string(),
        version: model.version(),
        error,
    };
    let signature = model.signature();
    let refused = |error| {
        scheduler.stats().invalid();
        input_error(error)
    };
    let selected = signature.select_outputs(wanted).map_err(refused)?;
    let valid = signature.validate(inputs).map_err(refused)?;
    if let Some(rows) = valid.rows() {
        tracing::Span::current().record("rows", rows);
    }
    let reply = scheduler
        .submit(valid, deadline, trace)
        .map_err(InferError::Schedule)?;
    let outputs = reply
        .await
        .map_err(|_| InferError::Lost)?
        .map_err(|error| match error {
            JobError::Expired => InferError::Expired {
                model: model.name().to_string(),
                version: model.version(),
            },
            JobError::Run(error) => InferError::Run {
                model: model.name().to_string(),
                version: model.version(),
                error,
            },
        })?;
    Ok(selected
        .into_iter()
        .filter_map(|ix| {
            // Cloning shares numeric data (reference-counted bytes); only strings are copied.
            Some((
                signature.outputs.get(ix)?.name.clone(),
                outputs.get(ix)?.clone(),
            ))
        })
        .collect())
}
