//! Per-feature transforms: `Scaler`, `Normalizer`, `Binarizer` and `Imputer`, as onnxruntime
//! computes them (tract's Normalizer divides MAX by the largest absolute value; onnxruntime,
//! which scikit-learn exports are checked against, by the largest value).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::adapter::{Kernel, boxed, rows_and_width_of, tensor_of, values_as};

/// `values[feature]`, where a single value applies to every feature.
fn per_feature(values: &[f32], feature: usize) -> f32 {
    if values.len() == 1 {
        values[0]
    } else {
        values[feature]
    }
}

/// The width of the last axis, which per-feature lists must match (or be of length 1).
fn check_list(op: &str, attr: &str, len: usize, fact: &TypedFact) -> TractResult<()> {
    if len > 1
        && let Some(Ok(width)) = fact.shape.last().map(|d| d.to_usize())
    {
        ensure!(len == width, "{op} has {len} {attr} for {width} features");
    }
    Ok(())
}

fn last_width(shape: &[usize]) -> usize {
    shape.last().copied().unwrap_or(1).max(1)
}

pub(crate) fn scaler(
    _: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let offset: Vec<f32> = node
        .get_attr_opt_vec("offset")?
        .unwrap_or_else(|| vec![0.0]);
    let scale: Vec<f32> = node.get_attr_opt_vec("scale")?.unwrap_or_else(|| vec![1.0]);
    ensure!(
        !offset.is_empty() && !scale.is_empty(),
        "Scaler needs offset and scale"
    );
    Ok((boxed(Scaler { offset, scale }), vec![]))
}

#[derive(Debug)]
struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

impl Kernel for Scaler {
    fn name(&self) -> &'static str {
        "Scaler"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        check_list(self.name(), "offsets", self.offset.len(), inputs[0])?;
        check_list(self.name(), "scales", self.scale.len(), inputs[0])?;
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let width = last_width(&shape);
        for list in [&self.offset, &self.scale] {
            ensure!(
                list.len() == 1 || list.len() == width,
                "Scaler lists do not match {width} features"
            );
        }
        let out = if inputs[0].datum_type() == DatumType::F32 {
            let x = values_as::<f32>(&inputs[0])?;
            x.iter()
                .enumerate()
                .map(|(i, v)| {
                    (v - per_feature(&self.offset, i % width)) * per_feature(&self.scale, i % width)
                })
                .collect()
        } else {
            let x = values_as::<f64>(&inputs[0])?;
            x.iter()
                .enumerate()
                .map(|(i, v)| {
                    let (o, s) = (
                        per_feature(&self.offset, i % width),
                        per_feature(&self.scale, i % width),
                    );
                    ((v - f64::from(o)) * f64::from(s)) as f32
                })
                .collect()
        };
        Ok(tvec!(tensor_of(&shape, out)?))
    }
}

pub(crate) fn normalizer(
    _: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let norm = match node.get_attr_opt::<&str>("norm")?.unwrap_or("MAX") {
        "MAX" => Norm::Max,
        "L1" => Norm::L1,
        "L2" => Norm::L2,
        other => bail!("unknown norm {other}"),
    };
    Ok((boxed(Normalizer { norm }), vec![]))
}

#[derive(Debug, Clone, Copy)]
enum Norm {
    Max,
    L1,
    L2,
}

#[derive(Debug)]
struct Normalizer {
    norm: Norm,
}

impl Kernel for Normalizer {
    fn name(&self) -> &'static str {
        "Normalizer"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].rank() <= 2, "Normalizer takes [N, F] or [F]");
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let (_, width) = rows_and_width_of(self.name(), &shape)?;
        let x = values_as::<f32>(&inputs[0])?;
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(width.max(1)) {
            match self.norm {
                Norm::Max => {
                    let max = row.iter().copied().fold(f32::MIN, f32::max);
                    out.extend(row.iter().map(|v| if max != 0.0 { v / max } else { *v }));
                }
                Norm::L1 => {
                    let sum: f32 = row.iter().map(|v| v.abs()).sum();
                    out.extend(row.iter().map(|v| if sum != 0.0 { v / sum } else { *v }));
                }
                Norm::L2 => {
                    let sum: f32 = row.iter().map(|v| v * v).sum();
                    out.extend(row.iter().map(|v| {
                        if sum == 0.0 {
                            *v
                        } else {
                            let n = (v * v / sum).sqrt();
                            if *v < 0.0 { -n } else { n }
                        }
                    }));
                }
            }
        }
        Ok(tvec!(tensor_of(&shape, out)?))
    }
}

