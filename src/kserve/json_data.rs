//! A tensor's JSON `data`, read straight into the tensor's bytes and written straight from
//! them, with no JSON tree between: a tree costs 32 bytes a value, so a 64 MiB body of small
//! numbers once took 2.4 GB to read. Nested arrays read row-major, as the protocol allows.

use std::borrow::Cow;
use std::fmt;

use serde::Serializer;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::convert::ContentsError;
use crate::engine::tensor::{DType, Element, Tensor, TensorError, element_count, shape_from_wire};

/// Why JSON `data` does not fit the datatype.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum DataError {
    #[error(transparent)]
    Contents(#[from] ContentsError),
    #[error("element {index} is {got}, not {expected}")]
    Element {
        index: usize,
        expected: &'static str,
        got: String,
    },
    #[error("FP16 cannot be sent as JSON numbers; send it as binary data (binary_data_size)")]
    Half,
    #[error("data cannot be read: {0}")]
    Json(String),
}

impl From<TensorError> for DataError {
    fn from(e: TensorError) -> Self {
        DataError::Contents(ContentsError::Tensor(e))
    }
}

/// One scalar of a `data` array, as JSON gave it.
enum Scalar<'a> {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(Cow<'a, str>),
    /// `null` or an object, by its JSON text.
    Other(&'static str),
}

impl Scalar<'_> {
    /// The value as an error message shows it: its JSON text, cut to 40 characters.
    fn shown(&self) -> String {
        let text = match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => serde_json::to_string(f).unwrap_or_default(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Str(s) => serde_json::to_string(s).unwrap_or_default(),
            Scalar::Other(text) => (*text).to_string(),
        };
        text.chars().take(40).collect()
    }
}

/// Reads `data` (flat or nested) as `shape` of `dtype`.
pub(super) fn tensor_from_json(
    dtype: DType,
    shape: &[i64],
    data: &RawValue,
) -> Result<Tensor, DataError> {
    let shape = shape_from_wire(shape)?;
    // Never more than the text could hold ("0," is the shortest value), whatever the shape says.
    let capacity = element_count(&shape)?.min(data.get().len() / 2 + 1);
    match dtype {
        DType::F32 => numbers::<f32>(shape, data, capacity, |s| match s {
            Scalar::Float(f) => Some(Ok(*f as f32)),
            Scalar::Int(i) => Some(Ok(*i as f32)),
            _ => None,
        }),
        DType::F64 => numbers::<f64>(shape, data, capacity, |s| match s {
            Scalar::Float(f) => Some(Ok(*f)),
            Scalar::Int(i) => Some(Ok(*i as f64)),
            _ => None,
        }),
        DType::I8 => numbers::<i8>(shape, data, capacity, int),
        DType::I16 => numbers::<i16>(shape, data, capacity, int),
        DType::I32 => numbers::<i32>(shape, data, capacity, int),
        DType::I64 => numbers::<i64>(shape, data, capacity, int),
        DType::U8 => numbers::<u8>(shape, data, capacity, int),
        DType::U16 => numbers::<u16>(shape, data, capacity, int),
        DType::U32 => numbers::<u32>(shape, data, capacity, int),
        DType::U64 => numbers::<u64>(shape, data, capacity, int),
        DType::Bool => numbers::<bool>(shape, data, capacity, |s| match s {
            Scalar::Bool(b) => Some(Ok(*b)),
            _ => None,
        }),
        DType::String => {
            let mut strings = Vec::with_capacity(capacity);
            flatten(data, |index, scalar| match scalar {
                Scalar::Str(s) => {
                    strings.push(s.into_owned());
                    Ok(())
                }
                other => Err(wrong(index, "a string", &other)),
            })?;
            Ok(Tensor::from_strings(shape, strings)?)
        }
        DType::F16 => Err(DataError::Half),
    }
}

fn int<T: TryFrom<i128>>(scalar: &Scalar<'_>) -> Option<Result<T, i128>> {
    match scalar {
        Scalar::Int(wide) => Some(T::try_from(*wide).map_err(|_| *wide)),
        _ => None,
    }
}

fn wrong(index: usize, expected: &'static str, got: &Scalar<'_>) -> DataError {
    DataError::Element {
        index,
        expected,
        got: got.shown(),
    }
}

