//! A model's inputs and outputs, and the check that turns named request tensors into the
//! validated, ordered inputs the engine runs. Every front end goes through [`Signature::validate`].

use std::collections::HashMap;
use std::fmt;

use crate::engine::tensor::{DType, ShapeDisplay, Tensor};
use crate::error::{Classify, ErrorKind};

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// Any size, named by a symbol; every dimension with the same symbol takes the same size
    /// within one request (the batch dimension `N`, for example).
    Symbol(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => write!(f, "{s}"),
        }
    }
}

/// The name, dtype and shape of one input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name in the graph.
    pub name: String,
    /// The element type.
    pub dtype: DType,
    /// The declared dimensions.
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// The shape with -1 for every free dimension, as the protocols report it.
    pub fn wire_shape(&self) -> Vec<i64> {
        self.shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => i64::try_from(*n).unwrap_or(i64::MAX),
                Dim::Symbol(_) => -1,
            })
            .collect()
    }

    fn shape_display(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// A model's inputs and outputs, in the graph's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Inputs a request must provide.
    pub inputs: Vec<TensorSpec>,
    /// Outputs a run produces.
    pub outputs: Vec<TensorSpec>,
    /// The symbol of the batch dimension when the first dimension of every input and output is
    /// the same free symbol; such models take any number of rows, and batches may be merged.
    pub batch_symbol: Option<String>,
    /// Inputs whose values index the rows of a table in the model (a token's embedding).
    pub index_limits: Vec<IndexLimit>,
}

/// An integer input whose every value picks a row of a constant table: tract reads the table
/// at that row unchecked, so a value past it fails the run (a panic, caught) instead of being
/// refused. ONNX's `Gather` also takes negative values counted from the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexLimit {
    /// The input's position in [`Signature::inputs`].
    pub input: usize,
    /// The table's rows: values go from `-rows` to `rows - 1`.
    pub rows: usize,
    /// The table's name in the graph.
    pub table: String,
}

impl IndexLimit {
    /// The first value out of range and its position among the tensor's values.
    fn first_outside(&self, tensor: &Tensor) -> Option<(usize, i64)> {
        let rows = i64::try_from(self.rows).unwrap_or(i64::MAX);
        let values: Vec<i64> = match tensor.dtype() {
            DType::I64 => tensor.to_values()?,
            DType::I32 => tensor
                .to_values::<i32>()?
                .into_iter()
                .map(i64::from)
                .collect(),
            _ => return None,
        };
        values
            .into_iter()
            .enumerate()
            .find(|&(_, v)| !(-rows..rows).contains(&v))
    }
}

/// Why a request's tensors do not fit a model's signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A declared input is absent.
    #[error("missing input '{input}' ({dtype} {shape}); the model's inputs are: {all}")]
    Missing {
        /// The input's name.
        input: String,
        /// Its dtype.
        dtype: DType,
        /// Its declared shape.
        shape: String,
        /// All input names.
        all: String,
    },
    /// A tensor names no input of the model.
    #[error("unknown input '{input}'; the model's inputs are: {all}")]
    Unknown {
        /// The name sent.
        input: String,
        /// All input names.
        all: String,
    },
    /// The same input was sent twice.
    #[error("input '{input}' was sent more than once")]
    Duplicate {
        /// The input's name.
        input: String,
    },
    /// Wrong element type.
    #[error("input '{input}': expected dtype {expected}, got {got}")]
    DType {
        /// The input's name.
        input: String,
        /// The declared dtype.
        expected: DType,
        /// The dtype sent.
        got: DType,
    },
    /// Wrong rank or a fixed dimension of the wrong size.
    #[error("input '{input}': expected shape {expected}, got {}", ShapeDisplay(.got))]
    Shape {
        /// The input's name.
        input: String,
        /// The declared shape.
        expected: String,
        /// The shape sent.
        got: Vec<usize>,
    },
    /// A batch with no rows.
    #[error("input '{input}': empty batch (shape {}); send at least one row", ShapeDisplay(.got))]
    EmptyBatch {
        /// The input's name.
        input: String,
        /// The shape sent.
        got: Vec<usize>,
    },
    /// A free dimension other than the batch sent with size 0: plans are optimised for sizes
    /// of at least 1 (tract is told so, which is what lets it pick its fast kernels).
    #[error(
        "input '{input}': dimension {axis} ('{symbol}') is 0 (shape {}); it takes at least 1",
        ShapeDisplay(.got)
    )]
    EmptyDimension {
        /// The input's name.
        input: String,
        /// The axis of that dimension.
        axis: usize,
        /// The symbol naming it.
        symbol: String,
        /// The shape sent.
        got: Vec<usize>,
    },
    /// A value that indexes past the table it picks rows of.
    #[error(
        "input '{input}': value {value} at position {position} is out of range: it picks a row of '{table}', which has {rows} (values from -{rows} to {})",
        .rows.saturating_sub(1)
    )]
    IndexOutOfRange {
        /// The input's name.
        input: String,
        /// The value.
        value: i64,
        /// Its position among the input's values, in row-major order.
        position: usize,
        /// The table's name in the graph.
        table: String,
        /// The table's rows.
        rows: usize,
    },
    /// Two dimensions that must agree (the same symbol) do not.
    #[error(
        "input '{input}': dimension {axis} is {got}, but '{symbol}' is {expected} in input '{first}'"
    )]
    SymbolMismatch {
        /// The input whose dimension disagrees.
        input: String,
        /// The axis of that dimension.
        axis: usize,
        /// The size sent.
        got: usize,
        /// The symbol both dimensions share.
        symbol: String,
        /// The size it took first.
        expected: usize,
        /// The input where it took that size.
        first: String,
    },
    /// An output that the model does not have was asked for.
    #[error("unknown output '{output}'; the model's outputs are: {all}")]
    UnknownOutput {
        /// The name asked for.
        output: String,
        /// All output names.
        all: String,
    },
}