pub(crate) fn binarizer(
    _: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let threshold = node.get_attr_opt::<f32>("threshold")?.unwrap_or(0.0);
    Ok((boxed(Binarizer { threshold }), vec![]))
}

#[derive(Debug)]
struct Binarizer {
    threshold: f32,
}

impl Kernel for Binarizer {
    fn name(&self) -> &'static str {
        "Binarizer"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let dt = inputs[0].datum_type();
        let shape = inputs[0].shape().to_vec();
        let x = values_as::<f64>(&inputs[0])?;
        let threshold = f64::from(self.threshold);
        let ones: Vec<f64> = x
            .iter()
            .map(|v| if *v > threshold { 1.0 } else { 0.0 })
            .collect();
        let out = tensor_of(&shape, ones)?;
        Ok(tvec!(out.cast_to_dt(dt)?.into_owned().into_tvalue()))
    }
}

pub(crate) fn imputer(
    _: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let floats: Option<Vec<f32>> = node
        .get_attr_opt_vec("imputed_value_floats")?
        .filter(|v| !v.is_empty());
    let ints: Option<Vec<i64>> = node
        .get_attr_opt_vec("imputed_value_int64s")?
        .filter(|v| !v.is_empty());
    let imputer = match (floats, ints) {
        (Some(values), None) => Imputer::Floats {
            values,
            replaced: node
                .get_attr_opt::<f32>("replaced_value_float")?
                .unwrap_or(0.0),
        },
        (None, Some(values)) => Imputer::Ints {
            values,
            replaced: node
                .get_attr_opt::<i64>("replaced_value_int64")?
                .unwrap_or(0),
        },
        _ => bail!("Imputer needs exactly one of imputed_value_floats and imputed_value_int64s"),
    };
    Ok((boxed(imputer), vec![]))
}

#[derive(Debug)]
enum Imputer {
    Floats { values: Vec<f32>, replaced: f32 },
    Ints { values: Vec<i64>, replaced: i64 },
}

impl Kernel for Imputer {
    fn name(&self) -> &'static str {
        "Imputer"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (dt, len) = match self {
            Imputer::Floats { values, .. } => (DatumType::F32, values.len()),
            Imputer::Ints { values, .. } => (DatumType::I64, values.len()),
        };
        ensure!(
            inputs[0].datum_type == dt
                || (dt == DatumType::F32 && inputs[0].datum_type == DatumType::F64),
            "Imputer with {dt:?} values cannot take {:?}",
            inputs[0].datum_type
        );
        check_list(self.name(), "imputed values", len, inputs[0])?;
        Ok(tvec!(dt.fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let width = last_width(&shape);
        match self {
            Imputer::Floats { values, replaced } => {
                ensure!(
                    values.len() == 1 || values.len() == width,
                    "Imputer values do not match {width} features"
                );
                let x = values_as::<f32>(&inputs[0])?;
                let out = x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let missing = if replaced.is_nan() {
                            v.is_nan()
                        } else {
                            v == replaced
                        };
                        if missing {
                            per_feature(values, i % width)
                        } else {
                            *v
                        }
                    })
                    .collect();
                Ok(tvec!(tensor_of(&shape, out)?))
            }
            Imputer::Ints { values, replaced } => {
                ensure!(
                    values.len() == 1 || values.len() == width,
                    "Imputer values do not match {width} features"
                );
                let x = values_as::<i64>(&inputs[0])?;
                let out = x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if v == replaced {
                            if values.len() == 1 {
                                values[0]
                            } else {
                                values[i % width]
                            }
                        } else {
                            *v
                        }
                    })
                    .collect();
                Ok(tvec!(tensor_of(&shape, out)?))
            }
        }
    }
}
