//! One tensor type for the whole server: a dtype, a shape and checked little-endian data.
//!
//! Every wire format (predictd.v1, and later KServe v2 and JSON) converts into [`Tensor`] through
//! the constructors here, which check that the data fits the shape; the engine converts it into
//! tract's tensors. Numeric data stays as little-endian bytes so that `raw` wire data is taken
//! without copying and batches concatenate with a memcpy.

use std::fmt;

use bytes::Bytes;

#[cfg(not(target_endian = "little"))]
compile_error!("predictd keeps tensors as little-endian bytes and hands them to tract as native");

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 16-bit IEEE float.
    F16,
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Boolean, one byte (0 or 1).
    Bool,
    /// UTF-8 string.
    String,
}

impl DType {
    /// Bytes per element, or `None` for strings (which have no fixed-size encoding).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::String => return None,
        })
    }

    /// The protocol name (the same spelling as KServe v2's datatypes).
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "FP16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::U8 => "UINT8",
            DType::U16 => "UINT16",
            DType::U32 => "UINT32",
            DType::U64 => "UINT64",
            DType::Bool => "BOOL",
            DType::String => "STRING",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A shape written the way users write it: `[8, 13]`.
pub struct ShapeDisplay<'a>(pub &'a [usize]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// Why data does not make a tensor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The shape's element count overflows.
    #[error("shape {shape:?} has too many elements")]
    ShapeOverflow {
        /// The shape as sent.
        shape: Vec<u64>,
    },
    /// A dimension is negative.
    #[error("shape {shape:?} has a negative dimension")]
    NegativeDim {
        /// The shape as sent.
        shape: Vec<i64>,
    },
    /// Raw data length does not match shape × element size.
    #[error("raw data has {got} bytes, but shape {} of {dtype} needs {expected}", ShapeDisplay(.shape))]
    ByteLength {
        /// The tensor's dtype.
        dtype: DType,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Bytes needed.
        expected: usize,
        /// Bytes sent.
        got: usize,
    },
    /// The number of typed values does not match the shape.
    #[error("{got} value(s) were sent, but shape {} needs {expected}", ShapeDisplay(.shape))]
    ValueCount {
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Values needed.
        expected: usize,
        /// Values sent.
        got: usize,
    },
    /// A raw BOOL byte is neither 0 nor 1.
    #[error("BOOL byte at element {index} is {value}; only 0 and 1 are booleans")]
    InvalidBool {
        /// Element index.
        index: usize,
        /// The byte sent.
        value: u8,
    },
    /// A typed value does not fit the declared dtype (e.g. 300 as INT8).
    #[error("value {value} at element {index} does not fit {dtype}")]
    OutOfRange {
        /// The declared dtype.
        dtype: DType,
        /// Element index.
        index: usize,
        /// The value sent.
        value: i128,
    },
    /// Strings have no raw byte form, and numbers none as strings.
    #[error("{dtype} data cannot be sent as {encoding}")]
    Encoding {
        /// The declared dtype.
        dtype: DType,
        /// The encoding used.
        encoding: &'static str,
    },
}

/// Number of elements of `shape`, or an error if it overflows `usize`.
pub fn element_count(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::ShapeOverflow {
            shape: shape.iter().map(|&d| d as u64).collect(),
        })
}

/// Converts a wire shape (signed, as protobuf carries it) to dimensions.
pub fn shape_from_wire(shape: &[i64]) -> Result<Vec<usize>, TensorError> {
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TensorError::NegativeDim {
            shape: shape.to_vec(),
        })?;
    element_count(&dims)?;
    Ok(dims)
}

