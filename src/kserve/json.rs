//! The REST form of the protocol: inference request and response bodies, with each tensor
//! either as JSON `data` or as raw bytes after the JSON (the binary tensor data extension,
//! whose JSON header length travels in `Inference-Header-Content-Length`).

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::convert::{
    ContentsError, datatype_name, dtype_from_name, tensor_from_raw, tensor_to_raw,
};
use crate::engine::tensor::{DType, Element, Tensor, TensorError, shape_from_wire};

/// Why a request body cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    /// The JSON does not parse or lacks required fields.
    #[error("the request body is not a valid inference request: {0}")]
    Json(String),
    /// `Inference-Header-Content-Length` does not fit the body.
    #[error("Inference-Header-Content-Length is {header} but the body has only {body} bytes")]
    HeaderLength {
        /// The header's value.
        header: usize,
        /// The body's length.
        body: usize,
    },
    /// One input's data is wrong; the message names it.
    #[error("input '{input}': {reason}")]
    Input {
        /// The input.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// Binary data was left over after every input took its share.
    #[error(
        "{0} bytes of binary data follow the inputs' binary_data_size shares; send exactly what the inputs declare"
    )]
    TrailingBinary(usize),
}

/// An inference request as sent over REST.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters, e.g. `binary_data_output`.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The input tensors.
    pub inputs: Vec<InputTensor>,
    /// The outputs wanted; none means all.
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
}

/// One input tensor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTensor {
    /// The input's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its datatype ("FP32", ...).
    pub datatype: String,
    /// Tensor parameters, e.g. `binary_data_size`.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The values, flat or nested row-major, when not sent as binary.
    #[serde(default)]
    pub data: Option<Value>,
}

/// One wanted output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// Output parameters, e.g. `binary_data`.
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// A request read from its body: named tensors, plus what the reply needs to know.
#[derive(Debug)]
pub struct DecodedRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    /// The inputs, by name, in request order.
    pub inputs: Vec<(String, Tensor)>,
    /// The outputs wanted (empty: all).
    pub wanted: Vec<String>,
    /// For each wanted output, whether it goes back as binary data.
    binary: Vec<bool>,
    /// Whether outputs not listed go back as binary data.
    binary_default: bool,
}

impl DecodedRequest {
    fn binary(&self, name: &str) -> bool {
        self.wanted
            .iter()
            .position(|w| w == name)
            .map_or(self.binary_default, |i| self.binary[i])
    }
}

fn flag(parameters: &Map<String, Value>, name: &str) -> bool {
    parameters
        .get(name)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Reads a request body; `header_length` is `Inference-Header-Content-Length`, if sent.
pub fn decode_request(
    body: Bytes,
    header_length: Option<usize>,
) -> Result<DecodedRequest, BodyError> {
    let (json, mut binary) = match header_length {
        Some(header) if header > body.len() => {
            return Err(BodyError::HeaderLength {
                header,
                body: body.len(),
            });
        }
        Some(header) => {
            let mut json = body;
            let binary = json.split_off(header);
            (json, binary)
        }
        None => (body, Bytes::new()),
    };
    let request: InferRequest =
        serde_json::from_slice(&json).map_err(|e| BodyError::Json(e.to_string()))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let fail = |reason: String| BodyError::Input {
            input: input.name.clone(),
            reason,
        };
        let dtype = dtype_from_name(&input.datatype).map_err(|e| fail(e.to_string()))?;
        let size = input.parameters.get("binary_data_size");
        let tensor = match (size, &input.data) {
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| fail(format!("binary_data_size {size} is not a byte count")))?;
                if size > binary.len() {
                    return Err(fail(format!(
                        "binary_data_size is {size} but only {} bytes of binary data are left",
                        binary.len()
                    )));
                }
                let bytes = binary.split_to(size);
                tensor_from_raw(dtype, &input.shape, bytes).map_err(|e| fail(e.to_string()))?
            }
            (None, Some(data)) => {
                tensor_from_json(dtype, &input.shape, data).map_err(|e| fail(e.to_string()))?
            }
            (Some(_), Some(_)) => {
                return Err(fail(
                    "has both data and binary_data_size; send one".to_string(),
                ));
            }
            (None, None) => {
                return Err(fail("has neither data nor binary_data_size".to_string()));
            }
        };
        inputs.push((input.name, tensor));
    }
    if !binary.is_empty() {
        return Err(BodyError::TrailingBinary(binary.len()));
    }
    let binary_default = flag(&request.parameters, "binary_data_output");
    let (wanted, binary) = request
        .outputs
        .into_iter()
        .map(|o| {
            let binary = o
                .parameters
                .get("binary_data")
                .and_then(Value::as_bool)
                .unwrap_or(binary_default);
            (o.name, binary)
        })
        .unzip();
    Ok(DecodedRequest {
        id: request.id,
        inputs,
        wanted,
        binary,
        binary_default,
    })
}

