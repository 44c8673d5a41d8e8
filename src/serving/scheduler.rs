//! Runs a model on its own worker threads, fed by a bounded queue, batching requests that wait
//! together. Model runs never happen on the async reactor, and a full queue answers at once
//! instead of growing without bound.
//!
//! Batching is greedy once the workers are saturated: a worker that becomes free takes the
//! oldest live request and, if no other worker of the model is waiting for work, every request
//! already queued behind it, up to `max_batch_size` rows, stacks them along the batch dimension
//! and runs the model once. Batches therefore grow by themselves with load, and a lone request
//! never waits for company (unless `max_queue_delay` asks it to). While a worker waits idle,
//! requests are left for it: two rows run on two cores finish sooner than stacked on one
//! (measured at 4 concurrent callers, batching them anyway was 20-25% slower than no batching).
//! A non-zero `max_queue_delay` asks for fuller batches and grows them regardless. A request
//! with more rows than `max_batch_size` runs on its own, unsplit.
//!
//! A request whose deadline has passed, or whose caller has gone away (its reply receiver
//! dropped), is dropped when it leaves the queue, before it costs compute.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use crate::engine::model::{Model, RunError};
use crate::engine::repository::ModelConfig;
use crate::engine::signature::ValidInputs;
use crate::engine::tensor::Tensor;
use crate::error::{Classify, ErrorKind};
use crate::serving::batching::{Batcher, Queue};
use crate::serving::stats::ModelStats;
use crate::traces::Sampled;
use crate::traces::tracer::Value;

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

/// Why a queued request produced no outputs.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Its deadline passed while it waited; it was not run.
    #[error("the deadline passed while the request waited for a worker; it was not run")]
    Expired,
    /// The model failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// The outcome of one queued request, as its caller receives it.
pub type JobResult = Result<Vec<Tensor>, JobError>;

/// A queued request.
pub(super) struct Job {
    pub(super) inputs: ValidInputs,
    pub(super) deadline: Option<Instant>,
    pub(super) reply: oneshot::Sender<JobResult>,
    /// The caller's span, so worker-side events land in the request's log lines.
    pub(super) span: tracing::Span,
    pub(super) queued: Instant,
    /// The call's span, if it is traced: the queue and batch spans are its children.
    pub(super) trace: Option<Sampled>,
}

impl Job {
    pub(super) fn rows(&self) -> usize {
        self.inputs.rows().unwrap_or(0)
    }
}

/// How a model's requests are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Worker threads (at least one).
    pub workers: usize,
    /// Requests that may wait (at least one).
    pub queue_capacity: usize,
    /// Most rows run as one batch; 0 turns batching off. Models without a batch dimension are
    /// never batched.
    pub max_batch_size: usize,
    /// How long a worker holding a partial batch may wait for more requests. Zero: never wait.
    pub max_queue_delay: Duration,
}

impl SchedulerConfig {
    /// These settings with those a model's `config.toml` sets instead.
    pub fn overridden_by(self, config: &ModelConfig) -> SchedulerConfig {
        SchedulerConfig {
            workers: config.workers.unwrap_or(self.workers),
            queue_capacity: config.queue_capacity.unwrap_or(self.queue_capacity),
            max_batch_size: config.max_batch_size.unwrap_or(self.max_batch_size),
            max_queue_delay: config
                .max_queue_delay_us
                .map_or(self.max_queue_delay, Duration::from_micros),
        }
    }
}

/// A model's queue and worker pool. Dropping the last handle closes the queue; workers finish
/// what is queued and exit.
#[derive(Debug, Clone)]
pub struct Scheduler {
    model: Arc<Model>,
    queue: Sender<Job>,
    /// The settings in force: `max_batch_size` is 0 for a model that cannot be batched.
    config: SchedulerConfig,
    stats: Arc<ModelStats>,
    /// The worker threads, until someone takes them to join ([`Scheduler::take_threads`]).
    threads: Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
    /// How long opening, optimising and warming the model took.
    load_time: Duration,
}

