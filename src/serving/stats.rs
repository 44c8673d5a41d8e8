//! Per-model counters and durations, recorded by the scheduler as requests pass through it, so
//! that statistics and metrics endpoints only read them.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use crate::serving::histogram::{Durations, Rows};

/// Live counters for one model version. All updates are relaxed atomics: readers get a
/// consistent-enough view for monitoring, never a lock on the request path.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Woken when requests are queued and runs begin, for whoever waits on the counters (tests, a drain) rather than
    /// polling them.
    progress: tokio::sync::Notify,
    /// Callers in [`ModelStats::wait_for`]: with none, progress is not signalled, so that the
    /// request path pays one atomic load for it, not a lock.
    watchers: AtomicUsize,
    received: AtomicU64,
    invalid: AtomicU64,
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    rows: AtomicU64,
    batches: AtomicU64,
    batched_requests: AtomicU64,
    queue_ns: AtomicU64,
    compute_ns: AtomicU64,
    total_ns: AtomicU64,
    last_answer_ms: AtomicU64,
    expired: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    last_batch_rows: AtomicU64,
    input_ns: AtomicU64,
    output_ns: AtomicU64,
    /// Queueing to answer, per request.
    pub request_seconds: Durations,
    /// Queueing to the start of its batch, per request.
    pub queue_seconds: Durations,
    /// Its batch's model run, per request.
    pub compute_seconds: Durations,
    /// Rows per model run.
    pub batch_rows: Rows,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Requests taken into the queue.
    pub received: u64,
    /// Requests refused before queueing: their tensors did not fit the model.
    pub invalid: u64,
    /// Requests whose run has begun.
    pub started: u64,
    /// Requests that ran and were answered.
    pub succeeded: u64,
    /// Requests that ran and failed.
    pub failed: u64,
    /// Rows run, over all requests.
    pub rows: u64,
    /// Model runs (one per batch).
    pub batches: u64,
    /// Requests run as part of those batches (equals succeeded + failed).
    pub batched_requests: u64,
    /// Total time requests waited in the queue, until their batch began.
    pub queue_ns: u64,
    /// Total model time, attributed to every request of a batch.
    pub compute_ns: u64,
    /// Total time from queueing to answer, over every answered request.
    pub total_ns: u64,
    /// When the last request was answered, in milliseconds since the Unix epoch (0: never).
    pub last_answer_ms: u64,
    /// Requests dropped before running because their deadline had passed.
    pub expired: u64,
    /// Requests dropped before running because their caller had gone away.
    pub cancelled: u64,
    /// Requests refused because the queue was full.
    pub rejected: u64,
    /// Rows in the most recent batch.
    pub last_batch_rows: u64,
    /// Total time spent stacking requests' inputs into batches.
    pub input_ns: u64,
    /// Total time spent splitting batches' outputs into replies.
    pub output_ns: u64,
}

impl StatsSnapshot {
    /// Requests queued and not yet answered or dropped.
    pub fn pending(&self) -> u64 {
        self.received
            .saturating_sub(self.succeeded + self.failed + self.expired + self.cancelled)
    }
}

struct Watching<'a>(&'a AtomicUsize);

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ModelStats {
    /// A request was taken into the queue.
    pub fn received(&self) {
        self.received.fetch_add(1, Relaxed);
        self.signal_progress();
    }

    /// A run of `requests` requests begins.
    pub fn starting(&self, requests: usize) {
        self.started.fetch_add(requests as u64, Relaxed);
        self.signal_progress();
    }

    fn signal_progress(&self) {
        // Orders the counter just written before the look at `watchers`: a waiter that
        // registers after this look reads the counter after it, so it never misses it.
        std::sync::atomic::fence(SeqCst);
        if self.watchers.load(SeqCst) > 0 {
            self.progress.notify_waiters();
        }
    }

    /// Completes once `condition` holds of the counters, re-read each time a request is queued
    /// or a run begins.
    pub async fn wait_for(&self, condition: impl Fn(&StatsSnapshot) -> bool) {
        self.watchers.fetch_add(1, SeqCst);
        // Counted out again however the wait ends, dropped futures included.
        let _watching = Watching(&self.watchers);
        loop {
            let next = self.progress.notified();
            tokio::pin!(next);
            // Registered before the counters are read, so that a run beginning in between
            // still wakes us.
            next.as_mut().enable();
            if condition(&self.snapshot()) {
                return;
            }
            next.await;
        }
    }

    /// A request's tensors did not fit the model: refused before it was queued.
    pub fn invalid(&self) {
        self.invalid.fetch_add(1, Relaxed);
    }

    /// A batch's inputs took `input` to stack and its outputs `output` to split.
    pub fn copies(&self, input: Duration, output: Duration) {
        self.input_ns.fetch_add(nanos(input), Relaxed);
        self.output_ns.fetch_add(nanos(output), Relaxed);
    }

    /// One batch of `requests` requests and `rows` rows ran in `compute`.
    pub fn batch(&self, requests: usize, rows: usize, compute: Duration) {
        self.batch_rows.0.observe(rows as f64);
        self.compute_seconds
            .0
            .observe_n(compute.as_secs_f64(), requests as u64);
        self.batches.fetch_add(1, Relaxed);
        self.batched_requests.fetch_add(requests as u64, Relaxed);
        self.rows.fetch_add(rows as u64, Relaxed);
        self.last_batch_rows.store(rows as u64, Relaxed);
        self.compute_ns
            .fetch_add(nanos(compute).saturating_mul(requests as u64), Relaxed);
    }

    /// One request ran with `ok` as its outcome, after waiting `queued` for its batch to begin
    /// and `total` from queueing to answer.
    pub fn answered(&self, queued: Duration, total: Duration, ok: bool) {
        self.queue_seconds.record(queued);
        self.request_seconds.record(total);
        self.queue_ns.fetch_add(nanos(queued), Relaxed);
        self.total_ns.fetch_add(nanos(total), Relaxed);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_answer_ms.store(now_ms, Relaxed);
        if ok {
            self.succeeded.fetch_add(1, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    /// One request was dropped unrun: its deadline had passed.
    pub fn expired(&self) {
        self.expired.fetch_add(1, Relaxed);
    }

    /// One request was dropped unrun: its caller had gone away.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Relaxed);
    }

    /// One request was refused at the door: the queue was full.
    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.load(Relaxed),
            invalid: self.invalid.load(Relaxed),
            started: self.started.load(Relaxed),
            succeeded: self.succeeded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            rows: self.rows.load(Relaxed),
            batches: self.batches.load(Relaxed),
            batched_requests: self.batched_requests.load(Relaxed),
            queue_ns: self.queue_ns.load(Relaxed),
            compute_ns: self.compute_ns.load(Relaxed),
            total_ns: self.total_ns.load(Relaxed),
            last_answer_ms: self.last_answer_ms.load(Relaxed),
            expired: self.expired.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            last_batch_rows: self.last_batch_rows.load(Relaxed),
            input_ns: self.input_ns.load(Relaxed),
            output_ns: self.output_ns.load(Relaxed),
        }
    }
}
