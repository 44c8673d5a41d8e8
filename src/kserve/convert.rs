//! Open Inference Protocol tensors to and from [`Tensor`]s: datatype names, typed `contents`,
//! raw little-endian bytes, and BYTES elements as 4-byte little-endian length prefixes followed
//! by the bytes. The gRPC service and the REST binary extension both use these; the REST JSON
//! form lives in [`super::json`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::engine::tensor::{DType, Tensor, TensorError, shape_from_wire};
use crate::proto::inference as pb;

/// Why a protocol tensor is not a tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentsError {
    /// The data does not fit the shape or dtype.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// Not a datatype of the protocol.
    #[error(
        "unknown datatype '{0}'; use one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES"
    )]
    UnknownDatatype(String),
    /// A protocol datatype the engine has no type for.
    #[error("datatype {0} is not supported by predictd")]
    Unsupported(String),
    /// A BYTES element is cut short or not UTF-8.
    #[error("BYTES data is malformed at element {index}: {reason}")]
    MalformedBytes {
        /// Element index.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The typed field used does not carry the declared datatype.
    #[error("datatype {datatype} is carried in contents.{expected}, but the values came in {got}")]
    WrongContents {
        /// The declared datatype.
        datatype: &'static str,
        /// The field that carries it.
        expected: &'static str,
        /// Where the values were.
        got: String,
    },
}

/// The protocol's name for a dtype.
pub fn datatype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "BOOL",
        DType::U8 => "UINT8",
        DType::U16 => "UINT16",
        DType::U32 => "UINT32",
        DType::U64 => "UINT64",
        DType::I8 => "INT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::F16 => "FP16",
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::String => "BYTES",
    }
}

/// The dtype of a protocol datatype name.
pub fn dtype_from_name(name: &str) -> Result<DType, ContentsError> {
    Ok(match name {
        "BOOL" => DType::Bool,
        "UINT8" => DType::U8,
        "UINT16" => DType::U16,
        "UINT32" => DType::U32,
        "UINT64" => DType::U64,
        "INT8" => DType::I8,
        "INT16" => DType::I16,
        "INT32" => DType::I32,
        "INT64" => DType::I64,
        "FP16" => DType::F16,
        "FP32" => DType::F32,
        "FP64" => DType::F64,
        "BYTES" => DType::String,
        "BF16" => return Err(ContentsError::Unsupported(name.to_string())),
        _ => return Err(ContentsError::UnknownDatatype(name.to_string())),
    })
}

/// Reads raw bytes: little-endian elements, or length-prefixed elements for BYTES.
pub fn tensor_from_raw(dtype: DType, shape: &[i64], raw: Bytes) -> Result<Tensor, ContentsError> {
    let shape = shape_from_wire(shape)?;
    if dtype != DType::String {
        return Ok(Tensor::from_bytes(dtype, shape, raw)?);
    }
    let mut strings = Vec::new();
    let mut rest = &raw[..];
    while !rest.is_empty() {
        let index = strings.len();
        let cut = |reason| ContentsError::MalformedBytes { index, reason };
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| cut("fewer than 4 bytes left for the length prefix"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(cut("the length prefix runs past the end of the data"));
        }
        let (element, tail) = tail.split_at(len);
        let text = std::str::from_utf8(element).map_err(|_| cut("not valid UTF-8"))?;
        strings.push(text.to_string());
        rest = tail;
    }
    Ok(Tensor::from_strings(shape, strings)?)
}

/// A tensor's raw form: its little-endian bytes, or length-prefixed elements for BYTES.
pub fn tensor_to_raw(tensor: &Tensor) -> Bytes {
    match tensor.strings() {
        Some(strings) => {
            let size = strings.iter().map(|s| 4 + s.len()).sum();
            let mut out = BytesMut::with_capacity(size);
            for s in strings {
                out.put_u32_le(u32::try_from(s.len()).unwrap_or(u32::MAX));
                out.put_slice(s.as_bytes());
            }
            out.freeze()
        }
        None => tensor.bytes().cloned().unwrap_or_default(),
    }
}