impl Scheduler {
    /// Starts `config.workers` threads running `model`.
    pub fn start(model: Arc<Model>, config: SchedulerConfig) -> std::io::Result<Scheduler> {
        let capacity = config.queue_capacity.max(1);
        let (queue, jobs) = crossbeam_channel::bounded(capacity);
        let stats = Arc::new(ModelStats::default());
        let max_rows = if model.signature().batchable() {
            config.max_batch_size
        } else {
            0
        };
        let config = SchedulerConfig {
            workers: config.workers.max(1),
            queue_capacity: capacity,
            max_batch_size: max_rows,
            max_queue_delay: config.max_queue_delay,
        };
        let idle = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::with_capacity(config.workers);
        for i in 0..config.workers {
            let mut worker = Worker {
                model: Arc::clone(&model),
                queue: Queue {
                    jobs: jobs.clone(),
                    idle: Arc::clone(&idle),
                },
                batcher: Batcher {
                    idle: Arc::clone(&idle),
                    stats: Arc::clone(&stats),
                    // A model that runs no faster batched still takes batches from its
                    // callers, and reports that it does; its workers just do not stack them.
                    max_rows: if model.batches_pay() { max_rows } else { 0 },
                    delay: config.max_queue_delay,
                    carry: None,
                },
                stats: Arc::clone(&stats),
            };
            threads.push(
                thread::Builder::new()
                    .name(format!("{}-v{}-{i}", model.name(), model.version()))
                    .spawn(move || worker.work())?,
            );
        }
        Ok(Scheduler {
            model,
            queue,
            config,
            stats,
            threads: Arc::new(Mutex::new(threads)),
            load_time: Duration::ZERO,
        })
    }

    /// The same scheduler, noting that its model took `load_time` to make ready.
    pub fn loaded_in(mut self, load_time: Duration) -> Scheduler {
        self.load_time = load_time;
        self
    }

    /// How long its model took to make ready.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The worker threads, to be joined: they end once every handle of this scheduler is
    /// dropped (closing the queue) and what was queued is done. Later calls get none.
    pub fn take_threads(&self) -> Vec<thread::JoinHandle<()>> {
        std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The model this scheduler runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The settings in force.
    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    /// The model's counters.
    pub fn stats(&self) -> &ModelStats {
        &self.stats
    }

    /// Queues a run that must start before `deadline`; the receiver yields its outputs. Never
    /// blocks: a full queue is an error. A traced call's spans go under `trace`.
    pub fn submit(
        &self,
        inputs: ValidInputs,
        deadline: Option<Instant>,
        trace: Option<Sampled>,
    ) -> Result<oneshot::Receiver<JobResult>, ScheduleError> {
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            inputs,
            deadline,
            reply,
            span: tracing::Span::current(),
            queued: Instant::now(),
            trace,
        };
        match self.queue.try_send(job) {
            Ok(()) => {
                self.stats.received();
                Ok(receiver)
            }
            Err(TrySendError::Full(_)) => {
                self.stats.rejected();
                Err(ScheduleError::QueueFull {
                    model: self.model.name().to_string(),
                    version: self.model.version(),
                    capacity: self.config.queue_capacity,
                })
            }
            Err(TrySendError::Disconnected(_)) => Err(ScheduleError::Stopped {
                model: self.model.name().to_string(),
                version: self.model.version(),
            }),
        }
    }
}

/// One worker thread's state.
struct Worker {
    model: Arc<Model>,
    queue: Queue,
    batcher: Batcher,
    stats: Arc<ModelStats>,
}

impl Worker {
    fn work(&mut self) {
        while let Some(batch) = self.batcher.next_batch(&mut self.queue) {
            self.run(batch);
        }
    }

