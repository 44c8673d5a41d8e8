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
//!
//! The softmax also serves attention, where a row is a token's scores over the sequence and
//! there are heads × tokens of them: it splits its rows over the run's threads as tract's did,
//! and it absorbs the clean-up PyTorch exports after it, `Where(IsNaN(p), 0, p)` (a fully masked
//! row is all NaN), which tract ran as two more single-threaded passes over every score of every
//! layer. Both together, on a MiniLM-shaped encoder at 128 tokens, batch 1: 36.8 → 28.0 ms on two
//! threads, 43.5 → 40.4 on one.

use std::sync::Arc;

use tract_onnx::prelude::tract_linalg::multithread::par_chunks_mut;
use tract_onnx::prelude::tract_linalg::reduce::MapReduce;
use tract_onnx::prelude::tract_linalg::routines::Func;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::logic::Iff;
use tract_onnx::tract_core::ops::math::IsNan;
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
        let mut clean_up = None;
        let replacement: Option<Arc<dyn Kernel>> = if let Some(op) = node.op_as::<Softmax>() {
            if op.kind == SoftmaxKind::Softmax && op.quant_output_dt.is_none() && op.axes == last {
                clean_up = nan_clean_up(model, id)?;
                Some(Arc::new(RowSoftmax {
                    exp: Func::Softmax2.map_reduce_f32()?,
                    nan_to_zero: clean_up.is_some(),
                }))
            } else {
                None
            }
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
            if let Some(clean_up) = clean_up {
                // The clean-up's readers now read the softmax, which does it; the two nodes
                // left without readers are pruned when the graph is optimised.
                let mut patch = TypedModelPatch::default();
                let softmax = patch.tap_model(model, id.into())?;
                patch.shunt_outside(model, clean_up, softmax)?;
                patch.apply(model)?;
            }
        }
    }
    Ok(())
}

