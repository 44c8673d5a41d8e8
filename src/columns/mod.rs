//! Tables in, tables out: how the columns of an Arrow record batch feed a model's inputs, and
//! how its outputs become columns. `predictd batch` and the Python package share this module,
//! so a file scored offline and a table scored in Spark follow the same rules:
//!
//! - `feed INPUT=COL[,COL...]`: several scalar columns stack into the input's values past the
//!   batch dimension, in the order given (13 columns fill `[N, 13]`, 64 fill `[N, 1, 8, 8]`); one
//!   list or fixed-size-list column whose lists hold that many values feeds it directly; one
//!   scalar column feeds `[N]` or `[N, 1]`.
//! - An input with no feed takes the column of its own name. Failing that, a model with one
//!   input takes the numeric columns not kept, in file order, when there are exactly as many as
//!   it needs, or else the one list column not kept.
//! - Columns are cast to the input's dtype where no value changes meaning: integers to floats
//!   (beyond 2^24, FP32 rounds them), FP64 to FP32 (rounded to nearest), narrower integers to
//!   wider ones. Anything else is an error at bind time, before a row is read.
//! - Nulls are errors naming the row, unless the model's `config.toml` sets `fill_null` (a
//!   number, or `nan`), which replaces nulls in floating-point inputs. NaN is a value.
//! - `fetch OUTPUT[=COLUMN]` picks outputs (default: all, named as in the model). `[N]` and
//!   `[N, 1]` outputs become scalar columns; wider ones a list per row ([`ListLayout`]).
//! - `keep` columns are copied through unchanged, before the outputs.

mod read;
mod transpose;
mod write;

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::engine::model::{Model, RUN_ROWS, RunError};
use crate::engine::signature::{Dim, InputError, Signature, TensorSpec};
use crate::engine::tensor::{DType, Tensor};
use crate::error::{Classify, ErrorKind};

pub use read::ColumnError;
pub use write::arrow_type;

/// How output values past the batch dimension are laid out as columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListLayout {
    /// One fixed-size-list column (Parquet, Arrow).
    FixedSizeList,
    /// One variable-size list column (Spark's Arrow path rejects fixed-size lists).
    List,
    /// `k` scalar columns `NAME_0 … NAME_{k-1}` (CSV, which has no lists).
    Columns,
}

/// What the user asked for: feeds, fetches and kept columns, as names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    /// `(input, columns)` pairs.
    pub feeds: Vec<(String, Vec<String>)>,
    /// `(output, column name)` pairs; `None` names the column after the output. Empty: every
    /// output.
    pub fetches: Vec<(String, Option<String>)>,
    /// Columns copied through.
    pub keep: Vec<String>,
}

impl Mapping {
    /// Parses `INPUT=COL[,COL...]`.
    pub fn parse_feed(text: &str) -> Result<(String, Vec<String>), String> {
        let (input, columns) = text
            .split_once('=')
            .ok_or_else(|| format!("--feed '{text}' is not INPUT=COL[,COL...]"))?;
        let columns: Vec<String> = columns.split(',').map(str::to_owned).collect();
        if input.is_empty() || columns.iter().any(String::is_empty) {
            return Err(format!("--feed '{text}' is not INPUT=COL[,COL...]"));
        }
        Ok((input.to_string(), columns))
    }

    /// Parses `OUTPUT[=COLUMN]`.
    pub fn parse_fetch(text: &str) -> Result<(String, Option<String>), String> {
        let (output, column) = match text.split_once('=') {
            Some((o, c)) => (o, Some(c.to_string())),
            None => (text, None),
        };
        if output.is_empty() || column.as_deref() == Some("") {
            return Err(format!("--fetch '{text}' is not OUTPUT[=COLUMN]"));
        }
        Ok((output.to_string(), column))
    }
}

