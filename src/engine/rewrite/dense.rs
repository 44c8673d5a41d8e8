//! Small dense layers (`x · W`, with `W` a constant of at most [`MAX_WEIGHTS`] values, and the
//! scaling of `x` before it, the bias and the ReLU after it) in one pass over the activations, for
//! x86-64 hosts with AVX2 and FMA.
//!
//! tract turns every matrix product into its general blocked product, which packs the
//! activations into panels on every run before multiplying. On the bundled MLP at 1,024 rows
//! the packing took 15% of a Python `predict` call, and the 10-class layer ran a 16-row kernel
//! tile (perf). Here the weights are packed once, at load, into panels of 16 output columns;
//! each block of 6 rows reads the activations in place, multiplies them by every panel while the
//! panel and the rows sit in L1, adds the bias and applies the ReLU before storing the result.
//! A scaling of the input (the MLP divides its pixels by 16) is applied to each block as it is
//! read. The whole `predict` call went from 246 to 167 µs. The arithmetic is the unfused
//! graph's: each input times its scale, one fused multiply-add per term in `k` order, then the
//! bias, then `max(x, 0)`.
//!
//! The kernel is safe code compiled for AVX2 (`#[target_feature]`); calling it is one of the
//! crate's two `unsafe` blocks (the other is the transpose of `columns`), after the features
//! are checked at run time.
//! [`rewrite`] swaps the fused op in on the decluttered graph; everything it does not match
//! (another type, a quantised product, a batched or transposed one, a large one, a host without
//! AVX2) is left to tract.

use std::sync::Arc;

use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::{Add, Max, Mul};
use tract_onnx::tract_hir::internal::*;

use crate::engine::onnx_ml::adapter::{Kernel, MlOp};

/// The most weights (`k × n`) a layer may have to be fused: 64 KB of `f32`, whose panels stay in
/// L1 one at a time and in L2 together. Measured on layers up to 64 × 64; larger ones keep
/// tract's product, which blocks for the caches where this does not.
pub(crate) const MAX_WEIGHTS: usize = 16 * 1024;

/// Output columns per weight panel: two AVX registers.
const WIDTH: usize = 16;

/// Replaces every small `[N, K] × [K, M]` f32 product by a constant (with the bias added and the
/// ReLU applied to it, when those come next and nothing else reads the product) in `model`.
pub(crate) fn rewrite(model: &mut TypedModel) -> TractResult<()> {
    if !kernel::available() {
        return Ok(());
    }
    for id in 0..model.nodes.len() {
        let Some((mut x, weights, k, n)) = matrix_product(model, id)? else {
            continue;
        };
        // A scaling of the input alone (sklearn's pixel scaling in the bundled MLP) is applied
        // to each block of rows as the block is read, instead of in a pass of its own.
        let mut scale = None;
        if only_successor(model, x)? == Some(id)
            && let Some(source) = model.nodes[x.node]
                .inputs
                .iter()
                .find(|i| model.outlet_fact(**i).is_ok_and(|f| f.konst.is_none()))
                .copied()
            && let Some(s) = binary_with_constant::<Mul>(model, x.node, source)?
            && (s.len() == 1 || s.len() == k)
        {
            scale = Some(if s.len() == 1 { vec![s[0]; k] } else { s });
            x = source;
        }
        let mut last = OutletId::new(id, 0);
        let mut bias = None;
        if let Some(next) = only_successor(model, last)?
            && let Some(b) = binary_with_constant::<Add>(model, next, last)?
            && b.len() == n
        {
            bias = Some(b);
            last = OutletId::new(next, 0);
        }
        let mut relu = false;
        if let Some(next) = only_successor(model, last)?
            && binary_with_constant::<Max>(model, next, last)?.is_some_and(|c| c == [0.0])
        {
            relu = true;
            last = OutletId::new(next, 0);
        }
        let dense = Dense::new(&weights, k, n, scale, bias, relu);
        let mut patch = TypedModelPatch::new(format!("dense {}", model.nodes[id].name));
        let tap = patch.tap_model(model, x)?;
        let name = format!("{}.dense", model.node(last.node).name);
        let fused = patch.wire_node(name, MlOp::from_kernel(Arc::new(dense)), &[tap])?;
        patch.shunt_outside(model, last, fused[0])?;
        patch.apply(model)?;
    }
    model.compact()
}

