//! How many cores one run of a model spreads over: its thread budget.
//!
//! tract splits a large matrix product (a convolution's, a dense layer's, attention's) into
//! tasks for the executor installed around a run, and runs small ones inline. A model given
//! `n > 1` threads runs inside a pool of `n` threads; every model given the same `n` shares
//! that one pool, so however many workers and models are busy at once, their matrix products
//! never run on more than `n` threads together. One lone request spreads over the whole pool;
//! under load, the runs of all workers queue for the same threads instead of each taking
//! `n` cores of its own (the oversubscription Triton's onnxruntime backend is known for,
//! onnxruntime_backend#245, where every instance owns `intra_op_thread_count` threads).
//!
//! The worker that runs a request waits while the pool works and does the graph's small
//! operators itself, so at most `workers` threads do that glue beside the pool's `n`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use tract_linalg::multithread::Executor;

/// Every core this process may use (cgroup quotas included).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
    fn models_given_the_same_threads_share_one_pool() {
        let (Executor::MultiThread(a), Executor::MultiThread(b)) = (pool(2).1, pool(2).1) else {
            panic!("no pool of two threads");
        };
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 2);
    }
}
