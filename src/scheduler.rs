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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use crate::error::{Classify, ErrorKind};
use crate::model::{Model, RunError};
use crate::signature::ValidInputs;
use crate::stats::ModelStats;
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
struct Job {
    inputs: ValidInputs,
    deadline: Option<Instant>,
    reply: oneshot::Sender<JobResult>,
    /// The caller's span, so worker-side events land in the request's trace.
    span: tracing::Span,
    queued: Instant,
}

impl Job {
    fn rows(&self) -> usize {
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

/// A model's queue and worker pool. Dropping the last handle closes the queue; workers finish
/// what is queued and exit.
#[derive(Debug, Clone)]
pub struct Scheduler {
    model: Arc<Model>,
    queue: Sender<Job>,
    /// The settings in force: `max_batch_size` is 0 for a model that cannot be batched.
    config: SchedulerConfig,
    stats: Arc<ModelStats>,
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
        for i in 0..config.workers {
            let mut worker = Worker {
                model: Arc::clone(&model),
                jobs: jobs.clone(),
                idle: Arc::clone(&idle),
                stats: Arc::clone(&stats),
                // A model that runs no faster batched still takes batches from its callers,
                // and reports that it does; its workers just do not stack requests.
                max_rows: if model.batches_pay() { max_rows } else { 0 },
                delay: config.max_queue_delay,
                carry: None,
            };
            thread::Builder::new()
                .name(format!("{}-v{}-{i}", model.name(), model.version()))
                .spawn(move || worker.work())?;
        }
        Ok(Scheduler {
            model,
            queue,
            config,
            stats,
        })
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
    /// blocks: a full queue is an error.
    pub fn submit(
        &self,
        inputs: ValidInputs,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<JobResult>, ScheduleError> {
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            inputs,
            deadline,
            reply,
            span: tracing::Span::current(),
            queued: Instant::now(),
        };
        match self.queue.try_send(job) {
            Ok(()) => Ok(receiver),
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

/// How long to wait for the next request.
enum Wait {
    /// Until one comes or the queue closes.
    Forever,
    /// Only for one already queued.
    No,
    /// Until then at the latest.
    Until(Instant),
}

/// One worker thread's state.
struct Worker {
    model: Arc<Model>,
    jobs: Receiver<Job>,
    /// Workers of this model waiting for a request. While one waits, a batch is not grown:
    /// the next request runs sooner on that worker, in parallel, than stacked behind this one.
    idle: Arc<AtomicUsize>,
    stats: Arc<ModelStats>,
    /// Most rows per batch; 0 when not batching.
    max_rows: usize,
    delay: Duration,
    /// A request taken from the queue that did not fit the last batch: it leads the next one.
    carry: Option<Job>,
}

impl Worker {
    fn work(&mut self) {
        while let Some(batch) = self.next_batch() {
            self.run(batch);
        }
    }

    /// The next live request, dropping expired and abandoned ones on the way.
    fn next_live(&mut self, wait: Wait) -> Option<Job> {
        loop {
            let job = match self.carry.take() {
                Some(job) => job,
                None => match wait {
                    Wait::Forever => match self.jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Disconnected) => return None,
                        Err(TryRecvError::Empty) => {
                            self.idle.fetch_add(1, Ordering::Relaxed);
                            let job = self.jobs.recv();
                            self.idle.fetch_sub(1, Ordering::Relaxed);
                            job.ok()?
                        }
                    },
                    Wait::No => self.jobs.try_recv().ok()?,
                    Wait::Until(t) => match self.jobs.recv_deadline(t) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                            return None;
                        }
                    },
                },
            };
            if job.reply.is_closed() {
                self.stats.cancelled();
                job.span
                    .in_scope(|| tracing::debug!("caller went away; dropped before running"));
            } else if job.deadline.is_some_and(|d| Instant::now() >= d) {
                self.stats.expired();
                job.span.in_scope(|| {
                    tracing::debug!("deadline passed in the queue; dropped before running")
                });
                let _ = job.reply.send(Err(JobError::Expired));
            } else {
                return Some(job);
            }
        }
    }

    /// The oldest live request and every queued one that stacks with it, up to `max_rows`.
    /// `None` once the queue is closed and drained.
    fn next_batch(&mut self) -> Option<Vec<Job>> {
        let first = self.next_live(Wait::Forever)?;
        let mut rows = first.rows();
        let mut batch = vec![first];
        let until = Instant::now() + self.delay;
        // With a queue delay the operator asked for fuller batches, idle workers or not.
        let waits = !self.delay.is_zero();
        while rows > 0 && rows < self.max_rows && (waits || self.idle.load(Ordering::Relaxed) == 0)
        {
            let wait = if self.delay.is_zero() {
                Wait::No
            } else {
                Wait::Until(until)
            };
            let Some(job) = self.next_live(wait) else {
                break;
            };
            if rows + job.rows() > self.max_rows || !batch[0].inputs.stacks_with(&job.inputs) {
                self.carry = Some(job);
                break;
            }
            rows += job.rows();
            batch.push(job);
        }
        Some(batch)
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
        let split = ValidInputs::concat(&parts)
            .ok_or_else(|| RunError::Engine("batch inputs do not stack: this is a bug".into()))
            .and_then(|merged| self.model.run(merged))
            .and_then(|outputs| split_outputs(&outputs, &rows));
        let compute = started.elapsed();
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

/// Splits every output of a batched run back into one output list per request.
fn split_outputs(outputs: &[Tensor], rows: &[usize]) -> Result<Vec<Vec<Tensor>>, RunError> {
    let mut per_job: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        let pieces = output.split_rows(rows).ok_or_else(|| {
            RunError::Engine(format!(
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
