//! ONNX-ML models against onnxruntime, single thread, in one run: rows/s of every corpus model
//! (`tests/corpus`) at batch 1, 32 and 1,024 in process, divided by onnxruntime's on the same
//! rows (`benches/scripts/ort_speed.py`, onnxruntime with one intra-op and one inter-op thread).
//! Then a 500-tree, depth-8 forest: load time, memory against its file size, and the same ratios.
//!
//! `cargo bench --bench onnx_ml [-- NAME_FILTER]`
//!
//! Python with onnxruntime comes from `$PREDICTD_INTEROP_VENV` (default `target/interop-venv`,
//! which `tests/interop/run.sh` creates); the big forest needs the corpus requirements
//! (`$PREDICTD_CORPUS_VENV`, default `target/corpus-venv`, made from
//! `tests/corpus/requirements.txt`) and is skipped, saying so, without them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use predictd::engine::model::Model;
use predictd::engine::tensor::Tensor;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

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

/// Median rows/s over a few windows of back-to-back runs, after a warm-up.
fn rows_per_second(model: &Model, model_dir: &Path, rows: usize) -> f64 {
    let valid = model.signature().validate(inputs(model_dir, rows)).unwrap();
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(100) {
        std::hint::black_box(model.run(valid.clone()).unwrap());
    }
    let mut rates: Vec<f64> = (0..WINDOWS)
        .map(|_| {
            let start = Instant::now();
            let mut runs = 0u64;
            while start.elapsed() < WINDOW {
                std::hint::black_box(model.run(valid.clone()).unwrap());
                runs += 1;
            }
            (runs as f64 * rows as f64) / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
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

/// Prints one table row per batch size; returns the ratios.
fn compare(
    name: &str,
    model: &Model,
    dir: &Path,
    ort: &BTreeMap<(String, usize), f64>,
) -> Vec<f64> {
    BATCHES
        .iter()
        .map(|&batch| {
            let ours = rows_per_second(model, dir, batch);
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
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("reference.json").is_file())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().contains(&filter))
        .collect();
    dirs.sort();
    let ort = onnxruntime(&dirs);
    println!("| model | batch | predictd rows/s | onnxruntime rows/s | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut by_batch: BTreeMap<usize, Vec<(String, f64)>> = BTreeMap::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let model = load(dir);
        for (batch, ratio) in BATCHES.iter().zip(compare(&name, &model, dir, &ort)) {
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
    big_forest();
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
    compare("big_forest", &model, &dir, &ort);
    let _ = std::fs::remove_dir_all(&out);
}
