//! 3×3 convolutions of stride 1 by Winograd's minimal filtering, F(2×2, 3×3): each 2×2 block of
//! outputs costs 16 multiplications per input channel instead of 36.
//!
//! tract runs every convolution as one matrix product over an im2col of its input, 9 terms per
//! input channel for each output. Its matrix kernels run near the core's peak, but the products
//! themselves are what a CNN's time goes to: in ResNet-18, 83% of the multiply-adds are in 3×3
//! convolutions of stride 1, and onnxruntime's direct convolutions ran them faster on one core.
//! Here each such convolution becomes three nodes:
//! - [`InputTransform`]: every 4×4 patch `d` of the input (overlapping by 2, zero outside the
//!   padding) becomes `Bᵀ d B`, 16 sums and differences, stored as `[C_in, 16, tiles]`;
//! - tract's own product, `U[16, C_out, C_in] × V[C_in, 16, tiles]`, 16 products with the
//!   kernel's transform `U = G g Gᵀ` as a constant, packed once at load like any weight;
//! - [`OutputTransform`]: each `[16]` result `m` becomes the 2×2 outputs `Aᵀ m A`, plus the bias,
//!   plus a residual block's skip input and then the ReLU when those alone read the convolution
//!   (tract fuses them into its product's store, so they would otherwise be passes of their own).
//!
//! The two transforms are additions only and split their channels over the run's threads, as
//! tract's product does (its 16 products split over them too, `vendor/tract-core`'s
//! `batched-products.diff`). The rounding is not the direct sum's: the tests below hold the
//! results within 1e-5 of the largest output, and the full-size ResNets match onnxruntime within
//! the deep models' 1e-4 (`tests/deep_models.rs`). On ResNet-18 at batch 1, in process, one
//! thread went from 99-105 ms to 79-85, two threads from 57-66 to 52-55 (interleaved runs).
//!
//! [`rewrite`] applies it on the decluttered graph, before it is optimised, to f32 NCHW
//! convolutions with a constant kernel, one group, no dilation, at least [`MIN_CHANNELS`]
//! channels each way and [`MIN_TILES`] tiles an image; every other convolution keeps tract's.

use std::sync::Arc;

use tract_onnx::prelude::tract_linalg::multithread::par_chunks_mut;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::{Add, Max};
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_hir::internal::*;

use super::{binary_with_constant, only_successor};
use crate::engine::onnx_ml::adapter::{Kernel, MlOp};

/// The fewest input and output channels a convolution needs to be rewritten. The products save
/// about `20 · C_in · C_out` multiply-adds a tile, and the transforms cost about `30 · (C_in +
/// C_out)` additions and two more passes over the data: the bundled CNN's 16 → 32 convolution on
/// 8×8 images ran 1.6 to 4 times slower rewritten, ResNet's (64 channels and up) faster.
pub(crate) const MIN_CHANNELS: usize = 64;

/// The fewest tiles an image's output needs to be rewritten: 16 are a 7×7 output, ResNet's last
/// stage at 224×224, where the rewrite still paid. With few tiles the products have few columns,
/// and their time goes to reading `U`, 16/9 the size of the kernel it replaces.
pub(crate) const MIN_TILES: usize = 16;

/// Values per transformed tile: 4 × 4.
const TILE: usize = 16;

