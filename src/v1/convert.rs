//! predictd.v1 wire messages to and from [`Tensor`]s and signatures. Every check on what a
//! client sent happens here or in [`crate::engine::tensor`], before anything is queued.

use crate::engine::signature::TensorSpec;
use crate::engine::tensor::{DType, Element, Tensor, TensorError, shape_from_wire};
use crate::proto::predictd::v1 as pb;

/// Why a wire tensor is not a tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The data does not fit the shape or dtype.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The dtype number is not one of `DataType`'s.
    #[error("unknown dtype {0}")]
    UnknownDType(i32),
    /// Values were sent in two fields.
    #[error("values were sent in both '{0}' and '{1}'; send them in one field")]
    TwoEncodings(&'static str, &'static str),
    /// `raw` needs a dtype to be read.
    #[error("dtype is required when values are sent as raw bytes")]
    RawWithoutDType,
    /// The typed field does not carry the declared dtype.
    #[error("dtype {dtype} cannot be sent in '{field}'; use '{expected}'")]
    WrongField {
        /// The declared dtype.
        dtype: DType,
        /// The field used.
        field: &'static str,
        /// The field that carries `dtype`.
        expected: &'static str,
    },
    /// No dtype and no values to infer it from.
    #[error("no dtype and no values: set dtype, or send values in a typed field")]
    NoDType,
}

/// Maps the wire enum to a dtype; `Ok(None)` for unspecified.
pub fn dtype_from_wire(value: i32) -> Result<Option<DType>, WireError> {
    let wire = pb::DataType::try_from(value).map_err(|_| WireError::UnknownDType(value))?;
    Ok(Some(match wire {
        pb::DataType::Unspecified => return Ok(None),
        pb::DataType::Fp32 => DType::F32,
        pb::DataType::Fp64 => DType::F64,
        pb::DataType::Fp16 => DType::F16,
        pb::DataType::Int8 => DType::I8,
        pb::DataType::Int16 => DType::I16,
        pb::DataType::Int32 => DType::I32,
        pb::DataType::Int64 => DType::I64,
        pb::DataType::Uint8 => DType::U8,
        pb::DataType::Uint16 => DType::U16,
        pb::DataType::Uint32 => DType::U32,
        pb::DataType::Uint64 => DType::U64,
        pb::DataType::Bool => DType::Bool,
        pb::DataType::String => DType::String,
    }))
}

/// Maps a dtype to the wire enum.
pub fn dtype_to_wire(dtype: DType) -> pb::DataType {
    match dtype {
        DType::F32 => pb::DataType::Fp32,
        DType::F64 => pb::DataType::Fp64,
        DType::F16 => pb::DataType::Fp16,
        DType::I8 => pb::DataType::Int8,
        DType::I16 => pb::DataType::Int16,
        DType::I32 => pb::DataType::Int32,
        DType::I64 => pb::DataType::Int64,
        DType::U8 => pb::DataType::Uint8,
        DType::U16 => pb::DataType::Uint16,
        DType::U32 => pb::DataType::Uint32,
        DType::U64 => pb::DataType::Uint64,
        DType::Bool => pb::DataType::Bool,
        DType::String => pb::DataType::String,
    }
}

/// The typed field that carries `dtype`, if any.
fn field_of(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "float_values",
        DType::F64 => "double_values",
        DType::I8 | DType::I16 | DType::I32 | DType::U8 | DType::U16 => "int32_values",
        DType::I64 => "int64_values",
        DType::U32 => "uint32_values",
        DType::U64 => "uint64_values",
        DType::Bool => "bool_values",
        DType::String => "string_values",
        DType::F16 => return None,
    })
}

/// True when the tensor's values were sent as raw bytes (replies then use raw bytes too).
pub fn is_raw(tensor: &pb::Tensor) -> bool {
    !tensor.raw.is_empty()
}

