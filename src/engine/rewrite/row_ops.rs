//! Row-wise replacements for two tract operators that classifiers end with: a softmax and an
//! arg-max over the last axis of a `[N, classes]` matrix.
//!
//! tract runs both one row at a time. With ten classes a row is shorter than one SIMD kernel
//! step, so every row pays the kernels' setup and tail handling: on the bundled MLP at 1,024
//! rows the softmax and the arg-max took about 40% of the run, more than both matrix products
//! (measured with `perf`). These versions make one pass over the whole matrix instead: the
//! softmax subtracts each row's max, runs tract's own vectorised `exp` once over the whole
//! buffer, then scales each row by the inverse of its sum, so its arithmetic is tract's; the
//! arg-max keeps tract's rules (the first maximum, or the last when asked; NaN never wins).
//!
//! [`rewrite`] swaps them in on the decluttered graph, before it is optimised; every other case
//! (another axis, another type, a log-softmax) keeps tract's operator.

use std::sync::Arc;

use tract_onnx::prelude::tract_linalg::reduce::MapReduce;
use tract_onnx::prelude::tract_linalg::routines::Func;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, Softmax, SoftmaxKind};
use tract_onnx::tract_hir::internal::*;

use crate::engine::onnx_ml::adapter::{Kernel, MlOp};

/// Replaces every softmax and arg-max over the last axis of an f32 tensor in `model`.
pub(crate) fn rewrite(model: &mut TypedModel) -> TractResult<()> {
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(input) = node.inputs.first() else {
            continue;
        };
        let fact = model.outlet_fact(*input)?;
        if fact.datum_type != DatumType::F32 || fact.rank() == 0 {
            continue;
        }
        let last = tvec![fact.rank() - 1];
        let replacement: Option<Arc<dyn Kernel>> = if let Some(op) = node.op_as::<Softmax>() {
            (op.kind == SoftmaxKind::Softmax && op.quant_output_dt.is_none() && op.axes == last)
                .then(|| -> TractResult<Arc<dyn Kernel>> {
                    Ok(Arc::new(RowSoftmax {
                        exp: Func::Softmax2.map_reduce_f32()?,
                    }))
                })
                .transpose()?
        } else if let Some(op) = node.op_as::<Reduce>() {
            match op.reducer {
                Reducer::ArgMax(take_last) if op.axes == last => {
                    Some(Arc::new(RowArgMax { take_last }))
                }
                _ => None,
            }
        } else {
            None
        };
        if let Some(kernel) = replacement {
            model.node_mut(id).op = Box::new(MlOp::from_kernel(kernel));
        }
    }
    Ok(())
}

/// Evaluates `$f` with `$w` bound to `$width`, as a constant for the class counts classifiers
/// have (2 to 16), so that each inlined copy of the row loops is unrolled for its width. Known
/// only at run time, the width left a loop's bookkeeping on every value of a ten-value row:
/// unrolled, the softmax and the arg-max went from 7.5% to 6% of a 4,096-row MLP `predict`
/// (perf). The matrices of the tests below cover every arm.
macro_rules! by_width {
    ($width:expr, |$w:ident| $f:expr) => {
        by_width!($width, |$w| $f, 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    };
    ($width:expr, |$w:ident| $f:expr, $($n:literal)*) => {
        match $width {
            $($n => { let $w = $n; $f })*
            $w => $f,
        }
    };
}

/// Softmax over the last axis.
#[derive(Debug)]
struct RowSoftmax {
    /// tract's `exp(x - max)`-and-sum kernel for this host, run with a max of zero.
    exp: Box<dyn MapReduce<f32, f32>>,
}

impl Kernel for RowSoftmax {
    fn name(&self) -> &'static str {
        "RowSoftmax"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    fn eval(&self, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut tensor = inputs.remove(0).into_tensor();
        let width = tensor.shape().last().copied().unwrap_or(0);
        if width > 0 && tensor.len() > 0 {
            let mut plain = tensor.try_as_plain_ram_mut()?;
            let data = plain.as_slice_mut::<f32>()?;
            by_width!(width, |w| self.rows(data, w))?;
        }
        Ok(tvec!(tensor.into_tvalue()))
    }
}

impl RowSoftmax {
    #[inline(always)]
    fn rows(&self, data: &mut [f32], width: usize) -> TractResult<()> {
        for row in data.chunks_exact_mut(width) {
            let max = row
                .iter()
                .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
            row.iter_mut().for_each(|x| *x -= max);
        }
        self.exp.run_with_params(data, 0.0)?;
        for row in data.chunks_exact_mut(width) {
            let scale = row.iter().sum::<f32>().recip();
            row.iter_mut().for_each(|x| *x *= scale);
        }
        Ok(())
    }
}

/// Arg-max over the last axis, kept as a dimension of one, as tract's `Reduce` leaves it.
#[derive(Debug)]
struct RowArgMax {
    /// ONNX's `select_last_index`: ties go to the last maximum.
    take_last: bool,
}

impl Kernel for RowArgMax {
    fn name(&self) -> &'static str {
        "RowArgMax"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        if let Some(last) = shape.last_mut() {
            *last = 1.into();
        }
        Ok(tvec!(DatumType::I64.fact(shape)))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let mut shape: TVec<usize> = input.shape().into();
        let width = shape.last().copied().unwrap_or(0);
        if let Some(last) = shape.last_mut() {
            *last = 1;
        }
        let values = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let rows = shape.iter().product::<usize>();
        let indices: Vec<i64> = if width == 0 {
            vec![0; rows]
        } else {
            by_width!(width, |w| values
                .chunks_exact(w)
                .map(|row| self.arg_max(row))
                .collect())
        };
        Ok(tvec!(Tensor::from_shape(&shape, &indices)?.into_tvalue()))
    }
}