impl Classify for InputError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// Inputs checked against a signature, in the signature's order. Only
/// [`Signature::validate`] makes them, so the engine never sees an unchecked tensor.
#[derive(Debug, Clone)]
pub struct ValidInputs {
    tensors: Vec<Tensor>,
    rows: Option<usize>,
}

impl ValidInputs {
    /// The tensors, in the model's input order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Takes the tensors out, in the model's input order.
    pub fn into_tensors(self) -> Vec<Tensor> {
        self.tensors
    }

    /// The number of rows along the batch dimension, for batchable models.
    pub fn rows(&self) -> Option<usize> {
        self.rows
    }

    /// True when `other` can be stacked with these inputs into one batch: both have rows and
    /// every input has the same shape past the batch dimension.
    pub fn stacks_with(&self, other: &ValidInputs) -> bool {
        self.rows.is_some()
            && other.rows.is_some()
            && self.tensors.len() == other.tensors.len()
            && self
                .tensors
                .iter()
                .zip(&other.tensors)
                .all(|(a, b)| a.shape().get(1..) == b.shape().get(1..))
    }

    /// Cuts the batch into consecutive pieces of `sizes` rows, which must add up to the batch;
    /// `None` when they do not, or the inputs have no batch dimension.
    pub fn into_pieces(self, sizes: &[usize]) -> Option<Vec<ValidInputs>> {
        if self.rows != Some(sizes.iter().sum()) {
            return None;
        }
        let mut split = self
            .tensors
            .iter()
            .map(|t| t.split_rows(sizes).map(Vec::into_iter))
            .collect::<Option<Vec<_>>>()?;
        Some(
            sizes
                .iter()
                .map(|&n| ValidInputs {
                    tensors: split.iter_mut().filter_map(Iterator::next).collect(),
                    rows: Some(n),
                })
                .collect(),
        )
    }

    /// Stacks inputs that [`stacks_with`](Self::stacks_with) each other into one batch, or
    /// `None` if they do not stack.
    pub fn concat(parts: &[&ValidInputs]) -> Option<ValidInputs> {
        let first = parts.first()?;
        if !parts.iter().all(|p| first.stacks_with(p)) {
            return None;
        }
        let tensors = (0..first.tensors.len())
            .map(|i| Tensor::concat_rows(&parts.iter().map(|p| &p.tensors[i]).collect::<Vec<_>>()))
            .collect::<Option<Vec<_>>>()?;
        let rows = parts.iter().map(|p| p.rows).sum();
        Some(ValidInputs { tensors, rows })
    }
}

impl Signature {
    /// True when requests may carry any number of rows along the first dimension.
    pub fn batchable(&self) -> bool {
        self.batch_symbol.is_some()
    }

    fn input_names(&self) -> String {
        names(&self.inputs)
    }

