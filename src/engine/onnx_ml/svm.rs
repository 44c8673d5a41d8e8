//! `SVMClassifier` and `SVMRegressor` (libsvm's one-vs-one voting and Platt-coupled
//! probabilities), computed as onnxruntime computes them.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::adapter::{Kernel, boxed, rows_of_width, rows_of_width_of, tensor_of, values_as};
use super::attrs::{Labels, Pick};
use super::linear::first_max;
use super::post::{Post, logistic, probit};

#[derive(Debug, Clone, Copy, PartialEq)]
enum KernelFn {
    Linear,
    Poly { gamma: f32, coef0: f32, degree: f32 },
    Rbf { gamma: f32 },
    Sigmoid { gamma: f32, coef0: f32 },
}

impl KernelFn {
    fn read(node: &NodeProto) -> TractResult<KernelFn> {
        let params: Vec<f32> = node.get_attr_opt_vec("kernel_params")?.unwrap_or_default();
        let p = |i: usize| params.get(i).copied().unwrap_or(0.0);
        let (gamma, coef0, degree) = (p(0), p(1), p(2));
        Ok(
            match node
                .get_attr_opt::<&str>("kernel_type")?
                .unwrap_or("LINEAR")
            {
                "LINEAR" => KernelFn::Linear,
                "POLY" => KernelFn::Poly {
                    gamma,
                    coef0,
                    degree,
                },
                "RBF" => KernelFn::Rbf { gamma },
                "SIGMOID" => KernelFn::Sigmoid { gamma, coef0 },
                other => bail!("unknown kernel_type {other}"),
            },
        )
    }

    /// The kernel's value from the dot product of a row and a support vector (RBF, which
    /// needs their distance instead, is computed in [`Vectors::kernels`]).
    fn finish(self, dot: f32) -> f32 {
        match self {
            KernelFn::Linear | KernelFn::Rbf { .. } => dot,
            KernelFn::Poly {
                gamma,
                coef0,
                degree,
            } => {
                let v = gamma * dot + coef0;
                match degree {
                    2.0 => v * v,
                    3.0 => v * v * v,
                    d => v.powf(d),
                }
            }
            KernelFn::Sigmoid { gamma, coef0 } => tanh(gamma * dot + coef0),
        }
    }
}

/// Support vectors, stored feature by feature (`features x count`): a row's kernel values for
/// every vector then build up one feature at a time over contiguous memory, which the compiler
/// vectorises. Each value still sums its features in order, as a dot product would.
#[derive(Debug)]
struct Vectors {
    by_feature: Vec<f32>,
    features: usize,
    count: usize,
}

impl Vectors {
    fn new(data: Vec<f32>, count: usize) -> Vectors {
        let features = data.len() / count;
        let mut by_feature = vec![0f32; data.len()];
        for (v, sv) in data.chunks_exact(features.max(1)).enumerate() {
            for (f, x) in sv.iter().enumerate() {
                by_feature[f * count + v] = *x;
            }
        }
        Vectors {
            by_feature,
            features,
            count,
        }
    }

    fn kernels(&self, kernel: KernelFn, row: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.resize(self.count, 0.0);
        let columns = self.by_feature.chunks_exact(self.count.max(1));
        if let KernelFn::Rbf { gamma } = kernel {
            for (x, column) in row.iter().zip(columns) {
                for (k, s) in out.iter_mut().zip(column) {
                    let d = x - s;
                    *k += d * d;
                }
            }
            out.iter_mut().for_each(|k| *k = (-gamma * *k).exp());
            return;
        }
        for (x, column) in row.iter().zip(columns) {
            for (k, s) in out.iter_mut().zip(column) {
                *k += x * s;
            }
        }
        out.iter_mut().for_each(|k| *k = kernel.finish(*k));
    }
}

/// tanh through one `exp_m1`, faster than libm's `tanhf` and as exact near zero; beyond
/// |v| = 9, tanh is 1 to f32 precision.
fn tanh(v: f32) -> f32 {
    let v = v.clamp(-9.0, 9.0);
    let e = (2.0 * v).exp_m1();
    e / (e + 2.0)
}

