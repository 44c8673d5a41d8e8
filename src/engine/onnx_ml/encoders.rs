//! Feature encoders and plumbing: `OneHotEncoder`, `LabelEncoder`, `ArrayFeatureExtractor`,
//! `FeatureVectorizer`, and `ZipMap`, which predictd serves as the `[N, classes]` tensor it
//! was given (a tensor API has no sequence-of-maps type; the class order is the model's).

use std::collections::HashMap;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::adapter::{Kernel, boxed, tensor_of, values_as};

type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// A category or label-encoder key, hashable whatever its type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Int(i64),
    Str(String),
    /// Bits of an f32, with -0.0 folded into 0.0 and every NaN into one.
    Float(u32),
}

fn float_key(v: f32) -> Key {
    Key::Float(if v == 0.0 {
        0
    } else if v.is_nan() {
        f32::NAN.to_bits()
    } else {
        v.to_bits()
    })
}

/// The keys of a tensor, element by element.
fn keys_of(value: &TValue) -> TractResult<Vec<Key>> {
    Ok(match value.datum_type() {
        DatumType::String => value
            .try_as_plain_ram()?
            .as_slice::<String>()?
            .iter()
            .map(|s| Key::Str(s.clone()))
            .collect(),
        DatumType::F32 | DatumType::F64 => values_as::<f32>(value)?
            .iter()
            .map(|v| float_key(*v))
            .collect(),
        dt if dt.is_integer() || dt == DatumType::TDim => values_as::<i64>(value)?
            .iter()
            .map(|v| Key::Int(*v))
            .collect(),
        dt => bail!("cannot encode {dt:?}"),
    })
}

pub(crate) fn one_hot(_: &ParsingContext, node: &NodeProto) -> Built {
    let ints: Option<Vec<i64>> = node
        .get_attr_opt_vec("cats_int64s")?
        .filter(|v| !v.is_empty());
    let strings: Option<Vec<String>> = node
        .get_attr_opt_vec("cats_strings")?
        .filter(|v| !v.is_empty());
    let categories: Vec<Key> = match (ints, strings) {
        (Some(i), None) => i.into_iter().map(Key::Int).collect(),
        (None, Some(s)) => s.into_iter().map(Key::Str).collect(),
        _ => bail!("OneHotEncoder needs exactly one of cats_int64s and cats_strings"),
    };
    let index = categories
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i))
        .collect();
    let zeros = node.get_attr_opt::<i64>("zeros")?.unwrap_or(1) != 0;
    Ok((
        boxed(OneHot {
            index,
            count: categories.len(),
            zeros,
            ints: matches!(categories[0], Key::Int(_)),
        }),
        vec![],
    ))
}

#[derive(Debug)]
struct OneHot {
    index: HashMap<Key, usize>,
    count: usize,
    /// Unknown categories encode as all zeros (else they are an error).
    zeros: bool,
    ints: bool,
}

impl Kernel for OneHot {
    fn name(&self) -> &'static str {
        "OneHotEncoder"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        shape.push(self.count.into());
        Ok(tvec!(f32::fact(shape)))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let keys: Vec<Key> = if self.ints && inputs[0].datum_type().is_float() {
            // onnxruntime truncates float categories to integers.
            values_as::<f64>(&inputs[0])?
                .iter()
                .map(|v| Key::Int(*v as i64))
                .collect()
        } else {
            keys_of(&inputs[0])?
        };
        let mut out = vec![0f32; keys.len() * self.count];
        for (i, key) in keys.iter().enumerate() {
            match self.index.get(key) {
                Some(&c) => out[i * self.count + c] = 1.0,
                None if self.zeros => {}
                None => bail!("OneHotEncoder: unknown category {key:?}"),
            }
        }
        let mut shape = inputs[0].shape().to_vec();
        shape.push(self.count);
        Ok(tvec!(tensor_of(&shape, out)?))
    }
}