/// Reads typed `contents` as `dtype`. Narrow integer types travel in the 32-bit fields and are
/// checked to fit.
pub fn tensor_from_contents(
    dtype: DType,
    shape: &[i64],
    contents: pb::InferTensorContents,
) -> Result<Tensor, ContentsError> {
    let shape = shape_from_wire(shape)?;
    let c = contents;
    let filled: Vec<&'static str> = [
        ("bool_contents", !c.bool_contents.is_empty()),
        ("int_contents", !c.int_contents.is_empty()),
        ("int64_contents", !c.int64_contents.is_empty()),
        ("uint_contents", !c.uint_contents.is_empty()),
        ("uint64_contents", !c.uint64_contents.is_empty()),
        ("fp32_contents", !c.fp32_contents.is_empty()),
        ("fp64_contents", !c.fp64_contents.is_empty()),
        ("bytes_contents", !c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let expected = contents_field(dtype);
    match filled.as_slice() {
        [] => {}
        [one] if *one == expected => {}
        _ => {
            return Err(ContentsError::WrongContents {
                datatype: datatype_name(dtype),
                expected,
                got: filled.join(" and "),
            });
        }
    }
    let tensor = match dtype {
        DType::Bool => Tensor::from_values(shape, &c.bool_contents),
        DType::I8 => Tensor::from_narrowed::<i32, i8>(dtype, shape, &c.int_contents),
        DType::I16 => Tensor::from_narrowed::<i32, i16>(dtype, shape, &c.int_contents),
        DType::I32 => Tensor::from_values(shape, &c.int_contents),
        DType::I64 => Tensor::from_values(shape, &c.int64_contents),
        DType::U8 => Tensor::from_narrowed::<u32, u8>(dtype, shape, &c.uint_contents),
        DType::U16 => Tensor::from_narrowed::<u32, u16>(dtype, shape, &c.uint_contents),
        DType::U32 => Tensor::from_values(shape, &c.uint_contents),
        DType::U64 => Tensor::from_values(shape, &c.uint64_contents),
        DType::F32 => Tensor::from_values(shape, &c.fp32_contents),
        DType::F64 => Tensor::from_values(shape, &c.fp64_contents),
        DType::String => {
            let mut strings = Vec::with_capacity(c.bytes_contents.len());
            for (index, element) in c.bytes_contents.into_iter().enumerate() {
                strings.push(String::from_utf8(element).map_err(|_| {
                    ContentsError::MalformedBytes {
                        index,
                        reason: "not valid UTF-8",
                    }
                })?);
            }
            Tensor::from_strings(shape, strings)
        }
        // FP16 has no typed field: an empty one is a zero-element tensor.
        DType::F16 => Tensor::from_bytes(dtype, shape, Bytes::new()),
    };
    Ok(tensor?)
}

/// The `contents` field that carries `dtype` ("raw_input_contents" for FP16, which has none).
fn contents_field(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "bool_contents",
        DType::I8 | DType::I16 | DType::I32 => "int_contents",
        DType::I64 => "int64_contents",
        DType::U8 | DType::U16 | DType::U32 => "uint_contents",
        DType::U64 => "uint64_contents",
        DType::F32 => "fp32_contents",
        DType::F64 => "fp64_contents",
        DType::String => "bytes_contents",
        DType::F16 => "raw_input_contents",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_elements_round_trip_through_the_raw_form() {
        let tensor =
            Tensor::from_strings(vec![3], vec!["a".into(), String::new(), "été".into()]).unwrap();
        let raw = tensor_to_raw(&tensor);
        assert_eq!(&raw[..5], &[1, 0, 0, 0, b'a']);
        assert_eq!(tensor_from_raw(DType::String, &[3], raw).unwrap(), tensor);
    }

    #[test]
    fn truncated_bytes_are_refused_with_the_element() {
        let err = tensor_from_raw(DType::String, &[1], Bytes::from_static(&[9, 0, 0, 0, b'x']))
            .unwrap_err();
        assert_eq!(
            err,
            ContentsError::MalformedBytes {
                index: 0,
                reason: "the length prefix runs past the end of the data"
            }
        );
    }

    #[test]
    fn typed_contents_must_be_in_the_datatypes_field() {
        let contents = pb::InferTensorContents {
            int64_contents: vec![1, 2],
            ..Default::default()
        };
        let err = tensor_from_contents(DType::F32, &[2], contents).unwrap_err();
        assert!(err.to_string().contains("fp32_contents"), "{err}");
    }

    #[test]
    fn narrow_integers_are_checked_to_fit() {
        let contents = pb::InferTensorContents {
            uint_contents: vec![1, 300],
            ..Default::default()
        };
        let err = tensor_from_contents(DType::U8, &[2], contents).unwrap_err();
        assert!(err.to_string().contains("300"), "{err}");
        let ok = pb::InferTensorContents {
            uint_contents: vec![1, 255],
            ..Default::default()
        };
        let t = tensor_from_contents(DType::U8, &[2], ok).unwrap();
        assert_eq!(t.to_values::<u8>().unwrap(), vec![1, 255]);
    }
}
