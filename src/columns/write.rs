//! Tensors to columns: one scalar column, one list column, or one column per value.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayData, ArrayRef, BooleanArray, FixedSizeListArray, ListArray, StringArray,
    UInt32Array, make_array,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field};

use super::{ListLayout, OutputBinding};
use crate::engine::tensor::{DType, Tensor};

/// The Arrow type that holds values of `dtype`.
pub fn arrow_type(dtype: DType) -> DataType {
    match dtype {
        DType::F16 => DataType::Float16,
        DType::F32 => DataType::Float32,
        DType::F64 => DataType::Float64,
        DType::I8 => DataType::Int8,
        DType::I16 => DataType::Int16,
        DType::I32 => DataType::Int32,
        DType::I64 => DataType::Int64,
        DType::U8 => DataType::UInt8,
        DType::U16 => DataType::UInt16,
        DType::U32 => DataType::UInt32,
        DType::U64 => DataType::UInt64,
        DType::Bool => DataType::Boolean,
        DType::String => DataType::Utf8,
    }
}

fn item_field(dtype: DType) -> Arc<Field> {
    Arc::new(Field::new_list_field(arrow_type(dtype), false))
}

/// The fields an output becomes.
pub(super) fn fields(output: &OutputBinding, layout: ListLayout) -> Vec<Field> {
    let scalar = arrow_type(output.dtype);
    if output.scalar {
        return vec![Field::new(&output.column, scalar, false)];
    }
    match (layout, output.width) {
        (ListLayout::Columns, Some(k)) => (0..k)
            .map(|j| Field::new(format!("{}_{j}", output.column), scalar.clone(), false))
            .collect(),
        (ListLayout::FixedSizeList, Some(k)) => vec![Field::new(
            &output.column,
            DataType::FixedSizeList(item_field(output.dtype), i32::try_from(k).unwrap_or(0)),
            false,
        )],
        // Binding refuses Columns without a fixed width; List for the rest.
        _ => vec![Field::new(
            &output.column,
            DataType::List(item_field(output.dtype)),
            false,
        )],
    }
}

/// The columns an output tensor of `rows` rows becomes, matching [`fields`].
pub(super) fn columns(
    output: &OutputBinding,
    tensor: &Tensor,
    rows: usize,
    layout: ListLayout,
) -> Result<Vec<ArrayRef>, String> {
    if tensor.rows() != rows || tensor.shape().is_empty() {
        return Err(format!(
            "the model returned shape {} for {rows} row(s)",
            crate::engine::tensor::ShapeDisplay(tensor.shape())
        ));
    }
    if tensor.dtype() != output.dtype {
        return Err(format!(
            "the model returned {}, its signature says {}",
            tensor.dtype(),
            output.dtype
        ));
    }
    let width: usize = tensor.shape()[1..].iter().product();
    if output.width.is_some_and(|k| k != width) {
        return Err(format!(
            "the model returned shape {}, its signature says {} value(s) per row",
            crate::engine::tensor::ShapeDisplay(tensor.shape()),
            output.width.unwrap_or(0)
        ));
    }
    let values = values(tensor)?;
    if output.scalar {
        return Ok(vec![values]);
    }
    let k = i32::try_from(width).map_err(|_| format!("{width} values per row is too many"))?;
    Ok(match (layout, output.width) {
        (ListLayout::Columns, Some(_)) => (0..width)
            .map(|j| {
                let picks: UInt32Array = (0..rows)
                    .map(|i| u32::try_from(i * width + j).unwrap_or(u32::MAX))
                    .collect();
                take(&values, &picks, None).map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?,
        (ListLayout::FixedSizeList, Some(_)) => vec![Arc::new(
            FixedSizeListArray::try_new(item_field(output.dtype), k, values, None)
                .map_err(|e| e.to_string())?,
        )],
        _ => vec![Arc::new(
            ListArray::try_new(
                item_field(output.dtype),
                OffsetBuffer::from_lengths(std::iter::repeat_n(width, rows)),
                values,
                None,
            )
            .map_err(|e| e.to_string())?,
        )],
    })
}

/// All of a tensor's values as one flat array.
fn values(tensor: &Tensor) -> Result<ArrayRef, String> {
    if let Some(strings) = tensor.strings() {
        return Ok(Arc::new(StringArray::from_iter_values(strings)));
    }
    let bytes = tensor
        .bytes()
        .ok_or_else(|| "tensor holds neither bytes nor strings".to_string())?;
    if tensor.dtype() == DType::Bool {
        return Ok(Arc::new(BooleanArray::from(
            bytes.iter().map(|&b| b != 0).collect::<Vec<_>>(),
        )));
    }
    let data = ArrayData::try_new(
        arrow_type(tensor.dtype()),
        tensor.len(),
        None,
        0,
        vec![Buffer::from(bytes.as_ref())],
        vec![],
    )
    .map_err(|e| e.to_string())?;
    let array = make_array(data);
    debug_assert_eq!(array.len(), tensor.len());
    Ok(array)
}
