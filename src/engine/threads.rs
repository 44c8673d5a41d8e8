//! How many cores one run of a model spreads over: its thread budget.
//!
//! tract splits a large matrix product (a convolution's, a dense layer's, attention's) into
//! tasks for the executor installed around a run, and runs small ones inline. A model given
//! `n > 1` threads runs inside a pool of `n` threads; every model given the same `n` shares
//! that one pool, so however many workers and models are busy at once, their matrix products
//! never run on more than `n` threads together, instead of each taking `n` cores of its own
//! (the oversubscription Triton's onnxruntime backend is known for, onnxruntime_backend#245,
//! where every instance owns `intra_op_thread_count` threads).
//!
//! Only a run that starts while no other run is in flight, in any model, spreads over its
//! pool ([`Running`]): a lone request uses every core, and under load each run stays on the
//! worker that took it, one core each, with no tasks to split and hand over. Under load every
//! core is busy either way, and splitting each product over cores that other runs also want
//! only adds the handovers: with 8 callers on 2 cores, ResNet-18 answered 25.6 calls/s with
//! every run on the pool, BERT 21.6.
//!
//! The worker that runs a request waits while the pool works and does the graph's small
//! operators itself, so at most `workers` threads do that glue beside the pool's `n`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tract_linalg::multithread::Executor;

/// Every core this process may use (cgroup quotas included).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A model run in flight, counted while it lives.
pub(crate) struct Running<'a> {
    in_flight: &'a AtomicUsize,
    alone: bool,
}

/// The runs in flight, over every model.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

impl Running<'static> {
    /// Counts a run starting now.
    pub(crate) fn start() -> Running<'static> {
        Running::start_in(&IN_FLIGHT)
    }
}

impl<'a> Running<'a> {
    fn start_in(in_flight: &'a AtomicUsize) -> Running<'a> {
        let before = in_flight.fetch_add(1, Ordering::SeqCst);
        Running {
            in_flight,
            alone: before == 0,
        }
    }

    /// Whether no other run was in flight when this one started: then it may spread over its
    /// pool, else it runs on its own thread.
    pub(crate) fn alone(&self) -> bool {
        self.alone
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The executor for runs given `threads` threads, at most [`cores`]: inline for one, else the
/// shared pool of that size, made on first use. If the pool cannot be made (no threads to be
/// had), runs go inline, and the log says so.
pub(crate) fn executor(threads: usize) -> (usize, Executor) {
    match threads.clamp(1, cores()) {
        1 => (1, Executor::SingleThread),
        threads => pool(threads),
    }
}

/// The shared pool of `threads` threads.
fn pool(threads: usize) -> (usize, Executor) {
    static POOLS: OnceLock<Mutex<HashMap<usize, Executor>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(executor) = pools.get(&threads) {
        return (threads, executor.clone());
    }
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("predictd-run{threads}-{i}"))
        .build()
    {
        Ok(pool) => {
            let executor = Executor::MultiThread(std::sync::Arc::new(pool));
            pools.insert(threads, executor.clone());
            (threads, executor)
        }
        Err(error) => {
            tracing::warn!(threads, %error, "cannot start the run threads; models run on their workers alone");
            (1, Executor::SingleThread)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_runs_inline_and_more_are_capped_at_the_cores() {
        assert!(matches!(executor(1), (1, Executor::SingleThread)));
        assert!(matches!(executor(0), (1, Executor::SingleThread)));
        let (granted, _) = executor(cores() + 5);
        assert_eq!(granted, cores());
    }

    #[test]
    fn only_a_run_alone_spreads() {
        let in_flight = AtomicUsize::new(0);
        let first = Running::start_in(&in_flight);
        assert!(first.alone());
        let second = Running::start_in(&in_flight);
        assert!(!second.alone(), "another run is in flight");
        drop(first);
        let third = Running::start_in(&in_flight);
        assert!(!third.alone(), "the second is still in flight");
        drop((second, third));
        assert!(Running::start_in(&in_flight).alone());
        assert_eq!(in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn models_given_the_same_threads_share_one_pool() {
        let (Executor::MultiThread(a), Executor::MultiThread(b)) = (pool(2).1, pool(2).1) else {
            panic!("no pool of two threads");
        };
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 2);
    }
}
