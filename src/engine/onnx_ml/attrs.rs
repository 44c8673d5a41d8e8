//! Reading ONNX-ML node attributes: numeric lists that ai.onnx.ml opset 3 may give either as
//! floats or as a double tensor (`<name>_as_tensor`), and class labels.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// A numeric list attribute, from `name` (floats) or `name_as_tensor`. The flag says whether
/// it came as doubles: such models compare and sum in f64, as onnxruntime does.
pub(crate) fn numbers(
    ctx: &ParsingContext,
    node: &NodeProto,
    name: &str,
) -> TractResult<Option<(Vec<f64>, bool)>> {
    if let Some(floats) = node.get_attr_opt_vec::<f32>(name)? {
        return Ok(Some((floats.into_iter().map(f64::from).collect(), false)));
    }
    let tensor_name = format!("{name}_as_tensor");
    match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(&tensor_name)? {
        Some(proto) => {
            let tensor = ctx.load_tensor(proto)?;
            let double = tensor.datum_type() == DatumType::F64;
            let values = tensor.cast_to::<f64>()?;
            let values = values.try_as_plain_ram()?.as_slice::<f64>()?.to_vec();
            Ok(Some((values, double)))
        }
        None => Ok(None),
    }
}

/// An integer list attribute that must have `len` entries when present.
pub(crate) fn ints_of_len(node: &NodeProto, name: &str, len: usize) -> TractResult<Vec<i64>> {
    let values = node.get_attr_opt_vec::<i64>(name)?.unwrap_or_default();
    node.expect_attr(name, values.len() == len, || {
        format!("{len} entries, got {}", values.len())
    })?;
    Ok(values)
}

/// Class labels: integers or strings, in the model's order.
#[derive(Debug, Clone)]
pub(crate) enum Labels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl Labels {
    /// `classlabels_int64s` / `classlabels_strings` (or the given attribute names).
    pub(crate) fn read(node: &NodeProto, ints: &str, strings: &str) -> TractResult<Option<Labels>> {
        let i = node
            .get_attr_opt_vec::<i64>(ints)?
            .filter(|v| !v.is_empty());
        let s = node
            .get_attr_opt_vec::<String>(strings)?
            .filter(|v| !v.is_empty());
        match (i, s) {
            (Some(_), Some(_)) => bail!("both {ints} and {strings} are set"),
            (Some(i), None) => Ok(Some(Labels::Ints(i))),
            (None, Some(s)) => Ok(Some(Labels::Strings(s))),
            (None, None) => Ok(None),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Labels::Ints(v) => v.len(),
            Labels::Strings(v) => v.len(),
        }
    }

    pub(crate) fn datum_type(&self) -> DatumType {
        match self {
            Labels::Ints(_) => DatumType::I64,
            Labels::Strings(_) => DatumType::String,
        }
    }

    /// The label tensor for picks, each an index into the labels; `raw` picks (see
    /// [`Pick`]) are integer labels themselves.
    pub(crate) fn tensor(&self, picks: &[Pick]) -> TractResult<TValue> {
        let n = picks.len();
        match self {
            Labels::Ints(labels) => {
                let values = picks
                    .iter()
                    .map(|p| match *p {
                        Pick::Class(k) => labels[k],
                        Pick::Raw(v) => v,
                    })
                    .collect();
                super::adapter::tensor_of(&[n], values)
            }
            Labels::Strings(labels) => {
                let values = picks
                    .iter()
                    .map(|p| {
                        let k = match *p {
                            Pick::Class(k) => k,
                            Pick::Raw(v) => v as usize,
                        };
                        labels.get(k).cloned().unwrap_or_default()
                    })
                    .collect();
                super::adapter::tensor_of::<String>(&[n], values)
            }
        }
    }
}

/// A row's predicted class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The class at this index of the labels.
    Class(usize),
    /// onnxruntime answers the literal label 1 or 0 in some two-class layouts, whatever the
    /// labels are (an index, for string labels). We answer what it does.
    Raw(i64),
}
