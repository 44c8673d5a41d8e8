//! The Open Inference Protocol (KServe v2): gRPC through the generated client, REST through the
//! router, both checked against onnxruntime's outputs. tests/interop/ runs the real Triton
//! clients against the binary.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use axum::body::Body;
use common::{RefTensor, Reference, TestServer, bundled_models, references};
use http::{Request, StatusCode};
use predictd::proto::inference as pb;
use predictd::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tower::ServiceExt;

fn little_endian(t: &RefTensor) -> Vec<u8> {
    t.data
        .iter()
        .flat_map(|v| match t.dtype.as_str() {
            "FP32" => (v.as_f64().unwrap() as f32).to_le_bytes().to_vec(),
            "INT64" => v.as_i64().unwrap().to_le_bytes().to_vec(),
            other => panic!("test handles FP32 and INT64, not {other}"),
        })
        .collect()
}

fn infer_request(reference: &Reference, id: &str) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: reference.model.clone(),
        id: id.to_string(),
        inputs: reference
            .inputs
            .iter()
            .map(|(name, t)| pb::model_infer_request::InferInputTensor {
                name: name.clone(),
                datatype: t.dtype.clone(),
                shape: t.shape.clone(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: reference
            .inputs
            .values()
            .map(|t| little_endian(t).into())
            .collect(),
        ..Default::default()
    }
}

/// Checks raw outputs against the reference: exact for integers, 1e-5 + 1e-4 relative for floats.
fn assert_raw_matches(context: &str, reply: &pb::ModelInferResponse, reference: &Reference) {
    assert_eq!(reply.outputs.len(), reference.outputs.len(), "{context}");
    for (out, raw) in reply.outputs.iter().zip(&reply.raw_output_contents) {
        let want = &reference.outputs[&out.name];
        assert_eq!(out.datatype, want.dtype, "{context} {}", out.name);
        assert_eq!(out.shape, want.shape, "{context} {}", out.name);
        assert_eq!(
            raw.len(),
            little_endian(want).len(),
            "{context} {}: bytes",
            out.name
        );
        let got: Vec<f64> = match want.dtype.as_str() {
            "FP32" => raw
                .chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
                .collect(),
            "INT64" => raw
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{other}"),
        };
        assert_eq!(got.len(), want.data.len(), "{context} {}", out.name);
        for (i, (g, w)) in got.iter().zip(&want.data).enumerate() {
            let w = w.as_f64().unwrap();
            assert!(
                (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "{context} {} element {i}: got {g}, onnxruntime {w}",
                out.name
            );
        }
    }
}

#[tokio::test]
async fn model_infer_matches_onnxruntime_for_every_bundled_model() {
    let server = TestServer::start(&bundled_models()).await;
    let mut client = GrpcInferenceServiceClient::new(server.channel.clone());
    for reference in references(&bundled_models()) {
        let reply = client
            .model_infer(infer_request(&reference, "k1"))
            .await
            .unwrap_or_else(|s| panic!("{}: {s}", reference.model))
            .into_inner();
        assert_eq!(reply.id, "k1");
        assert_eq!(reply.model_version, reference.version);
        assert_raw_matches(&reference.model, &reply, &reference);
    }
}

#[tokio::test]
async fn model_stream_infer_reports_a_bad_message_in_the_stream_and_goes_on() {
    let server = TestServer::start(&bundled_models()).await;
    let mut client = GrpcInferenceServiceClient::new(server.channel.clone());
    let reference = references(&bundled_models())
        .into_iter()
        .find(|r| r.model == "wine_forest")
        .unwrap();
    let mut bad = infer_request(&reference, "bad");
    bad.inputs[0].shape = vec![8, 12];
    let requests = vec![
        infer_request(&reference, "one"),
        bad,
        infer_request(&reference, "three"),
    ];
    let replies: Vec<pb::ModelStreamInferResponse> = client
        .model_stream_infer(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(replies.len(), 3);
    for (reply, id) in [(&replies[0], "one"), (&replies[2], "three")] {
        assert_eq!(reply.error_message, "", "{id}");
        let response = reply.infer_response.as_ref().unwrap();
        assert_eq!(response.id, id);
        assert_raw_matches(id, response, &reference);
    }
    assert!(
        replies[1].error_message.contains("wine_forest")
            && replies[1].error_message.contains("'X'"),
        "{}",
        replies[1].error_message
    );
    assert_eq!(replies[1].infer_response.as_ref().unwrap().id, "bad");
}

#[tokio::test]
async fn model_config_and_statistics_describe_what_ran() {
    let server = TestServer::start(&bundled_models()).await;
    let mut client = GrpcInferenceServiceClient::new(server.channel.clone());
    let reference = &references(&bundled_models())[0];
    let model = reference.model.clone();
    for _ in 0..3 {
        client
            .model_infer(infer_request(reference, "s"))
            .await
            .unwrap();
    }
    let config = client
        .model_config(pb::ModelConfigRequest {
            name: model.clone(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.max_batch_size, 64);
    let (name, input) = reference.inputs.iter().next().unwrap();
    assert_eq!(config.input[0].name, *name);
    assert_eq!(config.input[0].dims, input.shape[1..]);
    let stats = client
        .model_statistics(pb::ModelStatisticsRequest {
            name: model.clone(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .model_stats;
    let inference = stats[0].inference_stats.unwrap();
    assert_eq!(inference.success.unwrap().count, 3);
    assert_eq!(stats[0].inference_count, 3 * input.shape[0] as u64);
    assert!(inference.compute_infer.unwrap().ns > 0);
    let unknown = client
        .model_statistics(pb::ModelStatisticsRequest {
            name: "no_such_model".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

fn rest(server: &TestServer) -> axum::Router {
    predictd::kserve::rest::router(
        Arc::clone(&server.registry),
        Arc::clone(&server.lifecycle),
        1 << 20,
    )
}

async fn call(router: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (status, value)
}

#[tokio::test]
async fn rest_infer_with_json_tensors_matches_onnxruntime() {
    let server = TestServer::start(&bundled_models()).await;
    let router = rest(&server);
    for reference in references(&bundled_models()) {
        let inputs: Vec<Value> = reference
            .inputs
            .iter()
            .map(|(name, t)| json!({"name": name, "shape": t.shape, "datatype": t.dtype, "data": t.data}))
            .collect();
        let body = json!({"id": "r1", "inputs": inputs}).to_string();
        let request = Request::post(format!("/v2/models/{}/infer", reference.model))
            .body(Body::from(body))
            .unwrap();
        let (status, reply) = call(&router, request).await;
        assert_eq!(status, StatusCode::OK, "{}: {reply}", reference.model);
        assert_eq!(reply["id"], "r1");
        for out in reply["outputs"].as_array().unwrap() {
            let name = out["name"].as_str().unwrap();
            let want = &reference.outputs[name];
            assert_eq!(out["datatype"], want.dtype.as_str());
            for (i, (g, w)) in out["data"]
                .as_array()
                .unwrap()
                .iter()
                .zip(&want.data)
                .enumerate()
            {
                let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
                assert!(
                    (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                    "{} {name} element {i}: got {g}, onnxruntime {w}",
                    reference.model
                );
            }
        }
    }
}

#[tokio::test]
async fn rest_errors_are_json_with_the_protocols_status_codes() {
    let server = TestServer::start(&bundled_models()).await;
    let router = rest(&server);
    let infer = |model: &str, body: &str| {
        Request::post(format!("/v2/models/{model}/infer"))
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (status, reply) = call(&router, infer("no_such_model", r#"{"inputs": []}"#)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(reply["error"].as_str().unwrap().contains("no_such_model"));

    let wrong =
        r#"{"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}"#;
    let (status, reply) = call(&router, infer("wine_forest", wrong)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = reply["error"].as_str().unwrap();
    assert!(
        message.contains("wine_forest") && message.contains("'X'"),
        "{message}"
    );

    let (status, reply) = call(&router, infer("wine_forest", "{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("not a valid inference request")
    );

    let (status, _) = call(
        &router,
        Request::get("/v2/health/ready")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, reply) = call(
        &router,
        Request::get("/v2/models/wine_forest/versions/7/ready")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
}

/// A model's thread budget, from its config.toml or the server's default (every core), is
/// what its model configuration reports, under the name Triton's onnxruntime backend uses.
#[tokio::test]
async fn model_config_reports_each_models_threads() {
    let dir = tempfile::tempdir().unwrap();
    for (name, config) in [("one", Some("threads = 1\n")), ("every", None)] {
        let version = dir.path().join(name).join("1");
        std::fs::create_dir_all(&version).unwrap();
        std::fs::copy(
            bundled_models().join("digits_cnn/1/model.onnx"),
            version.join("model.onnx"),
        )
        .unwrap();
        if let Some(config) = config {
            std::fs::write(dir.path().join(name).join("config.toml"), config).unwrap();
        }
    }
    let server = TestServer::start(dir.path()).await;
    let mut client = GrpcInferenceServiceClient::new(server.channel.clone());
    let cores = predictd::engine::threads::cores().to_string();
    for (name, expected) in [("one", "1"), ("every", cores.as_str())] {
        let config = client
            .model_config(pb::ModelConfigRequest {
                name: name.to_string(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .config
            .unwrap();
        assert_eq!(
            config.parameters["intra_op_thread_count"].string_value, expected,
            "{name}"
        );
    }
}
