//! Deep models against onnxruntime, in one run: PyTorch CNNs (torchvision's ResNet-18/50 and
//! MobileNet v2) and a BERT-class encoder (fp32 and dynamic int8), exported as users export
//! them, at batch 1 and 8 (the encoder at 128 and 512 tokens).
//!
//! `cargo bench --bench deep [-- NAME_FILTER]`
//!
//! For every case it prints the median milliseconds per call of:
//! - predictd in-process (`Model::run`), on 1 thread and on every core;
//! - predictd served: the release binary started on the model folder, called over KServe gRPC
//!   by the generated stubs with raw inputs, one call at a time;
//! - onnxruntime in-process (`benches/deep/ort_speed.py`), on 1 thread and on every core;
//!
//! and the ratios (onnxruntime's time ÷ ours: above 1 we are faster). Then, per model at
//! batch 1, throughput with 8 callers: served predictd against onnxruntime's best in-process
//! way on this machine (one session on every core called in turn, or one single-thread
//! session per core called at once). Last, the server's memory: RSS once loaded and its peak
//! after all the calls, against the model files' size.
//!
//! Before timing, each model's `reference.json` (onnxruntime's outputs, written when the
//! models were made) is checked against predictd's outputs.
//!
//! The models come from `$PREDICTD_DEEP_MODELS` (default `target/deep-models`), made by
//! `benches/deep/make_models.py` in the venv `target/deep-venv` (`tests/deep/README.md`);
//! without them the bench says how to make them and stops. onnxruntime runs from the same venv
//! (`$PREDICTD_DEEP_VENV`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use predictd::engine::model::Model;
use predictd::engine::open::{OpenDefaults, open_file};
use predictd::engine::tensor::Tensor;
use predictd::engine::threads::cores;

#[path = "support/served.rs"]
mod served;
use served::{Server, wire_request};

/// Timed calls per measurement: at least this many, and for at least [`MIN_TIME`].
const MIN_CALLS: usize = 5;
const MIN_TIME: Duration = Duration::from_secs(2);
/// Callers for the throughput measurement.
const CALLERS: usize = 8;
const THROUGHPUT_TIME: Duration = Duration::from_secs(6);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| root().join(default), PathBuf::from)
}

/// One benchmark case: a model, a batch and, for the encoders, a sequence length.
#[derive(Clone, Debug)]
struct Case {
    model: String,
    batch: usize,
    tokens: Option<usize>,
}

impl Case {
    fn label(&self) -> String {
        match self.tokens {
            Some(t) => format!("{} b{} s{}", self.model, self.batch, t),
            None => format!("{} b{}", self.model, self.batch),
        }
    }

    /// The inputs, made by the same formula as `ort_speed.py`'s, so both sides run the same
    /// numbers: images cycle through [-1, 1); token ids through the vocabulary's first 30,000
    /// (the encoders' is 30,522), with the mask all ones.
    fn inputs(&self, model: &Model) -> Vec<(String, Tensor)> {
        model
            .signature()
            .inputs
            .iter()
            .map(|spec| {
                let tensor = match self.tokens {
                    None => {
                        let shape = vec![self.batch, 3, 224, 224];
                        let n: usize = shape.iter().product();
                        let values: Vec<f32> = (0..n)
                            .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
                            .collect();
                        Tensor::from_values(shape, &values)
                    }
                    Some(tokens) => {
                        let shape = vec![self.batch, tokens];
                        let n = self.batch * tokens;
                        let values: Vec<i64> = if spec.name.contains("mask") {
                            vec![1; n]
                        } else {
                            (0..n).map(|i| ((i * 7919 + 101) % 30000) as i64).collect()
                        };
                        Tensor::from_values(shape, &values)
                    }
                };
                (spec.name.clone(), tensor.unwrap())
            })
            .collect()
    }
}

fn models_of(cases: &[Case]) -> std::collections::BTreeSet<String> {
    cases.iter().map(|c| c.model.clone()).collect()
}

fn cases(models: &Path, filter: Option<&str>) -> Vec<Case> {
    let mut names: Vec<String> = std::fs::read_dir(models)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| models.join(name).join("1/model.onnx").is_file())
        .filter(|name| filter.is_none_or(|f| name.contains(f)))
        .collect();
    names.sort();
    let mut cases = Vec::new();
    for name in names {
        let text = name.starts_with("bert");
        for batch in [1, 8] {
            let tokens: &[Option<usize>] = if text {
                &[Some(128), Some(512)]
            } else {
                &[None]
            };
            for &tokens in tokens {
                cases.push(Case {
                    model: name.clone(),
                    batch,
                    tokens,
                });
            }
        }
    }
    cases
}

