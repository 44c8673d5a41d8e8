//! What each fuzz target does with arbitrary bytes: decode them the way the server or `predictd
//! batch` would, validate them against a bundled model, run it on whatever passes, and encode
//! the reply. Shared by the `cargo fuzz` targets (`fuzz/fuzz_targets/`, nightly) and by
//! `tests/fuzz_corpus.rs`, which replays the seed corpus and every crash found on stable
//! `cargo test`. A panic anywhere below is a bug; a refusal is the expected answer to most
//! inputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message;

use predictd::batch::{Job, Options};
use predictd::columns::Mapping;
use predictd::engine::model::Model;
use predictd::engine::open::open_repository;
use predictd::engine::repository::{Catalog, ModelConfig};
use predictd::engine::tensor::Tensor;
use predictd::kserve::convert::tensor_to_raw;
use predictd::kserve::grpc::decode_inputs;
use predictd::kserve::json::{decode_request, encode_response};
use predictd::proto::{inference, predictd::v1};
use predictd::v1::convert::{is_raw, tensor_from_wire, tensor_to_wire};

/// The targets, by the name of their corpus folder.
pub(crate) const TARGETS: &[(&str, Target)] = &[
    ("v1_request", v1_request),
    ("kserve_grpc_request", kserve_grpc_request),
    ("kserve_json_request", kserve_json_request),
    ("onnx_model", onnx_model),
    ("batch_input", batch_input),
];

/// A target: arbitrary bytes in, what became of them out.
pub(crate) type Target = fn(&[u8]) -> Outcome;

/// What became of one input: `Ok` with a size of what it made (output tensors or bytes,
/// rows) when it ran, or the refusal's message.
pub(crate) type Outcome = Result<usize, String>;

/// Rows above this are refused before running, so one input cannot stall a fuzzing run.
const MAX_ROWS: usize = 256;

/// The repository's `models/` folder, wherever the including crate sits.
fn models_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    [here.join("models"), here.join("../models")]
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap_or_else(|| here.join("models"))
}

/// The bundled models, opened once per process.
fn bundled() -> &'static Catalog<Arc<Model>> {
    static MODELS: OnceLock<Catalog<Arc<Model>>> = OnceLock::new();
    MODELS.get_or_init(|| {
        open_repository(&models_dir()).unwrap_or_else(|e| panic!("the bundled models: {e}"))
    })
}

/// The bundled model a request names; an unknown one picks a model by the name's length, so
/// mutated names still reach validation.
fn model_for(name: &str, version: &str) -> &'static Arc<Model> {
    let catalog = bundled();
    if let Ok((_, model)) = catalog.resolve(name, version) {
        return model;
    }
    let names: Vec<&String> = catalog.models.keys().collect();
    let pick = names[name.len() % names.len()];
    catalog
        .resolve(pick, "")
        .map(|(_, model)| model)
        .unwrap_or_else(|e| panic!("bundled model {pick}: {e}"))
}

/// Validates `inputs` against `model`, runs it, and returns the outputs wanted.
fn run(
    model: &Model,
    inputs: Vec<(String, Tensor)>,
    wanted: &[String],
) -> Result<Vec<(String, Tensor)>, String> {
    let signature = model.signature();
    let selected = signature
        .select_outputs(wanted)
        .map_err(|e| e.to_string())?;
    let valid = signature.validate(inputs).map_err(|e| e.to_string())?;
    if valid.rows().is_some_and(|rows| rows > MAX_ROWS) {
        return Err(format!("more than {MAX_ROWS} rows"));
    }
    let outputs = model.run(valid).map_err(|e| e.to_string())?;
    Ok(selected
        .into_iter()
        .map(|i| (signature.outputs[i].name.clone(), outputs[i].clone()))
        .collect())
}