/// Replaces every convolution it can in `model` (see the module's documentation).
pub(crate) fn rewrite(model: &mut TypedModel) -> TractResult<()> {
    let mut changed = false;
    for id in 0..model.nodes.len() {
        let Some(shape) = winograd_shape(model, id)? else {
            continue;
        };
        let node = &model.nodes[id];
        let kernel = model
            .outlet_fact(node.inputs[1])?
            .konst
            .clone()
            .context("kernel")?;
        let bias = model
            .outlet_fact(node.inputs[2])?
            .konst
            .clone()
            .context("bias")?;
        let bias = bias.cast_to::<f32>()?;
        let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        let bias = match bias.len() {
            1 => vec![bias[0]; shape.c_out],
            _ => bias,
        };
        let mut last = OutletId::new(id, 0);
        // A residual block's sum (`conv(x) + skip`, `skip` of the same shape) comes next.
        let mut skip = None;
        if let Some(next) = only_successor(model, last)?
            && let Some(other) = same_shape_sum(model, next, last)?
        {
            skip = Some(other);
            last = OutletId::new(next, 0);
        }
        let mut relu = false;
        if let Some(next) = only_successor(model, last)?
            && binary_with_constant::<Max>(model, next, last)?.is_some_and(|c| c == [0.0])
        {
            relu = true;
            last = OutletId::new(next, 0);
        }
        let weights = transform_kernel(
            kernel.try_as_plain_ram()?.as_slice::<f32>()?,
            shape.c_out,
            shape.c_in,
        )?;
        let name = model.nodes[id].name.clone();
        let mut patch = TypedModelPatch::new(format!("winograd {name}"));
        let x = patch.tap_model(model, model.nodes[id].inputs[0])?;
        let v = patch.wire_node(
            format!("{name}.winograd_input"),
            MlOp::from_kernel(Arc::new(InputTransform(shape.clone()))),
            &[x],
        )?[0];
        let u = patch.add_const(format!("{name}.winograd_kernel"), weights)?;
        let product = EinSum::new("bmk,kbn->mbn".parse()?, DatumType::F32);
        let m = patch.wire_node(format!("{name}.winograd_product"), product, &[u, v])?[0];
        let mut inputs = vec![m];
        if let Some(skip) = skip {
            inputs.push(patch.tap_model(model, skip)?);
        }
        let output = OutputTransform {
            shape,
            bias: bias.into(),
            relu,
        };
        let y = patch.wire_node(
            format!("{name}.winograd_output"),
            MlOp::from_kernel(Arc::new(output)),
            &inputs,
        )?[0];
        patch.shunt_outside(model, last, y)?;
        patch.apply(model)?;
        changed = true;
    }
    if changed {
        model.compact()?;
    }
    Ok(())
}

/// Runs `f`, inlined, compiled for AVX2 where the CPU has it. The transforms are loops of
/// additions that LLVM vectorises: eight lanes wide with AVX2, four with x86-64's baseline SSE2.
#[inline(always)]
fn widest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the one requirement of calling a target_feature function is that the CPU has
        // the feature, checked just above. The function itself is safe code.
        #[allow(unsafe_code)]
        return unsafe { avx2(f) };
    }
    f()
}

/// The other input of node `id` if it adds two tensors of `input`'s shape, `input` one of them.
fn same_shape_sum(model: &TypedModel, id: usize, input: OutletId) -> TractResult<Option<OutletId>> {
    let node = &model.nodes[id];
    let is_add = node
        .op_as::<TypedBinOp>()
        .is_some_and(|op| op.0.is::<Add>() && op.1.is_none());
    if !is_add || node.inputs.len() != 2 || node.inputs[0] == node.inputs[1] {
        return Ok(None);
    }
    let Some(&other) = node.inputs.iter().find(|i| **i != input) else {
        return Ok(None);
    };
    let (a, b) = (model.outlet_fact(input)?, model.outlet_fact(other)?);
    let sum = model.outlet_fact(OutletId::new(id, 0))?;
    Ok(
        (a.datum_type == b.datum_type && a.shape == b.shape && sum.shape == a.shape)
            .then_some(other),
    )
}

/// The sizes of a convolution the rewrite applies to.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    c_in: usize,
    c_out: usize,
    /// The input's height and width.
    h: usize,
    w: usize,
    /// The padding before the first row and column.
    top: usize,
    left: usize,
    /// The output's height and width.
    out_h: usize,
    out_w: usize,
}

