//! Warm-up: runs a freshly opened model on made-up inputs before it takes traffic, so that the
//! first real requests do not pay for its first-run allocations and lazily built plans.

use bytes::Bytes;

use crate::engine::model::{Model, RunError};
use crate::engine::repository::{Warmup, WarmupData};
use crate::engine::signature::{Dim, Signature, ValidInputs};
use crate::engine::tensor::{DType, Tensor};

/// Runs `model` as `warmup` asks: `count` runs at each batch size (its fixed-plan sizes, or
/// one row, when the config names none).
pub fn warm(model: &Model, warmup: &Warmup) -> Result<(), RunError> {
    if warmup.count == 0 {
        return Ok(());
    }
    let sizes: Vec<usize> = match &warmup.batch_sizes {
        Some(sizes) => sizes.clone(),
        None => {
            let fixed: Vec<usize> = model.fixed_batch_sizes().collect();
            if fixed.is_empty() { vec![1] } else { fixed }
        }
    };
    let signature = model.signature();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for rows in sizes.into_iter().filter(|&r| r > 0) {
        // A model without a batch dimension runs its declared shape only.
        if !signature.batchable() && rows != 1 {
            continue;
        }
        let inputs = inputs(signature, rows, warmup.data, &mut seed)?;
        for _ in 0..warmup.count {
            model.run(inputs.clone())?;
        }
    }
    Ok(())
}

/// Inputs of `rows` rows that fit `signature`: every free dimension is `rows` (the batch one)
/// or 1.
pub fn inputs(
    signature: &Signature,
    rows: usize,
    data: WarmupData,
    seed: &mut u64,
) -> Result<ValidInputs, RunError> {
    let named = signature.inputs.iter().map(|spec| {
        let shape: Vec<usize> = spec
            .shape
            .iter()
            .map(|dim| match dim {
                Dim::Fixed(n) => *n,
                Dim::Symbol(s) if signature.batch_symbol.as_deref() == Some(s) => rows,
                Dim::Symbol(_) => 1,
            })
            .collect();
        let count: usize = shape.iter().product();
        let tensor = match (spec.dtype, data) {
            (DType::String, _) => Tensor::from_strings(shape, vec![String::new(); count]),
            (DType::F32, WarmupData::Random) => {
                let values: Vec<f32> = (0..count).map(|_| uniform(seed) as f32).collect();
                Tensor::from_values(shape, &values)
            }
            (DType::F64, WarmupData::Random) => {
                let values: Vec<f64> = (0..count).map(|_| uniform(seed)).collect();
                Tensor::from_values(shape, &values)
            }
            (dtype, _) => {
                let size = dtype.size().unwrap_or(1);
                Tensor::from_bytes(dtype, shape, Bytes::from(vec![0u8; count * size]))
            }
        };
        tensor
            .map(|t| (spec.name.clone(), t))
            .map_err(|e| RunError::engine(format!("warm-up input '{}': {e}", spec.name)))
    });
    let named: Vec<(String, Tensor)> = named.collect::<Result<_, _>>()?;
    signature
        .validate(named)
        .map_err(|e| RunError::engine(format!("warm-up inputs do not fit: {e}")))
}

/// A value in [0, 1) from a xorshift generator: warm-up needs variety, not quality.
fn uniform(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}
