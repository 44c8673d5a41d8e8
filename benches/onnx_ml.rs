//! ONNX-ML models against onnxruntime, single thread, in one run: rows/s of every corpus model
//! (`tests/corpus`) at batch 1, 32 and 1,024 in process, divided by onnxruntime's on the same
//! rows (`benches/scripts/ort_speed.py`, onnxruntime with one intra-op and one inter-op thread).
//! Then realistic tree ensembles (`tests/corpus/make_realistic.py`: forests, extra trees,
//! gradient boosting and XGBoost of 100-500 trees, depth 8-12, 30-100 features), each first
//! checked against onnxruntime's outputs on its 1,024 reference rows, with the same ratios, then
//! served by the release binary over KServe gRPC (one call at a time) against the same
//! onnxruntime figures, and a summary. Then a 500-tree, depth-8 forest: load time, memory
//! against its file size, and the same ratios.
//!
//! `cargo bench --bench onnx_ml [-- NAME_FILTER]` (the filter applies to every section; the big
//! forest is named `big_forest`)
//!
//! Python with onnxruntime comes from `$PREDICTD_INTEROP_VENV` (default `target/interop-venv`,
//! which `tests/interop/run.sh` creates); the realistic models and the big forest need the corpus
//! requirements (`$PREDICTD_CORPUS_VENV`, default `target/corpus-venv`, made from
//! `tests/corpus/requirements.txt`) and are skipped, saying so, without them. The realistic
//! models take a few minutes to train the first time; they are kept under
//! `target/onnx-ml-realistic/`, keyed by the scripts that make them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use predictd::engine::model::Model;
use predictd::engine::tensor::{DType, Tensor};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "support/served.rs"]
mod served;
use served::{Server, wire_request};

/// Counts heap bytes, so the bench can tell what a loaded model keeps from what loading it
/// allocated and freed again.
#[global_allocator]
static HEAP: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const BATCHES: [usize; 3] = [1, 32, 1024];
const WINDOW: Duration = Duration::from_millis(200);
const WINDOWS: usize = 5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn venv_python(var: &str, default: &str) -> PathBuf {
    let venv = std::env::var_os(var).map_or_else(|| root().join(default), PathBuf::from);
    venv.join("bin").join("python")
}

/// The reference rows of every input, cycled to `rows` rows.
fn inputs(model_dir: &Path, rows: usize) -> Vec<(String, Tensor)> {
    let text = std::fs::read_to_string(model_dir.join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    reference["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            let mut shape: Vec<usize> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let data = t["data"].as_array().unwrap();
            let width = data.len() / shape[0];
            shape[0] = rows;
            let cycled = data.iter().cycle().take(rows * width);
            let tensor = match t["dtype"].as_str().unwrap() {
                "FP32" => {
                    let v: Vec<f32> = cycled
                        .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
                        .collect();
                    Tensor::from_values(shape, &v)
                }
                "FP64" => {
                    let v: Vec<f64> = cycled.map(|v| v.as_f64().unwrap_or(f64::NAN)).collect();
                    Tensor::from_values(shape, &v)
                }
                "INT64" => {
                    let v: Vec<i64> = cycled.map(|v| v.as_i64().unwrap()).collect();
                    Tensor::from_values(shape, &v)
                }
                "INT32" => {
                    let v: Vec<i32> = cycled.map(|v| v.as_i64().unwrap() as i32).collect();
                    Tensor::from_values(shape, &v)
                }
                "STRING" => Tensor::from_strings(
                    shape,
                    cycled.map(|v| v.as_str().unwrap().to_string()).collect(),
                ),
                other => panic!("{name}: dtype {other} not handled by the bench"),
            };
            (name.clone(), tensor.unwrap())
        })
        .collect()
}