/// Why columns cannot feed a model, found before any row is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The model's inputs or outputs lack a leading batch dimension.
    #[error(
        "model '{model}' has no batch dimension shared by all inputs and outputs, so rows cannot be scored independently"
    )]
    NotBatchable {
        /// The model.
        model: String,
    },
    /// A named column is not in the data.
    #[error("{role}: no column '{column}'; the columns are: {available}")]
    UnknownColumn {
        /// The flag that named it.
        role: &'static str,
        /// The name given.
        column: String,
        /// The columns there are.
        available: String,
    },
    /// A feed names an input the model does not have.
    #[error("model '{model}' has no input '{input}'; its inputs are: {inputs}")]
    UnknownInput {
        /// The model.
        model: String,
        /// The name given.
        input: String,
        /// The inputs there are.
        inputs: String,
    },
    /// A fetch names an output the model does not have.
    #[error("model '{model}' has no output '{output}'; its outputs are: {outputs}")]
    UnknownOutput {
        /// The model.
        model: String,
        /// The name given.
        output: String,
        /// The outputs there are.
        outputs: String,
    },
    /// An input is fed twice.
    #[error("input '{input}' is fed more than once")]
    DuplicateFeed {
        /// The input.
        input: String,
    },
    /// No feed and no unambiguous default for an input.
    #[error(
        "model '{model}' input '{input}' ({spec}) is not fed: {why}; {context}; name them with --feed {input}=COL[,COL...]"
    )]
    Unfed {
        /// The model.
        model: String,
        /// The input.
        input: String,
        /// Its dtype and declared shape.
        spec: String,
        /// Why the default did not apply.
        why: String,
        /// The model's inputs and the columns that could feed them.
        context: String,
    },
    /// A column's type cannot become the input's dtype without changing values.
    #[error(
        "model '{model}' input '{input}' expects {expected}; column '{column}' is {actual}, which does not convert without loss"
    )]
    ColumnType {
        /// The model.
        model: String,
        /// The input.
        input: String,
        /// The column.
        column: String,
        /// The input's dtype.
        expected: DType,
        /// The column's Arrow type.
        actual: String,
    },
    /// The number of columns (or list length) does not fit the input's shape.
    #[error(
        "model '{model}' input '{input}' has shape {shape}, which takes {expected} value(s) per row; {actual}"
    )]
    Width {
        /// The model.
        model: String,
        /// The input.
        input: String,
        /// Its declared shape.
        shape: String,
        /// Values per row it needs.
        expected: usize,
        /// What was given.
        actual: String,
    },
    /// The input's shape past the batch dimension is not known, so columns cannot fill it.
    #[error(
        "model '{model}' input '{input}' has shape {shape}; only inputs whose dimensions past the first are fixed (or one free width) can be fed from columns"
    )]
    UnsupportedShape {
        /// The model.
        model: String,
        /// The input.
        input: String,
        /// Its declared shape.
        shape: String,
    },
    /// Two output columns, or an output and a kept column, share a name.
    #[error("two columns would be named '{column}'; rename an output with --fetch OUTPUT=COLUMN")]
    DuplicateColumn {
        /// The name.
        column: String,
    },
    /// An output whose width is not fixed cannot be spread over CSV columns.
    #[error(
        "model '{model}' output '{output}' has shape {shape}, whose width is not fixed, so it cannot be written as CSV columns; write Parquet"
    )]
    UnknownWidth {
        /// The model.
        model: String,
        /// The output.
        output: String,
        /// Its declared shape.
        shape: String,
    },
}