pub(crate) fn classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let labels = Labels::read(node, "classlabels_ints", "classlabels_strings")?
        .ok_or_else(|| format_err!("SVMClassifier has no class labels"))?;
    let classes = labels.len();
    let coefficients: Vec<f32> = node.get_attr_vec("coefficients")?;
    let rho: Vec<f32> = node.get_attr_vec("rho")?;
    let per_class: Vec<i64> = node
        .get_attr_opt_vec("vectors_per_class")?
        .unwrap_or_default();
    let support: Vec<f32> = node
        .get_attr_opt_vec("support_vectors")?
        .unwrap_or_default();
    let prob_a: Vec<f32> = node.get_attr_opt_vec("prob_a")?.unwrap_or_default();
    let prob_b: Vec<f32> = node.get_attr_opt_vec("prob_b")?.unwrap_or_default();
    ensure!(
        prob_a.len() == prob_b.len(),
        "prob_a and prob_b differ in length"
    );
    ensure!(
        !coefficients.is_empty(),
        "SVMClassifier has no coefficients"
    );
    ensure!(!rho.is_empty(), "SVMClassifier has no rho");
    let count: i64 = per_class.iter().sum();
    let pairs = classes * classes.saturating_sub(1) / 2;
    let mode = if count > 0 {
        ensure!(
            per_class.len() == classes,
            "vectors_per_class does not match the labels"
        );
        ensure!(
            per_class.iter().all(|&n| n >= 0),
            "negative vectors_per_class"
        );
        let count = count as usize;
        ensure!(
            support.len().is_multiple_of(count),
            "support vectors do not split into {count}"
        );
        ensure!(
            coefficients.len() >= (classes - 1) * count,
            "too few coefficients"
        );
        ensure!(rho.len() >= pairs, "too few rho values");
        ensure!(
            prob_a.is_empty() || prob_a.len() >= pairs,
            "too few prob_a values"
        );
        let mut starts = Vec::with_capacity(classes);
        let mut at = 0;
        for &n in &per_class {
            starts.push(at);
            at += n as usize;
        }
        Mode::Svc {
            vectors: Vectors::new(support, count),
            per_class: per_class.iter().map(|&n| n as usize).collect(),
            starts,
            count,
        }
    } else {
        ensure!(
            coefficients.len().is_multiple_of(classes),
            "coefficients do not split into {classes} rows"
        );
        Mode::Linear {
            features: coefficients.len() / classes,
        }
    };
    let kernel = if matches!(mode, Mode::Linear { .. }) {
        KernelFn::Linear
    } else {
        KernelFn::read(node)?
    };
    Ok((
        boxed(SvmClassifier {
            all_positive: coefficients.iter().all(|&c| c >= 0.0),
            coefficients,
            rho,
            prob_a,
            prob_b,
            kernel,
            labels,
            mode,
            post: Post::parse(node.get_attr_opt::<&str>("post_transform")?)?,
        }),
        vec![],
    ))
}

#[derive(Debug)]
enum Mode {
    /// liblinear: one row of coefficients per class.
    Linear { features: usize },
    /// libsvm: support vectors grouped by class.
    Svc {
        vectors: Vectors,
        per_class: Vec<usize>,
        starts: Vec<usize>,
        count: usize,
    },
}

#[derive(Debug)]
struct SvmClassifier {
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    prob_a: Vec<f32>,
    prob_b: Vec<f32>,
    kernel: KernelFn,
    labels: Labels,
    mode: Mode,
    post: Post,
    all_positive: bool,
}

impl SvmClassifier {
    fn features(&self) -> usize {
        match &self.mode {
            Mode::Linear { features } => *features,
            Mode::Svc { vectors, .. } => vectors.features,
        }
    }

    fn columns(&self) -> usize {
        let classes = self.labels.len();
        match self.mode {
            Mode::Svc { .. } if self.prob_a.is_empty() => {
                if classes > 2 {
                    classes * (classes - 1) / 2
                } else {
                    2
                }
            }
            _ => classes,
        }
    }

