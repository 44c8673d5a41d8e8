//! Columns to tensors: casts that keep values, nulls found by row, values laid out row-major.

use std::borrow::Cow;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray, RecordBatch};
use arrow::buffer::Buffer;
use arrow::compute::cast;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use bytes::Bytes;

use super::{InputBinding, Source, transpose};
use crate::engine::tensor::{DType, Tensor};

/// A column whose values cannot feed the model: a null, a list of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column '{column}'{}: {reason}", .row.map(|r| format!(", row {r}")).unwrap_or_default())]
pub struct ColumnError {
    /// The column.
    pub column: String,
    /// The row within the batch, counted from 0, where known.
    pub row: Option<usize>,
    /// What is wrong with it.
    pub reason: String,
}

/// True when every value of `from` becomes a value of `to` that means the same: the casts the
/// module documentation lists.
pub(super) fn converts(from: &DataType, to: DType) -> bool {
    use DataType as A;
    let from = match from {
        A::Dictionary(_, values) => values.as_ref(),
        other => other,
    };
    let int_bits = |dt: &DataType| match dt {
        A::Int8 => Some((true, 8)),
        A::Int16 => Some((true, 16)),
        A::Int32 => Some((true, 32)),
        A::Int64 => Some((true, 64)),
        A::UInt8 => Some((false, 8)),
        A::UInt16 => Some((false, 16)),
        A::UInt32 => Some((false, 32)),
        A::UInt64 => Some((false, 64)),
        _ => None,
    };
    let target_int = int_bits(&super::arrow_type(to));
    match to {
        DType::F16 | DType::F32 | DType::F64 => {
            int_bits(from).is_some() || matches!(from, A::Float16 | A::Float32 | A::Float64)
        }
        DType::Bool => matches!(from, A::Boolean),
        DType::String => matches!(from, A::Utf8 | A::LargeUtf8 | A::Utf8View),
        _ => match (int_bits(from), target_int) {
            (Some((from_signed, from_bits)), Some((to_signed, to_bits))) => {
                match (from_signed, to_signed) {
                    (true, true) | (false, false) => from_bits <= to_bits,
                    (false, true) => from_bits < to_bits,
                    (true, false) => false,
                }
            }
            _ => false,
        },
    }
}

/// The tensor an input takes from one batch.
pub(super) fn tensor(
    input: &InputBinding,
    batch: &RecordBatch,
    fill_null: Option<f64>,
) -> Result<Tensor, ColumnError> {
    let rows = batch.num_rows();
    let (arrays, item_shape, list_rows) = match &input.source {
        Source::Columns(columns) => (
            columns.iter().map(|&c| batch.column(c).clone()).collect(),
            input.item_shape.clone(),
            None,
        ),
        Source::List(column) => {
            let (values, width) =
                flatten_list(batch.column(*column), &input.columns[0], &input.item_shape)?;
            let item_shape = if input.item_shape.is_empty() {
                vec![width]
            } else {
                input.item_shape.clone()
            };
            (vec![values], item_shape, Some(width))
        }
    };
    let names: Vec<&str> = match list_rows {
        Some(_) => vec![input.columns[0].as_str()],
        None => input.columns.iter().map(String::as_str).collect(),
    };
    // Values of a flattened list are addressed by value index; errors report the row.
    let row_of = |index: usize| list_rows.map_or(index, |width| index / width.max(1));
    let mut shape = Vec::with_capacity(item_shape.len() + 1);
    shape.push(rows);
    shape.extend(&item_shape);
    let invalid = |e: crate::engine::tensor::TensorError| ColumnError {
        column: names.join(","),
        row: None,
        reason: e.to_string(),
    };

    macro_rules! primitive {
        ($t:ty, $fill:expr) => {{
            let values = interleave::<$t>(&arrays, &names, input.dtype, $fill, &row_of)?;
            // The tensor owns the values' buffer as it is: a 100,000 x 64 batch is 25 MB.
            let bytes = Bytes::from_owner(values);
            Tensor::from_bytes(input.dtype, shape, bytes).map_err(invalid)
        }};
    }
    match input.dtype {
        DType::F16 => primitive!(Float16Type, fill_null.map(half::f16::from_f64)),
        DType::F32 => primitive!(Float32Type, fill_null.map(|v| v as f32)),
        DType::F64 => primitive!(Float64Type, fill_null),
        DType::I8 => primitive!(Int8Type, None),
        DType::I16 => primitive!(Int16Type, None),
        DType::I32 => primitive!(Int32Type, None),
        DType::I64 => primitive!(Int64Type, None),
        DType::U8 => primitive!(UInt8Type, None),
        DType::U16 => primitive!(UInt16Type, None),
        DType::U32 => primitive!(UInt32Type, None),
        DType::U64 => primitive!(UInt64Type, None),
        DType::Bool => {
            let columns = cast_all(&arrays, &names, &DataType::Boolean, &row_of)?;
            let mut out = vec![0u8; rows * columns.len()];
            for (j, column) in columns.iter().enumerate() {
                let column = column.as_boolean();
                for (i, value) in column.values().iter().enumerate() {
                    out[i * columns.len() + j] = u8::from(value);
                }
            }
            Tensor::from_bytes(DType::Bool, shape, out.into()).map_err(invalid)
        }
        DType::String => {
            let columns = cast_all(&arrays, &names, &DataType::Utf8, &row_of)?;
            let k = columns.len();
            let mut out = vec![String::new(); rows * k];
            for (j, column) in columns.iter().enumerate() {
                for (i, value) in column.as_string::<i32>().iter().enumerate() {
                    out[i * k + j] = value.unwrap_or_default().to_string();
                }
            }
            Tensor::from_strings(shape, out).map_err(invalid)
        }
    }
}