/// Median rows/s over a few windows of back-to-back calls of `run` (one call of `rows` rows),
/// after a warm-up.
fn rows_per_second(rows: usize, mut run: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(100) {
        run();
    }
    let mut rates: Vec<f64> = (0..WINDOWS)
        .map(|_| {
            let start = Instant::now();
            let mut runs = 0u64;
            while start.elapsed() < WINDOW {
                run();
                runs += 1;
            }
            (runs as f64 * rows as f64) / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// [`rows_per_second`] of `Model::run` in process.
fn in_process(model: &Model, model_dir: &Path, rows: usize) -> f64 {
    let valid = model.signature().validate(inputs(model_dir, rows)).unwrap();
    rows_per_second(rows, || {
        std::hint::black_box(model.run(valid.clone()).unwrap());
    })
}

/// onnxruntime's rows/s per (model, batch), from `benches/scripts/ort_speed.py`.
fn onnxruntime(dirs: &[PathBuf]) -> BTreeMap<(String, usize), f64> {
    let python = venv_python("PREDICTD_INTEROP_VENV", "target/interop-venv");
    let output = Command::new(&python)
        .arg(root().join("benches").join("scripts").join("ort_speed.py"))
        .args(dirs)
        .arg("--batches")
        .arg(BATCHES.map(|b| b.to_string()).join(","))
        .arg("--seconds")
        .arg((WINDOW * WINDOWS as u32).as_secs_f64().to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (run tests/interop/run.sh once to create it)",
                python.display()
            )
        });
    assert!(
        output.status.success(),
        "ort_speed.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = (
                v["model"].as_str().unwrap().to_string(),
                v["batch"].as_u64().unwrap() as usize,
            );
            (key, v["rows_per_s"].as_f64().unwrap())
        })
        .collect()
}

fn load(dir: &Path) -> Model {
    let name = dir.file_name().unwrap().to_str().unwrap();
    Model::load(name, 1, &dir.join("1").join("model.onnx"), &[]).unwrap()
}

/// Prints one table row per batch size, `rate(batch)` rows/s against onnxruntime's; returns
/// the ratios.
fn compare(
    name: &str,
    ort: &BTreeMap<(String, usize), f64>,
    mut rate: impl FnMut(usize) -> f64,
) -> Vec<f64> {
    BATCHES
        .iter()
        .map(|&batch| {
            let ours = rate(batch);
            let theirs = ort[&(name.to_string(), batch)];
            println!(
                "| {name} | {batch} | {ours:.0} | {theirs:.0} | {:.2} |",
                ours / theirs
            );
            ours / theirs
        })
        .collect()
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let corpus = root().join("tests").join("corpus");
    let dirs = model_dirs(&corpus, &filter);
    if !dirs.is_empty() {
        let ort = onnxruntime(&dirs);
        println!("| model | batch | predictd rows/s | onnxruntime rows/s | ratio |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        let mut by_batch: BTreeMap<usize, Vec<(String, f64)>> = BTreeMap::new();
        for dir in &dirs {
            let name = dir.file_name().unwrap().to_str().unwrap().to_string();
            let model = load(dir);
            for (batch, ratio) in BATCHES
                .iter()
                .zip(compare(&name, &ort, |batch| in_process(&model, dir, batch)))
            {
                by_batch
                    .entry(*batch)
                    .or_default()
                    .push((name.clone(), ratio));
            }
        }
        println!();
        println!("| batch | models | median ratio | lowest ratio (model) | models below 1.0 |");
        println!("| ---: | ---: | ---: | --- | ---: |");
        for (batch, ratios) in &by_batch {
            let lowest = ratios.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
            let below = ratios.iter().filter(|r| r.1 < 1.0).count();
            let median = median(ratios.iter().map(|r| r.1).collect());
            println!(
                "| {batch} | {} | {median:.2} | {:.2} ({}) | {below} |",
                ratios.len(),
                lowest.1,
                lowest.0
            );
        }
    }
    realistic(&filter);
    if "big_forest".contains(&filter) {
        big_forest();
    }
}

/// The model-repository entries (folders with a `reference.json`) under `repo` whose name
/// contains `filter`.
fn model_dirs(repo: &Path, filter: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("reference.json").is_file())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().contains(filter))
        .collect();
    dirs.sort();
    dirs
}