impl RowArgMax {
    #[inline(always)]
    fn arg_max(&self, row: &[f32]) -> i64 {
        let mut best = (0usize, f32::MIN);
        for (ix, &x) in row.iter().enumerate() {
            if x > best.1 || (self.take_last && x == best.1) {
                best = (ix, x);
            }
        }
        best.0 as i64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Runs `op` on `input` as tract has it, then rewritten; returns both outputs and the
    /// rewritten op's name.
    fn tract_and_ours(op: Box<dyn TypedOp>, input: Tensor) -> (Tensor, Tensor, String) {
        let mut model = TypedModel::default();
        let source = model.add_source("x", f32::fact(input.shape())).unwrap();
        let output = model.wire_node("op", op, &[source]).unwrap();
        model.select_output_outlets(&output).unwrap();
        let run = |model: TypedModel| {
            let plan = model.into_runnable().unwrap();
            plan.run(tvec![input.clone().into_tvalue()])
                .unwrap()
                .remove(0)
                .into_tensor()
        };
        let theirs = run(model.clone());
        rewrite(&mut model).unwrap();
        let name = model.nodes[output[0].node].op.name().to_string();
        (theirs, run(model), name)
    }

    /// Rows of every width from 1 to 17, with ties, large magnitudes and a NaN.
    fn matrices() -> Vec<Tensor> {
        (1..=17usize)
            .map(|width| {
                let rows = 7;
                let values: Vec<f32> = (0..rows * width)
                    .map(|i| match i % 11 {
                        0 => 3.0,
                        3 => 3.0,
                        5 => -80.0,
                        7 if width > 4 && i > width => f32::NAN,
                        k => ((i * 37 + k * 5) % 23) as f32 * 1.7 - 19.0,
                    })
                    .collect();
                Tensor::from_shape(&[rows, width], &values).unwrap()
            })
            .collect()
    }

    #[test]
    fn softmax_matches_tract() {
        for input in matrices() {
            let op = Softmax::new(tvec![1], None, SoftmaxKind::Softmax);
            let (theirs, ours, name) = tract_and_ours(Box::new(op), input.clone());
            assert_eq!(name, "RowSoftmax");
            let theirs = theirs
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec();
            let ours = ours
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec();
            for (ix, (t, o)) in theirs.iter().zip(&ours).enumerate() {
                let close = (t - o).abs() <= 1e-6 * t.abs().max(1e-30) || t.is_nan() && o.is_nan();
                assert!(
                    close,
                    "{:?}, element {ix}: tract {t}, ours {o}",
                    input.shape()
                );
            }
        }
    }

    /// Rows where the maximum is `f32::MIN`, infinite, NaN, or a signed zero.
    fn edges() -> Tensor {
        let (min, inf, nan) = (f32::MIN, f32::INFINITY, f32::NAN);
        let rows: [[f32; 4]; 9] = [
            [-inf, min, -inf, min],
            [-inf, -inf, -inf, -inf],
            [nan, nan, nan, nan],
            [nan, min, nan, -inf],
            [-0.0, 0.0, -0.0, 0.0],
            [0.0, -0.0, nan, -0.0],
            [inf, nan, inf, 1.0],
            [min, -1.0, min, -1.0],
            [1.0, 2.0, 3.0, 4.0],
        ];
        Tensor::from_shape(&[rows.len(), 4], rows.as_flattened()).unwrap()
    }

    #[test]
    fn arg_max_matches_tract_first_and_last() {
        for take_last in [false, true] {
            for input in matrices().into_iter().chain([edges()]) {
                let op = Reduce::new(tvec![1], Reducer::ArgMax(take_last));
                let (theirs, ours, name) = tract_and_ours(Box::new(op), input.clone());
                assert_eq!(name, "RowArgMax");
                assert_eq!(theirs, ours, "{:?}, take_last {take_last}", input.shape());
            }
        }
    }

    #[test]
    fn other_axes_keep_tract_ops() {
        let input = Tensor::from_shape(&[3, 4], &[1.0f32; 12]).unwrap();
        let op = Softmax::new(tvec![0], None, SoftmaxKind::Softmax);
        assert_eq!(tract_and_ours(Box::new(op), input.clone()).2, "Softmax");
        let op = Reduce::new(tvec![0], Reducer::ArgMax(false));
        assert_eq!(
            tract_and_ours(Box::new(op), input).2,
            "Reduce<ArgMax(false)>"
        );
    }
}