    /// One row: the pick and its scores (`columns()` of them).
    fn row(&self, x: &[f32], kernels: &mut Vec<f32>, out: &mut Vec<f32>) -> Pick {
        let classes = self.labels.len();
        let start = out.len();
        match &self.mode {
            Mode::Linear { features } => {
                for w in self.coefficients.chunks_exact(*features) {
                    out.push(x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + self.rho[0]);
                }
                let scores = &mut out[start..];
                let best = first_max(scores);
                let pick = if classes == 2 && self.prob_a.is_empty() {
                    self.binary_pick(scores[best], best)
                } else {
                    Pick::Class(best)
                };
                if classes > 1 {
                    self.post.apply(scores);
                }
                pick
            }
            Mode::Svc {
                vectors,
                per_class,
                starts,
                count,
            } => {
                vectors.kernels(self.kernel, x, kernels);
                let mut votes = vec![0usize; classes];
                let mut pair_scores = Vec::with_capacity(classes * (classes - 1) / 2);
                let mut pair = 0;
                for i in 0..classes - 1 {
                    for j in i + 1..classes {
                        let mut sum = 0f64;
                        let ci = &self.coefficients[(j - 1) * count + starts[i]..][..per_class[i]];
                        for (c, k) in ci.iter().zip(&kernels[starts[i]..]) {
                            sum += f64::from(c * k);
                        }
                        let cj = &self.coefficients[i * count + starts[j]..][..per_class[j]];
                        for (c, k) in cj.iter().zip(&kernels[starts[j]..]) {
                            sum += f64::from(c * k);
                        }
                        sum += f64::from(self.rho[pair]);
                        pair += 1;
                        pair_scores.push(sum as f32);
                        votes[if sum > 0.0 { i } else { j }] += 1;
                    }
                }
                let winner = first_max_count(&votes);
                if !self.prob_a.is_empty() {
                    out.extend(self.probabilities(&pair_scores));
                    if classes >= 2 && self.post != Post::None {
                        self.post.apply(&mut out[start..]);
                    }
                    return Pick::Class(winner);
                }
                let pick = if classes == 2 {
                    self.binary_pick(0.0, winner)
                } else {
                    Pick::Class(winner)
                };
                if classes > 2 {
                    out.extend_from_slice(&pair_scores);
                    self.post.apply(&mut out[start..]);
                } else {
                    let s = pair_scores[0];
                    out.extend(match self.post {
                        Post::Probit => [probit(s), 0.0],
                        Post::None => [-s, s],
                        _ => [1.0 - s, s],
                    });
                }
                pick
            }
        }
    }

    /// onnxruntime's choice between two labels when there are no probabilities.
    fn binary_pick(&self, max_weight: f32, best: usize) -> Pick {
        if (self.all_positive && max_weight >= 0.5) || (max_weight > 0.0 && !self.all_positive) {
            Pick::Class(1)
        } else {
            Pick::Class(best)
        }
    }

    /// Platt-scaled pairwise probabilities, coupled into class probabilities (libsvm's
    /// `multiclass_probability`), in f32 as onnxruntime computes them.
    fn probabilities(&self, pair_scores: &[f32]) -> Vec<f32> {
        let k = self.labels.len();
        let mut r = vec![0f32; k * k];
        let mut index = 0;
        for i in 0..k - 1 {
            for j in i + 1..k {
                let v =
                    1.0 - logistic(pair_scores[index] * self.prob_a[index] + self.prob_b[index]);
                let v = v.clamp(1.0e-7, 1.0 - 1.0e-7);
                r[i * k + j] = v;
                r[j * k + i] = 1.0 - v;
                index += 1;
            }
        }
        couple(k, &r)
    }
}

fn first_max_count(votes: &[usize]) -> usize {
    let mut best = 0;
    for (i, v) in votes.iter().enumerate() {
        if *v > votes[best] {
            best = i;
        }
    }
    best
}

