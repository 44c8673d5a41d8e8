//! Dynamic batching: concurrent requests are stacked into one run and split back, and every
//! caller gets exactly its own rows — checked against onnxruntime's outputs, not ourselves.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{RefTensor, TestServer, assert_matches, bundled_models, references, typed};
use predictd::proto::predictd::v1 as pb;
use predictd::server::ServeConfig;
use tonic::Code;

/// Rows `rows` of a reference tensor, stacked.
fn pick(t: &RefTensor, rows: &[usize]) -> RefTensor {
    let per_row = t.data.len() / t.shape[0] as usize;
    let mut out = t.clone();
    out.shape[0] = rows.len() as i64;
    out.data = rows
        .iter()
        .flat_map(|&r| t.data[r * per_row..(r + 1) * per_row].to_vec())
        .collect();
    out
}

/// One worker that waits 5 ms for company, so concurrent requests pile up into batches.
async fn batching_server(models: &Path) -> TestServer {
    let mut config = ServeConfig::new(models);
    config.scheduler.workers = 1;
    config.scheduler.max_batch_size = 64;
    config.scheduler.max_queue_delay = Duration::from_millis(5);
    TestServer::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_each_get_their_own_rows() {
    let server = batching_server(&bundled_models()).await;
    for model in ["digits_mlp", "diabetes_linear"] {
        let reference = references(&bundled_models())
            .into_iter()
            .find(|r| r.model == model)
            .unwrap();
        let mut calls = Vec::new();
        for client in 0..64usize {
            // Client i sends 1 to 4 rows, starting at a different reference row: no two
            // neighbours send the same request, and a mix-up of rows or of callers would show.
            let rows: Vec<usize> = (0..1 + client % 4).map(|j| (client + 3 * j) % 8).collect();
            let request = pb::PredictRequest {
                model: model.into(),
                id: format!("client-{client}"),
                inputs: reference
                    .inputs
                    .iter()
                    .map(|(name, t)| (name.clone(), typed(&pick(t, &rows))))
                    .collect(),
                ..Default::default()
            };
            let mut grpc = server.new_client().await;
            calls.push(tokio::spawn(async move {
                (rows, grpc.predict(request).await.map(|r| r.into_inner()))
            }));
        }
        for (client, call) in calls.into_iter().enumerate() {
            let (rows, reply) = call.await.unwrap();
            let reply = reply.unwrap_or_else(|s| panic!("{model} client {client}: {s}"));
            assert_eq!(reply.id, format!("client-{client}"));
            for (name, expected) in &reference.outputs {
                assert_matches(
                    &format!("{model} client {client} {name}"),
                    &reply.outputs[name],
                    &pick(expected, &rows),
                );
            }
        }
        let stats = server.stats(model);
        assert_eq!(stats.succeeded, 64);
        assert!(
            stats.batches < 64,
            "{model}: concurrent requests were batched: {stats:?}"
        );
    }
}

/// `<root>/lookup/1/model.onnx`: Gather of 11 constants by `idx + 1` (`idx` INT64 [N]; the
/// first constant is never picked) → `value` FP32 [N], `idx * 10` for `idx` in 0..10. An index out of range fails the run, which lets a test poison one batch
/// member: validation refuses an input that indexes a table directly, but not one computed on
/// the way, as this one is.
fn write_lookup_model(root: &Path) {
    use prost::Message;
    use tract_onnx::pb as onnx;
    let dim = |value| onnx::tensor_shape_proto::Dimension {
        value: Some(value),
        ..Default::default()
    };
    let io = |name: &str, elem: onnx::tensor_proto::DataType| onnx::ValueInfoProto {
        name: name.into(),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(
                onnx::type_proto::Tensor {
                    elem_type: elem as i32,
                    shape: Some(onnx::TensorShapeProto {
                        dim: vec![dim(onnx::tensor_shape_proto::dimension::Value::DimParam(
                            "N".into(),
                        ))],
                    }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = onnx::ModelProto {
        ir_version: 8,
        opset_import: vec![onnx::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(onnx::GraphProto {
            name: "lookup".into(),
            node: vec![
                onnx::NodeProto {
                    input: vec!["idx".into(), "one".into()],
                    output: vec!["computed".into()],
                    op_type: "Add".into(),
                    ..Default::default()
                },
                onnx::NodeProto {
                    input: vec!["table".into(), "computed".into()],
                    output: vec!["value".into()],
                    op_type: "Gather".into(),
                    ..Default::default()
                },
            ],
            initializer: vec![
                onnx::TensorProto {
                    name: "table".into(),
                    dims: vec![11],
                    data_type: onnx::tensor_proto::DataType::Float as i32,
                    float_data: (-1..10).map(|i| i as f32 * 10.0).collect(),
                    ..Default::default()
                },
                onnx::TensorProto {
                    name: "one".into(),
                    dims: vec![1],
                    data_type: onnx::tensor_proto::DataType::Int64 as i32,
                    int64_data: vec![1],
                    ..Default::default()
                },
            ],
            input: vec![io("idx", onnx::tensor_proto::DataType::Int64)],
            output: vec![io("value", onnx::tensor_proto::DataType::Float)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let dir = root.join("lookup/1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), model.encode_to_vec()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_fails_alone_and_its_batch_neighbours_succeed() {
    let dir = tempfile::tempdir().unwrap();
    write_lookup_model(dir.path());
    let server = batching_server(dir.path()).await;
    let mut calls = Vec::new();
    for client in 0..16i64 {
        // Client 7 asks for index 1000, past the table.
        let idx = if client == 7 { 1000 } else { client % 10 };
        let request = pb::PredictRequest {
            model: "lookup".into(),
            inputs: [(
                "idx".to_string(),
                pb::Tensor {
                    shape: vec![1],
                    int64_values: vec![idx],
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let mut grpc = server.new_client().await;
        calls.push(tokio::spawn(async move { grpc.predict(request).await }));
    }
    for (client, call) in calls.into_iter().enumerate() {
        let result = call.await.unwrap();
        if client == 7 {
            let status = result.expect_err("index 1000 is out of range");
            assert_eq!(status.code(), Code::Internal, "{status:?}");
            assert!(status.message().contains("lookup"), "{}", status.message());
        } else {
            let reply = result.unwrap_or_else(|s| panic!("client {client} failed: {s}"));
            assert_eq!(
                reply.into_inner().outputs["value"].float_values,
                vec![(client % 10) as f32 * 10.0],
                "client {client}"
            );
        }
    }
    let stats = server.stats("lookup");
    assert_eq!((stats.succeeded, stats.failed), (15, 1), "{stats:?}");
}