pub(crate) fn label_encoder(ctx: &ParsingContext, node: &NodeProto) -> Built {
    let tensor = |name: &str| -> TractResult<Option<Tensor>> {
        node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)?
            .map(|p| ctx.load_tensor(p))
            .transpose()
    };
    let keys: Option<Vec<Key>> = if let Some(v) = node
        .get_attr_opt_vec::<i64>("keys_int64s")?
        .filter(|v| !v.is_empty())
    {
        Some(v.into_iter().map(Key::Int).collect())
    } else if let Some(v) = node
        .get_attr_opt_vec::<String>("keys_strings")?
        .filter(|v| !v.is_empty())
    {
        Some(v.into_iter().map(Key::Str).collect())
    } else if let Some(v) = node
        .get_attr_opt_vec::<f32>("keys_floats")?
        .filter(|v| !v.is_empty())
    {
        Some(v.into_iter().map(float_key).collect())
    } else if let Some(t) = tensor("keys_tensor")? {
        Some(keys_of(&t.into_tvalue())?)
    } else {
        None
    };
    let encoder = match keys {
        Some(keys) => {
            let values = if let Some(v) = node
                .get_attr_opt_vec::<i64>("values_int64s")?
                .filter(|v| !v.is_empty())
            {
                Values::Ints(v, node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1))
            } else if let Some(v) = node
                .get_attr_opt_vec::<String>("values_strings")?
                .filter(|v| !v.is_empty())
            {
                Values::Strings(
                    v,
                    node.get_attr_opt::<String>("default_string")?
                        .unwrap_or_else(|| "_Unused".into()),
                )
            } else if let Some(v) = node
                .get_attr_opt_vec::<f32>("values_floats")?
                .filter(|v| !v.is_empty())
            {
                Values::Floats(
                    v,
                    node.get_attr_opt::<f32>("default_float")?.unwrap_or(-0.0),
                )
            } else if let Some(t) = tensor("values_tensor")? {
                let default = tensor("default_tensor")?;
                Values::from_tensor(&t, default.as_ref())?
            } else {
                bail!("LabelEncoder has keys but no values")
            };
            ensure!(
                values.len() == keys.len(),
                "LabelEncoder has {} keys and {} values",
                keys.len(),
                values.len()
            );
            let index = keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect();
            LabelEncoder::Map { index, values }
        }
        None => LabelEncoder::Classes {
            classes: node.get_attr_vec::<String>("classes_strings")?,
            default_int: node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1),
            default_string: node
                .get_attr_opt::<String>("default_string")?
                .unwrap_or_else(|| "_Unused".into()),
        },
    };
    Ok((boxed(encoder), vec![]))
}

#[derive(Debug)]
enum Values {
    Ints(Vec<i64>, i64),
    Strings(Vec<String>, String),
    Floats(Vec<f32>, f32),
}

impl Values {
    fn from_tensor(t: &Tensor, default: Option<&Tensor>) -> TractResult<Values> {
        let plain = t.try_as_plain_ram()?;
        let first = |dt| -> TractResult<Option<Tensor>> {
            default
                .map(|d| d.cast_to_dt(dt).map(|c| c.into_owned()))
                .transpose()
        };
        Ok(match t.datum_type() {
            DatumType::String => Values::Strings(
                plain.as_slice::<String>()?.to_vec(),
                first(DatumType::String)?
                    .and_then(|d| {
                        d.try_as_plain_ram()
                            .ok()?
                            .as_slice::<String>()
                            .ok()?
                            .first()
                            .cloned()
                    })
                    .unwrap_or_else(|| "_Unused".into()),
            ),
            DatumType::F32 | DatumType::F64 => Values::Floats(
                t.cast_to::<f32>()?
                    .try_as_plain_ram()?
                    .as_slice::<f32>()?
                    .to_vec(),
                first(DatumType::F32)?
                    .map(|d| d.cast_to_scalar::<f32>())
                    .transpose()?
                    .unwrap_or(-0.0),
            ),
            _ => Values::Ints(
                t.cast_to::<i64>()?
                    .try_as_plain_ram()?
                    .as_slice::<i64>()?
                    .to_vec(),
                first(DatumType::I64)?
                    .map(|d| d.cast_to_scalar::<i64>())
                    .transpose()?
                    .unwrap_or(-1),
            ),
        })
    }