/// A response body: the JSON, then any binary outputs; `Some(n)` is the JSON's length, for
/// `Inference-Header-Content-Length`, when binary data follows.
pub fn encode_response(
    model: &str,
    version: u64,
    request: &DecodedRequest,
    outputs: &[(String, Tensor)],
) -> (Bytes, Option<usize>) {
    let mut binary = Vec::new();
    let tensors: Vec<Value> = outputs
        .iter()
        .map(|(name, tensor)| {
            let mut out = json!({
                "name": name,
                "datatype": datatype_name(tensor.dtype()),
                "shape": tensor.wire_shape(),
            });
            if request.binary(name) {
                let raw = tensor_to_raw(tensor);
                out["parameters"] = json!({ "binary_data_size": raw.len() });
                binary.push(raw);
            } else {
                out["data"] = tensor_to_json(tensor);
            }
            out
        })
        .collect();
    let mut body = json!({
        "model_name": model,
        "model_version": version.to_string(),
        "outputs": tensors,
    });
    if let Some(id) = &request.id {
        body["id"] = json!(id);
    }
    let header = body.to_string();
    if binary.is_empty() {
        return (Bytes::from(header), None);
    }
    let length = header.len();
    let mut out = BytesMut::with_capacity(length + binary.iter().map(Bytes::len).sum::<usize>());
    out.extend_from_slice(header.as_bytes());
    for raw in binary {
        out.extend_from_slice(&raw);
    }
    (out.freeze(), Some(length))
}

/// Why JSON `data` does not fit the datatype.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum DataError {
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
}

impl From<TensorError> for DataError {
    fn from(e: TensorError) -> Self {
        DataError::Contents(ContentsError::Tensor(e))
    }
}

/// Flattens nested arrays (row-major) into their scalar elements.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        scalar => out.push(scalar),
    }
}