impl Shape {
    /// Tiles (2×2 blocks of outputs) down and across one image.
    fn tiles(&self) -> (usize, usize) {
        (self.out_h.div_ceil(2), self.out_w.div_ceil(2))
    }
}

/// The shape of node `id` if it is a convolution the rewrite applies to.
fn winograd_shape(model: &TypedModel, id: usize) -> TractResult<Option<Shape>> {
    let node = &model.nodes[id];
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&d| d == 1));
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || spec.kernel_shape.as_slice() != [3, 3]
        || !ones(&spec.dilations)
        || !ones(&spec.strides)
        || spec.input_channels < MIN_CHANNELS
        || spec.output_channels < MIN_CHANNELS
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let kernel = model.outlet_fact(node.inputs[1])?;
    let bias = model.outlet_fact(node.inputs[2])?;
    let (c_in, c_out) = (spec.input_channels, spec.output_channels);
    if input.datum_type != DatumType::F32
        || input.rank() != 4
        || input.shape[1] != c_in.to_dim()
        || !kernel
            .konst
            .as_ref()
            .is_some_and(|k| k.datum_type() == DatumType::F32 && k.shape() == [c_out, c_in, 3, 3])
        || !bias
            .konst
            .as_ref()
            .is_some_and(|b| b.datum_type().is_float() && (b.len() == 1 || b.shape() == [c_out]))
    {
        return Ok(None);
    }
    let (Ok(h), Ok(w)) = (input.shape[2].to_usize(), input.shape[3].to_usize()) else {
        return Ok(None);
    };
    // In TDim, where an input smaller than the kernel gives a negative size instead of an
    // overflow.
    let padded = spec
        .padding
        .compute(&[h.to_dim(), w.to_dim()], &[3, 3], &[1, 1], &[1, 1]);
    let size = |d: &TDim| d.to_i64().ok().and_then(|d| usize::try_from(d).ok());
    let (Some(top), Some(left), Some(out_h), Some(out_w)) = (
        size(&padded[0].pad_before),
        size(&padded[1].pad_before),
        size(&padded[0].convoluted),
        size(&padded[1].convoluted),
    ) else {
        return Ok(None);
    };
    if out_h.div_ceil(2) * out_w.div_ceil(2) < MIN_TILES {
        return Ok(None);
    }
    Ok(Some(Shape {
        c_in,
        c_out,
        h,
        w,
        top,
        left,
        out_h,
        out_w,
    }))
}

/// `U = G g Gᵀ` for every `(output, input)` channel pair of an OIHW kernel, as `[16, C_out,
/// C_in]`: for each of the 16 positions of the transformed tile, the matrix of one product.
/// Computed in f64, rounded once.
fn transform_kernel(kernel: &[f32], c_out: usize, c_in: usize) -> TractResult<Tensor> {
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut u = vec![0f32; TILE * c_out * c_in];
    for (pair, g) in kernel.chunks_exact(9).enumerate() {
        let mut gg = [[0f64; 3]; 4];
        for (i, row) in gg.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|k| G[i][k] * f64::from(g[3 * k + j])).sum();
            }
        }
        for i in 0..4 {
            for j in 0..4 {
                let v: f64 = (0..3).map(|k| gg[i][k] * G[j][k]).sum();
                u[(4 * i + j) * c_out * c_in + pair] = v as f32;
            }
        }
    }
    Tensor::from_shape(&[TILE, c_out, c_in], &u)
}

/// `[N, C_in, H, W]` → `[C_in, 16, N · tiles]`: `Bᵀ d B` for every 4×4 patch `d`.
#[derive(Debug)]
struct InputTransform(Shape);

