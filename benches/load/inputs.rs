//! Inputs from models/<name>/reference.json.

use std::path::Path;

use predictd::engine::tensor::Tensor;
use predictd::proto::predictd::v1 as pb;

use crate::REQUEST_ID;

/// One input: its name, its shape at batch 1, and the values of the first reference row.
pub(crate) struct Row {
    name: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

pub(crate) fn first_rows(models: &Path, model: &str) -> Vec<Row> {
    let file = models.join(model).join("reference.json");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (is '{model}' a bundled model?)", file.display()));
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    reference["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            assert_eq!(
                t["dtype"], "FP32",
                "{model}: the bench sends FP32 inputs only"
            );
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
            shape[0] = 1;
            Row {
                name: name.clone(),
                shape,
                values: data[..width].to_vec(),
            }
        })
        .collect()
}

/// The first row repeated `rows` times, as engine tensors.
pub(crate) fn engine_inputs(first: &[Row], rows: usize) -> Vec<(String, Tensor)> {
    first
        .iter()
        .map(|r| {
            let mut shape = r.shape.clone();
            shape[0] = rows;
            let values: Vec<f32> = r
                .values
                .iter()
                .copied()
                .cycle()
                .take(r.values.len() * rows)
                .collect();
            (r.name.clone(), Tensor::from_values(shape, &values).unwrap())
        })
        .collect()
}

/// A batch-1 request with raw FP32 tensors.
pub(crate) fn wire_request(model: &str, first: &[Row]) -> pb::PredictRequest {
    pb::PredictRequest {
        model: model.to_string(),
        version: String::new(),
        id: REQUEST_ID.to_string(),
        inputs: first
            .iter()
            .map(|r| {
                let raw: Vec<u8> = r.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let tensor = pb::Tensor {
                    dtype: pb::DataType::Fp32 as i32,
                    shape: r.shape.iter().map(|&d| d as i64).collect(),
                    raw: raw.into(),
                    ..Default::default()
                };
                (r.name.clone(), tensor)
            })
            .collect(),
        outputs: Vec::new(),
    }
}