impl Classify for BindError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// Why one record batch could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A column's values do not fit (a null, a list of the wrong length).
    #[error(transparent)]
    Column(#[from] ColumnError),
    /// The tensors made from the columns do not fit the model.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The model failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Output columns could not be built.
    #[error("cannot build output column '{column}': {reason}")]
    Output {
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
}

/// Where an input's values come from.
#[derive(Debug, Clone)]
enum Source {
    /// Scalar columns, stacked row-major.
    Columns(Vec<usize>),
    /// One list column.
    List(usize),
}

#[derive(Debug, Clone)]
struct InputBinding {
    name: String,
    dtype: DType,
    /// The input's dimensions past the batch dimension, as they will be sent.
    item_shape: Vec<usize>,
    source: Source,
    /// Column names, for errors.
    columns: Vec<String>,
}

#[derive(Debug, Clone)]
struct OutputBinding {
    /// Index among the model's outputs.
    index: usize,
    column: String,
    dtype: DType,
    /// Values per row when fixed; `None` when the model does not declare it.
    width: Option<usize>,
    /// `[N]` and `[N, 1]` are written as scalars.
    scalar: bool,
}

/// Columns of one schema resolved against one model: made once per input schema, then applied
/// to every record batch of that schema.
#[derive(Debug, Clone)]
pub struct Binding {
    model: String,
    inputs: Vec<InputBinding>,
    outputs: Vec<OutputBinding>,
    keep: Vec<usize>,
    layout: ListLayout,
    fill_null: Option<f64>,
    schema: SchemaRef,
}

impl Binding {
    /// Resolves `mapping` against the data's `schema` and the model's signature.
    pub fn new(
        model: &str,
        signature: &Signature,
        schema: &Schema,
        mapping: &Mapping,
        layout: ListLayout,
        fill_null: Option<f64>,
    ) -> Result<Binding, BindError> {
        if !signature.batchable() {
            return Err(BindError::NotBatchable {
                model: model.to_string(),
            });
        }
        let find = |role: &'static str, column: &str| {
            schema
                .index_of(column)
                .map_err(|_| BindError::UnknownColumn {
                    role,
                    column: column.to_string(),
                    available: list(schema.fields().iter().map(|f| f.name())),
                })
        };
        let keep = mapping
            .keep
            .iter()
            .map(|c| find("--keep", c))
            .collect::<Result<Vec<_>, _>>()?;

        let mut fed: Vec<Option<Vec<usize>>> = vec![None; signature.inputs.len()];
        for (input, columns) in &mapping.feeds {
            let ix = signature
                .inputs
                .iter()
                .position(|s| &s.name == input)
                .ok_or_else(|| BindError::UnknownInput {
                    model: model.to_string(),
                    input: input.clone(),
                    inputs: list(signature.inputs.iter().map(|s| &s.name)),
                })?;
            if fed[ix].is_some() {
                return Err(BindError::DuplicateFeed {
                    input: input.clone(),
                });
            }
            fed[ix] = Some(
                columns
                    .iter()
                    .map(|c| find("--feed", c))
                    .collect::<Result<_, _>>()?,
            );
        }
        for (ix, spec) in signature.inputs.iter().enumerate() {
            if fed[ix].is_none() {
                fed[ix] = schema.index_of(&spec.name).ok().map(|c| vec![c]);
            }
        }
        if let [spec] = signature.inputs.as_slice()
            && fed[0].is_none()
        {
            fed[0] = Some(default_feed(model, signature, spec, schema, &keep)?);
        }

        let mut inputs = Vec::with_capacity(signature.inputs.len());
        for (spec, columns) in signature.inputs.iter().zip(fed) {
            let Some(columns) = columns else {
                return Err(unfed(
                    model,
                    signature,
                    spec,
                    schema,
                    &keep,
                    "no --feed names it and no column is named after it".to_string(),
                ));
            };
            inputs.push(bind_input(model, spec, schema, columns)?);
        }

        let outputs = bind_outputs(model, signature, mapping, layout)?;
        let mut fields: Vec<Field> = keep
            .iter()
            .map(|&c| schema.field(c).as_ref().clone())
            .collect();
        for output in &outputs {
            fields.extend(write::fields(output, layout));
        }
        let mut seen = HashSet::new();
        for field in &fields {
            if !seen.insert(field.name().clone()) {
                return Err(BindError::DuplicateColumn {
                    column: field.name().clone(),
                });
            }
        }
        Ok(Binding {
            model: model.to_string(),
            inputs,
            outputs,
            keep,
            layout,
            fill_null,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The schema of the batches [`score`](Self::score) returns: kept columns, then outputs.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The columns of the bound schema this binding reads, ascending.
    pub fn columns_used(&self) -> Vec<usize> {
        let mut used: Vec<usize> = self
            .inputs
            .iter()
            .flat_map(|i| match &i.source {
                Source::Columns(c) => c.clone(),
                Source::List(c) => vec![*c],
            })
            .chain(self.keep.iter().copied())
            .collect();
        used.sort_unstable();
        used.dedup();
        used
    }

    /// The same binding for batches that hold only [`columns_used`](Self::columns_used), in
    /// that order (what a reader projecting those columns returns).
    pub fn projected(&self) -> Binding {
        let used = self.columns_used();
        let at = |c: usize| used.binary_search(&c).unwrap_or(c);
        let mut projected = self.clone();
        for input in &mut projected.inputs {
            input.source = match &input.source {
                Source::Columns(c) => Source::Columns(c.iter().map(|&c| at(c)).collect()),
                Source::List(c) => Source::List(at(*c)),
            };
        }
        projected.keep = self.keep.iter().map(|&c| at(c)).collect();
        projected
    }

    /// The scalar columns that feed inputs, with the input's dtype: a reader that parses text
    /// can read them as that type directly.
    pub fn column_dtypes(&self) -> Vec<(usize, DType)> {
        self.inputs
            .iter()
            .flat_map(|i| match &i.source {
                Source::Columns(c) => c.iter().map(|&c| (c, i.dtype)).collect(),
                Source::List(_) => Vec::new(),
            })
            .collect()
    }

    /// The input tensors for one batch of rows, named as the model's inputs.
    pub fn inputs(&self, batch: &RecordBatch) -> Result<Vec<(String, Tensor)>, ColumnError> {
        self.inputs
            .iter()
            .map(|input| {
                read::tensor(input, batch, self.fill_null).map(|t| (input.name.clone(), t))
            })
            .collect()
    }

    /// Scores one batch: columns to tensors, the model's own validation, the run (in slices of
    /// [`crate::engine::model::RUN_ROWS`] rows), outputs to columns beside the kept ones.
    pub fn score(&self, model: &Model, batch: &RecordBatch) -> Result<RecordBatch, ScoreError> {
        if batch.num_rows() == 0 {
            // Nothing to run (models refuse empty batches); still the right columns.
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        // A slice of the batch at a time, from columns to outputs: the slice's row-major
        // tensor is still in cache when the model reads it. Read whole, a batch of 100,000 rows
        // of 64 columns was 25 MB written to fresh memory and read back.
        let rows = batch.num_rows();
        let mut parts = Vec::new();
        for start in (0..rows).step_by(RUN_ROWS) {
            let slice = batch.slice(start, RUN_ROWS.min(rows - start));
            let inputs = self.inputs(&slice).map_err(|mut e| {
                e.row = e.row.map(|r| r + start);
                e
            })?;
            parts.extend(model.run_parts(model.signature().validate(inputs)?)?);
        }
        let outputs = model.stack(parts)?;
        self.output_batch(batch, outputs)
    }

    /// Builds the output batch from the input batch's kept columns and the model's outputs (all
    /// of them, in the model's order).
    pub fn output_batch(
        &self,
        batch: &RecordBatch,
        outputs: Vec<Tensor>,
    ) -> Result<RecordBatch, ScoreError> {
        let mut columns: Vec<arrow::array::ArrayRef> =
            self.keep.iter().map(|&c| batch.column(c).clone()).collect();
        for output in &self.outputs {
            let tensor = outputs
                .get(output.index)
                .ok_or_else(|| ScoreError::Output {
                    column: output.column.clone(),
                    reason: format!(
                        "model '{}' returned {} output(s)",
                        self.model,
                        outputs.len()
                    ),
                })?;
            columns.extend(
                write::columns(output, tensor, batch.num_rows(), self.layout).map_err(
                    |reason| ScoreError::Output {
                        column: output.column.clone(),
                        reason,
                    },
                )?,
            );
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| ScoreError::Output {
            column: String::new(),
            reason: e.to_string(),
        })
    }
}

/// The one-input default: the numeric columns not kept, if exactly as many as the input takes,
/// or the one list column not kept.
fn default_feed(
    model: &str,
    signature: &Signature,
    spec: &TensorSpec,
    schema: &Schema,
    keep: &[usize],
) -> Result<Vec<usize>, BindError> {
    let free: Vec<usize> = (0..schema.fields().len())
        .filter(|c| !keep.contains(c))
        .collect();
    let numeric: Vec<usize> = free
        .iter()
        .copied()
        .filter(|&c| schema.field(c).data_type().is_numeric())
        .collect();
    let lists: Vec<usize> = free
        .iter()
        .copied()
        .filter(|&c| list_value_type(schema.field(c).data_type()).is_some())
        .collect();
    let width = fixed_width(spec);
    if let Some(k) = width
        && numeric.len() == k
    {
        return Ok(numeric);
    }
    if let [list] = lists.as_slice() {
        return Ok(vec![*list]);
    }
    let why = match width {
        Some(k) => format!(
            "it takes {k} value(s) per row, and there are {} numeric column(s) not in --keep",
            numeric.len()
        ),
        None => "its width is not fixed".to_string(),
    };
    Err(unfed(model, signature, spec, schema, keep, why))
}

fn unfed(
    model: &str,
    signature: &Signature,
    spec: &TensorSpec,
    schema: &Schema,
    keep: &[usize],
    why: String,
) -> BindError {
    let inputs = list(
        signature
            .inputs
            .iter()
            .map(|s| format!("{} ({} {})", s.name, s.dtype, shape_text(&s.shape))),
    );
    let candidates = list(
        schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(c, _)| !keep.contains(c))
            .map(|(_, f)| format!("{} ({})", f.name(), f.data_type())),
    );
    BindError::Unfed {
        model: model.to_string(),
        input: spec.name.clone(),
        spec: format!("{} {}", spec.dtype, shape_text(&spec.shape)),
        why,
        context: format!("the model's inputs are: {inputs}; candidate columns: {candidates}"),
    }
}

fn bind_input(
    model: &str,
    spec: &TensorSpec,
    schema: &Schema,
    columns: Vec<usize>,
) -> Result<InputBinding, BindError> {
    let names: Vec<String> = columns
        .iter()
        .map(|&c| schema.field(c).name().clone())
        .collect();
    let width_error = |expected, actual| BindError::Width {
        model: model.to_string(),
        input: spec.name.clone(),
        shape: shape_text(&spec.shape),
        expected,
        actual,
    };
    let type_error = |column: &str, actual: &DataType| BindError::ColumnType {
        model: model.to_string(),
        input: spec.name.clone(),
        column: column.to_string(),
        expected: spec.dtype,
        actual: actual.to_string(),
    };
    let past_batch = spec.shape.get(1..).unwrap_or_default();
    let fixed: Option<Vec<usize>> = past_batch
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Symbol(_) => None,
        })
        .collect();
    // One free width (`[N, d]`) takes whatever the columns give; deeper free shapes cannot be
    // told from columns.
    let free_width = fixed.is_none() && past_batch.len() == 1;
    if fixed.is_none() && !free_width {
        return Err(BindError::UnsupportedShape {
            model: model.to_string(),
            input: spec.name.clone(),
            shape: shape_text(&spec.shape),
        });
    }

    let single_list = match columns.as_slice() {
        [c] => list_value_type(schema.field(*c).data_type()),
        _ => None,
    };
    let (source, item_shape) = if let Some(values) = single_list {
        let column = &names[0];
        if !read::converts(values, spec.dtype) {
            return Err(type_error(column, schema.field(columns[0]).data_type()));
        }
        let size = match schema.field(columns[0]).data_type() {
            DataType::FixedSizeList(_, n) => usize::try_from(*n).ok(),
            _ => None,
        };
        let item_shape = match (&fixed, size) {
            (Some(dims), Some(n)) if dims.iter().product::<usize>() != n => {
                return Err(width_error(
                    dims.iter().product(),
                    format!("column '{column}' holds lists of {n}"),
                ));
            }
            (Some(dims), _) => dims.clone(),
            (None, Some(n)) => vec![n],
            // A free width fed by variable lists: the first batch's lists decide it.
            (None, None) => Vec::new(),
        };
        (Source::List(columns[0]), item_shape)
    } else {
        for (&c, name) in columns.iter().zip(&names) {
            let dt = schema.field(c).data_type();
            if !read::converts(dt, spec.dtype) {
                return Err(type_error(name, dt));
            }
        }
        let item_shape = match &fixed {
            Some(dims) if dims.iter().product::<usize>() != columns.len() => {
                return Err(width_error(
                    dims.iter().product(),
                    format!(
                        "{} column(s) were given: {}",
                        columns.len(),
                        names.join(", ")
                    ),
                ));
            }
            Some(dims) => dims.clone(),
            None => vec![columns.len()],
        };
        (Source::Columns(columns), item_shape)
    };
    Ok(InputBinding {
        name: spec.name.clone(),
        dtype: spec.dtype,
        item_shape,
        source,
        columns: names,
    })
}

fn bind_outputs(
    model: &str,
    signature: &Signature,
    mapping: &Mapping,
    layout: ListLayout,
) -> Result<Vec<OutputBinding>, BindError> {
    let wanted: Vec<(String, Option<String>)> = if mapping.fetches.is_empty() {
        signature
            .outputs
            .iter()
            .map(|s| (s.name.clone(), None))
            .collect()
    } else {
        mapping.fetches.clone()
    };
    wanted
        .into_iter()
        .map(|(name, column)| {
            let index = signature
                .outputs
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| BindError::UnknownOutput {
                    model: model.to_string(),
                    output: name.clone(),
                    outputs: list(signature.outputs.iter().map(|s| &s.name)),
                })?;
            let spec = &signature.outputs[index];
            let width = fixed_width(spec);
            let scalar = width == Some(1) && spec.shape.len() <= 2;
            if width.is_none() && layout == ListLayout::Columns {
                return Err(BindError::UnknownWidth {
                    model: model.to_string(),
                    output: name,
                    shape: shape_text(&spec.shape),
                });
            }
            Ok(OutputBinding {
                index,
                column: column.unwrap_or(name),
                dtype: spec.dtype,
                width,
                scalar,
            })
        })
        .collect()
}