impl Kernel for InputTransform {
    fn name(&self) -> &'static str {
        "WinogradInput"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (th, tw) = self.0.tiles();
        let tiles = inputs[0].shape[0].clone() * (th * tw);
        Ok(tvec!(f32::fact([
            self.0.c_in.to_dim(),
            TILE.to_dim(),
            tiles
        ])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let s = &self.0;
        let x = inputs[0].try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let plane = s.h * s.w;
        ensure!(
            plane > 0 && x.len() % (s.c_in * plane) == 0,
            "input of {} values",
            x.len()
        );
        let images = x.len() / (s.c_in * plane);
        let (th, tw) = s.tiles();
        let tiles = images * th * tw;
        // Every value is written below, once: zeroing first took 4 ms of a ResNet-18 run on
        // the calling thread alone.
        #[allow(unsafe_code)]
        // SAFETY: the chunks cover the tensor, and each writes every tile of each of its
        // channels at all 16 positions (`transform_input`) before the tensor is read.
        let mut v = unsafe { Tensor::uninitialized::<f32>(&[s.c_in, TILE, tiles])? };
        if tiles > 0 {
            let mut plain = v.try_as_plain_ram_mut()?;
            let out = plain.as_slice_mut::<f32>()?;
            let total = out.len();
            par_chunks_mut(out, TILE * tiles, total, |first, channels| {
                let mut padded = vec![0f32; (2 * th + 2) * (2 * tw + 2)];
                for (c, out) in channels.chunks_exact_mut(TILE * tiles).enumerate() {
                    let mut rows: Vec<&mut [f32]> = out.chunks_exact_mut(tiles).collect();
                    for image in 0..images {
                        let at = (image * s.c_in + first + c) * plane;
                        let input = x.get(at..at + plane).context("input plane")?;
                        s.pad(input, &mut padded);
                        widest(
                            #[inline(always)]
                            || s.transform_input(&padded, &mut rows, image * th * tw),
                        );
                    }
                }
                Ok(())
            })?;
        }
        Ok(tvec!(v.into_tvalue()))
    }
}

impl Shape {
    /// Copies one input plane into `padded`, `(2·th + 2) × (2·tw + 2)` with zeros around it.
    fn pad(&self, input: &[f32], padded: &mut [f32]) {
        let (_, tw) = self.tiles();
        let pw = 2 * tw + 2;
        padded.fill(0.0);
        // Padded column `p` holds input column `p - left`; row likewise.
        let cols = self.w.min(pw.saturating_sub(self.left));
        for (y, row) in input.chunks_exact(self.w).enumerate() {
            let Some(to) = padded.get_mut((y + self.top) * pw + self.left..) else {
                break;
            };
            if let (Some(to), Some(from)) = (to.get_mut(..cols), row.get(..cols)) {
                to.copy_from_slice(from);
            }
        }
    }