    fn len(&self) -> usize {
        match self {
            Values::Ints(v, _) => v.len(),
            Values::Strings(v, _) => v.len(),
            Values::Floats(v, _) => v.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Values::Ints(..) => DatumType::I64,
            Values::Strings(..) => DatumType::String,
            Values::Floats(..) => DatumType::F32,
        }
    }
}

#[derive(Debug)]
enum LabelEncoder {
    /// ai.onnx.ml 2 and later: keys to values.
    Map {
        index: HashMap<Key, usize>,
        values: Values,
    },
    /// ai.onnx.ml 1: strings to their index in `classes`, or indices to strings.
    Classes {
        classes: Vec<String>,
        default_int: i64,
        default_string: String,
    },
}

impl Kernel for LabelEncoder {
    fn name(&self) -> &'static str {
        "LabelEncoder"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = match self {
            LabelEncoder::Map { values, .. } => values.datum_type(),
            LabelEncoder::Classes { .. } if inputs[0].datum_type == DatumType::String => {
                DatumType::I64
            }
            LabelEncoder::Classes { .. } => DatumType::String,
        };
        Ok(tvec!(dt.fact(inputs[0].shape.clone())))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let keys = keys_of(&inputs[0])?;
        let out = match self {
            LabelEncoder::Map { index, values } => {
                let at = |k: &Key| index.get(k).copied();
                match values {
                    Values::Ints(v, d) => tensor_of(
                        &shape,
                        keys.iter().map(|k| at(k).map_or(*d, |i| v[i])).collect(),
                    )?,
                    Values::Floats(v, d) => tensor_of(
                        &shape,
                        keys.iter().map(|k| at(k).map_or(*d, |i| v[i])).collect(),
                    )?,
                    Values::Strings(v, d) => tensor_of::<String>(
                        &shape,
                        keys.iter()
                            .map(|k| at(k).map_or_else(|| d.clone(), |i| v[i].clone()))
                            .collect(),
                    )?,
                }
            }
            LabelEncoder::Classes {
                classes,
                default_int,
                default_string,
            } => {
                if inputs[0].datum_type() == DatumType::String {
                    let index: HashMap<&str, i64> = classes
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.as_str(), i as i64))
                        .collect();
                    tensor_of(
                        &shape,
                        keys.iter()
                            .map(|k| match k {
                                Key::Str(s) => {
                                    index.get(s.as_str()).copied().unwrap_or(*default_int)
                                }
                                _ => *default_int,
                            })
                            .collect(),
                    )?
                } else {
                    tensor_of::<String>(
                        &shape,
                        keys.iter()
                            .map(|k| match k {
                                Key::Int(i) => usize::try_from(*i)
                                    .ok()
                                    .and_then(|i| classes.get(i).cloned())
                                    .unwrap_or_else(|| default_string.clone()),
                                _ => default_string.clone(),
                            })
                            .collect(),
                    )?
                }
            }
        };
        Ok(tvec!(out))
    }
}

pub(crate) fn array_feature_extractor(_: &ParsingContext, _: &NodeProto) -> Built {
    Ok((boxed(ArrayFeatureExtractor), vec![]))
}

#[derive(Debug)]
struct ArrayFeatureExtractor;

