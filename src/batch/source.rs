//! Input files: paths, folders and globs expanded in name order, cut into units (a Parquet row
//! group, a CSV file) that shards split, and read as record batches of the columns needed.

use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::BatchError;

/// Rows read to guess the column types of a CSV file.
const CSV_INFER_ROWS: usize = 10_000;

/// A file format, told by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// Comma-separated values with a header row.
    Csv,
}

impl Format {
    /// `.parquet` / `.pq` or `.csv`, in any case.
    pub fn of(path: &Path) -> Result<Format, BatchError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("parquet" | "pq") => Ok(Format::Parquet),
            Some("csv") => Ok(Format::Csv),
            _ => Err(BatchError::Format {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// The smallest piece of input a shard takes whole.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// The Parquet row group; `None` for a whole CSV file.
    pub row_group: Option<usize>,
    /// Rows in the unit, when the file says (Parquet).
    pub rows: Option<u64>,
    /// The file's first row in this unit, when known.
    pub first_row: u64,
    /// What balances shards: rows for Parquet, bytes for CSV.
    weight: u64,
}

/// Expands `--input` arguments: a file, a folder (its `.parquet`/`.csv` files, in name order)
/// or a glob (matches in name order).
pub(super) fn expand(inputs: &[String]) -> Result<Vec<PathBuf>, BatchError> {
    let mut files = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| BatchError::open(path, e))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && Format::of(p).is_ok()
                        && !p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.') || n.starts_with('_'))
                })
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(BatchError::NoFiles {
                    input: input.clone(),
                });
            }
            files.extend(found);
        } else if input.contains(['*', '?', '[']) {
            let mut found = glob::glob(input)
                .map_err(|e| BatchError::Open {
                    path: path.to_path_buf(),
                    reason: format!("bad glob: {e}"),
                })?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect::<Vec<_>>();
            found.sort();
            if found.is_empty() {
                return Err(BatchError::NoFiles {
                    input: input.clone(),
                });
            }
            files.extend(found);
        } else if path.is_file() {
            files.push(path.to_path_buf());
        } else {
            return Err(BatchError::Open {
                path: path.to_path_buf(),
                reason: "no such file or folder".to_string(),
            });
        }
    }
    for file in &files {
        Format::of(file)?;
    }
    Ok(files)
}

/// The schema of `path`: Parquet's own, or the types guessed from a CSV file's first rows.
pub(super) fn schema(path: &Path) -> Result<SchemaRef, BatchError> {
    match Format::of(path)? {
        Format::Parquet => Ok(parquet_builder(path)?.schema().clone()),
        Format::Csv => {
            let mut file = BufReader::new(File::open(path).map_err(|e| BatchError::open(path, e))?);
            let format = arrow::csv::reader::Format::default().with_header(true);
            let (schema, _) = format
                .infer_schema(&mut file, Some(CSV_INFER_ROWS))
                .map_err(|e| BatchError::read(path, None, e))?;
            file.rewind().map_err(|e| BatchError::open(path, e))?;
            Ok(Arc::new(schema))
        }
    }
}

/// Cuts files into units: one per Parquet row group, one per CSV file.
pub(super) fn units(files: &[PathBuf]) -> Result<Vec<Unit>, BatchError> {
    let mut units = Vec::new();
    for path in files {
        match Format::of(path)? {
            Format::Parquet => {
                let builder = parquet_builder(path)?;
                let mut first_row = 0;
                for (ix, group) in builder.metadata().row_groups().iter().enumerate() {
                    let rows = u64::try_from(group.num_rows()).unwrap_or(0);
                    units.push(Unit {
                        path: path.clone(),
                        format: Format::Parquet,
                        row_group: Some(ix),
                        rows: Some(rows),
                        first_row,
                        weight: rows,
                    });
                    first_row += rows;
                }
            }
            Format::Csv => {
                let bytes = std::fs::metadata(path)
                    .map_err(|e| BatchError::open(path, e))?
                    .len();
                units.push(Unit {
                    path: path.clone(),
                    format: Format::Csv,
                    row_group: None,
                    rows: None,
                    first_row: 0,
                    weight: bytes.max(1),
                });
            }
        }
    }
    Ok(units)
}