/// Reads numbers (or bools) converted by `convert` (`Err` holds an integer out of range)
/// straight into little-endian bytes.
fn numbers<T: Element>(
    shape: Vec<usize>,
    data: &RawValue,
    capacity: usize,
    convert: impl Fn(&Scalar<'_>) -> Option<Result<T, i128>>,
) -> Result<Tensor, DataError> {
    let expected = if T::DTYPE == DType::Bool {
        "true or false"
    } else if matches!(T::DTYPE, DType::F32 | DType::F64) {
        "a number"
    } else {
        "an integer"
    };
    let mut bytes = Vec::with_capacity(capacity * std::mem::size_of::<T>());
    let mut count = 0;
    flatten(data, |index, scalar| match convert(&scalar) {
        Some(Ok(value)) => {
            value.put_le(&mut bytes);
            count += 1;
            Ok(())
        }
        Some(Err(value)) => Err(TensorError::OutOfRange {
            dtype: T::DTYPE,
            index,
            value,
        }
        .into()),
        None => Err(wrong(index, expected, &scalar)),
    })?;
    let wanted = element_count(&shape)?;
    if count != wanted {
        return Err(TensorError::ValueCount {
            shape,
            expected: wanted,
            got: count,
        }
        .into());
    }
    Ok(Tensor::from_bytes(T::DTYPE, shape, bytes.into())?)
}

/// Feeds every scalar of `data`, row-major, to `sink` with its index; stops at the first
/// error, the sink's or the JSON's.
fn flatten(
    data: &RawValue,
    mut sink: impl FnMut(usize, Scalar<'_>) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let mut failed = None;
    let mut next = 0;
    let mut deserializer = serde_json::Deserializer::from_str(data.get());
    let read = Flatten {
        sink: &mut sink,
        next: &mut next,
        failed: &mut failed,
    }
    .deserialize(&mut deserializer);
    match (failed, read) {
        (Some(error), _) => Err(error),
        (None, Err(e)) => Err(DataError::Json(e.to_string())),
        (None, Ok(())) => Ok(()),
    }
}

/// A value of `data`: a scalar goes to the sink, an array's items are read in turn. A sink's
/// error is kept in `failed`, and the read is stopped with an error of serde's.
struct Flatten<'s, F> {
    sink: &'s mut F,
    next: &'s mut usize,
    failed: &'s mut Option<DataError>,
}

impl<F> Flatten<'_, F>
where
    F: FnMut(usize, Scalar<'_>) -> Result<(), DataError>,
{
    fn push<E: serde::de::Error>(self, scalar: Scalar<'_>) -> Result<(), E> {
        let index = *self.next;
        *self.next += 1;
        (self.sink)(index, scalar).map_err(|error| {
            *self.failed = Some(error);
            E::custom("stopped")
        })
    }
}

impl<'de, F> DeserializeSeed<'de> for Flatten<'_, F>
where
    F: FnMut(usize, Scalar<'_>) -> Result<(), DataError>,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, F> Visitor<'de> for Flatten<'_, F>
where
    F: FnMut(usize, Scalar<'_>) -> Result<(), DataError>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of values")
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Scalar::Int(v.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Scalar::Int(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Scalar::Float(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Scalar::Bool(v))
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<(), E> {
        self.push(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.push(Scalar::Other("null"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.push(Scalar::Other("an object"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let item = Flatten {
                sink: &mut *self.sink,
                next: &mut *self.next,
                failed: &mut *self.failed,
            };
            if seq.next_element_seed(item)?.is_none() {
                return Ok(());
            }
        }
    }
}

/// Writes a tensor's values as a flat JSON array.
pub(super) fn write_json(out: &mut Vec<u8>, tensor: &Tensor) -> serde_json::Result<()> {
    fn all<T: Element + serde::Serialize>(out: &mut Vec<u8>, t: &Tensor) -> serde_json::Result<()> {
        let values = t
            .bytes()
            .map(|b| b.chunks_exact(std::mem::size_of::<T>().max(1)));
        serde_json::Serializer::new(out).collect_seq(values.into_iter().flatten().map(T::get_le))
    }
    // serde_json writes an f32 in its own shortest form (0.96000016, not the 0.9600001573562622
    // of its f64 widening), and NaN and infinities as null, as JSON has no word for them.
    match tensor.dtype() {
        DType::F32 => all::<f32>(out, tensor),
        DType::F64 => all::<f64>(out, tensor),
        DType::I8 => all::<i8>(out, tensor),
        DType::I16 => all::<i16>(out, tensor),
        DType::I32 => all::<i32>(out, tensor),
        DType::I64 => all::<i64>(out, tensor),
        DType::U8 => all::<u8>(out, tensor),
        DType::U16 => all::<u16>(out, tensor),
        DType::U32 => all::<u32>(out, tensor),
        DType::U64 => all::<u64>(out, tensor),
        DType::Bool => all::<bool>(out, tensor),
        DType::String => {
            serde_json::Serializer::new(out).collect_seq(tensor.strings().unwrap_or_default())
        }
        // No Rust primitive carries FP16: its values are written as the f32s they widen to.
        DType::F16 => {
            let halves = tensor
                .bytes()
                .map(|b| b.chunks_exact(2))
                .into_iter()
                .flatten();
            serde_json::Serializer::new(out).collect_seq(
                halves.map(|half| half::f16::from_le_bytes([half[0], half[1]]).to_f32()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::{Value, json};

    fn raw(value: Value) -> Box<RawValue> {
        RawValue::from_string(value.to_string()).unwrap()
    }

    fn written(tensor: &Tensor) -> Value {
        let mut out = Vec::new();
        write_json(&mut out, tensor).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn nested_and_flat_data_read_the_same() {
        let nested =
            tensor_from_json(DType::F32, &[2, 2], &raw(json!([[1, 2.5], [3, 4]]))).unwrap();
        let flat = tensor_from_json(DType::F32, &[2, 2], &raw(json!([1, 2.5, 3, 4]))).unwrap();
        assert_eq!(nested, flat);
        assert_eq!(flat.to_values::<f32>().unwrap(), vec![1.0, 2.5, 3.0, 4.0]);
    }

    #[test]
    fn json_values_are_checked_against_the_datatype() {
        let err = tensor_from_json(DType::I64, &[2], &raw(json!([1, "x"]))).unwrap_err();
        assert_eq!(err.to_string(), "element 1 is \"x\", not an integer");
        let err = tensor_from_json(DType::I64, &[2], &raw(json!([1, 2.5]))).unwrap_err();
        assert_eq!(err.to_string(), "element 1 is 2.5, not an integer");
        let err = tensor_from_json(DType::F32, &[2], &raw(json!([1, {"a": 1}]))).unwrap_err();
        assert_eq!(err.to_string(), "element 1 is an object, not a number");
        let err = tensor_from_json(DType::Bool, &[1], &raw(json!([null]))).unwrap_err();
        assert_eq!(err.to_string(), "element 0 is null, not true or false");
        let err = tensor_from_json(DType::U8, &[1], &raw(json!([256]))).unwrap_err();
        assert!(err.to_string().contains("256"), "{err}");
        let err = tensor_from_json(DType::F32, &[3], &raw(json!([1, 2]))).unwrap_err();
        assert!(err.to_string().contains('3'), "{err}");
        let strings = tensor_from_json(DType::String, &[2], &raw(json!(["a", "b\"c"]))).unwrap();
        assert_eq!(strings.strings().unwrap(), ["a", "b\"c"]);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let deep = RawValue::from_string(deep).unwrap();
        let err = tensor_from_json(DType::F32, &[0], &deep).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }

    #[test]
    fn values_are_written_as_json_numbers() {
        let floats = Tensor::from_values(vec![3], &[0.96000016f32, f32::NAN, -2.0]).unwrap();
        assert_eq!(written(&floats), json!([0.96000016, null, -2.0]));
        let ints = Tensor::from_values(vec![2], &[-3i64, 7]).unwrap();
        assert_eq!(written(&ints), json!([-3, 7]));
        let strings = Tensor::from_strings(vec![1], vec!["q\"".to_string()]).unwrap();
        assert_eq!(written(&strings), json!(["q\""]));
        let halves = bytes::Bytes::from_static(&[0x00, 0x3c, 0x00, 0xc0]);
        let halves = Tensor::from_bytes(DType::F16, vec![2], halves).unwrap();
        assert_eq!(written(&halves), json!([1.0, -2.0]));
    }

    #[test]
    fn every_f32_is_written_in_its_shortest_form() {
        // Bit patterns spread over every sign, exponent and fraction (a prime stride).
        let values: Vec<f32> = (0..u32::MAX / 65_521)
            .map(|i| f32::from_bits(i.wrapping_mul(65_521)))
            .filter(|v| v.is_finite())
            .collect();
        let tensor = Tensor::from_values(vec![values.len()], &values).unwrap();
        let mut out = Vec::new();
        write_json(&mut out, &tensor).unwrap();
        let text = String::from_utf8(out).unwrap();
        let written: Vec<&str> = text[1..text.len() - 1].split(',').collect();
        assert_eq!(written.len(), values.len());
        // Significant digits: those of the mantissa, less leading and trailing zeros.
        fn digits(number: &str) -> usize {
            let mantissa = number.split(['e', 'E']).next().unwrap_or_default();
            let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
            digits.trim_matches('0').len()
        }
        for (written, value) in written.iter().zip(&values) {
            let read: f32 = written.parse().unwrap();
            assert_eq!(
                read.to_bits(),
                value.to_bits(),
                "{value:e} written as {written}"
            );
            // No longer than Rust's shortest form (ties may round the other way).
            assert!(
                digits(written) <= digits(&value.to_string()),
                "{value:e} written as {written}"
            );
        }
    }
}