/// For node `id` computing `x · W` with `x` an f32 `[N, K]` and `W` an f32 constant `[K, M]` of
/// at most [`MAX_WEIGHTS`] values: `x`, `W`'s values, `K` and `M`.
#[allow(clippy::type_complexity)]
fn matrix_product(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(OutletId, Vec<f32>, usize, usize)>> {
    let node = &model.nodes[id];
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if op.q_params.is_some() || op.operating_dt != DatumType::F32 || node.inputs.len() != 2 {
        return Ok(None);
    }
    // The three axes of `mk,kn->mn`, each as its positions in x, in W and in the output.
    let mut axes: Vec<[Option<usize>; 3]> = op
        .axes
        .iter_all_axes()
        .map(|axis| {
            let at = |positions: Option<&TVec<usize>>| match positions.map(|p| p.as_slice()) {
                Some([one]) => Some(*one),
                _ => None,
            };
            [
                at(axis.inputs.first()),
                at(axis.inputs.get(1)),
                at(axis.outputs.first()),
            ]
        })
        .collect();
    axes.sort();
    let product = [
        [None, Some(1), Some(1)],
        [Some(0), None, Some(0)],
        [Some(1), Some(0), None],
    ];
    if axes != product {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let w = model.outlet_fact(node.inputs[1])?;
    let Some(weights) = w.konst.as_ref() else {
        return Ok(None);
    };
    if x.datum_type != DatumType::F32 || x.rank() != 2 || weights.datum_type() != DatumType::F32 {
        return Ok(None);
    }
    let &[k, n] = weights.shape() else {
        return Ok(None);
    };
    if k == 0 || n == 0 || k * n > MAX_WEIGHTS {
        return Ok(None);
    }
    let values = weights.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    Ok(Some((node.inputs[0], values, k, n)))
}

/// The node that alone reads `outlet`, when the outlet is not also a model output.
fn only_successor(model: &TypedModel, outlet: OutletId) -> TractResult<Option<usize>> {
    if model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    Ok(match model.outlet_successors(outlet) {
        [one] => Some(one.node),
        _ => None,
    })
}

/// The f32 values of the constant that node `id`, a binary `Op`, applies to `input`.
fn binary_with_constant<Op: BinMiniOp>(
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

/// `max((x × scale) · W + bias, 0)`, or without the scale, the bias or the ReLU.
struct Dense {
    k: usize,
    n: usize,
    /// What each of the `k` input columns is multiplied by first.
    scale: Option<Vec<f32>>,
    /// `W` in panels of [`WIDTH`] columns, each `k` rows of `WIDTH` values, zero-padded.
    panels: Vec<f32>,
    /// The bias, one array per panel, zero-padded; `None` adds nothing (adding zeros would turn
    /// a product of -0.0 into 0.0).
    bias: Option<Vec<[f32; WIDTH]>>,
    relu: bool,
}

impl Dense {
    fn new(
        weights: &[f32],
        k: usize,
        n: usize,
        scale: Option<Vec<f32>>,
        bias: Option<Vec<f32>>,
        relu: bool,
    ) -> Dense {
        let width = n.div_ceil(WIDTH) * WIDTH;
        let mut panels = vec![0.0; k * width];
        for (p, panel) in panels.chunks_exact_mut(k * WIDTH).enumerate() {
            for (row, packed) in panel.chunks_exact_mut(WIDTH).enumerate() {
                let from = p * WIDTH;
                let cols = (n - from).min(WIDTH);
                packed[..cols].copy_from_slice(&weights[row * n + from..row * n + from + cols]);
            }
        }
        let bias = bias.map(|mut b| {
            b.resize(width, 0.0);
            b.as_chunks::<WIDTH>().0.to_vec()
        });
        Dense {
            k,
            n,
            scale,
            panels,
            bias,
            relu,
        }
    }
}

impl std::fmt::Debug for Dense {
    // The weights would swamp tract's graph dumps.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dense")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("scale", &self.scale.is_some())
            .field("bias", &self.bias.is_some())
            .field("relu", &self.relu)
            .finish()
    }
}

impl Kernel for Dense {
    fn name(&self) -> &'static str {
        "Dense"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = inputs[0].shape[0].clone();
        Ok(tvec!(f32::fact(&[rows, self.n.to_dim()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x: &Tensor = &inputs[0];
        let &[rows, k] = x.shape() else {
            bail!("Dense takes a [N, K] matrix, got {:?}", x.shape());
        };
        ensure!(k == self.k, "Dense expects {} columns, got {k}", self.k);
        let x = x.try_as_plain_ram()?.as_slice::<f32>()?;
        // Zeroed rather than uninitialised: the one way without unsafe code, and cheaper than
        // the copy tract makes of a Vec handed to it.
        let mut y = Tensor::zero::<f32>(&[rows, self.n])?;
        kernel::run(self, x, y.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
        Ok(tvec!(y.into_tvalue()))
    }
}

/// Rows per block: 6 rows × 2 registers of accumulators, 2 of weights and 1 broadcast use 15 of
/// the 16 AVX registers.
const ROWS: usize = 6;

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use bytemuck::cast;
    use tract_onnx::prelude::TractResult;
    use tract_onnx::tract_hir::internal::ensure;

    use super::{Dense, ROWS, WIDTH};

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// Writes `x · W (+ bias) (max 0)` into `y`, `n` values a row, for as many rows as `y` holds.
    pub(super) fn run(dense: &Dense, x: &[f32], y: &mut [f32]) -> TractResult<()> {
        ensure!(available(), "the Dense op needs a CPU with AVX2 and FMA");
        // SAFETY: the one requirement of calling a target_feature function is that the CPU has
        // the features, checked just above. The function itself is safe code.
        #[allow(unsafe_code)]
        unsafe {
            all_rows(dense, x, y)
        };
        Ok(())
    }

    /// One block of [`ROWS`] rows at a time.
    #[target_feature(enable = "avx2,fma")]
    fn all_rows(dense: &Dense, x: &[f32], y: &mut [f32]) {
        let (k, n) = (dense.k, dense.n);
        let mut scaled = vec![0f32; if dense.scale.is_some() { ROWS * k } else { 0 }];
        for (xs, ys) in x.chunks(ROWS * k).zip(y.chunks_mut(ROWS * n)) {
            let xs = match &dense.scale {
                Some(scale) => {
                    let scaled = &mut scaled[..xs.len()];
                    for (row, from) in scaled.chunks_exact_mut(k).zip(xs.chunks_exact(k)) {
                        for ((v, x), s) in row.iter_mut().zip(from).zip(scale) {
                            *v = x * s;
                        }
                    }
                    &*scaled
                }
                None => xs,
            };
            match ys.len() / n {
                6 => block_of::<6>(dense, xs, ys),
                5 => block_of::<5>(dense, xs, ys),
                4 => block_of::<4>(dense, xs, ys),
                3 => block_of::<3>(dense, xs, ys),
                2 => block_of::<2>(dense, xs, ys),
                _ => block_of::<1>(dense, xs, ys),
            }
        }
    }

    /// `R` rows `xs` times every panel of `W`, with the bias and the ReLU, into `ys`. The
    /// accumulators are `__m256` values, so that they stay in registers (as arrays of `f32`,
    /// LLVM spilled them to the stack on every step).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn block_of<const R: usize>(dense: &Dense, xs: &[f32], ys: &mut [f32]) {
        let (k, n) = (dense.k, dense.n);
        // A loop rather than `array::from_fn`, which LLVM left as a call per block.
        let mut rows = [&xs[..0]; R];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = &xs[r * k..(r + 1) * k];
        }
        let xs = rows;
        let (halves, _) = dense.panels.as_chunks::<8>();
        for (p, panel) in halves.chunks_exact(2 * k).enumerate() {
            let mut lo = [_mm256_setzero_ps(); R];
            let mut hi = [_mm256_setzero_ps(); R];
            for (kk, w) in panel.as_chunks::<2>().0.iter().enumerate() {
                let (w_lo, w_hi): (__m256, __m256) = (cast(w[0]), cast(w[1]));
                for r in 0..R {
                    let a = _mm256_set1_ps(xs[r][kk]);
                    lo[r] = _mm256_fmadd_ps(a, w_lo, lo[r]);
                    hi[r] = _mm256_fmadd_ps(a, w_hi, hi[r]);
                }
            }
            if let Some(bias) = &dense.bias {
                let [b_lo, b_hi]: [__m256; 2] = cast(bias[p]);
                for r in 0..R {
                    lo[r] = _mm256_add_ps(lo[r], b_lo);
                    hi[r] = _mm256_add_ps(hi[r], b_hi);
                }
            }
            if dense.relu {
                // maxps returns its second operand when either is NaN: NaN becomes 0, as
                // Rust's f32::max and tract's Max do.
                for r in 0..R {
                    lo[r] = _mm256_max_ps(lo[r], _mm256_setzero_ps());
                    hi[r] = _mm256_max_ps(hi[r], _mm256_setzero_ps());
                }
            }
            let from = p * WIDTH;
            for (r, y) in ys.chunks_exact_mut(n).enumerate().take(R) {
                store(&mut y[from..], &cast([lo[r], hi[r]]));
            }
        }
    }

    /// Stores as much of `row` as `y` holds, in fixed-size arrays: a copy of any other length
    /// is a call to memcpy, which took a sixth of the run for whole panels and, for the bundled
    /// MLP's 10-class layer, 4% of a `predict` call at 4,096 rows.
    #[inline]
    fn store(y: &mut [f32], row: &[f32; WIDTH]) {
        if let Some(whole) = y.first_chunk_mut::<WIDTH>() {
            *whole = *row;
            return;
        }
        let mut at = 0;
        part::<8>(y, row, &mut at);
        part::<4>(y, row, &mut at);
        part::<2>(y, row, &mut at);
        part::<1>(y, row, &mut at);
    }

    #[inline]
    fn part<const L: usize>(y: &mut [f32], row: &[f32; WIDTH], at: &mut usize) {
        if let (Some(to), Some(from)) = (
            y.get_mut(*at..).and_then(|y| y.first_chunk_mut::<L>()),
            row.get(*at..).and_then(|r| r.first_chunk::<L>()),
        ) {
            *to = *from;
            *at += L;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    use tract_onnx::prelude::TractResult;
    use tract_onnx::tract_hir::internal::bail;

    use super::Dense;

    pub(super) fn available() -> bool {
        false
    }

    /// Never reached: [`super::rewrite`] wires the op only where [`available`] holds.
    pub(super) fn run(_: &Dense, _: &[f32], _: &mut [f32]) -> TractResult<()> {
        bail!("the Dense op needs an x86-64 CPU with AVX2 and FMA")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tract_onnx::tract_core::ops::math;

    use super::*;

    /// Values in [-1, 1) from a fixed seed, with a few exact zeros.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                if i % 11 == 0 {
                    0.0
                } else {
                    ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
                }
            })
            .collect()
    }

    /// The same arithmetic one value at a time: each input scaled, a fused multiply-add per term
    /// in `k` order, then the bias, then the ReLU.
    fn plain(x: &[f32], w: &[f32], dense: &Dense) -> Vec<f32> {
        let (k, n) = (dense.k, dense.n);
        let rows = x.len() / k;
        let mut y = Vec::with_capacity(rows * n);
        for r in 0..rows {
            for c in 0..n {
                let mut sum = 0f32;
                for kk in 0..k {
                    let v = dense
                        .scale
                        .as_ref()
                        .map_or(x[r * k + kk], |s| x[r * k + kk] * s[kk]);
                    sum = v.mul_add(w[kk * n + c], sum);
                }
                if let Some(b) = &dense.bias {
                    sum += b[c / WIDTH][c % WIDTH];
                }
                y.push(if dense.relu { sum.max(0.0) } else { sum });
            }
        }
        y
    }

    #[test]
    fn every_tile_shape_gives_the_plain_loop_s_values_exactly() {
        if !kernel::available() {
            return;
        }
        for k in [1, 3, 8, 64, 70] {
            for n in [1, 10, 16, 17, 33] {
                let w = values(k * n, (k * 100 + n) as u64);
                let b = values(n, n as u64 + 7);
                let s = values(k, k as u64 + 3);
                for (scale, bias, relu) in [
                    (None, None, false),
                    (None, Some(&b), false),
                    (Some(&s), Some(&b), true),
                    (Some(&s), None, true),
                ] {
                    let dense = Dense::new(&w, k, n, scale.cloned(), bias.cloned(), relu);
                    for rows in [0, 1, 2, 5, 6, 7, 12, 13] {
                        let mut x = values(rows * k, (rows * 31 + k) as u64);
                        if rows > 3 {
                            x[k + 1 % k] = f32::NAN;
                        }
                        let mut ours = vec![f32::NAN; rows * n];
                        kernel::run(&dense, &x, &mut ours).unwrap();
                        let theirs = plain(&x, &w, &dense);
                        let same = ours.len() == theirs.len()
                            && ours
                                .iter()
                                .zip(&theirs)
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "k {k} n {n} rows {rows} {dense:?}:\n{ours:?}\n{theirs:?}"
                        );
                    }
                }
            }
        }
    }

    /// `(x × s) · W (+ b) (max 0)` as tract's own ops, with `[N, 3]` inputs and 5 outputs;
    /// `read_twice` also makes the product a model output.
    fn layer(scale: bool, bias: bool, relu: bool, read_twice: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let n = model.sym("N");
        let mut x = model
            .add_source("x", f32::fact(&[n.to_dim(), 3.to_dim()]))
            .unwrap();
        if scale {
            let s = model.add_const("s", tensor2(&[[0.0625f32]])).unwrap();
            x = model.wire_node("scale", math::mul(), &[x, s]).unwrap()[0];
        }
        let w = tract_ndarray::Array2::from_shape_vec((3, 5), values(15, 1)).unwrap();
        let w = model.add_const("w", Tensor::from(w)).unwrap();
        let product = EinSum::new("mk,kn->mn".parse().unwrap(), DatumType::F32);
        let mut last = model.wire_node("product", product, &[x, w]).unwrap()[0];
        let mut outputs = vec![];
        if read_twice {
            outputs.push(last);
        }
        if bias {
            let b = Tensor::from_shape(&[1, 5], &values(5, 2)).unwrap();
            let b = model.add_const("b", b).unwrap();
            last = model.wire_node("bias", math::add(), &[last, b]).unwrap()[0];
        }
        if relu {
            let zero = model.add_const("zero", tensor2(&[[0f32]])).unwrap();
            last = model.wire_node("relu", math::max(), &[last, zero]).unwrap()[0];
        }
        outputs.push(last);
        model.select_output_outlets(&outputs).unwrap();
        model
    }

    fn run(model: &TypedModel, rows: usize) -> TVec<TValue> {
        let width = model.input_fact(0).unwrap().shape[1].to_usize().unwrap();
        let x =
            tract_ndarray::Array2::from_shape_vec((rows, width), values(rows * width, 9)).unwrap();
        let n = model.symbols.get("N").unwrap();
        let bound = model
            .set_symbols(&std::collections::HashMap::from([(
                n,
                TDim::Val(rows as i64),
            )]))
            .unwrap();
        bound
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(tvec!(Tensor::from(x).into_tvalue()))
            .unwrap()
    }

    fn plain_f32(value: &TValue) -> Vec<f32> {
        value
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    fn ops(model: &TypedModel) -> Vec<String> {
        model
            .nodes
            .iter()
            .map(|n| n.op.name().to_string())
            .collect()
    }

    #[test]
    fn a_scaling_a_product_its_bias_and_its_relu_become_one_op_with_tract_s_values() {
        if !kernel::available() {
            return;
        }
        for parts in 0..8 {
            let [scale, bias, relu] = std::array::from_fn(|bit| parts & (1 << bit) != 0);
            let before = layer(scale, bias, relu, false);
            let mut after = before.clone();
            rewrite(&mut after).unwrap();
            assert_eq!(
                ops(&after),
                ["Source", "Dense"],
                "scale {scale} bias {bias} relu {relu}"
            );
            for rows in [1, 7] {
                let (theirs, ours) = (run(&before, rows), run(&after, rows));
                let (theirs, ours) = (plain_f32(&theirs[0]), plain_f32(&ours[0]));
                assert_eq!(ours.len(), theirs.len());
                for (a, b) in ours.iter().zip(&theirs) {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                        "scale {scale} bias {bias} relu {relu}: {ours:?} vs {theirs:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_product_read_elsewhere_keeps_its_bias_outside() {
        if !kernel::available() {
            return;
        }
        let mut model = layer(false, true, true, true);
        rewrite(&mut model).unwrap();
        let ops = ops(&model);
        assert!(
            ops.contains(&"Dense".to_string()) && ops.contains(&"Add".to_string()),
            "{ops:?}"
        );
        assert!(!ops.contains(&"EinSum".to_string()), "{ops:?}");
    }

    #[test]
    fn a_scaling_that_broadcasts_its_input_stays_outside() {
        if !kernel::available() {
            return;
        }
        let mut before = TypedModel::default();
        let n = before.sym("N");
        let x = before
            .add_source("x", f32::fact(&[n.to_dim(), 1.to_dim()]))
            .unwrap();
        let s = before
            .add_const("s", tensor2(&[[0.5f32, 2.0, -1.0]]))
            .unwrap();
        let wide = before.wire_node("scale", math::mul(), &[x, s]).unwrap()[0];
        let w = tract_ndarray::Array2::from_shape_vec((3, 5), values(15, 1)).unwrap();
        let w = before.add_const("w", Tensor::from(w)).unwrap();
        let product = EinSum::new("mk,kn->mn".parse().unwrap(), DatumType::F32);
        let y = before.wire_node("product", product, &[wide, w]).unwrap()[0];
        before.select_output_outlets(&[y]).unwrap();
        let mut after = before.clone();
        rewrite(&mut after).unwrap();
        assert_eq!(ops(&after), ["Source", "Const", "Mul", "Dense"]);
        let (theirs, ours) = (run(&before, 4), run(&after, 4));
        let (theirs, ours) = (plain_f32(&theirs[0]), plain_f32(&ours[0]));
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{ours:?} vs {theirs:?}"
            );
        }
    }
}
