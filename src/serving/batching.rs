//! The batching policy: which queued requests a free worker runs together, and which it drops
//! unrun. Requests come from a [`Source`], the model's queue on the real clock in the server and
//! a script of arrivals on a clock of its own in the tests, so the rules are tested without
//! waiting on real time.
//!
//! The rules (see [`crate::serving::scheduler`] for why): a worker takes the oldest live
//! request; while no other worker of the model is idle, it stacks every queued request that
//! fits behind it, up to `max_rows` rows; a lone request never waits for company unless a queue
//! delay asks for fuller batches; a request over `max_rows` runs alone, unsplit; a request whose
//! deadline passed, or whose caller went away, is dropped before it costs compute.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use crate::serving::scheduler::{Job, JobError};
use crate::serving::stats::ModelStats;

/// How long to wait for the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Until one comes or the queue closes.
    Forever,
    /// Only for one already queued.
    No,
    /// Until then at the latest.
    Until(Instant),
}

/// Where a worker takes its requests from, and what time it is. The server's is the model's
/// queue and the real clock; the tests' is a script of arrivals on a clock of their own, so the
/// batching rules are tested without waiting on real time.
pub(super) trait Source {
    /// The time now.
    fn now(&self) -> Instant;
    /// The next request, waiting as `wait` says; `None` when none came (or the queue closed).
    fn take(&mut self, wait: Wait) -> Option<Job>;
}

/// The model's queue, on the real clock.
pub(super) struct Queue {
    pub(super) jobs: Receiver<Job>,
    /// Workers of this model blocked waiting for a request.
    pub(super) idle: Arc<AtomicUsize>,
}

impl Source for Queue {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn take(&mut self, wait: Wait) -> Option<Job> {
        match wait {
            Wait::Forever => match self.jobs.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    self.idle.fetch_add(1, Ordering::Relaxed);
                    let job = self.jobs.recv();
                    self.idle.fetch_sub(1, Ordering::Relaxed);
                    job.ok()
                }
            },
            Wait::No => self.jobs.try_recv().ok(),
            Wait::Until(t) => self.jobs.recv_deadline(t).ok(),
        }
    }
}

/// The batching rules: which requests run together, and which are dropped unrun.
pub(super) struct Batcher {
    /// Workers of this model waiting for a request. While one waits, a batch is not grown:
    /// the next request runs sooner on that worker, in parallel, than stacked behind this one.
    pub(super) idle: Arc<AtomicUsize>,
    pub(super) stats: Arc<ModelStats>,
    /// Most rows per batch; 0 when not batching.
    pub(super) max_rows: usize,
    pub(super) delay: Duration,
    /// A request taken from the queue that did not fit the last batch: it leads the next one.
    pub(super) carry: Option<Job>,
}

