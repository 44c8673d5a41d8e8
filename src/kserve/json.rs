//! The REST form of the protocol: inference request and response bodies, with each tensor
//! either as JSON `data` or as raw bytes after the JSON (the binary tensor data extension,
//! whose JSON header length travels in `Inference-Header-Content-Length`).

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::convert::{datatype_name, dtype_from_name, tensor_from_raw, tensor_to_raw};
use super::json_data::{tensor_from_json, write_json};
use crate::engine::tensor::Tensor;

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
pub struct InferRequest<'a> {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters, e.g. `binary_data_output`.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The input tensors.
    #[serde(borrow)]
    pub inputs: Vec<InputTensor<'a>>,
    /// The outputs wanted; none means all.
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
}

/// One input tensor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTensor<'a> {
    /// The input's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its datatype ("FP32", ...).
    pub datatype: String,
    /// Tensor parameters, e.g. `binary_data_size`.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The values, flat or nested row-major, when not sent as binary: their JSON text, read
    /// straight into the tensor ([`super::json_data`]).
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
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
    // Written as text, not built as a JSON tree: outputs can be as large as inputs.
    let mut out = Vec::new();
    let mut binary = Vec::new();
    out.extend_from_slice(b"{\"model_name\":");
    put(&mut out, model);
    out.extend_from_slice(b",\"model_version\":");
    put(&mut out, &version.to_string());
    if let Some(id) = &request.id {
        out.extend_from_slice(b",\"id\":");
        put(&mut out, id);
    }
    out.extend_from_slice(b",\"outputs\":[");
    for (i, (name, tensor)) in outputs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        put(&mut out, name);
        out.extend_from_slice(b",\"datatype\":");
        put(&mut out, datatype_name(tensor.dtype()));
        out.extend_from_slice(b",\"shape\":");
        put(&mut out, &tensor.wire_shape());
        if request.binary(name) {
            let raw = tensor_to_raw(tensor);
            out.extend_from_slice(
                format!(",\"parameters\":{{\"binary_data_size\":{}}}", raw.len()).as_bytes(),
            );
            binary.push(raw);
        } else {
            out.extend_from_slice(b",\"data\":");
            if let Err(e) = write_json(&mut out, tensor) {
                // Only a value serde cannot write could fail: none of a tensor's can.
                tracing::error!(error = %e, output = %name, "cannot write an output as JSON");
                out.extend_from_slice(b"[]");
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    if binary.is_empty() {
        return (Bytes::from(out), None);
    }
    let length = out.len();
    let mut body = BytesMut::with_capacity(length + binary.iter().map(Bytes::len).sum::<usize>());
    body.extend_from_slice(&out);
    for raw in binary {
        body.extend_from_slice(&raw);
    }
    (body.freeze(), Some(length))
}

/// Appends `value` as JSON.
fn put(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    // Strings and lists of numbers always serialize; there is no error to pass on.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
