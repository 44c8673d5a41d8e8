//! Triton's model repository extension, as both faces carry it: load parameters from gRPC's
//! typed map or REST's JSON object, turned into one [`LoadRequest`].

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::Value;

use crate::proto::inference as pb;
use crate::serving::lifecycle::{LifecycleError, LoadRequest};

use pb::model_repository_parameter::ParameterChoice;

/// Parameters a load may carry besides `config` and `file:` uploads, accepted and ignored.
const IGNORED: &[&str] = &["unload_dependents"];

fn bad(model: &str, parameter: &str, reason: impl Into<String>) -> LifecycleError {
    LifecycleError::BadParameter {
        model: model.to_string(),
        parameter: parameter.to_string(),
        reason: reason.into(),
    }
}

fn unknown(model: &str, parameter: &str) -> LifecycleError {
    bad(
        model,
        parameter,
        "unknown parameter; a load takes 'config' (JSON settings) and 'file:<version>/model.onnx' (the model's bytes)",
    )
}

/// A load request from gRPC's parameters: `config` as a string, files as bytes.
pub fn from_grpc(
    model: &str,
    parameters: HashMap<String, pb::ModelRepositoryParameter>,
) -> Result<LoadRequest, LifecycleError> {
    let mut request = LoadRequest::default();
    for (name, value) in parameters {
        let value = value.parameter_choice;
        match (name.as_str(), value) {
            ("config", Some(ParameterChoice::StringParam(json))) => request.config = Some(json),
            ("config", _) => return Err(bad(model, &name, "expected a string_param holding JSON")),
            (file, Some(ParameterChoice::BytesParam(bytes))) if file.starts_with("file:") => {
                request.files.push((name, bytes))
            }
            (file, _) if file.starts_with("file:") => {
                return Err(bad(model, &name, "expected a bytes_param holding the file"));
            }
            (other, _) if IGNORED.contains(&other) => {}
            _ => return Err(unknown(model, &name)),
        }
    }
    Ok(request)
}

/// A load request from a REST body: `{"parameters": {"config": "...", "file:1/model.onnx":
/// "<base64>"}}`; an empty body loads with none.
pub fn from_json(model: &str, body: &[u8]) -> Result<LoadRequest, LifecycleError> {
    let mut request = LoadRequest::default();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(request);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(model, "body", format!("not JSON: {e}")))?;
    let Some(parameters) = value.get("parameters") else {
        return Ok(request);
    };
    let parameters = parameters
        .as_object()
        .ok_or_else(|| bad(model, "parameters", "expected a JSON object"))?;
    for (name, value) in parameters {
        match (name.as_str(), value) {
            // Triton takes the config as a JSON string; an object is accepted as well.
            ("config", Value::String(json)) => request.config = Some(json.clone()),
            ("config", Value::Object(_)) => request.config = Some(value.to_string()),
            ("config", _) => return Err(bad(model, name, "expected JSON settings")),
            (file, Value::String(encoded)) if file.starts_with("file:") => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| bad(model, name, format!("not base64: {e}")))?;
                request.files.push((name.clone(), bytes));
            }
            (file, _) if file.starts_with("file:") => {
                return Err(bad(model, name, "expected the file's bytes in base64"));
            }
            (other, _) if IGNORED.contains(&other) => {}
            _ => return Err(unknown(model, name)),
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_parameters_carry_config_and_base64_files() {
        let body = br#"{"parameters": {"config": "{\"max_batch_size\": 4}", "file:1/model.onnx": "AAEC"}}"#;
        let request = from_json("m", body).expect("parses");
        assert_eq!(request.config.as_deref(), Some("{\"max_batch_size\": 4}"));
        assert_eq!(
            request.files,
            vec![("file:1/model.onnx".to_string(), vec![0, 1, 2])]
        );
        assert!(from_json("m", b"").expect("empty").files.is_empty());
        assert!(
            from_json("m", b"{}")
                .expect("no parameters")
                .config
                .is_none()
        );
    }

    #[test]
    fn bad_rest_parameters_name_themselves() {
        let err = from_json("m", br#"{"parameters": {"file:1/model.onnx": "%%"}}"#)
            .expect_err("not base64");
        assert!(err.to_string().contains("file:1/model.onnx"), "{err}");
        let err = from_json("m", br#"{"parameters": {"colour": "red"}}"#).expect_err("unknown");
        assert!(err.to_string().contains("'colour'"), "{err}");
    }

    #[test]
    fn grpc_parameters_carry_config_and_bytes() {
        let param = |choice| pb::ModelRepositoryParameter {
            parameter_choice: Some(choice),
        };
        let request = from_grpc(
            "m",
            HashMap::from([
                (
                    "config".to_string(),
                    param(ParameterChoice::StringParam("{}".into())),
                ),
                (
                    "file:2/model.onnx".to_string(),
                    param(ParameterChoice::BytesParam(vec![7])),
                ),
            ]),
        )
        .expect("parses");
        assert_eq!(request.config.as_deref(), Some("{}"));
        assert_eq!(
            request.files,
            vec![("file:2/model.onnx".to_string(), vec![7])]
        );
        let err = from_grpc(
            "m",
            HashMap::from([(
                "config".to_string(),
                param(ParameterChoice::BoolParam(true)),
            )]),
        )
        .expect_err("config must be a string");
        assert!(err.to_string().contains("string_param"), "{err}");
    }
}