    /// Checks named tensors against the inputs and orders them as the model expects.
    pub fn validate(
        &self,
        named: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<ValidInputs, InputError> {
        let mut given: HashMap<String, Tensor> = HashMap::new();
        for (name, tensor) in named {
            if !self.inputs.iter().any(|s| s.name == name) {
                return Err(InputError::Unknown {
                    input: name,
                    all: self.input_names(),
                });
            }
            if given.contains_key(&name) {
                return Err(InputError::Duplicate { input: name });
            }
            given.insert(name, tensor);
        }

        // The first input to bind each symbol, and the size it bound.
        let mut bound: HashMap<&str, (usize, &str)> = HashMap::new();
        let mut tensors = Vec::with_capacity(self.inputs.len());
        for (position, spec) in self.inputs.iter().enumerate() {
            let tensor = given
                .remove(&spec.name)
                .ok_or_else(|| InputError::Missing {
                    input: spec.name.clone(),
                    dtype: spec.dtype,
                    shape: spec.shape_display(),
                    all: self.input_names(),
                })?;
            if tensor.dtype() != spec.dtype {
                return Err(InputError::DType {
                    input: spec.name.clone(),
                    expected: spec.dtype,
                    got: tensor.dtype(),
                });
            }
            let got = tensor.shape();
            let shape_error = || InputError::Shape {
                input: spec.name.clone(),
                expected: spec.shape_display(),
                got: got.to_vec(),
            };
            if got.len() != spec.shape.len() {
                return Err(shape_error());
            }
            for (axis, (dim, &size)) in spec.shape.iter().zip(got).enumerate() {
                match dim {
                    Dim::Fixed(n) if *n != size => return Err(shape_error()),
                    Dim::Fixed(_) => {}
                    Dim::Symbol(symbol) => {
                        if size == 0 && self.batch_symbol.as_deref() == Some(symbol.as_str()) {
                            return Err(InputError::EmptyBatch {
                                input: spec.name.clone(),
                                got: got.to_vec(),
                            });
                        }
                        if size == 0 {
                            return Err(InputError::EmptyDimension {
                                input: spec.name.clone(),
                                axis,
                                symbol: symbol.clone(),
                                got: got.to_vec(),
                            });
                        }
                        match bound.get(symbol.as_str()) {
                            Some(&(expected, first)) if expected != size => {
                                return Err(InputError::SymbolMismatch {
                                    input: spec.name.clone(),
                                    axis,
                                    got: size,
                                    symbol: symbol.clone(),
                                    expected,
                                    first: first.to_string(),
                                });
                            }
                            Some(_) => {}
                            None => {
                                bound.insert(symbol, (size, &spec.name));
                            }
                        }
                    }
                }
            }
            for limit in self.index_limits.iter().filter(|l| l.input == position) {
                if let Some((at, value)) = limit.first_outside(&tensor) {
                    return Err(InputError::IndexOutOfRange {
                        input: spec.name.clone(),
                        value,
                        position: at,
                        table: limit.table.clone(),
                        rows: limit.rows,
                    });
                }
            }
            tensors.push(tensor);
        }
        let rows = self
            .batch_symbol
            .as_deref()
            .and_then(|s| bound.get(s))
            .map(|&(n, _)| n);
        Ok(ValidInputs { tensors, rows })
    }

    /// Resolves requested output names to output indices; empty means every output.
    pub fn select_outputs(&self, wanted: &[String]) -> Result<Vec<usize>, InputError> {
        if wanted.is_empty() {
            return Ok((0..self.outputs.len()).collect());
        }
        wanted
            .iter()
            .map(|name| {
                self.outputs
                    .iter()
                    .position(|s| &s.name == name)
                    .ok_or_else(|| InputError::UnknownOutput {
                        output: name.clone(),
                        all: names(&self.outputs),
                    })
            })
            .collect()
    }
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("'{}'", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signature() -> Signature {
        Signature {
            inputs: vec![
                TensorSpec {
                    name: "X".into(),
                    dtype: DType::F32,
                    shape: vec![Dim::Symbol("N".into()), Dim::Fixed(3)],
                },
                TensorSpec {
                    name: "mask".into(),
                    dtype: DType::Bool,
                    shape: vec![Dim::Symbol("N".into())],
                },
            ],
            outputs: vec![TensorSpec {
                name: "y".into(),
                dtype: DType::F32,
                shape: vec![Dim::Symbol("N".into())],
            }],
            batch_symbol: Some("N".into()),
            index_limits: vec![],
        }
    }

    fn x(rows: usize) -> Tensor {
        Tensor::from_values(vec![rows, 3], &vec![0f32; rows * 3]).expect("valid")
    }

    fn mask(rows: usize) -> Tensor {
        Tensor::from_values(vec![rows], &vec![true; rows]).expect("valid")
    }

    #[test]
    fn orders_inputs_as_declared_and_counts_rows() {
        let valid = signature()
            .validate([("mask".to_string(), mask(2)), ("X".to_string(), x(2))])
            .expect("valid");
        assert_eq!(valid.rows(), Some(2));
        assert_eq!(valid.tensors()[0].dtype(), DType::F32);
        assert_eq!(valid.tensors()[1].dtype(), DType::Bool);
    }

    #[test]
    fn pieces_keep_rows_in_order_and_every_input_together() {
        let values: Vec<f32> = (0..15).map(|v| v as f32).collect();
        let x = Tensor::from_values(vec![5, 3], &values).expect("valid");
        let valid = signature()
            .validate([("X".to_string(), x), ("mask".to_string(), mask(5))])
            .expect("valid");
        assert!(valid.clone().into_pieces(&[2, 2]).is_none());
        let slices = valid.into_pieces(&[2, 1, 2]).expect("5 rows");
        let rows: Vec<Option<usize>> = slices.iter().map(ValidInputs::rows).collect();
        assert_eq!(rows, [Some(2), Some(1), Some(2)]);
        let firsts: Vec<f32> = slices
            .iter()
            .map(|s| s.tensors()[0].to_values::<f32>().expect("f32")[0])
            .collect();
        assert_eq!(firsts, [0.0, 6.0, 9.0]);
        assert!(
            slices
                .iter()
                .all(|s| s.tensors()[1].rows() == s.rows().unwrap_or(0))
        );
    }

    #[test]
    fn names_what_is_wrong() {
        let sig = signature();
        let err = sig
            .validate([("X".to_string(), x(2))])
            .expect_err("mask missing");
        assert_eq!(
            err.to_string(),
            "missing input 'mask' (BOOL [N]); the model's inputs are: 'X', 'mask'"
        );

        let bad = Tensor::from_values(vec![2, 4], &[0f32; 8]).expect("valid");
        let err = sig
            .validate([("X".to_string(), bad), ("mask".to_string(), mask(2))])
            .expect_err("wrong width");
        assert_eq!(
            err.to_string(),
            "input 'X': expected shape [N, 3], got [2, 4]"
        );

        let err = sig
            .validate([("X".to_string(), x(2)), ("mask".to_string(), mask(3))])
            .expect_err("rows disagree");
        assert_eq!(
            err.to_string(),
            "input 'mask': dimension 0 is 3, but 'N' is 2 in input 'X'"
        );

        let err = sig
            .validate([("X".to_string(), x(0)), ("mask".to_string(), mask(0))])
            .expect_err("empty");
        assert!(matches!(err, InputError::EmptyBatch { .. }));

        let err = sig
            .select_outputs(&["z".into()])
            .expect_err("no such output");
        assert_eq!(
            err.to_string(),
            "unknown output 'z'; the model's outputs are: 'y'"
        );
    }

    /// Token ids `[N, S]` into an embedding table of 1,000 rows.
    fn token_ids() -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "ids".into(),
                dtype: DType::I64,
                shape: vec![Dim::Symbol("N".into()), Dim::Symbol("S".into())],
            }],
            outputs: vec![],
            batch_symbol: Some("N".into()),
            index_limits: vec![IndexLimit {
                input: 0,
                rows: 1000,
                table: "embeddings".into(),
            }],
        }
    }

    #[test]
    fn a_free_dimension_takes_at_least_one() {
        let tokens = |rows: usize, length: usize| {
            let ids = Tensor::from_values(vec![rows, length], &vec![0i64; rows * length]);
            [("ids".to_string(), ids.expect("valid"))]
        };
        let sig = token_ids();
        assert_eq!(sig.validate(tokens(2, 1)).expect("valid").rows(), Some(2));
        let err = sig.validate(tokens(2, 0)).expect_err("no tokens");
        assert_eq!(
            err.to_string(),
            "input 'ids': dimension 1 ('S') is 0 (shape [2, 0]); it takes at least 1"
        );
        let err = sig.validate(tokens(0, 0)).expect_err("no rows");
        assert!(matches!(err, InputError::EmptyBatch { .. }), "{err}");
    }

    #[test]
    fn an_index_past_its_table_is_refused() {
        let sig = token_ids();
        let ids = |values: &[i64]| {
            let tensor = Tensor::from_values(vec![1, values.len()], values).expect("valid");
            [("ids".to_string(), tensor)]
        };
        assert!(sig.validate(ids(&[0, 999, -1000, -1])).is_ok());
        let err = sig
            .validate(ids(&[101, 1000, 102]))
            .expect_err("past the table");
        assert_eq!(
            err.to_string(),
            "input 'ids': value 1000 at position 1 is out of range: it picks a row of 'embeddings', which has 1000 (values from -1000 to 999)"
        );
        let err = sig.validate(ids(&[-1001])).expect_err("before the table");
        assert!(
            matches!(err, InputError::IndexOutOfRange { value: -1001, .. }),
            "{err}"
        );
    }
}
