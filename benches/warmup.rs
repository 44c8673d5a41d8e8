//! What warm-up buys: the first request a freshly loaded model runs, against its steady state,
//! with and without the default `[warmup]` (one run at each fixed-plan batch size). Each
//! bundled model is opened afresh `WARMUP_OPENS` times (default 15) per mode; per open, the
//! first run of a one-row request is timed, then 50 more, whose median is the steady state.
//! Prints the median first ÷ steady for each model and mode.
//!
//! `cargo bench --bench warmup`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use predictd::engine::open::{OpenDefaults, open_file};
use predictd::engine::repository::{Warmup, WarmupData};
use predictd::engine::warmup::{inputs, warm};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let opens: usize = std::env::var("WARMUP_OPENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    println!("{opens} opens per model and mode; µs; ratio = first run ÷ median of the next 50");
    println!(
        "{:<16}{:>14}{:>14}{:>10}{:>14}{:>14}{:>10}",
        "model", "cold first", "cold steady", "ratio", "warm first", "warm steady", "ratio"
    );
    for name in [
        "digits_mlp",
        "digits_cnn",
        "wine_forest",
        "cancer_boosted",
        "diabetes_linear",
    ] {
        let path = models.join(name).join("1/model.onnx");
        let mut row = Vec::new();
        for warmed in [false, true] {
            let (mut firsts, mut steadies) = (Vec::new(), Vec::new());
            for open in 0..opens {
                let model = open_file(&path, &OpenDefaults::default()).unwrap().model;
                if warmed {
                    warm(&model, &Warmup::default()).unwrap();
                }
                // A request the warm-up has not seen: other values, same shape.
                let mut seed = 0x5eed_u64 + open as u64;
                let request = inputs(model.signature(), 1, WarmupData::Random, &mut seed).unwrap();
                let started = Instant::now();
                model.run(request.clone()).unwrap();
                firsts.push(started.elapsed());
                let runs = (0..50)
                    .map(|_| {
                        let started = Instant::now();
                        model.run(request.clone()).unwrap();
                        started.elapsed()
                    })
                    .collect();
                steadies.push(median(runs));
            }
            let (first, steady) = (median(firsts), median(steadies));
            row.push((first, steady, first.as_secs_f64() / steady.as_secs_f64()));
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{:<16}{:>14.1}{:>14.1}{:>10.2}{:>14.1}{:>14.1}{:>10.2}",
            name,
            us(row[0].0),
            us(row[0].1),
            row[0].2,
            us(row[1].0),
            us(row[1].1),
            row[1].2
        );
    }
}