/// A `predictd.v1.PredictRequest` message, as the Predict rpc receives it.
pub(crate) fn v1_request(data: &[u8]) -> Outcome {
    let request = v1::PredictRequest::decode(data).map_err(|e| e.to_string())?;
    let model = model_for(&request.model, &request.version);
    let raw = request.inputs.values().any(is_raw);
    let inputs = request
        .inputs
        .into_iter()
        .map(|(name, wire)| tensor_from_wire(wire).map(|t| (name, t)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let outputs = run(model, inputs, &request.outputs)?;
    let reply = v1::PredictResponse {
        model: request.model,
        version: model.version().to_string(),
        id: request.id,
        outputs: outputs
            .iter()
            .map(|(name, t)| (name.clone(), tensor_to_wire(t, raw)))
            .collect(),
    };
    Ok(
        v1::PredictResponse::decode(reply.encode_to_vec().as_slice())
            .map_err(|e| format!("our own reply does not decode: {e}"))?
            .outputs
            .len(),
    )
}

/// An `inference.ModelInferRequest` message, as KServe's ModelInfer rpc receives it.
pub(crate) fn kserve_grpc_request(data: &[u8]) -> Outcome {
    let mut request = inference::ModelInferRequest::decode(data).map_err(|e| e.to_string())?;
    let model = model_for(&request.model_name, &request.model_version);
    let inputs =
        decode_inputs(&mut request, model.version()).map_err(|s| s.message().to_string())?;
    let wanted: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
    let outputs = run(model, inputs, &wanted)?;
    Ok(outputs.iter().map(|(_, t)| tensor_to_raw(t).len()).sum())
}

/// A KServe REST inference body. The first byte picks the model (by its index among the
/// bundled ones) and whether the binary extension is used; when it is, the next two bytes are
/// `Inference-Header-Content-Length` (little-endian) and the rest is the body.
pub(crate) fn kserve_json_request(data: &[u8]) -> Outcome {
    let (&first, rest) = data.split_first().ok_or("empty")?;
    let (header_length, body) = if first & 0x80 != 0 {
        let (length, body) = rest.split_first_chunk::<2>().ok_or("no header length")?;
        (Some(usize::from(u16::from_le_bytes(*length))), body)
    } else {
        (None, rest)
    };
    let catalog = bundled();
    let name = catalog
        .models
        .keys()
        .nth(usize::from(first & 0x7f) % catalog.models.len())
        .ok_or("no models")?;
    let model = model_for(name, "");
    let mut request =
        decode_request(Bytes::copy_from_slice(body), header_length).map_err(|e| e.to_string())?;
    let inputs = std::mem::take(&mut request.inputs);
    let outputs = run(model, inputs, &request.wanted)?;
    let (reply, json_length) = encode_response(name, model.version(), &request, &outputs);
    let json = &reply[..json_length.unwrap_or(reply.len())];
    serde_json::from_slice::<serde_json::Value>(json)
        .map_err(|e| format!("our own reply is not JSON: {e}"))?;
    Ok(outputs.len())
}

/// A folder of its own for this process's files: fuzzers run one process per job.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("predictd-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    })
}

/// A scratch file of its own, removed when dropped: the replay test runs targets on several
/// threads at once.
struct ScratchFile(PathBuf);

impl ScratchFile {
    fn new(name: &str) -> ScratchFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        ScratchFile(scratch().join(format!("{n}-{name}")))
    }

    fn with(name: &str, data: &[u8]) -> ScratchFile {
        let file = ScratchFile::new(name);
        let written = std::fs::File::create(&file.0).and_then(|mut f| f.write_all(data));
        written.unwrap_or_else(|e| panic!("{}: {e}", file.0.display()));
        file
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An ONNX file, as `predictd serve` loads a model dropped into (or uploaded to) the
/// repository.
pub(crate) fn onnx_model(data: &[u8]) -> Outcome {
    let file = ScratchFile::with("model.onnx", data);
    let model = Model::load("fuzzed", 1, &file.0, &[1]).map_err(|e| e.to_string())?;
    Ok(model.signature().outputs.len())
}

/// A CSV file (first byte even) or a Parquet file (odd) for `predictd batch` with the bundled
/// wine_forest, keeping `id` as the README's example does.
pub(crate) fn batch_input(data: &[u8]) -> Outcome {
    let (&first, file) = data.split_first().ok_or("empty")?;
    let name = if first % 2 == 0 {
        "input.csv"
    } else {
        "input.parquet"
    };
    let (input, output) = (
        ScratchFile::with(name, file),
        ScratchFile::new("scores.csv"),
    );
    let options = Options {
        models: models_dir(),
        model: "wine_forest".to_string(),
        version: String::new(),
        inputs: vec![input.0.display().to_string()],
        output: output.0.clone(),
        mapping: Mapping {
            keep: vec!["id".to_string()],
            ..Mapping::default()
        },
        batch_rows: 64,
        threads: 1,
        shard: (0, 1),
    };
    let model = Arc::clone(model_for("wine_forest", ""));
    let job =
        Job::with_model(&options, model, &ModelConfig::default()).map_err(|e| e.to_string())?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let summary = predictd::batch::run(job, &stop, &|_| ()).map_err(|e| e.to_string())?;
    usize::try_from(summary.rows).map_err(|e| e.to_string())
}

/// Seed inputs made from real requests: every bundled model's `reference.json` inputs as each
/// protocol carries them (typed values and raw bytes), the model files themselves, and the
/// README's batch example files. `(target, file name, bytes)`; every one must be accepted.
pub(crate) fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let dir = models_dir();
    for (index, name) in bundled().models.keys().enumerate() {
        let text = std::fs::read_to_string(dir.join(name).join("reference.json"))
            .unwrap_or_else(|e| panic!("{name}/reference.json: {e}"));
        let reference: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}/reference.json: {e}"));
        let inputs = reference_inputs(name, &reference["inputs"]);
        for raw in [false, true] {
            let form = if raw { "raw" } else { "typed" };
            let v1 = v1::PredictRequest {
                model: name.clone(),
                inputs: inputs
                    .iter()
                    .map(|(n, t)| (n.clone(), tensor_to_wire(t, raw)))
                    .collect(),
                ..Default::default()
            };
            seeds.push(("v1_request", format!("{name}-{form}"), v1.encode_to_vec()));
            seeds.push((
                "kserve_grpc_request",
                format!("{name}-{form}"),
                kserve_grpc_seed(name, &inputs, raw).encode_to_vec(),
            ));
        }
        let selector = u8::try_from(index).unwrap_or(0);
        seeds.push((
            "kserve_json_request",
            format!("{name}-data"),
            [&[selector][..], &json_seed(&reference["inputs"])].concat(),
        ));
        let (json, binary) = json_binary_seed(&inputs);
        let length = u16::try_from(json.len()).unwrap_or(u16::MAX).to_le_bytes();
        seeds.push((
            "kserve_json_request",
            format!("{name}-binary"),
            [&[selector | 0x80][..], &length, &json, &binary].concat(),
        ));
        let model = std::fs::read(dir.join(name).join("1/model.onnx"))
            .unwrap_or_else(|e| panic!("{name}/1/model.onnx: {e}"));
        seeds.push(("onnx_model", name.clone(), model));
    }
    let examples = models_dir().join("../examples");
    for (selector, file) in [(0u8, "wine.csv"), (1, "wine.parquet")] {
        let data = std::fs::read(examples.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        seeds.push((
            "batch_input",
            file.to_string(),
            [&[selector][..], &data].concat(),
        ));
    }
    seeds
}

/// `reference.json`'s inputs as tensors (the bundled models take FP32 and INT64).
fn reference_inputs(model: &str, inputs: &serde_json::Value) -> Vec<(String, Tensor)> {
    let inputs = inputs
        .as_object()
        .unwrap_or_else(|| panic!("{model}: no inputs"));
    inputs
        .iter()
        .map(|(name, input)| {
            let shape: Vec<usize> = serde_json::from_value(input["shape"].clone())
                .unwrap_or_else(|e| panic!("{model} {name} shape: {e}"));
            let tensor = match input["dtype"].as_str() {
                Some("FP32") => serde_json::from_value::<Vec<f32>>(input["data"].clone())
                    .map(|v| Tensor::from_values(shape, &v)),
                Some("INT64") => serde_json::from_value::<Vec<i64>>(input["data"].clone())
                    .map(|v| Tensor::from_values(shape, &v)),
                other => panic!("{model} {name}: dtype {other:?} has no seed"),
            };
            let tensor = tensor
                .unwrap_or_else(|e| panic!("{model} {name} data: {e}"))
                .unwrap_or_else(|e| panic!("{model} {name}: {e}"));
            (name.clone(), tensor)
        })
        .collect()
}

fn kserve_grpc_seed(
    model: &str,
    inputs: &[(String, Tensor)],
    raw: bool,
) -> inference::ModelInferRequest {
    use inference::model_infer_request::InferInputTensor;
    let tensors = inputs.iter().map(|(name, t)| {
        let datatype = predictd::kserve::convert::datatype_name(t.dtype()).to_string();
        let contents = (!raw).then(|| match t.dtype() {
            predictd::engine::tensor::DType::F32 => inference::InferTensorContents {
                fp32_contents: t.to_values().unwrap_or_default(),
                ..Default::default()
            },
            _ => inference::InferTensorContents {
                int64_contents: t.to_values().unwrap_or_default(),
                ..Default::default()
            },
        });
        InferInputTensor {
            name: name.clone(),
            datatype,
            shape: t.wire_shape(),
            contents,
            ..Default::default()
        }
    });
    inference::ModelInferRequest {
        model_name: model.to_string(),
        inputs: tensors.collect(),
        raw_input_contents: if raw {
            inputs.iter().map(|(_, t)| tensor_to_raw(t)).collect()
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// A REST body with every input as JSON `data`.
fn json_seed(inputs: &serde_json::Value) -> Vec<u8> {
    let inputs: Vec<serde_json::Value> = inputs
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, input)| {
            serde_json::json!({
                "name": name, "shape": input["shape"], "datatype": input["dtype"], "data": input["data"],
            })
        })
        .collect();
    serde_json::json!({ "inputs": inputs, "parameters": { "binary_data_output": true } })
        .to_string()
        .into_bytes()
}

/// A REST body with every input as binary data after the JSON: `(json, binary)`.
fn json_binary_seed(inputs: &[(String, Tensor)]) -> (Vec<u8>, Vec<u8>) {
    let mut binary = Vec::new();
    let header: Vec<serde_json::Value> = inputs
        .iter()
        .map(|(name, t)| {
            let raw = tensor_to_raw(t);
            binary.extend_from_slice(&raw);
            serde_json::json!({
                "name": name,
                "shape": t.wire_shape(),
                "datatype": predictd::kserve::convert::datatype_name(t.dtype()),
                "parameters": { "binary_data_size": raw.len() },
            })
        })
        .collect();
    let json = serde_json::json!({ "inputs": header })
        .to_string()
        .into_bytes();
    (json, binary)
}