impl Batcher {
    /// The next live request, dropping expired and abandoned ones on the way.
    fn next_live(&mut self, source: &mut impl Source, wait: Wait) -> Option<Job> {
        loop {
            let job = match self.carry.take() {
                Some(job) => job,
                None => source.take(wait)?,
            };
            if job.reply.is_closed() {
                self.stats.cancelled();
                job.span
                    .in_scope(|| tracing::debug!("caller went away; dropped before running"));
            } else if job.deadline.is_some_and(|d| source.now() >= d) {
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
    pub(super) fn next_batch(&mut self, source: &mut impl Source) -> Option<Vec<Job>> {
        let first = self.next_live(source, Wait::Forever)?;
        let mut rows = first.rows();
        let mut batch = vec![first];
        let until = source.now() + self.delay;
        // With a queue delay the operator asked for fuller batches, idle workers or not.
        let waits = !self.delay.is_zero();
        while rows > 0 && rows < self.max_rows && (waits || self.idle.load(Ordering::Relaxed) == 0)
        {
            let wait = if waits { Wait::Until(until) } else { Wait::No };
            let Some(job) = self.next_live(source, wait) else {
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
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::sync::oneshot;

    use super::*;
    use crate::engine::signature::{Dim, Signature, TensorSpec};
    use crate::engine::tensor::DType;
    use crate::engine::tensor::Tensor;
    use crate::serving::scheduler::JobResult;

    /// Requests arriving at scripted times, on a clock that moves only when a worker waits.
    struct Script {
        now: Instant,
        arrivals: VecDeque<(Instant, Job)>,
    }

    impl Source for Script {
        fn now(&self) -> Instant {
            self.now
        }

        fn take(&mut self, wait: Wait) -> Option<Job> {
            let due = match (wait, self.arrivals.front()) {
                (_, None) => false,
                (Wait::Forever, Some(_)) => true,
                (Wait::No, Some((at, _))) => *at <= self.now,
                (Wait::Until(until), Some((at, _))) => *at <= until,
            };
            if due {
                let (at, job) = self.arrivals.pop_front()?;
                self.now = self.now.max(at);
                return Some(job);
            }
            if let Wait::Until(until) = wait {
                self.now = self.now.max(until);
            }
            None
        }
    }

    fn signature() -> Signature {
        let spec = |name: &str| TensorSpec {
            name: name.to_string(),
            dtype: DType::F32,
            shape: vec![Dim::Symbol("N".to_string()), Dim::Fixed(2)],
        };
        Signature {
            inputs: vec![spec("x")],
            outputs: vec![spec("y")],
            batch_symbol: Some("N".to_string()),
            index_limits: vec![],
        }
    }

    /// A request of `rows` rows, and the receiver its caller would hold.
    fn job(
        rows: usize,
        deadline: Option<Instant>,
        queued: Instant,
    ) -> (Job, oneshot::Receiver<JobResult>) {
        let values = vec![0f32; rows * 2];
        let x = Tensor::from_values(vec![rows, 2], &values).expect("a [rows, 2] tensor");
        let inputs = signature()
            .validate([("x".to_string(), x)])
            .expect("fits the signature");
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            inputs,
            deadline,
            reply,
            span: tracing::Span::none(),
            queued,
            trace: None,
        };
        (job, receiver)
    }

    struct Setup {
        start: Instant,
        batcher: Batcher,
        script: Script,
        /// Kept so that the requests' callers are still there.
        receivers: Vec<oneshot::Receiver<JobResult>>,
    }

    impl Setup {
        fn new(max_rows: usize, delay: Duration) -> Setup {
            let start = Instant::now();
            Setup {
                start,
                batcher: Batcher {
                    idle: Arc::new(AtomicUsize::new(0)),
                    stats: Arc::new(ModelStats::default()),
                    max_rows,
                    delay,
                    carry: None,
                },
                script: Script {
                    now: start,
                    arrivals: VecDeque::new(),
                },
                receivers: Vec::new(),
            }
        }

        /// A request of `rows` rows arriving `after` the start.
        fn arrives(&mut self, after: Duration, rows: usize) {
            let at = self.start + after;
            let (job, receiver) = job(rows, None, at);
            self.script.arrivals.push_back((at, job));
            self.receivers.push(receiver);
        }

        /// The row counts of the next batch's requests.
        fn next(&mut self) -> Option<Vec<usize>> {
            let batch = self.batcher.next_batch(&mut self.script)?;
            Some(batch.iter().map(Job::rows).collect())
        }

        fn elapsed(&self) -> Duration {
            self.script.now - self.start
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lone_request_never_waits_for_company() {
        let mut s = Setup::new(64, Duration::ZERO);
        s.arrives(Duration::ZERO, 1);
        s.arrives(MS, 1);
        assert_eq!(s.next(), Some(vec![1]));
        assert_eq!(
            s.elapsed(),
            Duration::ZERO,
            "the first ran as soon as it came"
        );
        assert_eq!(s.next(), Some(vec![1]));
        assert_eq!(s.next(), None, "the queue is closed and drained");
    }

    #[test]
    fn batches_grow_only_while_no_worker_is_idle() {
        let mut s = Setup::new(64, Duration::ZERO);
        for _ in 0..3 {
            s.arrives(Duration::ZERO, 1);
        }
        s.batcher.idle.store(1, Ordering::Relaxed);
        assert_eq!(
            s.next(),
            Some(vec![1]),
            "an idle worker takes the next request"
        );
        s.batcher.idle.store(0, Ordering::Relaxed);
        assert_eq!(
            s.next(),
            Some(vec![1, 1]),
            "every worker busy: what waits is stacked"
        );
    }

    #[test]
    fn batches_stop_at_max_rows_and_the_next_request_leads_the_next_batch() {
        let mut s = Setup::new(8, Duration::ZERO);
        for rows in [3, 3, 3, 10] {
            s.arrives(Duration::ZERO, rows);
        }
        assert_eq!(s.next(), Some(vec![3, 3]));
        assert_eq!(s.next(), Some(vec![3]), "10 more rows would pass 8");
        assert_eq!(
            s.next(),
            Some(vec![10]),
            "a request over the limit runs alone, unsplit"
        );
    }

    #[test]
    fn a_queue_delay_waits_for_company_until_it_runs_out() {
        let mut s = Setup::new(64, 5 * MS);
        s.arrives(Duration::ZERO, 1);
        s.arrives(3 * MS, 1);
        s.arrives(7 * MS, 1);
        s.batcher.idle.store(1, Ordering::Relaxed);
        assert_eq!(
            s.next(),
            Some(vec![1, 1]),
            "with a delay, batches grow even while a worker is idle"
        );
        assert_eq!(s.elapsed(), 5 * MS, "the batch left when the delay ran out");
        assert_eq!(s.next(), Some(vec![1]));
    }

    #[test]
    fn a_full_batch_leaves_before_the_delay_runs_out() {
        let mut s = Setup::new(2, 5 * MS);
        s.arrives(Duration::ZERO, 1);
        s.arrives(MS, 1);
        assert_eq!(s.next(), Some(vec![1, 1]));
        assert_eq!(s.elapsed(), MS);
    }

    #[test]
    fn expired_and_abandoned_requests_are_dropped_unrun() {
        let mut s = Setup::new(64, Duration::ZERO);
        s.script.now = s.start + 10 * MS;
        let (expired, mut expired_reply) = job(1, Some(s.start + 5 * MS), s.start);
        let (abandoned, abandoned_reply) = job(1, None, s.start);
        drop(abandoned_reply);
        let (live, _live_reply) = job(2, Some(s.start + 20 * MS), s.start);
        for j in [expired, abandoned, live] {
            s.script.arrivals.push_back((s.start, j));
        }
        assert_eq!(
            s.next(),
            Some(vec![2]),
            "only the live request is left to run"
        );
        assert!(matches!(
            expired_reply.try_recv(),
            Ok(Err(JobError::Expired))
        ));
        let stats = s.batcher.stats.snapshot();
        assert_eq!((stats.expired, stats.cancelled), (1, 1), "{stats:?}");
    }
}