    /// Runs a batch and answers each of its requests.
    fn run(&self, mut batch: Vec<Job>) {
        if batch.len() == 1
            && let Some(job) = batch.pop()
        {
            self.stats.starting(1);
            let started = Instant::now();
            // Cloning shares the tensors' bytes; the job keeps its inputs for the retry path.
            let result = self.model.run(job.inputs.clone());
            self.stats.batch(1, job.rows(), started.elapsed());
            return self.answer(started, vec![(job, result.map_err(JobError::from))]);
        }
        let rows: Vec<usize> = batch.iter().map(Job::rows).collect();
        let parts: Vec<&ValidInputs> = batch.iter().map(|j| &j.inputs).collect();
        self.stats.starting(batch.len());
        let started = Instant::now();
        let merged = ValidInputs::concat(&parts)
            .ok_or_else(|| RunError::engine("batch inputs do not stack: this is a bug"));
        let stacked = Instant::now();
        let outputs = merged.and_then(|merged| self.model.run(merged));
        let ran = Instant::now();
        let split = outputs.and_then(|outputs| split_outputs(&outputs, &rows));
        let compute = ran - stacked;
        self.stats.copies(stacked - started, ran.elapsed());
        match split {
            Ok(per_job) => {
                self.stats.batch(batch.len(), rows.iter().sum(), compute);
                self.answer(
                    started,
                    batch.into_iter().zip(per_job.into_iter().map(Ok)).collect(),
                );
            }
            // One bad request must not fail its neighbours: run each alone to find it.
            Err(error) => {
                tracing::warn!(%error, requests = batch.len(), "batched run failed; running its requests one by one");
                for job in batch {
                    self.run(vec![job]);
                }
            }
        }
    }

    /// Sends each request of a batch that began at `started` its result, recording how long it
    /// waited.
    fn answer(&self, started: Instant, results: Vec<(Job, JobResult)>) {
        let now = Instant::now();
        let batch_rows: usize = results.iter().map(|(job, _)| job.rows()).sum();
        self.trace(started, now, &results);
        for (job, outcome) in results {
            let waited = now.saturating_duration_since(job.queued);
            let queued = started.saturating_duration_since(job.queued);
            self.stats.answered(queued, waited, outcome.is_ok());
            job.span.in_scope(|| {
                tracing::debug!(
                    batch_rows,
                    total_us = waited.as_micros() as u64,
                    "model ran"
                )
            });
            // The caller may have gone away while the model ran; nothing to do then.
            let _ = job.reply.send(outcome);
        }
    }
}

impl Worker {
    /// The spans of a batch run from `started` to `ended`, for the traced requests in it: each
    /// one's wait in the queue, under its call, and one span for the run, under the first
    /// traced call and linked to every traced call it served, so that each request's trace
    /// leads to the run that served it, shared or not.
    fn trace(&self, started: Instant, ended: Instant, results: &[(Job, JobResult)]) {
        let traced: Vec<(&Job, &Sampled)> = results
            .iter()
            .filter_map(|(job, _)| Some((job, job.trace.as_ref()?)))
            .collect();
        let Some(&(_, first)) = traced.first() else {
            return;
        };
        let labels = |rows: usize| {
            vec![
                ("predictd.model", Value::from(self.model.name().to_string())),
                ("predictd.model_version", Value::from(self.model.version())),
                ("predictd.rows", Value::from(rows)),
            ]
        };
        for &(job, trace) in &traced {
            let wait = (job.queued, started);
            trace.child("predictd.queue", wait, labels(job.rows()), Vec::new(), None);
        }
        let mut attributes = labels(results.iter().map(|(job, _)| job.rows()).sum());
        attributes.push(("predictd.batch_requests", Value::from(results.len())));
        let links = traced
            .iter()
            .map(|(_, trace)| (trace.trace_id, trace.span_id))
            .collect();
        let failed = results.iter().find_map(|(_, outcome)| match outcome {
            Err(JobError::Run(error)) => Some(error.to_string()),
            _ => None,
        });
        first.child(
            "predictd.batch",
            (started, ended),
            attributes,
            links,
            failed,
        );
    }
}

/// Splits every output of a batched run back into one output list per request.
fn split_outputs(outputs: &[Tensor], rows: &[usize]) -> Result<Vec<Vec<Tensor>>, RunError> {
    let mut per_job: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        let pieces = output.split_rows(rows).ok_or_else(|| {
            RunError::engine(format!(
                "a batched output has shape {:?}, which does not split into {rows:?} rows",
                output.shape()
            ))
        })?;
        for (job, piece) in per_job.iter_mut().zip(pieces) {
            job.push(piece);
        }
    }
    Ok(per_job)
}