impl Kernel for ArrayFeatureExtractor {
    fn name(&self) -> &'static str {
        "ArrayFeatureExtractor"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2,
            "ArrayFeatureExtractor takes data and indices"
        );
        let picked: TDim = inputs[1].shape.iter().product();
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        match shape.len() {
            0 => bail!("ArrayFeatureExtractor cannot index a scalar"),
            1 => shape = tvec!(1.into(), picked),
            n => shape[n - 1] = picked,
        }
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x: &Tensor = &inputs[0];
        let indices = values_as::<i64>(&inputs[1])?;
        let width = *x
            .shape()
            .last()
            .ok_or_else(|| format_err!("cannot index a scalar"))?;
        let picks = indices
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .filter(|&i| i < width)
                    .ok_or_else(|| {
                        format_err!("ArrayFeatureExtractor: index {i} is outside 0..{width}")
                    })
            })
            .collect::<TractResult<Vec<usize>>>()?;
        let rows = x.len().checked_div(width).unwrap_or(0);
        let mut shape = x.shape().to_vec();
        match shape.len() {
            1 => shape = vec![1, picks.len()],
            n => shape[n - 1] = picks.len(),
        }
        let out = if x.datum_type() == DatumType::String {
            let s = x.try_as_plain_ram()?.as_slice::<String>()?;
            let v = (0..rows)
                .flat_map(|r| picks.iter().map(move |&p| s[r * width + p].clone()))
                .collect();
            tensor_of::<String>(&shape, v)?
        } else {
            let size = x.datum_type().size_of();
            let bytes = x.as_bytes();
            let mut out = Tensor::zero_dt(x.datum_type(), &shape)?;
            let dst = out.as_bytes_mut();
            let mut at = 0;
            for r in 0..rows {
                for &p in &picks {
                    let src = (r * width + p) * size;
                    dst[at..at + size].copy_from_slice(&bytes[src..src + size]);
                    at += size;
                }
            }
            out.into_tvalue()
        };
        Ok(tvec!(out))
    }
}

pub(crate) fn feature_vectorizer(_: &ParsingContext, node: &NodeProto) -> Built {
    let dims: Vec<i64> = node
        .get_attr_opt_vec("inputdimensions")?
        .unwrap_or_default();
    ensure!(dims.iter().all(|&d| d >= 0), "negative inputdimensions");
    Ok((
        boxed(FeatureVectorizer {
            dims: dims.into_iter().map(|d| d as usize).collect(),
        }),
        vec![],
    ))
}

#[derive(Debug)]
struct FeatureVectorizer {
    dims: Vec<usize>,
}

impl Kernel for FeatureVectorizer {
    fn name(&self) -> &'static str {
        "FeatureVectorizer"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == self.dims.len(),
            "FeatureVectorizer has {} inputs but {} inputdimensions",
            inputs.len(),
            self.dims.len()
        );
        let rows = inputs
            .first()
            .and_then(|f| f.shape.first().cloned())
            .unwrap_or_else(|| 1.into());
        Ok(tvec!(f32::fact([
            rows,
            self.dims.iter().sum::<usize>().into()
        ])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let total: usize = self.dims.iter().sum();
        let rows = inputs
            .first()
            .and_then(|i| i.shape().first().copied())
            .unwrap_or(1);
        let mut out = vec![0f32; rows * total];
        let mut offset = 0;
        for (input, &dim) in inputs.iter().zip(&self.dims) {
            let (n, width) = match input.shape() {
                [] => (1, 1),
                [n] => (*n, 1),
                s => (s[0], s[1..].iter().product()),
            };
            ensure!(
                n == rows,
                "FeatureVectorizer inputs have {rows} and {n} rows"
            );
            let x = values_as::<f32>(input)?;
            for r in 0..rows {
                let take = width.min(dim);
                out[r * total + offset..][..take].copy_from_slice(&x[r * width..][..take]);
            }
            offset += dim;
        }
        Ok(tvec!(tensor_of(&[rows, total], out)?))
    }
}

pub(crate) fn zipmap(_: &ParsingContext, _: &NodeProto) -> Built {
    Ok((boxed(ZipMap), vec![]))
}

#[derive(Debug)]
struct ZipMap;

impl Kernel for ZipMap {
    fn name(&self) -> &'static str {
        "ZipMap"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].rank() == 2, "ZipMap takes [N, classes] scores");
        Ok(tvec!(inputs[0].without_value()))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(inputs)
    }
}