/// Casts each array to `T` and lays the values out row-major: column `j` of row `i` at
/// `i * k + j`. Nulls take `fill` when there is one and are an error otherwise.
fn interleave<T: ArrowPrimitiveType>(
    arrays: &[ArrayRef],
    names: &[&str],
    dtype: DType,
    fill: Option<T::Native>,
    row_of: &dyn Fn(usize) -> usize,
) -> Result<Buffer, ColumnError> {
    let mut columns = Vec::with_capacity(arrays.len());
    for (array, name) in arrays.iter().zip(names) {
        let converted = cast(array, &T::DATA_TYPE).map_err(|e| ColumnError {
            column: name.to_string(),
            row: None,
            reason: format!("cannot convert {} to {dtype}: {e}", array.data_type()),
        })?;
        if converted.as_primitive_opt::<T>().is_none() {
            return Err(ColumnError {
                column: name.to_string(),
                row: None,
                reason: format!("cannot convert {} to {dtype}", array.data_type()),
            });
        }
        if let Some(nulls) = converted.nulls().filter(|n| n.null_count() > 0)
            && fill.is_none()
        {
            return Err(null_error(name, nulls, dtype, row_of));
        }
        columns.push(converted);
    }
    let columns: Vec<&PrimitiveArray<T>> = columns.iter().map(|c| c.as_primitive::<T>()).collect();
    let rows = columns.first().map_or(0, |c| c.len());
    // Nulls are filled in a copy of their column first, so that the transpose is one loop.
    let mut filled: Vec<Cow<'_, [T::Native]>> = columns
        .iter()
        .map(|c| match (c.nulls().filter(|n| n.null_count() > 0), fill) {
            (Some(nulls), Some(fill)) => Cow::Owned(
                c.values()
                    .iter()
                    .enumerate()
                    .map(|(i, v)| if nulls.is_null(i) { fill } else { *v })
                    .collect(),
            ),
            _ => Cow::Borrowed(&c.values()[..]),
        })
        .collect();
    // One column (a flattened list) is already row-major: its buffer is shared, or the filled
    // copy taken, as it is.
    if let [column] = &columns[..] {
        return Ok(match filled.pop() {
            Some(Cow::Owned(values)) => Buffer::from_vec(values),
            _ => column.values().inner().clone(),
        });
    }
    let columns: Vec<&[T::Native]> = filled.iter().map(|c| &c[..]).collect();
    Ok(transpose::rows_of(&columns, rows))
}

fn cast_all(
    arrays: &[ArrayRef],
    names: &[&str],
    to: &DataType,
    row_of: &dyn Fn(usize) -> usize,
) -> Result<Vec<ArrayRef>, ColumnError> {
    arrays
        .iter()
        .zip(names)
        .map(|(array, name)| {
            let converted = cast(array, to).map_err(|e| ColumnError {
                column: name.to_string(),
                row: None,
                reason: format!("cannot convert {} to {to}: {e}", array.data_type()),
            })?;
            if let Some(nulls) = converted.nulls().filter(|n| n.null_count() > 0) {
                return Err(ColumnError {
                    column: name.to_string(),
                    row: (0..nulls.len()).find(|&i| nulls.is_null(i)).map(row_of),
                    reason: "null value; nulls can only be filled in floating-point inputs"
                        .to_string(),
                });
            }
            Ok(converted)
        })
        .collect()
}

fn null_error(
    name: &str,
    nulls: &arrow::buffer::NullBuffer,
    dtype: DType,
    row_of: &dyn Fn(usize) -> usize,
) -> ColumnError {
    let fill_hint = match dtype {
        DType::F16 | DType::F32 | DType::F64 => {
            "; set fill_null in the model's config.toml to replace nulls"
        }
        _ => "",
    };
    ColumnError {
        column: name.to_string(),
        row: (0..nulls.len()).find(|&i| nulls.is_null(i)).map(row_of),
        reason: format!("null value, but the input takes {dtype}{fill_hint}"),
    }
}