/// A primitive element type whose values have a fixed little-endian encoding.
pub trait Element: Copy + Send + Sync + 'static {
    /// The dtype of this element type.
    const DTYPE: DType;
    /// Appends the little-endian bytes of `self`.
    fn put_le(self, out: &mut Vec<u8>);
    /// Reads one value from exactly `size` little-endian bytes.
    fn get_le(bytes: &[u8]) -> Self;
    /// Appends the little-endian bytes of every value.
    fn extend_le(values: &[Self], out: &mut Vec<u8>) {
        values.iter().for_each(|v| v.put_le(out));
    }
    /// Reads every value from little-endian bytes, `size` each.
    fn read_le(bytes: &[u8]) -> Vec<Self> {
        bytes
            .chunks_exact(std::mem::size_of::<Self>().max(1))
            .map(Self::get_le)
            .collect()
    }
}

macro_rules! element {
    ($t:ty, $dt:expr) => {
        impl Element for $t {
            const DTYPE: DType = $dt;
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            // On little-endian machines the values' memory is already the wire's bytes: one
            // copy instead of one call per element (10% of a 32-row MLP call from Python).
            fn extend_le(values: &[Self], out: &mut Vec<u8>) {
                if cfg!(target_endian = "little") {
                    out.extend_from_slice(bytemuck::cast_slice(values));
                } else {
                    values.iter().for_each(|v| v.put_le(out));
                }
            }
            fn read_le(bytes: &[u8]) -> Vec<Self> {
                if cfg!(target_endian = "little") {
                    bytemuck::pod_collect_to_vec(bytes)
                } else {
                    bytes
                        .chunks_exact(std::mem::size_of::<$t>())
                        .map(Self::get_le)
                        .collect()
                }
            }
        }
    };
}

element!(f32, DType::F32);
element!(f64, DType::F64);
element!(i8, DType::I8);
element!(i16, DType::I16);
element!(i32, DType::I32);
element!(i64, DType::I64);
element!(u8, DType::U8);
element!(u16, DType::U16);
element!(u32, DType::U32);
element!(u64, DType::U64);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn put_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn get_le(bytes: &[u8]) -> Self {
        bytes.first().is_some_and(|&b| b != 0)
    }
}

/// The values of a tensor.
#[derive(Clone, PartialEq)]
enum Data {
    /// Little-endian elements of a fixed-size dtype.
    Bytes(Bytes),
    /// One string per element.
    Strings(Vec<String>),
}

/// An n-dimensional array whose data is known to fit its dtype and shape.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Data,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} {})", self.dtype, ShapeDisplay(&self.shape))
    }
}