/// Wu, Lin and Weng's pairwise coupling (their method 2), iterated as libsvm does.
fn couple(k: usize, r: &[f32]) -> Vec<f32> {
    let mut q = vec![0f32; k * k];
    let mut qp = vec![0f32; k];
    let mut p = vec![1.0 / k as f32; k];
    let eps = 0.005 / k as f32;
    for i in 0..k {
        for j in 0..i {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = q[j * k + i];
        }
        for j in i + 1..k {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = -r[j * k + i] * r[i * k + j];
        }
    }
    for _ in 0..100 {
        let mut pqp = 0f32;
        for i in 0..k {
            qp[i] = 0.0;
            for j in 0..k {
                qp[i] += q[i * k + j] * p[j];
            }
            pqp += p[i] * qp[i];
        }
        let max_error = qp.iter().map(|v| (v - pqp).abs()).fold(0f32, f32::max);
        if max_error < eps {
            break;
        }
        for i in 0..k {
            let diff = (-qp[i] + pqp) / q[i * k + i];
            p[i] += diff;
            pqp = (pqp + diff * (diff * q[i * k + i] + 2.0 * qp[i])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[i * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
    p
}

impl Kernel for SvmClassifier {
    fn name(&self) -> &'static str {
        "SVMClassifier"
    }

    fn outputs(&self) -> usize {
        2
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = rows_of_width(self.name(), inputs[0], self.features())?;
        Ok(tvec!(
            self.labels.datum_type().fact([rows.clone()]),
            f32::fact([rows, self.columns().into()])
        ))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let rows = rows_of_width_of(self.name(), inputs[0].shape(), self.features())?;
        let width = self.features();
        let x = values_as::<f32>(&inputs[0])?;
        let mut kernels = Vec::new();
        let mut scores = Vec::with_capacity(rows * self.columns());
        let picks: Vec<Pick> = (0..rows)
            .map(|r| self.row(&x[r * width..(r + 1) * width], &mut kernels, &mut scores))
            .collect();
        Ok(tvec!(
            self.labels.tensor(&picks)?,
            tensor_of(&[rows, self.columns()], scores)?
        ))
    }
}

pub(crate) fn regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let coefficients: Vec<f32> = node.get_attr_vec("coefficients")?;
    let rho: Vec<f32> = node.get_attr_vec("rho")?;
    ensure!(!rho.is_empty(), "SVMRegressor has no rho");
    let supports = node.get_attr_opt::<i64>("n_supports")?.unwrap_or(0);
    ensure!(supports >= 0, "negative n_supports");
    let support: Vec<f32> = node
        .get_attr_opt_vec("support_vectors")?
        .unwrap_or_default();
    let vectors = if supports > 0 {
        let n = supports as usize;
        ensure!(
            support.len().is_multiple_of(n),
            "support vectors do not split into {n}"
        );
        ensure!(
            coefficients.len() >= n,
            "fewer coefficients than support vectors"
        );
        Some(Vectors::new(support, n))
    } else {
        None
    };
    Ok((
        boxed(SvmRegressor {
            kernel: if vectors.is_some() {
                KernelFn::read(node)?
            } else {
                KernelFn::Linear
            },
            coefficients,
            rho: rho[0],
            vectors,
            one_class: node.get_attr_opt::<i64>("one_class")?.unwrap_or(0) != 0,
            post: Post::parse(node.get_attr_opt::<&str>("post_transform")?)?,
        }),
        vec![],
    ))
}

#[derive(Debug)]
struct SvmRegressor {
    kernel: KernelFn,
    coefficients: Vec<f32>,
    rho: f32,
    /// `None`: liblinear, the coefficients are one weight per feature.
    vectors: Option<Vectors>,
    one_class: bool,
    post: Post,
}

impl SvmRegressor {
    fn features(&self) -> usize {
        self.vectors
            .as_ref()
            .map_or(self.coefficients.len(), |v| v.features)
    }
}

impl Kernel for SvmRegressor {
    fn name(&self) -> &'static str {
        "SVMRegressor"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = rows_of_width(self.name(), inputs[0], self.features())?;
        Ok(tvec!(f32::fact([rows, 1.into()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let rows = rows_of_width_of(self.name(), inputs[0].shape(), self.features())?;
        let width = self.features();
        let x = values_as::<f32>(&inputs[0])?;
        let mut kernels = Vec::new();
        let out = (0..rows)
            .map(|r| {
                let row = &x[r * width..(r + 1) * width];
                let mut s = match &self.vectors {
                    Some(v) => {
                        v.kernels(self.kernel, row, &mut kernels);
                        kernels
                            .iter()
                            .zip(&self.coefficients)
                            .map(|(k, c)| k * c)
                            .sum::<f32>()
                            + self.rho
                    }
                    None => {
                        row.iter()
                            .zip(&self.coefficients)
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            + self.rho
                    }
                };
                if self.one_class {
                    s = if s > 0.0 { 1.0 } else { -1.0 };
                }
                if self.post == Post::Probit {
                    probit(s)
                } else {
                    s
                }
            })
            .collect();
        Ok(tvec!(tensor_of(&[rows, 1], out)?))
    }
}