/// Median of `run`'s durations over at least [`MIN_CALLS`] calls and [`MIN_TIME`], after one
/// call not counted.
fn median_ms(mut run: impl FnMut()) -> f64 {
    run();
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < MIN_CALLS || started.elapsed() < MIN_TIME {
        let t = Instant::now();
        run();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn open(models: &Path, name: &str, threads: usize) -> Model {
    let defaults = OpenDefaults {
        threads,
        ..OpenDefaults::default()
    };
    open_file(&models.join(name).join("1/model.onnx"), &defaults)
        .unwrap()
        .model
}

/// Checks predictd's outputs on the model's reference inputs against onnxruntime's; returns
/// the largest difference relative to max(1, |expected|).
fn check_reference(models: &Path, model: &Model) -> f64 {
    let text = std::fs::read_to_string(models.join(model.name()).join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tensor = |t: &serde_json::Value| -> Tensor {
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let data = t["data"].as_array().unwrap();
        match t["dtype"].as_str().unwrap() {
            "FP32" => {
                let v: Vec<f32> = data.iter().map(|v| v.as_f64().unwrap() as f32).collect();
                Tensor::from_values(shape, &v).unwrap()
            }
            "INT64" => {
                let v: Vec<i64> = data.iter().map(|v| v.as_i64().unwrap()).collect();
                Tensor::from_values(shape, &v).unwrap()
            }
            other => panic!("reference dtype {other}"),
        }
    };
    let inputs = reference["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| (name.clone(), tensor(t)));
    let outputs = model
        .run(model.signature().validate(inputs).unwrap())
        .unwrap();
    let mut worst = 0f64;
    for (spec, got) in model.signature().outputs.iter().zip(&outputs) {
        let Some(expected) = reference["outputs"].get(&spec.name) else {
            continue;
        };
        let expected = tensor(expected).to_values::<f32>().unwrap();
        let got = got.to_values::<f32>().unwrap();
        assert_eq!(
            expected.len(),
            got.len(),
            "{}: output {}",
            model.name(),
            spec.name
        );
        for (e, g) in expected.iter().zip(&got) {
            worst = worst.max(f64::from((e - g).abs()) / f64::from(e.abs()).max(1.0));
        }
    }
    worst
}

/// onnxruntime's figures for the cases, from `ort_speed.py`: (label, ort1 ms, ort-all ms)
/// and, per model, the best batch-1 throughput in calls/s.
struct Ort {
    times: Vec<(String, f64, f64)>,
    throughput: Vec<(String, f64)>,
}

fn run_ort(python: &Path, models: &Path, cases: &[Case]) -> Ort {
    let spec: Vec<String> = cases
        .iter()
        .map(|c| format!("{}:{}:{}", c.model, c.batch, c.tokens.unwrap_or(0)))
        .collect();
    let out = Command::new(python)
        .arg(root().join("benches/deep/ort_speed.py"))
        .arg(models)
        .args(&spec)
        .args(["--callers", &CALLERS.to_string()])
        .args(["--seconds", &MIN_TIME.as_secs_f64().to_string()])
        .args([
            "--throughput-seconds",
            &THROUGHPUT_TIME.as_secs_f64().to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "ort_speed.py failed");
    let mut ort = Ort {
        times: Vec::new(),
        throughput: Vec::new(),
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let model = v["model"].as_str().unwrap().to_string();
        if let Some(rate) = v["calls_per_s"].as_f64() {
            ort.throughput.push((model, rate));
            continue;
        }
        let case = Case {
            model,
            batch: v["batch"].as_u64().unwrap() as usize,
            tokens: v["tokens"].as_u64().filter(|&t| t > 0).map(|t| t as usize),
        };
        ort.times.push((
            case.label(),
            v["ms_1_thread"].as_f64().unwrap(),
            v["ms_all_threads"].as_f64().unwrap(),
        ));
    }
    ort
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let models = env_path("PREDICTD_DEEP_MODELS", "target/deep-models");
    let venv = env_path("PREDICTD_DEEP_VENV", "target/deep-venv");
    let python = venv.join("bin/python");
    if !models.is_dir() || !python.exists() {
        println!(
            "deep bench: no models at {} or no venv at {}; make them as tests/deep/README.md says (Regenerating)",
            models.display(),
            venv.display()
        );
        return;
    }
    let cases = cases(&models, filter.as_deref());
    let all = cores();
    println!(
        "deep models, {} cases, {all} cores, {}",
        cases.len(),
        models.display()
    );

    // Same inputs, same run: onnxruntime first, so its figures sit beside ours.
    let ort = run_ort(&python, &models, &cases);

    // predictd in process.
    let mut rows = Vec::new();
    let mut current: Option<(String, Model, Model)> = None;
    for case in &cases {
        if current
            .as_ref()
            .is_none_or(|(name, _, _)| *name != case.model)
        {
            // The last model's two copies go before the next one's load.
            drop(current.take());
            let one = open(&models, &case.model, 1);
            let worst = check_reference(&models, &one);
            println!(
                "{}: outputs within {worst:.1e} of onnxruntime's reference",
                case.model
            );
            current = Some((case.model.clone(), one, open(&models, &case.model, all)));
        }
        let (_, one, every) = current.as_ref().unwrap();
        let inputs = case.inputs(one);
        let valid = one.signature().validate(inputs.clone()).unwrap();
        let ms1 = median_ms(|| {
            one.run(valid.clone()).unwrap();
        });
        let ms_all = median_ms(|| {
            every.run(valid.clone()).unwrap();
        });
        // Printed as measured too, so that a later failure does not lose them.
        println!(
            "{}: {ms1:.1} ms on one thread, {ms_all:.1} on every core",
            case.label()
        );
        rows.push((case.clone(), inputs, ms1, ms_all));
    }
    drop(current);

    // predictd served, with only the models benched, so that its memory is theirs.
    let served_models = tempfile::tempdir().unwrap();
    for name in models_of(&cases) {
        std::os::unix::fs::symlink(models.join(&name), served_models.path().join(&name)).unwrap();
    }
    let server = Server::start(served_models.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(server.connect());
    let (loaded_kb, _) = server.rss_kb();
    let mut served = Vec::new();
    for (case, inputs, _, _) in &rows {
        let request = wire_request(&case.model, inputs);
        let mut client = client.clone();
        served.push(median_ms(|| {
            runtime
                .block_on(client.model_infer(request.clone()))
                .unwrap();
        }));
    }
    let mut throughput = Vec::new();
    for (case, inputs, _, _) in rows.iter().filter(|(c, ..)| c.batch == 1) {
        if case.tokens.is_some_and(|t| t != 128) {
            continue;
        }
        let request = Arc::new(wire_request(&case.model, inputs));
        let rate = runtime.block_on(async {
            let started = Instant::now();
            let callers: Vec<_> = (0..CALLERS)
                .map(|_| {
                    let (mut client, request) = (client.clone(), request.clone());
                    tokio::spawn(async move {
                        let mut calls = 0u64;
                        while started.elapsed() < THROUGHPUT_TIME {
                            client.model_infer((*request).clone()).await.unwrap();
                            calls += 1;
                        }
                        calls
                    })
                })
                .collect();
            let mut calls = 0;
            for caller in callers {
                calls += caller.await.unwrap();
            }
            calls as f64 / started.elapsed().as_secs_f64()
        });
        throughput.push((case.clone(), rate));
    }
    let (_, peak_kb) = server.rss_kb();
    drop(server);

    println!();
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "case (ms per call)",
        "ours 1t",
        "ours all",
        "served",
        "ort 1t",
        "ort all",
        "1t ratio",
        "all ratio"
    );
    for ((case, _, ms1, ms_all), served) in rows.iter().zip(&served) {
        let label = case.label();
        let (o1, oall) = ort
            .times
            .iter()
            .find(|(l, ..)| *l == label)
            .map(|(_, a, b)| (*a, *b))
            .unwrap_or((f64::NAN, f64::NAN));
        println!(
            "{label:<22} {ms1:>9.2} {ms_all:>9.2} {served:>9.2} {o1:>9.2} {oall:>9.2} {:>9.2} {:>9.2}",
            o1 / served,
            oall / served
        );
    }
    println!(
        "(ratios: onnxruntime's ms ÷ served predictd's; ≥ 0.9 at 1 thread and ≥ 0.8 at all cores are the targets)"
    );
    println!();
    println!(
        "{:<22} {:>12} {:>12} {:>9}",
        "8 callers, batch 1", "served /s", "ort best /s", "ratio"
    );
    for (case, rate) in &throughput {
        let best = ort
            .throughput
            .iter()
            .find(|(m, _)| *m == case.model)
            .map_or(f64::NAN, |(_, r)| *r);
        println!(
            "{:<22} {rate:>12.1} {best:>12.1} {:>9.2}",
            case.label(),
            rate / best
        );
    }
    let files: u64 = models_of(&cases)
        .iter()
        .filter_map(|m| std::fs::metadata(models.join(m).join("1/model.onnx")).ok())
        .map(|m| m.len())
        .sum();
    println!();
    println!(
        "server RSS: {:.0} MB loaded, {:.0} MB at peak; model files {:.0} MB (loaded ÷ files {:.2}, target ≤ 1.5)",
        loaded_kb as f64 / 1024.0,
        peak_kb as f64 / 1024.0,
        files as f64 / 1048576.0,
        loaded_kb as f64 * 1024.0 / files as f64
    );
}