impl Tensor {
    /// A tensor from little-endian bytes, checked against `shape` and `dtype`.
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, bytes: Bytes) -> Result<Self, TensorError> {
        let Some(size) = dtype.size() else {
            return Err(TensorError::Encoding {
                dtype,
                encoding: "raw bytes",
            });
        };
        let expected =
            element_count(&shape)?
                .checked_mul(size)
                .ok_or_else(|| TensorError::ShapeOverflow {
                    shape: shape.iter().map(|&d| d as u64).collect(),
                })?;
        if bytes.len() != expected {
            return Err(TensorError::ByteLength {
                dtype,
                shape,
                expected,
                got: bytes.len(),
            });
        }
        // A bool byte other than 0 or 1 is not a bool: reject it before it reaches the engine.
        if dtype == DType::Bool
            && let Some((index, &value)) = bytes.iter().enumerate().find(|(_, b)| **b > 1)
        {
            return Err(TensorError::InvalidBool { index, value });
        }
        Ok(Tensor {
            dtype,
            shape,
            data: Data::Bytes(bytes),
        })
    }

    /// A tensor from typed values.
    pub fn from_values<T: Element>(shape: Vec<usize>, values: &[T]) -> Result<Self, TensorError> {
        check_count(&shape, values.len())?;
        let mut out = Vec::with_capacity(std::mem::size_of_val(values));
        T::extend_le(values, &mut out);
        Ok(Tensor {
            dtype: T::DTYPE,
            shape,
            data: Data::Bytes(out.into()),
        })
    }

    /// A tensor of `dtype` from wider wire values (e.g. INT8 sent as int32), each checked to fit.
    pub fn from_converted<W, T: Element>(
        dtype: DType,
        shape: Vec<usize>,
        values: &[W],
        convert: impl Fn(&W) -> Result<T, i128>,
    ) -> Result<Self, TensorError> {
        check_count(&shape, values.len())?;
        let mut out = Vec::with_capacity(values.len() * std::mem::size_of::<T>());
        for (index, v) in values.iter().enumerate() {
            let value = convert(v).map_err(|value| TensorError::OutOfRange {
                dtype,
                index,
                value,
            })?;
            value.put_le(&mut out);
        }
        Ok(Tensor {
            dtype,
            shape,
            data: Data::Bytes(out.into()),
        })
    }

    /// A tensor of a narrow integer dtype from wider wire integers (e.g. UINT8 sent as uint32),
    /// each checked to fit.
    pub fn from_narrowed<W: Copy, T: Element + TryFrom<W>>(
        dtype: DType,
        shape: Vec<usize>,
        values: &[W],
    ) -> Result<Self, TensorError>
    where
        i128: From<W>,
    {
        Self::from_converted(dtype, shape, values, |v| {
            T::try_from(*v).map_err(|_| i128::from(*v))
        })
    }

    /// A STRING tensor.
    pub fn from_strings(shape: Vec<usize>, values: Vec<String>) -> Result<Self, TensorError> {
        check_count(&shape, values.len())?;
        Ok(Tensor {
            dtype: DType::String,
            shape,
            data: Data::Strings(values),
        })
    }

    /// The dimensions as the wire protocols carry them.
    pub fn wire_shape(&self) -> Vec<i64> {
        self.shape
            .iter()
            .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The little-endian bytes, for fixed-size dtypes.
    pub fn bytes(&self) -> Option<&Bytes> {
        match &self.data {
            Data::Bytes(b) => Some(b),
            Data::Strings(_) => None,
        }
    }

    /// The strings, for STRING tensors.
    pub fn strings(&self) -> Option<&[String]> {
        match &self.data {
            Data::Strings(s) => Some(s),
            Data::Bytes(_) => None,
        }
    }

    /// Rows along the first dimension (0 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Stacks tensors of the same dtype and the same shape past the first dimension along the
    /// first dimension, or `None` if they differ.
    pub fn concat_rows(parts: &[&Tensor]) -> Option<Tensor> {
        let first = parts.first()?;
        let item = first.shape.get(1..)?;
        if parts
            .iter()
            .any(|t| t.dtype != first.dtype || t.shape.get(1..) != Some(item))
        {
            return None;
        }
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|t| t.rows()).sum();
        let data = match &first.data {
            Data::Bytes(_) => {
                let mut bytes = Vec::with_capacity(
                    parts.iter().map(|t| t.bytes().map_or(0, |b| b.len())).sum(),
                );
                for t in parts {
                    bytes.extend_from_slice(t.bytes()?);
                }
                Data::Bytes(bytes.into())
            }
            Data::Strings(_) => Data::Strings(
                parts
                    .iter()
                    .flat_map(|t| t.strings().unwrap_or_default().iter().cloned())
                    .collect(),
            ),
        };
        Some(Tensor {
            dtype: first.dtype,
            shape,
            data,
        })
    }

    /// Splits along the first dimension into pieces of `rows` rows each, or `None` if the
    /// counts do not add up to this tensor's rows. Numeric pieces share this tensor's bytes.
    pub fn split_rows(&self, rows: &[usize]) -> Option<Vec<Tensor>> {
        if self.shape.is_empty() || rows.iter().sum::<usize>() != self.rows() {
            return None;
        }
        let per_row: usize = self.shape[1..].iter().product();
        let mut start = 0;
        let mut pieces = Vec::with_capacity(rows.len());
        for &n in rows {
            let mut shape = self.shape.clone();
            shape[0] = n;
            let (from, to) = (start * per_row, (start + n) * per_row);
            let data = match &self.data {
                Data::Bytes(b) => {
                    let size = self.dtype.size()?;
                    Data::Bytes(b.slice(from * size..to * size))
                }
                Data::Strings(s) => Data::Strings(s.get(from..to)?.to_vec()),
            };
            pieces.push(Tensor {
                dtype: self.dtype,
                shape,
                data,
            });
            start += n;
        }
        Some(pieces)
    }

    /// The values decoded as `T`, or `None` if `T` is not this tensor's dtype.
    pub fn to_values<T: Element>(&self) -> Option<Vec<T>> {
        let bytes = self.bytes()?;
        (T::DTYPE == self.dtype).then(|| T::read_le(bytes))
    }
}