/// Shard `index` of `count`: a contiguous run of units, cut where the running weight (rows, or
/// bytes for CSV) crosses `index / count` of the total. Units are never split, so the shards'
/// outputs, concatenated in shard order, are exactly the unsharded output.
pub(super) fn shard(units: Vec<Unit>, index: usize, count: usize) -> Vec<Unit> {
    let total: u128 = units.iter().map(|u| u128::from(u.weight)).sum();
    let mut before: u128 = 0;
    units
        .into_iter()
        .filter(|unit| {
            // The shard whose range holds the unit's midpoint takes it.
            let middle = 2 * before + u128::from(unit.weight);
            before += u128::from(unit.weight);
            let owner = (middle * count as u128 / (2 * total.max(1))) as usize;
            owner.min(count - 1) == index
        })
        .collect()
}

/// Reads one unit as record batches of up to `batch_rows` rows, only the columns `projection`
/// names (indices into `schema`), typed as `schema` says.
pub(super) fn read(
    unit: &Unit,
    schema: &SchemaRef,
    projection: &[usize],
    batch_rows: usize,
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch, BatchError>> + Send>, BatchError> {
    let path = unit.path.clone();
    match unit.format {
        Format::Parquet => {
            let builder = parquet_builder(&unit.path)?;
            let found = builder.schema().clone();
            same_schema(&unit.path, schema, &found)?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), projection.iter().copied());
            let reader = builder
                .with_row_groups(unit.row_group.into_iter().collect())
                .with_projection(mask)
                .with_batch_size(batch_rows)
                .build()
                .map_err(|e| BatchError::read(&unit.path, None, e))?;
            Ok(Box::new(reader.map(move |b| {
                b.map_err(|e| BatchError::read(&path, None, e))
            })))
        }
        Format::Csv => {
            // A CSV file's own guess may differ from the first file's (a column of whole
            // numbers, say); every file is read with the first file's types, checked by name.
            let found = self::schema(&unit.path)?;
            same_names(&unit.path, schema, &found)?;
            let file = File::open(&unit.path).map_err(|e| BatchError::open(&unit.path, e))?;
            let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(true)
                .with_batch_size(batch_rows)
                .with_projection(projection.to_vec())
                .build(BufReader::with_capacity(1 << 20, file))
                .map_err(|e| BatchError::read(&unit.path, None, e))?;
            Ok(Box::new(reader.map(move |b| {
                b.map_err(|e| BatchError::read(&path, None, e))
            })))
        }
    }
}

fn parquet_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, BatchError> {
    let file = File::open(path).map_err(|e| BatchError::open(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| BatchError::Open {
        path: path.to_path_buf(),
        reason: format!("not a readable Parquet file: {e}"),
    })
}

fn same_schema(path: &Path, expected: &Schema, found: &Schema) -> Result<(), BatchError> {
    same_names(path, expected, found)?;
    for (want, got) in expected.fields().iter().zip(found.fields()) {
        if want.data_type() != got.data_type() {
            return Err(BatchError::Schema {
                path: path.to_path_buf(),
                reason: format!(
                    "column '{}' is {}, but {} in the first file",
                    got.name(),
                    got.data_type(),
                    want.data_type()
                ),
            });
        }
    }
    Ok(())
}

fn same_names(path: &Path, expected: &Schema, found: &Schema) -> Result<(), BatchError> {
    let names = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>()
    };
    if names(expected) != names(found) {
        return Err(BatchError::Schema {
            path: path.to_path_buf(),
            reason: format!(
                "its columns are {}, but the first file's are {}",
                names(found).join(", "),
                names(expected).join(", ")
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(weight: u64) -> Unit {
        Unit {
            path: PathBuf::from(format!("{weight}.parquet")),
            format: Format::Parquet,
            row_group: Some(0),
            rows: Some(weight),
            first_row: 0,
            weight,
        }
    }

    #[test]
    fn shards_are_contiguous_balanced_and_cover_every_unit_once() {
        let units: Vec<Unit> = [100, 100, 100, 100, 100, 100, 100, 40, 10, 300]
            .into_iter()
            .map(unit)
            .collect();
        for count in 1..=12 {
            let shards: Vec<Vec<u64>> = (0..count)
                .map(|i| {
                    shard(units.clone(), i, count)
                        .iter()
                        .map(|u| u.weight)
                        .collect()
                })
                .collect();
            let together: Vec<u64> = shards.concat();
            assert_eq!(
                together,
                units.iter().map(|u| u.weight).collect::<Vec<_>>(),
                "{count} shards"
            );
        }
        let halves: Vec<u64> = (0..2)
            .map(|i| shard(units.clone(), i, 2).iter().map(|u| u.weight).sum())
            .collect();
        // Of 1,050, the cut falls at 525: the unit spanning 500..600 has its middle past it.
        assert_eq!(halves, [500, 550]);
    }
}