fn tensor_from_json(dtype: DType, shape: &[i64], data: &Value) -> Result<Tensor, DataError> {
    let shape = shape_from_wire(shape)?;
    let mut values = Vec::new();
    flatten(data, &mut values);
    let wrong = |index: usize, expected: &'static str, got: &Value| DataError::Element {
        index,
        expected,
        got: got.to_string().chars().take(40).collect(),
    };
    fn numbers<T: Element>(
        dtype: DType,
        shape: Vec<usize>,
        values: &[&Value],
        convert: impl Fn(&Value) -> Option<Result<T, i128>>,
        expected: &'static str,
    ) -> Result<Tensor, DataError> {
        let mut typed = Vec::with_capacity(values.len());
        for (index, v) in values.iter().enumerate() {
            match convert(v) {
                Some(Ok(t)) => typed.push(t),
                Some(Err(value)) => {
                    return Err(TensorError::OutOfRange {
                        dtype,
                        index,
                        value,
                    }
                    .into());
                }
                None => {
                    return Err(DataError::Element {
                        index,
                        expected,
                        got: v.to_string().chars().take(40).collect(),
                    });
                }
            }
        }
        Ok(Tensor::from_values(shape, &typed)?)
    }
    fn int<T: TryFrom<i128>>(v: &Value) -> Option<Result<T, i128>> {
        let wide = v
            .as_i64()
            .map(i128::from)
            .or_else(|| v.as_u64().map(i128::from))?;
        Some(T::try_from(wide).map_err(|_| wide))
    }
    let float = |v: &Value| v.as_f64();
    match dtype {
        DType::F32 => numbers(
            dtype,
            shape,
            &values,
            |v| float(v).map(|f| Ok(f as f32)),
            "a number",
        ),
        DType::F64 => numbers(dtype, shape, &values, |v| float(v).map(Ok), "a number"),
        DType::I8 => numbers(dtype, shape, &values, int::<i8>, "an integer"),
        DType::I16 => numbers(dtype, shape, &values, int::<i16>, "an integer"),
        DType::I32 => numbers(dtype, shape, &values, int::<i32>, "an integer"),
        DType::I64 => numbers(dtype, shape, &values, int::<i64>, "an integer"),
        DType::U8 => numbers(dtype, shape, &values, int::<u8>, "an integer"),
        DType::U16 => numbers(dtype, shape, &values, int::<u16>, "an integer"),
        DType::U32 => numbers(dtype, shape, &values, int::<u32>, "an integer"),
        DType::U64 => numbers(dtype, shape, &values, int::<u64>, "an integer"),
        DType::Bool => numbers(
            dtype,
            shape,
            &values,
            |v| v.as_bool().map(Ok),
            "true or false",
        ),
        DType::String => {
            let mut strings = Vec::with_capacity(values.len());
            for (index, v) in values.iter().enumerate() {
                strings.push(
                    v.as_str()
                        .ok_or_else(|| wrong(index, "a string", v))?
                        .to_string(),
                );
            }
            Ok(Tensor::from_strings(shape, strings)?)
        }
        DType::F16 => Err(DataError::Half),
    }
}

/// A tensor's values as a flat JSON array.
fn tensor_to_json(tensor: &Tensor) -> Value {
    fn all<T: Element + Into<Value>>(t: &Tensor) -> Value {
        Value::Array(
            t.to_values::<T>()
                .unwrap_or_default()
                .into_iter()
                .map(Into::into)
                .collect(),
        )
    }
    // An f32 widened to f64 prints as 0.9600001573562622; its own shortest form, 0.96000016,
    // reads back as the same f32 and is what a person expects to see.
    let short = |f: f32| Value::from(f.to_string().parse::<f64>().unwrap_or(f64::from(f)));
    match tensor.dtype() {
        DType::F32 => Value::Array(
            tensor
                .to_values::<f32>()
                .unwrap_or_default()
                .into_iter()
                .map(short)
                .collect(),
        ),
        DType::F64 => all::<f64>(tensor),
        DType::I8 => all::<i8>(tensor),
        DType::I16 => all::<i16>(tensor),
        DType::I32 => all::<i32>(tensor),
        DType::I64 => all::<i64>(tensor),
        DType::U8 => all::<u8>(tensor),
        DType::U16 => all::<u16>(tensor),
        DType::U32 => all::<u32>(tensor),
        DType::U64 => all::<u64>(tensor),
        DType::Bool => all::<bool>(tensor),
        DType::String => Value::Array(
            tensor
                .strings()
                .unwrap_or_default()
                .iter()
                .map(|s| Value::from(s.as_str()))
                .collect(),
        ),
        // No Rust type carries FP16; read the halves from the little-endian bytes.
        DType::F16 => Value::Array(
            tensor
                .bytes()
                .map(|b| b.chunks_exact(2))
                .into_iter()
                .flatten()
                .map(|half| short(f16_to_f32(u16::from_le_bytes([half[0], half[1]]))))
                .collect(),
        ),
    }
}

