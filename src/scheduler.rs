//! Runs a model on its own worker threads, fed by a bounded queue, so model runs never happen on
//! the async reactor and a full queue answers at once instead of growing without bound.
//!
//! Replies travel on `oneshot` channels, which need no async runtime; a request whose caller
//! has gone away (its receiver dropped) is skipped before it costs compute.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::error::{Classify, ErrorKind};
use crate::model::{Model, RunError};
use crate::signature::ValidInputs;
use crate::tensor::Tensor;

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The model's queue is full.
    #[error(
        "model '{model}' version {version} is overloaded: {capacity} requests are already queued; retry later"
    )]
    QueueFull {
        /// The model.
        model: String,
        /// The version.
        version: u64,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The workers have stopped (the server is shutting down).
    #[error("model '{model}' version {version} is shutting down")]
    Stopped {
        /// The model.
        model: String,
        /// The version.
        version: u64,
    },
}

impl Classify for ScheduleError {
    fn kind(&self) -> ErrorKind {
        match self {
            ScheduleError::QueueFull { .. } => ErrorKind::ResourceExhausted,
            ScheduleError::Stopped { .. } => ErrorKind::Unavailable,
        }
    }
}

/// The outcome of one run, as its caller receives it.
pub type RunResult = Result<Vec<Tensor>, RunError>;

/// A queued request.
struct Job {
    inputs: ValidInputs,
    reply: oneshot::Sender<RunResult>,
    /// The caller's span, so worker-side events land in the request's trace.
    span: tracing::Span,
}

/// How many workers and how deep a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Worker threads (at least one).
    pub workers: usize,
    /// Requests that may wait (at least one).
    pub queue_capacity: usize,
}

/// A model's queue and worker pool. Dropping the last handle closes the queue; workers finish
/// what is queued and exit.
#[derive(Debug, Clone)]
pub struct Scheduler {
    model: Arc<Model>,
    queue: Sender<Job>,
    capacity: usize,
}

impl Scheduler {
    /// Starts `config.workers` threads running `model`.
    pub fn start(model: Arc<Model>, config: SchedulerConfig) -> std::io::Result<Scheduler> {
        let capacity = config.queue_capacity.max(1);
        let (queue, jobs) = crossbeam_channel::bounded(capacity);
        for i in 0..config.workers.max(1) {
            let model = Arc::clone(&model);
            let jobs = jobs.clone();
            thread::Builder::new()
                .name(format!("{}-v{}-{i}", model.name(), model.version()))
                .spawn(move || work(&model, &jobs))?;
        }
        Ok(Scheduler {
            model,
            queue,
            capacity,
        })
    }

    /// The model this scheduler runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Queues a run; the receiver yields its outputs. Never blocks: a full queue is an error.
    pub fn submit(
        &self,
        inputs: ValidInputs,
    ) -> Result<oneshot::Receiver<RunResult>, ScheduleError> {
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            inputs,
            reply,
            span: tracing::Span::current(),
        };
        match self.queue.try_send(job) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => Err(ScheduleError::QueueFull {
                model: self.model.name().to_string(),
                version: self.model.version(),
                capacity: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(ScheduleError::Stopped {
                model: self.model.name().to_string(),
                version: self.model.version(),
            }),
        }
    }
}

fn work(model: &Model, jobs: &Receiver<Job>) {
    for job in jobs {
        let _entered = job.span.enter();
        if job.reply.is_closed() {
            tracing::debug!("caller went away; skipped before running");
            continue;
        }
        let started = Instant::now();
        let result = model.run(job.inputs);
        tracing::debug!(compute_us = started.elapsed().as_micros() as u64, "ran");
        // The caller may have gone away while we ran; nothing to do then.
        let _ = job.reply.send(result);
    }
}
