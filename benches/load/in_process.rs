//! In-process baseline: the engine alone, no RPC.

use std::hint::black_box;
use std::time::{Duration, Instant};

use predictd::engine::model::Model;

use crate::IN_PROCESS_SECONDS;
use crate::inputs::{Row, engine_inputs};
use crate::report::percentile;

pub(crate) struct InProcess {
    pub(crate) rows: usize,
    pub(crate) threads: usize,
    pub(crate) rows_per_s: f64,
    /// Median time of one call, µs.
    pub(crate) call_us: f64,
}

pub(crate) fn in_process(model: &Model, first: &[Row], rows: usize, threads: usize) -> InProcess {
    let valid = model
        .signature()
        .validate(engine_inputs(first, rows))
        .unwrap();
    let run_for = |secs: f64| {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let valid = valid.clone();
                    s.spawn(move || {
                        let mut times = Vec::new();
                        loop {
                            let start = Instant::now();
                            if start >= deadline {
                                break;
                            }
                            black_box(model.run(valid.clone()).unwrap());
                            times.push(start.elapsed().as_secs_f64() * 1e6);
                        }
                        times
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    run_for(0.1);
    let started = Instant::now();
    let per_thread = run_for(IN_PROCESS_SECONDS);
    let wall = started.elapsed().as_secs_f64();
    let calls: usize = per_thread.iter().map(Vec::len).sum();
    let mut first_thread = per_thread.into_iter().next().unwrap_or_default();
    first_thread.sort_by(f64::total_cmp);
    InProcess {
        rows,
        threads,
        rows_per_s: (calls * rows) as f64 / wall,
        call_us: percentile(&first_thread, 50.0),
    }
}