/// IEEE half-precision bits to `f32` (exact: every half value is an `f32` value).
fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f32::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f32.powi(-24),
        0x1f if fraction == 0.0 => sign * f32::INFINITY,
        0x1f => f32::NAN,
        e => sign * (1.0 + fraction / 1024.0) * 2f32.powi(e - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_data_read_the_same() {
        let nested = tensor_from_json(DType::F32, &[2, 2], &json!([[1, 2.5], [3, 4]])).unwrap();
        let flat = tensor_from_json(DType::F32, &[2, 2], &json!([1, 2.5, 3, 4])).unwrap();
        assert_eq!(nested, flat);
        assert_eq!(flat.to_values::<f32>().unwrap(), vec![1.0, 2.5, 3.0, 4.0]);
    }

    #[test]
    fn json_values_are_checked_against_the_datatype() {
        let err = tensor_from_json(DType::I64, &[2], &json!([1, "x"])).unwrap_err();
        assert_eq!(err.to_string(), "element 1 is \"x\", not an integer");
        let err = tensor_from_json(DType::U8, &[1], &json!([256])).unwrap_err();
        assert!(err.to_string().contains("256"), "{err}");
        let err = tensor_from_json(DType::F32, &[3], &json!([1, 2])).unwrap_err();
        assert!(err.to_string().contains("3"), "{err}");
    }

    #[test]
    fn binary_inputs_take_their_declared_share_in_order() {
        let header = json!({
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}},
                {"name": "b", "shape": [1], "datatype": "FP32", "data": [0.5]},
                {"name": "c", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": true}}, {"name": "z"}],
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        body.extend_from_slice(&[2, 0, 0, 0, b'h', b'i']);
        let request = decode_request(Bytes::from(body), Some(header.len())).unwrap();
        let names: Vec<&str> = request.inputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(request.inputs[0].1.to_values::<i32>().unwrap(), vec![1, 2]);
        assert_eq!(request.inputs[2].1.strings().unwrap(), ["hi"]);
        assert!(request.binary("y"));
        assert!(!request.binary("z"));
    }

    #[test]
    fn short_or_trailing_binary_data_is_refused() {
        let header = json!({"inputs": [
            {"name": "a", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}}
        ]})
        .to_string();
        let mut short = header.clone().into_bytes();
        short.extend_from_slice(&[0; 4]);
        let err = decode_request(Bytes::from(short), Some(header.len())).unwrap_err();
        assert!(err.to_string().contains("only 4 bytes"), "{err}");
        let mut long = header.clone().into_bytes();
        long.extend_from_slice(&[0; 12]);
        let err = decode_request(Bytes::from(long), Some(header.len())).unwrap_err();
        assert_eq!(err, BodyError::TrailingBinary(4));
    }

    #[test]
    fn binary_outputs_follow_the_json_header() {
        let request = decode_request(
            Bytes::from(
                json!({"id": "7", "inputs": [], "parameters": {"binary_data_output": true}})
                    .to_string(),
            ),
            None,
        )
        .unwrap();
        let y = Tensor::from_values(vec![2], &[1.5f32, -2.0]).unwrap();
        let (body, length) = encode_response("m", 3, &request, &[("y".to_string(), y)]);
        let length = length.unwrap();
        let header: Value = serde_json::from_slice(&body[..length]).unwrap();
        assert_eq!(header["id"], "7");
        assert_eq!(header["model_version"], "3");
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&body[length..], &[0, 0, 0xc0, 0x3f, 0, 0, 0, 0xc0]);
    }

    #[test]
    fn fp16_outputs_become_json_numbers() {
        let halves = Bytes::from_static(&[0x00, 0x3c, 0x00, 0xc0]);
        let tensor = Tensor::from_bytes(DType::F16, vec![2], halves).unwrap();
        assert_eq!(tensor_to_json(&tensor), json!([1.0, -2.0]));
    }

    #[test]
    fn half_floats_become_json_numbers() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