/// Why predictd's outputs on all of a model's reference rows differ from onnxruntime's, if they
/// do: integers exactly, floats within 1e-5 relative plus 1e-6, as `tests/onnx_ml.rs` checks.
fn differs(model: &Model, dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (_, first) = reference["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let rows = first["shape"][0].as_u64().unwrap() as usize;
    let valid = model.signature().validate(inputs(dir, rows)).unwrap();
    let outputs = model.run(valid).unwrap();
    for (spec, got) in model.signature().outputs.iter().zip(&outputs) {
        let want = &reference["outputs"][&spec.name];
        let got: Vec<f64> = match got.dtype() {
            DType::F32 => got
                .to_values::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect(),
            DType::F64 => got.to_values::<f64>().unwrap(),
            DType::I64 => got
                .to_values::<i64>()
                .unwrap()
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            other => return Some(format!("{}: {other:?} outputs are not checked", spec.name)),
        };
        let want: Vec<f64> = want["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        if got.len() != want.len() {
            return Some(format!(
                "{}: {} values, onnxruntime {}",
                spec.name,
                got.len(),
                want.len()
            ));
        }
        let exact = !reference["outputs"][&spec.name]["dtype"]
            .as_str()
            .unwrap()
            .starts_with("FP");
        let bad = |g: f64, w: f64| {
            if exact {
                g != w
            } else {
                (g - w).abs() > 1e-5 * w.abs() + 1e-6
            }
        };
        let wrong: Vec<usize> = (0..got.len()).filter(|&i| bad(got[i], want[i])).collect();
        if let Some(&i) = wrong.first() {
            return Some(format!(
                "{}: {} of {} values differ; value {i}: {}, onnxruntime {}",
                spec.name,
                wrong.len(),
                got.len(),
                got[i],
                want[i]
            ));
        }
    }
    None
}

/// A key that changes when any of `files` does (FNV-1a over their bytes).
fn content_key(files: &[PathBuf]) -> u64 {
    let mut key = 0xcbf2_9ce4_8422_2325u64;
    for file in files {
        for b in std::fs::read(file).unwrap() {
            key = (key ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    key
}

/// Forests, extra trees, gradient boosting and XGBoost of realistic sizes, made by
/// `tests/corpus/make_realistic.py` once and kept under the target folder: each is checked
/// against onnxruntime's outputs, then timed like the corpus.
fn realistic(filter: &str) {
    let python = venv_python("PREDICTD_CORPUS_VENV", "target/corpus-venv");
    let corpus = root().join("tests").join("corpus");
    let script = corpus.join("make_realistic.py");
    let key = content_key(&[
        script.clone(),
        corpus.join("make_corpus.py"),
        corpus.join("requirements.txt"),
    ]);
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let out = target.join("onnx-ml-realistic").join(format!("{key:016x}"));
    let done = out.join("complete");
    if !done.is_file() {
        println!(
            "\nmaking the realistic models in {} (a few minutes, once)",
            out.display()
        );
        match Command::new(&python).arg(&script).arg(&out).status() {
            Ok(status) if status.success() => std::fs::write(&done, b"").unwrap(),
            Ok(status) => {
                println!("realistic models skipped: make_realistic.py failed ({status})");
                return;
            }
            Err(e) => {
                println!(
                    "\nrealistic models skipped: no {} ({e}); create it from \
                     tests/corpus/requirements.txt",
                    python.display()
                );
                return;
            }
        }
    }
    let dirs = model_dirs(&out, filter);
    if dirs.is_empty() {
        return;
    }
    let ort = onnxruntime(&dirs);
    println!("\nrealistic tree ensembles ({}):", out.display());
    println!("| model | batch | predictd rows/s | onnxruntime rows/s | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut summary = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let model = load(dir);
        if let Some(problem) = differs(&model, dir) {
            panic!("{name} differs from onnxruntime: {problem}");
        }
        summary.push((
            name.clone(),
            compare(&name, &ort, |batch| in_process(&model, dir, batch)),
        ));
    }
    let served = time_served(&dirs, &ort);
    println!();
    println!(
        "| model | in process ÷ onnxruntime at 1 | at 32 | at 1,024 | served ÷ onnxruntime at 1 | at 32 | at 1,024 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((name, ratios), served) in summary.iter().zip(&served) {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ratios[0], ratios[1], ratios[2], served[0], served[1], served[2]
        );
    }
    for (how, at_1024) in [
        (
            "in process",
            summary.iter().map(|(_, r)| r[2]).collect::<Vec<_>>(),
        ),
        ("served", served.iter().map(|r| r[2]).collect()),
    ] {
        let (lowest, name) = at_1024
            .iter()
            .zip(&summary)
            .map(|(r, (name, _))| (*r, name))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap();
        println!(
            "{how} at 1,024 rows: median {:.2}, lowest {lowest:.2} ({name}), {} of {} below 0.9",
            median(at_1024.clone()),
            at_1024.iter().filter(|r| **r < 0.9).count(),
            at_1024.len()
        );
    }
}

/// The models in `dirs` served by the release binary (its defaults: every core), called over
/// KServe gRPC one call at a time: a table of rows/s against onnxruntime's single thread in
/// process; returns the ratios per model and batch.
fn time_served(dirs: &[PathBuf], ort: &BTreeMap<(String, usize), f64>) -> Vec<Vec<f64>> {
    let repository = tempfile::tempdir().unwrap();
    for dir in dirs {
        std::os::unix::fs::symlink(dir, repository.path().join(dir.file_name().unwrap())).unwrap();
    }
    let server = Server::start(repository.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(server.connect());
    println!("\nserved (KServe gRPC, one call at a time):");
    println!("| model | batch | served rows/s | onnxruntime rows/s | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    dirs.iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_str().unwrap();
            compare(name, ort, |batch| {
                let request = wire_request(name, &inputs(dir, batch));
                let mut client = client.clone();
                rows_per_second(batch, || {
                    let reply = runtime.block_on(client.model_infer(request.clone()));
                    assert!(reply.is_ok(), "{name}: {reply:?}");
                })
            })
        })
        .collect()
}

/// A 500-tree, depth-8 forest made on the spot: load time and memory, then speed.
fn big_forest() {
    let python = venv_python("PREDICTD_CORPUS_VENV", "target/corpus-venv");
    let out = std::env::temp_dir().join(format!("predictd-big-forest-{}", std::process::id()));
    let made = Command::new(&python)
        .arg(root().join("tests").join("corpus").join("make_corpus.py"))
        .arg("--big")
        .arg(&out)
        .output();
    let dir = out.join("big_forest");
    match made {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "\nbig forest skipped: make_corpus.py --big failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            println!(
                "\nbig forest skipped: no {} ({e}); create it from tests/corpus/requirements.txt",
                python.display()
            );
            return;
        }
    }
    let file = dir.join("1").join("model.onnx");
    let size = std::fs::metadata(&file).unwrap().len();
    let mb = |b: f64| b / 1e6;
    let before = resident_bytes() as f64;
    let start = Instant::now();
    let model = load(&dir);
    let took = start.elapsed();
    let first = resident_bytes() as f64 - before;
    // What the model itself holds is what dropping it gives back. (Heap counters taken around
    // the load instead overstate it: stats_alloc's realloc accounting does not balance here.)
    let heap = Region::new(HEAP);
    drop(model);
    let change = heap.change();
    let held = change.bytes_deallocated as f64
        - change.bytes_allocated as f64
        - change.bytes_reallocated as f64;
    let before = resident_bytes() as f64;
    let model = load(&dir);
    let again = resident_bytes() as f64 - before;
    println!(
        "\nbig forest (500 trees, depth 8): file {:.1} MB, load {:.0} ms; the loaded model holds \
         {:.1} MB of heap ({:.2}x the file); resident memory grew {:.1} MB at the first load \
         (parsing buffers the allocator keeps for reuse) and {:.1} MB at a second",
        mb(size as f64),
        took.as_secs_f64() * 1e3,
        mb(held),
        held / size as f64,
        mb(first),
        mb(again),
    );
    let ort = onnxruntime(std::slice::from_ref(&dir));
    println!("| model | batch | predictd rows/s | onnxruntime rows/s | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    compare("big_forest", &ort, |batch| in_process(&model, &dir, batch));
    let _ = std::fs::remove_dir_all(&out);
}
