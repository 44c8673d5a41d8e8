//! In-process costs, no RPC: each bundled model run by the engine at batch 1, 8 and 32, and the
//! wire conversions of a request's tensor. These are the baselines the load benchmarks divide by.
//!
//! `model/<name>/<rows>` runs the model as the server does: on plans fixed to each batch size
//! (built on first use for small models), and row by row where batching does not pay.
//! `symbolic_plan/<name>/<rows>` runs every size on the one plan with a symbolic batch
//! dimension, which is what every batch size other than the preferred ones ran before.
//!
//! `cargo bench --bench engine`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use predictd::engine::model::Model;
use predictd::engine::repository::{self, Slot};
use predictd::engine::tensor::Tensor;
use predictd::serving::scheduler::{Scheduler, SchedulerConfig};
use predictd::v1::convert::{tensor_from_wire, tensor_to_wire};
use std::time::Duration;

/// The first reference row of every input, repeated `rows` times.
fn inputs(models: &Path, name: &str, rows: usize) -> Vec<(String, Tensor)> {
    let text = std::fs::read_to_string(models.join(name).join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let inputs = reference["inputs"].as_object().unwrap();
    inputs
        .iter()
        .map(|(input, t)| {
            assert_eq!(t["dtype"], "FP32", "bench handles FP32 inputs");
            let mut shape: Vec<usize> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let data: Vec<f32> = t["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let width = data.len() / shape[0];
            shape[0] = rows;
            let values: Vec<f32> = data[..width]
                .iter()
                .copied()
                .cycle()
                .take(width * rows)
                .collect();
            (input.clone(), Tensor::from_values(shape, &values).unwrap())
        })
        .collect()
}

/// Batch sizes: one row, small batches, and a big one that runs as a 1,024-row slice plus 8.
const ROWS: [usize; 6] = [1, 5, 8, 32, 1000, 1032];

fn models(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let catalog = predictd::engine::open::open_repository(&dir).unwrap();
    for symbolic in [false, true] {
        let mut group = c.benchmark_group(if symbolic { "symbolic_plan" } else { "model" });
        for (name, entry) in &catalog.models {
            let (&version, _) = entry.versions.last_key_value().unwrap();
            let path = dir
                .join(name)
                .join(version.to_string())
                .join(repository::MODEL_FILE);
            let model = Model::load(name, version, &path, &[1]).unwrap();
            let model = if symbolic {
                model.with_symbolic_plan_only()
            } else {
                model
            };
            for rows in ROWS {
                let valid = model
                    .signature()
                    .validate(inputs(&dir, name, rows))
                    .unwrap();
                group.throughput(Throughput::Elements(rows as u64));
                group.bench_with_input(
                    BenchmarkId::new(name.as_str(), rows),
                    &valid,
                    |b, valid| b.iter(|| black_box(model.run(valid.clone()).unwrap())),
                );
            }
        }
        group.finish();
    }
}

/// The cost of going through a model's queue and worker thread instead of calling it directly:
/// submit, wake a worker, run, reply. Compare with `model/diabetes_linear/1`.
fn scheduler(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let catalog = predictd::engine::open::open_repository(&dir).unwrap();
    let Some(Slot::Ready(model)) = catalog.models["diabetes_linear"]
        .versions
        .values()
        .next_back()
    else {
        panic!("diabetes_linear did not load");
    };
    let valid = model
        .signature()
        .validate(inputs(&dir, "diabetes_linear", 1))
        .unwrap();
    let scheduler = Scheduler::start(
        model.clone(),
        SchedulerConfig {
            workers: 1,
            queue_capacity: 16,
            max_batch_size: 64,
            max_queue_delay: Duration::ZERO,
        },
    )
    .unwrap();
    c.bench_function("scheduler/diabetes_linear/1", |b| {
        b.iter(|| {
            let reply = scheduler.submit(valid.clone(), None, None).unwrap();
            black_box(reply.blocking_recv().unwrap().unwrap())
        })
    });
}

fn wire(c: &mut Criterion) {
    let values: Vec<f32> = (0..32 * 64).map(|i| i as f32 / 7.0).collect();
    let tensor = Tensor::from_values(vec![32, 64], &values).unwrap();
    let typed = tensor_to_wire(&tensor, false);
    let raw = tensor_to_wire(&tensor, true);
    let mut group = c.benchmark_group("wire_32x64_fp32");
    group.bench_function("decode_typed", |b| {
        b.iter(|| black_box(tensor_from_wire(typed.clone()).unwrap()))
    });
    group.bench_function("decode_raw", |b| {
        b.iter(|| black_box(tensor_from_wire(raw.clone()).unwrap()))
    });
    group.bench_function("encode_typed", |b| {
        b.iter(|| black_box(tensor_to_wire(&tensor, false)))
    });
    group.bench_function("encode_raw", |b| {
        b.iter(|| black_box(tensor_to_wire(&tensor, true)))
    });
    group.finish();
}

criterion_group!(benches, models, scheduler, wire);
criterion_main!(benches);
