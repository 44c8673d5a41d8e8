//! Graph rewrites applied once at load: patterns of tract's ops replaced by faster ones of ours.

pub(crate) mod dense;
pub(crate) mod row_ops;
pub(crate) mod winograd;

use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_hir::internal::*;

/// The node that alone reads `outlet`, when the outlet is not also a model output.
pub(super) fn only_successor(model: &TypedModel, outlet: OutletId) -> TractResult<Option<usize>> {
    if model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    Ok(match model.outlet_successors(outlet) {
        [one] => Some(one.node),
        _ => None,
    })
}

/// The f32 values of the constant that node `id`, a binary `Op`, applies to `input`.
pub(super) fn binary_with_constant<Op: BinMiniOp>(
    model: &TypedModel,
    id: usize,
    input: OutletId,
) -> TractResult<Option<Vec<f32>>> {
    let node = &model.nodes[id];
    let Some(op) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if !op.0.is::<Op>() || op.1.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let Some(other) = node.inputs.iter().find(|i| **i != input) else {
        return Ok(None);
    };
    // The constant must not broadcast `input` to a larger shape (`[N, 1] × [1, K]`).
    if model.outlet_fact(OutletId::new(id, 0))?.shape != model.outlet_fact(input)?.shape {
        return Ok(None);
    }
    let fact = model.outlet_fact(*other)?;
    let Some(constant) = fact.konst.as_ref() else {
        return Ok(None);
    };
    // A `[1, M]` or `[M]` row, or a single value: anything else broadcasts another way.
    if constant.datum_type() != DatumType::F32
        || constant.shape().iter().rev().skip(1).any(|&d| d != 1)
    {
        return Ok(None);
    }
    Ok(Some(
        constant.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
    ))
}
