//! The output file: written under a temporary name beside it and renamed only when complete, so
//! a failed or interrupted run never leaves a file that looks finished.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::BatchError;
use super::source::Format;

/// Rows per Parquet row group written. The writer holds a row group in memory until it is
/// full, so this bounds the output's share of memory; it is also what a later sharded run of
/// the output splits on.
const ROW_GROUP_ROWS: usize = 128 * 1024;

enum Writer {
    Parquet(ArrowWriter<BufWriter<File>>),
    Csv(arrow::csv::Writer<BufWriter<File>>),
}

/// An output file being written.
pub(super) struct Sink {
    path: PathBuf,
    temp: PathBuf,
    writer: Option<Writer>,
}

impl Sink {
    /// Creates the temporary file for `path` (format by extension) with `schema`.
    pub(super) fn create(path: &Path, schema: &SchemaRef) -> Result<Sink, BatchError> {
        let format = Format::of(path)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| BatchError::Write {
                path: path.to_path_buf(),
                reason: "not a file name".to_string(),
            })?;
        let temp = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
        let file = File::create(&temp).map_err(|e| BatchError::Write {
            path: temp.clone(),
            reason: e.to_string(),
        })?;
        tracing::debug!(partial = %temp.display(), "writing the output under a temporary name");
        let out = BufWriter::with_capacity(1 << 20, file);
        let mut sink = Sink {
            path: path.to_path_buf(),
            temp,
            writer: None,
        };
        sink.writer = Some(match format {
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .build();
                Writer::Parquet(
                    ArrowWriter::try_new(out, schema.clone(), Some(props))
                        .map_err(|e| sink.error(e))?,
                )
            }
            Format::Csv => Writer::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
            ),
        });
        // The header goes out now, so that a CSV file with no rows still has one.
        if format == Format::Csv {
            sink.write(&RecordBatch::new_empty(schema.clone()))?;
        }
        Ok(sink)
    }

    fn error(&self, e: impl std::fmt::Display) -> BatchError {
        BatchError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Appends a batch.
    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<(), BatchError> {
        let result = match self.writer.as_mut() {
            Some(Writer::Parquet(w)) => w.write(batch).map_err(|e| e.to_string()),
            Some(Writer::Csv(w)) => w.write(batch).map_err(|e| e.to_string()),
            None => Err("already finished".to_string()),
        };
        result.map_err(|e| self.error(e))
    }

    /// Flushes, syncs and renames the file to its final name.
    pub(super) fn finish(mut self) -> Result<PathBuf, BatchError> {
        let file = match self.writer.take() {
            Some(Writer::Parquet(w)) => w.into_inner().map_err(|e| self.error(e))?,
            Some(Writer::Csv(w)) => w.into_inner(),
            None => return Err(self.error("already finished")),
        };
        let file = file.into_inner().map_err(|e| self.error(e.error()))?;
        file.sync_all().map_err(|e| self.error(e))?;
        std::fs::rename(&self.temp, &self.path).map_err(|e| self.error(e))?;
        Ok(self.path.clone())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Not renamed: the partial file goes, whatever stopped the run.
        if self.temp.exists() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