/// The output of `Where(IsNaN(p), 0, p)` over node `softmax`'s output `p`, if that is all that
/// reads `p` and the mask: all it does is replace the NaNs of `p` by zeros. Another reader would
/// see `p` without its NaNs once the softmax does the clean-up, so then it stays as it is.
fn nan_clean_up(model: &TypedModel, softmax: usize) -> TractResult<Option<OutletId>> {
    let p = OutletId::new(softmax, 0);
    let readers = model.outlet_successors(p);
    let is_nan = readers.iter().find(|r| {
        model
            .node(r.node)
            .op_as::<ElementWiseOp>()
            .is_some_and(|op| op.0.is::<IsNan>())
    });
    let Some(is_nan) = is_nan else {
        return Ok(None);
    };
    let mask_readers = model.outlet_successors(OutletId::new(is_nan.node, 0));
    if readers.len() != 2 || mask_readers.len() != 1 || model.output_outlets()?.contains(&p) {
        return Ok(None);
    }
    for r in readers {
        let node = model.node(r.node);
        let zero = node
            .inputs
            .get(1)
            .map(|i| model.outlet_fact(*i))
            .transpose()?
            .and_then(|f| f.konst.as_ref())
            .is_some_and(|k| k.len() == 1 && k.cast_to_scalar::<f32>().is_ok_and(|v| v == 0.0));
        if node.op_is::<Iff>()
            && node.inputs.len() == 3
            && node.inputs[0] == OutletId::new(is_nan.node, 0)
            && zero
            && node.inputs[2] == p
            && model.outlet_fact(node.id.into())?.shape == model.outlet_fact(p)?.shape
        {
            return Ok(Some(node.id.into()));
        }
    }
    Ok(None)
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
    /// Whether NaNs in the result become zeros ([`nan_clean_up`]).
    nan_to_zero: bool,
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
            // Whole rows to each thread, so every row's sums are taken in the same order
            // however many threads there are.
            par_chunks_mut(data, width, data.len(), |_, rows| {
                by_width!(width, |w| self.rows(rows, w))
            })?;
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
            if self.nan_to_zero {
                row.iter_mut().for_each(|x| {
                    let y = *x * scale;
                    *x = if y.is_nan() { 0.0 } else { y }
                });
            } else {
                row.iter_mut().for_each(|x| *x *= scale);
            }
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
    use tract_onnx::prelude::tract_linalg::multithread::{Executor, multithread_tract_scope};

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

    fn values(t: &Tensor) -> Vec<f32> {
        t.try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
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
            let theirs = values(&theirs);
            let ours = values(&ours);
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

    /// Attention's softmax: 2 × 4 heads × 64 tokens × 64 scores, 32,768 in all, so that its rows
    /// split over two threads, with fully masked rows (all −∞, so all NaN) cleaned up after
    /// it as PyTorch exports do. The rewrite folds the clean-up into the softmax and gives
    /// tract's values, zeros for the masked rows.
    #[test]
    fn attention_softmax_splits_its_rows_and_absorbs_the_nan_clean_up() {
        let shape = [2, 4, 64, 64];
        let scores: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| match (i / 64) % 9 {
                4 => f32::NEG_INFINITY,
                _ => ((i * 37) % 23) as f32 * 0.7 - 8.0,
            })
            .collect();
        let input = Tensor::from_shape(&shape, &scores).unwrap();
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(shape)).unwrap();
        let softmax = Softmax::new(tvec![3], None, SoftmaxKind::Softmax);
        let p = model.wire_node("softmax", softmax, &[x]).unwrap();
        let is_nan = tract_onnx::tract_core::ops::math::is_nan();
        let nan = model.wire_node("is_nan", is_nan, &p).unwrap();
        let zero = model.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
        let clean = model
            .wire_node("clean", Iff, &[nan[0], zero, p[0]])
            .unwrap();
        model.select_output_outlets(&clean).unwrap();
        let run = |model: TypedModel| {
            let plan = model.into_optimized().unwrap().into_runnable().unwrap();
            let names: Vec<String> = plan
                .model()
                .nodes
                .iter()
                .map(|n| n.op.name().to_string())
                .collect();
            let executor = Executor::multithread(2);
            let output = multithread_tract_scope(executor, || {
                plan.run(tvec![input.clone().into_tvalue()]).unwrap()
            });
            (output[0].clone().into_tensor(), names)
        };
        let (theirs, their_ops) = run(model.clone());
        assert!(their_ops.iter().any(|op| op == "Iff"), "{their_ops:?}");
        rewrite(&mut model).unwrap();
        let (ours, our_ops) = run(model);
        assert!(
            our_ops.iter().all(|op| op != "Iff" && op != "IsNan"),
            "{our_ops:?}"
        );
        assert!(our_ops.iter().any(|op| op == "RowSoftmax"), "{our_ops:?}");
        let theirs = values(&theirs);
        let ours = values(&ours);
        assert!(theirs.iter().all(|t| !t.is_nan()));
        // Rows 4, 13, …, 508 of the 512 are masked.
        assert_eq!(theirs.iter().filter(|t| **t == 0.0).count(), 57 * 64);
        for (ix, (t, o)) in theirs.iter().zip(&ours).enumerate() {
            assert!(
                (t - o).abs() <= 1e-6 * t.abs().max(1e-30),
                "element {ix}: tract {t}, ours {o}"
            );
        }
    }

    /// When the softmax's output is read elsewhere too (here, it is also a model output), that
    /// reader must still see its NaNs, so the clean-up stays a node of its own.
    #[test]
    fn a_softmax_read_elsewhere_keeps_its_nans() {
        let input = tensor2(&[[f32::NEG_INFINITY, f32::NEG_INFINITY], [1.0, 2.0]]);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 2])).unwrap();
        let softmax = Softmax::new(tvec![1], None, SoftmaxKind::Softmax);
        let p = model.wire_node("softmax", softmax, &[x]).unwrap();
        let is_nan = tract_onnx::tract_core::ops::math::is_nan();
        let nan = model.wire_node("is_nan", is_nan, &p).unwrap();
        let zero = model.add_const("zero", tensor2(&[[0f32]])).unwrap();
        let clean = model
            .wire_node("clean", Iff, &[nan[0], zero, p[0]])
            .unwrap();
        model.select_output_outlets(&[clean[0], p[0]]).unwrap();
        rewrite(&mut model).unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        assert!(plan.model().nodes.iter().any(|n| n.op_is::<Iff>()));
        let outputs = plan.run(tvec![input.into_tvalue()]).unwrap();
        let (clean, p) = (values(&outputs[0]), values(&outputs[1]));
        assert_eq!(clean[..2], [0.0, 0.0]);
        assert!(p[..2].iter().all(|v| v.is_nan()), "{p:?}");
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