/// Decodes a wire tensor, checking dtype, shape and the amount of data.
pub fn tensor_from_wire(t: pb::Tensor) -> Result<Tensor, WireError> {
    let shape = shape_from_wire(&t.shape)?;
    let declared = dtype_from_wire(t.dtype)?;

    let filled: Vec<&'static str> = [
        ("raw", !t.raw.is_empty()),
        ("float_values", !t.float_values.is_empty()),
        ("double_values", !t.double_values.is_empty()),
        ("int32_values", !t.int32_values.is_empty()),
        ("int64_values", !t.int64_values.is_empty()),
        ("uint32_values", !t.uint32_values.is_empty()),
        ("uint64_values", !t.uint64_values.is_empty()),
        ("bool_values", !t.bool_values.is_empty()),
        ("string_values", !t.string_values.is_empty()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let field = match filled.as_slice() {
        [] => None,
        [one] => Some(*one),
        [a, b, ..] => return Err(WireError::TwoEncodings(a, b)),
    };

    let Some(field) = field else {
        // No values at all: only right for a tensor with no elements (rejected later if the
        // model needs rows), and only with a dtype to give it.
        let dtype = declared.ok_or(WireError::NoDType)?;
        return Ok(match dtype.size() {
            Some(_) => Tensor::from_bytes(dtype, shape, bytes::Bytes::new())?,
            None => Tensor::from_strings(shape, Vec::new())?,
        });
    };
    if field == "raw" {
        let dtype = declared.ok_or(WireError::RawWithoutDType)?;
        return Ok(Tensor::from_bytes(dtype, shape, t.raw)?);
    }

    let inferred = match field {
        "float_values" => DType::F32,
        "double_values" => DType::F64,
        "int32_values" => DType::I32,
        "int64_values" => DType::I64,
        "uint32_values" => DType::U32,
        "uint64_values" => DType::U64,
        "bool_values" => DType::Bool,
        _ => DType::String,
    };
    let dtype = declared.unwrap_or(inferred);
    if field_of(dtype) != Some(field) {
        return Err(WireError::WrongField {
            dtype,
            field,
            expected: field_of(dtype).unwrap_or("raw"),
        });
    }
    let tensor = match dtype {
        DType::F32 => Tensor::from_values(shape, &t.float_values),
        DType::F64 => Tensor::from_values(shape, &t.double_values),
        DType::I32 => Tensor::from_values(shape, &t.int32_values),
        DType::I8 => Tensor::from_narrowed::<i32, i8>(dtype, shape, &t.int32_values),
        DType::I16 => Tensor::from_narrowed::<i32, i16>(dtype, shape, &t.int32_values),
        DType::U8 => Tensor::from_narrowed::<i32, u8>(dtype, shape, &t.int32_values),
        DType::U16 => Tensor::from_narrowed::<i32, u16>(dtype, shape, &t.int32_values),
        DType::I64 => Tensor::from_values(shape, &t.int64_values),
        DType::U32 => Tensor::from_values(shape, &t.uint32_values),
        DType::U64 => Tensor::from_values(shape, &t.uint64_values),
        DType::Bool => Tensor::from_values(shape, &t.bool_values),
        DType::String => Tensor::from_strings(shape, t.string_values),
        // FP16 has no typed field; `field_of` already refused it.
        DType::F16 => {
            return Err(WireError::WrongField {
                dtype,
                field,
                expected: "raw",
            });
        }
    };
    Ok(tensor?)
}

/// Encodes a tensor for a reply: as raw bytes, or in its typed field. FP16 has no typed field
/// and always goes raw.
pub fn tensor_to_wire(tensor: &Tensor, raw: bool) -> pb::Tensor {
    let mut out = pb::Tensor {
        dtype: dtype_to_wire(tensor.dtype()) as i32,
        shape: tensor.wire_shape(),
        ..Default::default()
    };
    if let Some(strings) = tensor.strings() {
        out.string_values = strings.to_vec();
        return out;
    }
    let typed = !raw && tensor.dtype() != DType::F16;
    if !typed {
        out.raw = tensor.bytes().cloned().unwrap_or_default();
        return out;
    }
    fn widen<T: Element, U: From<T>>(t: &Tensor) -> Vec<U> {
        t.to_values::<T>()
            .unwrap_or_default()
            .into_iter()
            .map(U::from)
            .collect()
    }
    match tensor.dtype() {
        DType::F32 => out.float_values = widen::<f32, f32>(tensor),
        DType::F64 => out.double_values = widen::<f64, f64>(tensor),
        DType::I8 => out.int32_values = widen::<i8, i32>(tensor),
        DType::I16 => out.int32_values = widen::<i16, i32>(tensor),
        DType::I32 => out.int32_values = widen::<i32, i32>(tensor),
        DType::U8 => out.int32_values = widen::<u8, i32>(tensor),
        DType::U16 => out.int32_values = widen::<u16, i32>(tensor),
        DType::I64 => out.int64_values = widen::<i64, i64>(tensor),
        DType::U32 => out.uint32_values = widen::<u32, u32>(tensor),
        DType::U64 => out.uint64_values = widen::<u64, u64>(tensor),
        DType::Bool => out.bool_values = widen::<bool, bool>(tensor),
        DType::F16 | DType::String => {}
    }
    out
}

/// Describes an input or output.
pub fn spec_to_wire(spec: &TensorSpec) -> pb::TensorMetadata {
    pb::TensorMetadata {
        name: spec.name.clone(),
        dtype: dtype_to_wire(spec.dtype) as i32,
        shape: spec.wire_shape(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_infer_their_dtype() {
        let t = tensor_from_wire(pb::Tensor {
            shape: vec![1, 2],
            int64_values: vec![3, 4],
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(t.dtype(), DType::I64);
        assert_eq!(tensor_to_wire(&t, false).int64_values, vec![3, 4]);
        assert_eq!(tensor_to_wire(&t, true).raw.len(), 16);
    }

    #[test]
    fn mismatched_field_and_dtype_are_named() {
        let err = tensor_from_wire(pb::Tensor {
            dtype: pb::DataType::Fp64 as i32,
            shape: vec![1],
            float_values: vec![1.0],
            ..Default::default()
        })
        .expect_err("FP64 in float_values");
        assert_eq!(
            err.to_string(),
            "dtype FP64 cannot be sent in 'float_values'; use 'double_values'"
        );
        let err = tensor_from_wire(pb::Tensor {
            dtype: pb::DataType::Fp32 as i32,
            shape: vec![1],
            float_values: vec![1.0],
            raw: vec![0u8; 4].into(),
            ..Default::default()
        })
        .expect_err("two encodings");
        assert!(matches!(
            err,
            WireError::TwoEncodings("raw", "float_values")
        ));
        let err = tensor_from_wire(pb::Tensor {
            dtype: 99,
            ..Default::default()
        })
        .expect_err("unknown dtype");
        assert_eq!(err, WireError::UnknownDType(99));
    }

    #[test]
    fn small_integers_travel_in_int32_values() {
        let t = tensor_from_wire(pb::Tensor {
            dtype: pb::DataType::Uint8 as i32,
            shape: vec![3],
            int32_values: vec![0, 7, 255],
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(t.to_values::<u8>(), Some(vec![0, 7, 255]));
        assert_eq!(tensor_to_wire(&t, false).int32_values, vec![0, 7, 255]);
        let err = tensor_from_wire(pb::Tensor {
            dtype: pb::DataType::Uint8 as i32,
            shape: vec![1],
            int32_values: vec![-1],
            ..Default::default()
        })
        .expect_err("-1 is not a UINT8");
        assert_eq!(err.to_string(), "value -1 at element 0 does not fit UINT8");
    }
}
