//! Offline scoring: `predictd batch` reads Parquet or CSV files, scores them with a model from
//! the repository through the same engine and column rules ([`crate::columns`]) as every other
//! front end, and writes one Parquet or CSV file.
//!
//! One thread reads and decodes record batches in order, `threads` threads score them, and the
//! calling thread writes them back in input order; bounded channels between the three keep at
//! most a few batches in memory whatever the size of the input.

mod pipeline;
mod sink;
mod source;
pub mod textfile;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::columns::{BindError, Binding, ListLayout, Mapping, ScoreError};
use crate::engine::model::Model;
use crate::engine::open::{OpenDefaults, OpenError, open_named};
use crate::engine::repository::ModelConfig;
use crate::engine::tensor::DType;

pub use source::{Format, Unit};

/// Why a batch run failed. Every variant names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// An input cannot be opened or is not a readable file of its format.
    #[error("{}: {reason}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A folder or glob matched no files.
    #[error("{input}: no .parquet or .csv files")]
    NoFiles {
        /// The argument as given.
        input: String,
    },
    /// A file's extension names no supported format.
    #[error("{}: unknown format; use .parquet or .csv", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// A later input file has other columns than the first.
    #[error("{}: {reason}", .path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Reading failed part way (a truncated file, a bad CSV line).
    #[error("{}{}: {reason}", .path.display(), .row.map(|r| format!(", near row {r}")).unwrap_or_default())]
    Read {
        /// The file.
        path: PathBuf,
        /// The row, when known.
        row: Option<u64>,
        /// Why.
        reason: String,
    },
    /// The model cannot be found in the repository, or does not load.
    #[error(transparent)]
    Model(#[from] OpenError),
    /// The columns cannot feed the model.
    #[error("{}: {error}", .path.display())]
    Bind {
        /// The file whose columns were bound.
        path: PathBuf,
        /// Why.
        error: Box<BindError>,
    },
    /// A value cannot feed the model.
    #[error("{}: column '{column}'{}: {reason}", .path.display(), .row.map(|r| format!(", row {r}")).unwrap_or_default())]
    Value {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// The row in the file, counted from 0, where one row is at fault.
        row: Option<u64>,
        /// Why.
        reason: String,
    },
    /// Scoring rows failed for a reason that is not one value's.
    #[error("{}: rows {first}..{end}: {reason}", .path.display())]
    Score {
        /// The file.
        path: PathBuf,
        /// First row of the batch.
        first: u64,
        /// One past its last row.
        end: u64,
        /// Why.
        reason: String,
    },
    /// The output cannot be written.
    #[error("cannot write {}: {reason}", .path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `--shard` is not `I/N` with `I < N`.
    #[error("--shard {0}: expected I/N with 0 <= I < N")]
    Shard(String),
    /// Stopped by a signal; no output was left.
    #[error("interrupted; no output was written")]
    Interrupted,
}

impl BatchError {
    fn open(path: &Path, e: impl std::fmt::Display) -> BatchError {
        BatchError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    fn read(path: &Path, row: Option<u64>, e: impl std::fmt::Display) -> BatchError {
        BatchError::Read {
            path: path.to_path_buf(),
            row,
            reason: e.to_string(),
        }
    }

    /// The error for a batch of rows `first..first + rows` of `path`.
    fn score(path: &Path, first: u64, rows: usize, e: ScoreError) -> BatchError {
        match e {
            ScoreError::Column(c) => BatchError::Value {
                path: path.to_path_buf(),
                column: c.column,
                row: c.row.map(|r| first + r as u64),
                reason: c.reason,
            },
            other => BatchError::Score {
                path: path.to_path_buf(),
                first,
                end: first + rows as u64,
                reason: crate::error::chain(&other),
            },
        }
    }
}

/// What to score and how, as the command line gives it.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model repository.
    pub models: PathBuf,
    /// The model's name.
    pub model: String,
    /// Its version; empty for the latest.
    pub version: String,
    /// Files, folders or globs.
    pub inputs: Vec<String>,
    /// The output file.
    pub output: PathBuf,
    /// Feeds, fetches and kept columns.
    pub mapping: Mapping,
    /// Rows per record batch read and scored.
    pub batch_rows: usize,
    /// Scoring threads.
    pub threads: usize,
    /// `(index, count)`: score only this shard.
    pub shard: (usize, usize),
}