fn check_count(shape: &[usize], got: usize) -> Result<(), TensorError> {
    let expected = element_count(shape)?;
    if got != expected {
        return Err(TensorError::ValueCount {
            shape: shape.to_vec(),
            expected,
            got,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_length_must_match_shape() {
        let err = Tensor::from_bytes(DType::F32, vec![1, 13], Bytes::from(vec![0u8; 40]))
            .expect_err("40 bytes cannot hold 13 floats");
        assert_eq!(
            err.to_string(),
            "raw data has 40 bytes, but shape [1, 13] of FP32 needs 52"
        );
    }

    #[test]
    fn bool_bytes_must_be_zero_or_one() {
        let err = Tensor::from_bytes(DType::Bool, vec![3], Bytes::from_static(&[0, 1, 2]))
            .expect_err("2 is not a bool");
        assert_eq!(err, TensorError::InvalidBool { index: 2, value: 2 });
    }

    #[test]
    fn overflowing_shape_is_rejected_before_allocating() {
        let err = shape_from_wire(&[i64::MAX, i64::MAX]).expect_err("overflows");
        assert!(matches!(err, TensorError::ShapeOverflow { .. }));
        let err = shape_from_wire(&[1, -3]).expect_err("negative");
        assert!(matches!(err, TensorError::NegativeDim { .. }));
    }

    #[test]
    fn narrowing_checks_each_value() {
        let err = Tensor::from_converted(DType::I8, vec![2], &[1i32, 300], |v| {
            i8::try_from(*v).map_err(|_| i128::from(*v))
        })
        .expect_err("300 does not fit INT8");
        assert_eq!(err.to_string(), "value 300 at element 1 does not fit INT8");
    }

    #[test]
    fn rows_concatenate_and_split_back() {
        let a = Tensor::from_values(vec![1, 2], &[1i64, 2]).expect("valid");
        let b = Tensor::from_values(vec![2, 2], &[3i64, 4, 5, 6]).expect("valid");
        let both = Tensor::concat_rows(&[&a, &b]).expect("same item shape");
        assert_eq!(both.shape(), &[3, 2]);
        assert_eq!(both.to_values::<i64>(), Some(vec![1, 2, 3, 4, 5, 6]));
        let parts = both.split_rows(&[1, 2]).expect("counts add up");
        assert_eq!(parts, vec![a.clone(), b]);
        assert!(both.split_rows(&[1, 1]).is_none());
        let wide = Tensor::from_values(vec![1, 3], &[0i64; 3]).expect("valid");
        assert!(Tensor::concat_rows(&[&a, &wide]).is_none());
    }

    #[test]
    fn values_round_trip_through_bytes() {
        let t = Tensor::from_values(vec![2, 2], &[1.5f32, -2.0, 3.25, 0.0]).expect("valid");
        assert_eq!(t.bytes().map(|b| b.len()), Some(16));
        assert_eq!(t.to_values::<f32>(), Some(vec![1.5, -2.0, 3.25, 0.0]));
        assert_eq!(t.to_values::<i32>(), None);
    }
}
