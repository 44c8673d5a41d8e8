//! `LinearClassifier` and `LinearRegressor`, scored and finished as onnxruntime does (tract's
//! own versions differ on binary models and post-transforms).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::adapter::{Kernel, boxed, rows_of_width, rows_of_width_of, tensor_of, values_as};
use super::attrs::{Labels, Pick};
use super::post::{Post, probit};

/// `rows x outputs` of `x . coefficientsᵀ + intercepts`, in f32 as onnxruntime's GEMM does.
#[derive(Debug)]
struct Affine {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    outputs: usize,
    features: usize,
}

impl Affine {
    fn new(coefficients: Vec<f32>, intercepts: Vec<f32>, outputs: usize) -> TractResult<Affine> {
        ensure!(outputs > 0, "no outputs");
        ensure!(
            !coefficients.is_empty() && coefficients.len().is_multiple_of(outputs),
            "{} coefficients do not split into {outputs} rows",
            coefficients.len()
        );
        ensure!(
            intercepts.is_empty() || intercepts.len() == outputs,
            "{} intercepts for {outputs} outputs",
            intercepts.len()
        );
        let features = coefficients.len() / outputs;
        Ok(Affine {
            coefficients,
            intercepts,
            outputs,
            features,
        })
    }

    fn check(&self, op: &str, fact: &TypedFact) -> TractResult<TDim> {
        rows_of_width(op, fact, self.features)
    }

    fn apply(&self, op: &str, input: &TValue) -> TractResult<(usize, Vec<f32>)> {
        let rows = rows_of_width_of(op, input.shape(), self.features)?;
        let width = self.features;
        let x = values_as::<f32>(input)?;
        let mut out = Vec::with_capacity(rows * self.outputs);
        for row in x.chunks_exact(width.max(1)).take(rows) {
            for (o, w) in self.coefficients.chunks_exact(width.max(1)).enumerate() {
                // Summed in f64 and rounded once: as close to any f32 GEMM as one can be.
                let dot: f64 = row
                    .iter()
                    .zip(w)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let bias = f64::from(self.intercepts.get(o).copied().unwrap_or(0.0));
                out.push((dot + bias) as f32);
            }
        }
        Ok((rows, out))
    }
}

pub(crate) fn classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let labels = Labels::read(node, "classlabels_ints", "classlabels_strings")?
        .ok_or_else(|| format_err!("LinearClassifier has no class labels"))?;
    let coefficients: Vec<f32> = node.get_attr_vec("coefficients")?;
    let intercepts: Vec<f32> = node.get_attr_opt_vec("intercepts")?.unwrap_or_default();
    let classes = if intercepts.is_empty() {
        labels.len()
    } else {
        intercepts.len()
    };
    let affine = Affine::new(coefficients, intercepts, classes)?;
    let post = Post::parse(node.get_attr_opt::<&str>("post_transform")?)?;
    Ok((
        boxed(LinearClassifier {
            affine,
            labels,
            post,
        }),
        vec![],
    ))
}

pub(crate) fn regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let targets = node.get_attr_opt::<i64>("targets")?.unwrap_or(1);
    node.expect_attr("targets", targets >= 1, "at least 1")?;
    let coefficients: Vec<f32> = node.get_attr_vec("coefficients")?;
    let intercepts: Vec<f32> = node.get_attr_opt_vec("intercepts")?.unwrap_or_default();
    let affine = Affine::new(coefficients, intercepts, targets as usize)?;
    let post = Post::parse(node.get_attr_opt::<&str>("post_transform")?)?;
    Ok((boxed(LinearRegressor { affine, post }), vec![]))
}

#[derive(Debug)]
struct LinearClassifier {
    affine: Affine,
    labels: Labels,
    post: Post,
}

impl LinearClassifier {
    /// One score column and two labels: onnxruntime writes two columns.
    fn second_column(&self) -> bool {
        self.affine.outputs == 1 && self.labels.len() == 2
    }
}

impl Kernel for LinearClassifier {
    fn name(&self) -> &'static str {
        "LinearClassifier"
    }

    fn outputs(&self) -> usize {
        2
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = self.affine.check(self.name(), inputs[0])?;
        let columns = if self.second_column() {
            2
        } else {
            self.affine.outputs
        };
        Ok(tvec!(
            self.labels.datum_type().fact([rows.clone()]),
            f32::fact([rows, columns.into()])
        ))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (rows, scores) = self.affine.apply(self.name(), &inputs[0])?;
        let classes = self.affine.outputs;
        let picks: Vec<Pick> = scores
            .chunks_exact(classes)
            .map(|row| {
                if classes == 1 {
                    let positive = row[0] > 0.0;
                    if self.labels.len() == 2 {
                        Pick::Class(usize::from(positive))
                    } else {
                        Pick::Raw(i64::from(positive))
                    }
                } else {
                    Pick::Class(first_max(row))
                }
            })
            .collect();
        let scores = if self.second_column() {
            scores
                .iter()
                .flat_map(|&s| {
                    if self.post == Post::Probit {
                        [probit(s), 0.0]
                    } else {
                        [1.0 - s, s]
                    }
                })
                .collect()
        } else {
            let mut scores = scores;
            if classes > 1 {
                scores
                    .chunks_exact_mut(classes)
                    .for_each(|row| self.post.apply(row));
            } else if self.post == Post::Probit {
                scores.iter_mut().for_each(|s| *s = probit(*s));
            }
            scores
        };
        let columns = if self.second_column() { 2 } else { classes };
        Ok(tvec!(
            self.labels.tensor(&picks)?,
            tensor_of(&[rows, columns], scores)?
        ))
    }
}

#[derive(Debug)]
struct LinearRegressor {
    affine: Affine,
    post: Post,
}

impl Kernel for LinearRegressor {
    fn name(&self) -> &'static str {
        "LinearRegressor"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = self.affine.check(self.name(), inputs[0])?;
        Ok(tvec!(f32::fact([rows, self.affine.outputs.into()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (rows, mut scores) = self.affine.apply(self.name(), &inputs[0])?;
        let targets = self.affine.outputs;
        if targets > 1 {
            scores
                .chunks_exact_mut(targets)
                .for_each(|row| self.post.apply(row));
        } else if self.post == Post::Probit {
            scores.iter_mut().for_each(|s| *s = probit(*s));
        }
        Ok(tvec!(tensor_of(&[rows, targets], scores)?))
    }
}

/// The index of the first largest value, as `std::max_element` picks it.
pub(crate) fn first_max(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate().skip(1) {
        if *v > values[best] {
            best = i;
        }
    }
    best
}