/// The values of a list column, row after row, and the length of every list. Every row must
/// hold a list, and all lists the same number of values (`item_shape`'s, when it is known).
fn flatten_list(
    array: &ArrayRef,
    name: &str,
    item_shape: &[usize],
) -> Result<(ArrayRef, usize), ColumnError> {
    let error = |row, reason: String| ColumnError {
        column: name.to_string(),
        row,
        reason,
    };
    let spans: Vec<(usize, usize)> = if let Some(list) = array.as_list_opt::<i32>() {
        list.offsets()
            .windows(2)
            .map(|w| (w[0] as usize, (w[1] - w[0]) as usize))
            .collect()
    } else if let Some(list) = array.as_list_opt::<i64>() {
        list.offsets()
            .windows(2)
            .map(|w| (w[0] as usize, (w[1] - w[0]) as usize))
            .collect()
    } else if let Some(list) = array.as_fixed_size_list_opt() {
        (0..list.len())
            .map(|i| (list.value_offset_at(i), list.value_length() as usize))
            .collect()
    } else {
        return Err(error(None, format!("{} is not a list", array.data_type())));
    };
    let values = match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().values().clone(),
        DataType::LargeList(_) => array.as_list::<i64>().values().clone(),
        _ => array.as_fixed_size_list().values().clone(),
    };
    if let Some(row) = (0..array.len()).find(|&i| array.is_null(i)) {
        return Err(error(Some(row), "null list".to_string()));
    }
    let width = match item_shape {
        [] => spans.first().map_or(0, |s| s.1),
        dims => dims.iter().product(),
    };
    if let Some(row) = spans.iter().position(|s| s.1 != width) {
        return Err(error(
            Some(row),
            format!(
                "list of {} value(s), but the input takes {width}",
                spans[row].1
            ),
        ));
    }
    // Lists are contiguous unless the array was sliced; a slice is contiguous too.
    let start = spans.first().map_or(0, |s| s.0);
    let contiguous = spans
        .iter()
        .enumerate()
        .all(|(i, s)| s.0 == start + i * width);
    if !contiguous {
        return Err(error(
            None,
            "list values are not stored row after row".to_string(),
        ));
    }
    Ok((values.slice(start, spans.len() * width), width))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use arrow::array::Float32Array;

    use super::*;

    /// One column is row-major already: its buffer is shared when nothing is filled, and its
    /// nulls take `fill` when something is.
    #[test]
    fn one_column_is_shared_or_filled() {
        let whole: ArrayRef = Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0, 4.0]));
        let column = whole.slice(1, 3);
        let out = interleave::<Float32Type>(
            std::slice::from_ref(&column),
            &["a"],
            DType::F32,
            None,
            &|i| i,
        )
        .unwrap();
        assert_eq!(out.typed_data::<f32>(), &[2.0, 3.0, 4.0]);
        let values = column.to_data().buffers()[0].clone();
        assert_eq!(out.as_ptr(), values.as_ptr(), "the buffer is shared");
        let gappy: ArrayRef = Arc::new(Float32Array::from(vec![Some(1.0), None, Some(3.0)]));
        let out =
            interleave::<Float32Type>(&[gappy], &["a"], DType::F32, Some(-1.0), &|i| i).unwrap();
        assert_eq!(out.typed_data::<f32>(), &[1.0, -1.0, 3.0]);
    }

    /// Ten columns over more rows than one block of the transpose, the second with nulls in
    /// several blocks: the row-major matrix has every value in its place and `fill` in the
    /// nulls.
    #[test]
    fn interleaves_columns_across_blocks_with_nulls_filled() {
        let (rows, k) = (2100, 10);
        let null_rows = [5, 1500, 2099];
        let column = |j: usize| -> ArrayRef {
            Arc::new(Float32Array::from_iter((0..rows).map(|i| {
                (j != 1 || !null_rows.contains(&i)).then_some((i * 10 + j) as f32)
            })))
        };
        let arrays: Vec<ArrayRef> = (0..k).map(column).collect();
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let out =
            interleave::<Float32Type>(&arrays, &names, DType::F32, Some(-1.0), &|i| i).unwrap();
        let out = out.typed_data::<f32>();
        for i in 0..rows {
            for j in 0..k {
                let want = if j == 1 && null_rows.contains(&i) {
                    -1.0
                } else {
                    (i * 10 + j) as f32
                };
                assert_eq!(out[i * k + j], want, "row {i}, column {j}");
            }
        }
        let error = interleave::<Float32Type>(&arrays, &names, DType::F32, None, &|i| i);
        assert_eq!(error.unwrap_err().row, Some(5));
    }
}