    /// `Bᵀ d B` for every tile of one padded plane, into `rows[k][first + tile]`.
    #[inline(always)]
    fn transform_input(&self, padded: &[f32], rows: &mut [&mut [f32]], first: usize) {
        let (th, tw) = self.tiles();
        let pw = 2 * tw + 2;
        let mut r = [
            vec![0f32; pw],
            vec![0f32; pw],
            vec![0f32; pw],
            vec![0f32; pw],
        ];
        for (ty, band) in padded.windows(4 * pw).step_by(2 * pw).take(th).enumerate() {
            let (d0, rest) = band.split_at(pw);
            let (d1, rest) = rest.split_at(pw);
            let (d2, d3) = rest.split_at(pw);
            // Bᵀ d: the rows' sums and differences, across the whole band at once.
            let [r0, r1, r2, r3] = &mut r;
            for p in 0..pw {
                r0[p] = d0[p] - d2[p];
                r1[p] = d1[p] + d2[p];
                r2[p] = d2[p] - d1[p];
                r3[p] = d1[p] - d3[p];
            }
            // (Bᵀ d) B: the same on the columns of each tile.
            let at = first + ty * tw;
            for (i, r) in r.iter().enumerate() {
                let r = &r[..2 * tw + 2];
                let [o0, o1, o2, o3] = &mut rows[4 * i..4 * i + 4] else {
                    continue;
                };
                let (o0, o1) = (&mut o0[at..at + tw], &mut o1[at..at + tw]);
                let (o2, o3) = (&mut o2[at..at + tw], &mut o3[at..at + tw]);
                for t in 0..tw {
                    let (x0, x1, x2, x3) = (r[2 * t], r[2 * t + 1], r[2 * t + 2], r[2 * t + 3]);
                    o0[t] = x0 - x2;
                    o1[t] = x1 + x2;
                    o2[t] = x2 - x1;
                    o3[t] = x1 - x3;
                }
            }
        }
    }
}

/// `[C_out, 16, N · tiles]` (and the skip input `[N, C_out, out_h, out_w]` of a residual sum)
/// → `[N, C_out, out_h, out_w]`: `Aᵀ m A` for every tile, plus the bias, plus the skip input,
/// then the ReLU if asked.
#[derive(Debug)]
struct OutputTransform {
    shape: Shape,
    bias: Arc<[f32]>,
    relu: bool,
}

impl Kernel for OutputTransform {
    fn name(&self) -> &'static str {
        "WinogradOutput"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &self.shape;
        let (th, tw) = s.tiles();
        let images = inputs[0].shape[2].clone() / (th * tw) as u64;
        Ok(tvec!(f32::fact([
            images,
            s.c_out.to_dim(),
            s.out_h.to_dim(),
            s.out_w.to_dim()
        ])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let s = &self.shape;
        let m = inputs[0].try_as_plain_ram()?;
        let m = m.as_slice::<f32>()?;
        let skip = inputs.get(1).map(|t| t.try_as_plain_ram()).transpose()?;
        let skip = skip.as_ref().map(|t| t.as_slice::<f32>()).transpose()?;
        let (th, tw) = s.tiles();
        let per_image = th * tw;
        ensure!(
            m.len() % (s.c_out * TILE * per_image) == 0,
            "product of {} values",
            m.len()
        );
        let images = m.len() / (s.c_out * TILE * per_image);
        let tiles = images * per_image;
        let plane = s.out_h * s.out_w;
        ensure!(
            skip.is_none_or(|skip| skip.len() == images * s.c_out * plane),
            "skip input"
        );
        #[allow(unsafe_code)]
        // SAFETY: the chunks cover the tensor, and each writes every row of each of its
        // planes (`transform_plane`) before the tensor is read.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&[images, s.c_out, s.out_h, s.out_w])? };
        if images > 0 {
            let mut plain = y.try_as_plain_ram_mut()?;
            let out = plain.as_slice_mut::<f32>()?;
            let total = out.len();
            par_chunks_mut(out, plane, total, |first, planes| {
                let mut rows = vec![0f32; 4 * tw];
                for (p, out) in planes.chunks_exact_mut(plane).enumerate() {
                    let (image, channel) = ((first + p) / s.c_out, (first + p) % s.c_out);
                    let at = channel * TILE * tiles;
                    let m = m.get(at..at + TILE * tiles).context("product rows")?;
                    let bias = self.bias.get(channel).copied().unwrap_or(0.0);
                    let skip = skip.map(|skip| &skip[(first + p) * plane..(first + p + 1) * plane]);
                    widest(
                        #[inline(always)]
                        || {
                            self.transform_plane(
                                m,
                                tiles,
                                image * per_image,
                                bias,
                                skip,
                                &mut rows,
                                out,
                            )
                        },
                    );
                }
                Ok(())
            })?;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl OutputTransform {
    /// One output plane from its channel's `[16, tiles]` products, the image's tiles starting at
    /// `first`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn transform_plane(
        &self,
        m: &[f32],
        tiles: usize,
        first: usize,
        bias: f32,
        skip: Option<&[f32]>,
        rows: &mut [f32],
        out: &mut [f32],
    ) {
        let s = &self.shape;
        let (th, tw) = s.tiles();
        let (row0, row1) = rows.split_at_mut(2 * tw);
        for ty in 0..th {
            let at = first + ty * tw;
            let k: [&[f32]; TILE] =
                std::array::from_fn(|k| &m[k * tiles + at..k * tiles + at + tw]);
            for t in 0..tw {
                // Aᵀ m: rows 0+1+2 and 1-2-3 of the 4×4 tile, then the same on the columns.
                let s: [f32; 4] = std::array::from_fn(|j| k[j][t] + k[4 + j][t] + k[8 + j][t]);
                let d: [f32; 4] = std::array::from_fn(|j| k[4 + j][t] - k[8 + j][t] - k[12 + j][t]);
                row0[2 * t] = s[0] + s[1] + s[2] + bias;
                row0[2 * t + 1] = s[1] - s[2] - s[3] + bias;
                row1[2 * t] = d[0] + d[1] + d[2] + bias;
                row1[2 * t + 1] = d[1] - d[2] - d[3] + bias;
            }
            for (dy, row) in [&*row0, &*row1].into_iter().enumerate() {
                let y = 2 * ty + dy;
                if y >= s.out_h {
                    break;
                }
                let to = &mut out[y * s.out_w..(y + 1) * s.out_w];
                to.copy_from_slice(&row[..s.out_w]);
                if let Some(skip) = skip {
                    let skip = &skip[y * s.out_w..(y + 1) * s.out_w];
                    to.iter_mut().zip(skip).for_each(|(to, &v)| *to += v);
                }
                if self.relu {
                    to.iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::math;

    use super::*;

    /// Values in [-1, 1) from a fixed seed.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    /// What follows the convolution in [`convolution`].
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Then {
        Nothing,
        Relu,
        /// A second input added, then the ReLU: a residual block's end.
        SkipRelu,
        /// The convolution is also a model output: nothing may be fused.
        ReluAlsoOutput,
    }

    /// `conv(x) + b`, then `then`, for `[N, c_in, h, w]` inputs, N symbolic, as tract's own ops.
    fn convolution(
        c_in: usize,
        c_out: usize,
        (h, w): (usize, usize),
        padding: PaddingSpec,
        then: Then,
    ) -> TypedModel {
        let mut model = TypedModel::default();
        let n = model.sym("N");
        let x = model
            .add_source(
                "x",
                f32::fact([n.to_dim(), c_in.to_dim(), h.to_dim(), w.to_dim()]),
            )
            .unwrap();
        let kernel = values(c_out * c_in * 9, 1);
        let kernel = model
            .add_const(
                "kernel",
                Tensor::from_shape(&[c_out, c_in, 3, 3], &kernel).unwrap(),
            )
            .unwrap();
        let bias = Tensor::from_shape(&[c_out], &values(c_out, 2)).unwrap();
        let bias = model.add_const("bias", bias).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![3, 3],
                padding,
                dilations: None,
                strides: None,
                input_channels: c_in,
                output_channels: c_out,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let conv = model.wire_node("conv", conv, &[x, kernel, bias]).unwrap()[0];
        let mut y = conv;
        if then == Then::SkipRelu {
            let shape = model.outlet_fact(conv).unwrap().shape.clone();
            let skip = model
                .add_source(
                    "skip",
                    f32::fact(shape.iter().cloned().collect::<TVec<_>>()),
                )
                .unwrap();
            y = model.wire_node("sum", math::add(), &[y, skip]).unwrap()[0];
        }
        if then != Then::Nothing {
            let zero = Tensor::from_shape(&[1, 1, 1, 1], &[0f32]).unwrap();
            let zero = model.add_const("zero", zero).unwrap();
            y = model.wire_node("relu", math::max(), &[y, zero]).unwrap()[0];
        }
        let outputs = if then == Then::ReluAlsoOutput {
            vec![y, conv]
        } else {
            vec![y]
        };
        model.select_output_outlets(&outputs).unwrap();
        model.into_decluttered().unwrap()
    }

    /// The model's outputs, concatenated, for `images` images of seeded values.
    fn run(model: &TypedModel, images: usize) -> Vec<f32> {
        let n = model.symbols.get("N").unwrap();
        let bound = model
            .set_symbols(&std::collections::HashMap::from([(
                n,
                TDim::Val(images as i64),
            )]))
            .unwrap();
        let inputs = (0..bound.inputs.len())
            .map(|ix| {
                let shape = bound
                    .input_fact(ix)
                    .unwrap()
                    .shape
                    .as_concrete()
                    .unwrap()
                    .to_vec();
                let len = shape.iter().product();
                Tensor::from_shape(&shape, &values(len, 3 + ix as u64))
                    .unwrap()
                    .into_tvalue()
            })
            .collect();
        let plan = bound.into_optimized().unwrap().into_runnable().unwrap();
        let outputs = plan.run(inputs).unwrap();
        outputs
            .iter()
            .flat_map(|o| {
                o.try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec()
            })
            .collect()
    }

    fn ops(model: &TypedModel) -> Vec<String> {
        model
            .nodes
            .iter()
            .map(|n| n.op.name().to_string())
            .collect()
    }

    #[test]
    fn convolutions_match_tract_s_own_for_every_tile_edge_padding_and_fusion() {
        let paddings = [
            PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
            PaddingSpec::Valid,
            PaddingSpec::Explicit(tvec![0, 2], tvec![2, 1]),
            PaddingSpec::SameUpper,
        ];
        let m = MIN_CHANNELS;
        let cases = [
            (m, m, Then::Nothing),
            (m + 1, m + 9, Then::Relu),
            (m, m + 4, Then::SkipRelu),
            (m, m, Then::ReluAlsoOutput),
        ];
        for padding in paddings {
            // 16 tiles and more, the last row or column of tiles full or cut in half.
            for (h, w) in [(9, 9), (10, 10), (8, 13), (9, 12), (13, 9)] {
                for (c_in, c_out, then) in cases {
                    let plain = convolution(c_in, c_out, (h, w), padding.clone(), then);
                    let mut ours = plain.clone();
                    rewrite(&mut ours).unwrap();
                    let what = format!("{c_in}→{c_out} {h}×{w} {padding:?} then {then:?}");
                    let ops = ops(&ours);
                    assert!(
                        ops.contains(&"WinogradInput".to_string()),
                        "{what}: {ops:?}"
                    );
                    assert!(!ops.contains(&"Conv".to_string()), "{what}: {ops:?}");
                    // What follows is fused, unless the convolution's own output is read too.
                    let fused = !ops.iter().any(|o| o.contains("Max") || o.contains("Add"));
                    assert_eq!(fused, then != Then::ReluAlsoOutput, "{what}: {ops:?}");
                    for images in [1, 3] {
                        let (expected, got) = (run(&plain, images), run(&ours, images));
                        assert_eq!(expected.len(), got.len(), "{what}");
                        let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
                        for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
                            assert!(
                                (e - g).abs() <= 1e-5 * scale,
                                "{what}, {images} images, value {i}: {e} against {g}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn other_convolutions_keep_tract_s() {
        let m = MIN_CHANNELS;
        let same = || PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]);
        for (c_in, c_out, h, padding) in [
            (m - 1, m, 8, same()),
            (m, m - 1, 8, same()),
            // 9 tiles; 16 but for the padding.
            (m, m, 6, same()),
            (m, m, 8, PaddingSpec::Valid),
        ] {
            let mut model = convolution(c_in, c_out, (h, h), padding, Then::Nothing);
            rewrite(&mut model).unwrap();
            assert!(
                ops(&model).contains(&"Conv".to_string()),
                "{:?}",
                ops(&model)
            );
            assert!(!ops(&model).iter().any(|o| o.starts_with("Winograd")));
        }
    }
}