/// Values per row past the batch dimension, when every such dimension is fixed.
fn fixed_width(spec: &TensorSpec) -> Option<usize> {
    spec.shape
        .get(1..)?
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Symbol(_) => None,
        })
        .product()
}

/// The element type of a list or fixed-size-list column.
fn list_value_type(dt: &DataType) -> Option<&DataType> {
    match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        _ => None,
    }
}

fn shape_text(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn list<I: IntoIterator<Item = D>, D: std::fmt::Display>(items: I) -> String {
    let all: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if all.is_empty() {
        "(none)".to_string()
    } else {
        all.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_casts_that_keep_values_are_allowed() {
        use DataType as A;
        assert!(read::converts(&A::Int64, DType::F32));
        assert!(read::converts(&A::Float64, DType::F32));
        assert!(read::converts(&A::Int32, DType::I64));
        assert!(read::converts(&A::UInt32, DType::I64));
        assert!(!read::converts(&A::UInt64, DType::I64));
        assert!(!read::converts(&A::Int64, DType::I32));
        assert!(!read::converts(&A::Float32, DType::I64));
        assert!(!read::converts(&A::Utf8, DType::F32));
        assert!(!read::converts(&A::Boolean, DType::F32));
        assert!(read::converts(&A::LargeUtf8, DType::String));
        assert!(read::converts(
            &A::Dictionary(Box::new(A::Int32), Box::new(A::Utf8)),
            DType::String
        ));
    }

    #[test]
    fn feeds_and_fetches_parse_or_say_what_is_expected() {
        assert_eq!(
            Mapping::parse_feed("X=a,b c,d"),
            Ok(("X".to_string(), vec!["a".into(), "b c".into(), "d".into()]))
        );
        assert!(Mapping::parse_feed("X").is_err());
        assert!(Mapping::parse_feed("X=a,,b").is_err());
        assert_eq!(
            Mapping::parse_fetch("label=churn"),
            Ok(("label".to_string(), Some("churn".to_string())))
        );
        assert_eq!(
            Mapping::parse_fetch("label"),
            Ok(("label".to_string(), None))
        );
        assert!(Mapping::parse_fetch("label=").is_err());
    }
}