/// Parses `I/N`.
pub fn parse_shard(text: &str) -> Result<(usize, usize), BatchError> {
    let bad = || BatchError::Shard(text.to_string());
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n) = (
        i.trim().parse::<usize>().map_err(|_| bad())?,
        n.trim().parse::<usize>().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// Everything checked and resolved before a row is read: files, model, columns.
pub struct Job {
    model: Arc<Model>,
    /// The binding for batches read with `projection`.
    binding: Binding,
    /// The types every input file is read with.
    schema: SchemaRef,
    /// The columns read, ascending.
    projection: Vec<usize>,
    units: Vec<Unit>,
    output: PathBuf,
    batch_rows: usize,
    threads: usize,
}

impl Job {
    /// Finds the inputs and the model, loads it, and binds the first file's columns to it.
    pub fn prepare(options: &Options) -> Result<Job, BatchError> {
        // The scoring threads already keep every core busy, a batch each: a run keeps to its
        // thread unless the model's config.toml gives it more.
        let defaults = OpenDefaults {
            threads: 1,
            ..OpenDefaults::default()
        };
        let opened = open_named(&options.models, &options.model, &options.version, &defaults)?;
        Job::with_model(options, Arc::new(opened.model), &opened.config)
    }

    /// Finds the inputs and binds the first file's columns to `model`, the model `options`
    /// names, already loaded with its `config`.
    pub fn with_model(
        options: &Options,
        model: Arc<Model>,
        config: &ModelConfig,
    ) -> Result<Job, BatchError> {
        let output_format = Format::of(&options.output)?;
        let files = source::expand(&options.inputs)?;
        let first = files.first().ok_or_else(|| BatchError::NoFiles {
            input: options.inputs.join(" "),
        })?;
        let mut schema = source::schema(first)?;
        let layout = match output_format {
            Format::Parquet => ListLayout::FixedSizeList,
            Format::Csv => ListLayout::Columns,
        };
        let bind = |schema: &Schema| {
            Binding::new(
                &options.model,
                model.signature(),
                schema,
                &options.mapping,
                layout,
                config.fill_null,
            )
            .map_err(|error| BatchError::Bind {
                path: first.clone(),
                error: Box::new(error),
            })
        };
        let mut binding = bind(&schema)?;
        if Format::of(first)? == Format::Csv {
            // CSV columns that feed floating-point inputs are parsed as that type directly,
            // whatever the first rows suggested (a column of whole numbers, say).
            schema = Arc::new(retyped(&schema, &binding.column_dtypes()));
            binding = bind(&schema)?;
        }
        let units = source::shard(source::units(&files)?, options.shard.0, options.shard.1);
        Ok(Job {
            projection: binding.columns_used(),
            binding: binding.projected(),
            model,
            schema,
            units,
            output: options.output.clone(),
            batch_rows: options.batch_rows.max(1),
            threads: options.threads.max(1),
        })
    }

    /// Rows to score, when the files say (Parquet).
    pub fn total_rows(&self) -> Option<u64> {
        self.units.iter().map(|u| u.rows).sum()
    }
}

/// `schema` with the columns in `dtypes` given floating-point types.
fn retyped(schema: &Schema, dtypes: &[(usize, DType)]) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(ix, field)| {
            let float = dtypes
                .iter()
                .find(|&&(c, dtype)| c == ix && matches!(dtype, DType::F32 | DType::F64))
                .map(|&(_, dtype)| crate::columns::arrow_type(dtype));
            match float {
                Some(dt) => field.as_ref().clone().with_data_type(dt),
                None => field.as_ref().clone(),
            }
        })
        .collect();
    Schema::new(fields)
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Rows written.
    pub rows: u64,
    /// Wall time, model loading excluded.
    pub seconds: f64,
    /// The output file.
    pub output: PathBuf,
}

pub use pipeline::run;
