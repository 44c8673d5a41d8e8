//! The bundled models served over gRPC, checked against onnxruntime's outputs stored beside
//! them; metadata; streams.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, assert_matches, bundled_models, raw, references, request, typed, values};
use predictd::proto::predictd::v1 as pb;
use predictd::server::ServeConfig;
use tokio_stream::StreamExt;

#[tokio::test]
async fn every_bundled_model_matches_onnxruntime_typed_and_raw() {
    let server = TestServer::start(&bundled_models()).await;
    let mut client = server.client();
    let refs = references(&bundled_models());
    assert!(
        refs.len() >= 5,
        "expected the five bundled references, found {}",
        refs.len()
    );
    for reference in &refs {
        for (encoding, encode) in [("typed", typed as fn(&_) -> _), ("raw", raw as fn(&_) -> _)] {
            let reply = client
                .predict(request(reference, encode))
                .await
                .unwrap_or_else(|s| panic!("{} ({encoding}): {s}", reference.model))
                .into_inner();
            assert_eq!(reply.model, reference.model);
            assert_eq!(reply.version, reference.version);
            assert_eq!(reply.id, format!("ref-{}", reference.model));
            assert_eq!(
                reply.outputs.len(),
                reference.outputs.len(),
                "{}: every output comes back",
                reference.model
            );
            for (name, expected) in &reference.outputs {
                let got = &reply.outputs[name];
                // Replies use the request's encoding.
                assert_eq!(
                    !got.raw.is_empty(),
                    encoding == "raw",
                    "{}/{name}: encoding",
                    reference.model
                );
                assert_matches(
                    &format!("{} {name} ({encoding})", reference.model),
                    got,
                    expected,
                );
            }
        }
    }
}

/// Requests of exactly a preferred batch size run the plan optimised for that size (the other
/// tests run the general plan for the 8-row references, the size-1 plan for single rows).
#[tokio::test]
async fn plans_fixed_to_the_reference_batch_size_match_onnxruntime() {
    let mut config = ServeConfig::new(bundled_models());
    config.open.preferred_batch_sizes = vec![8];
    let server = TestServer::start_with(config).await;
    let mut client = server.client();
    for reference in references(&bundled_models()) {
        let rows = reference.inputs.values().next().unwrap().shape[0];
        assert_eq!(rows, 8, "{}: the reference holds 8 rows", reference.model);
        let catalog = server.registry.snapshot();
        let (_, scheduler) = catalog.resolve(&reference.model, "").unwrap();
        let sizes: Vec<usize> = scheduler.model().fixed_batch_sizes().collect();
        assert_eq!(sizes, [8], "{}: the plan for 8 rows", reference.model);
        let reply = client
            .predict(request(&reference, raw))
            .await
            .unwrap_or_else(|s| panic!("{}: {s}", reference.model))
            .into_inner();
        for (name, expected) in &reference.outputs {
            assert_matches(
                &format!("{} {name} (fixed plan)", reference.model),
                &reply.outputs[name],
                expected,
            );
        }
    }
}

#[tokio::test]
async fn one_row_at_a_time_gives_the_same_rows() {
    let server = TestServer::start(&bundled_models()).await;
    let mut client = server.client();
    for reference in references(&bundled_models()) {
        let (input_name, input) = reference.inputs.iter().next().unwrap();
        let rows = input.shape[0] as usize;
        let width = input.data.len() / rows;
        for row in 0..rows {
            let mut one = input.clone();
            one.shape[0] = 1;
            one.data = input.data[row * width..(row + 1) * width].to_vec();
            let mut req = request(&reference, typed);
            req.inputs.insert(input_name.clone(), typed(&one));
            let reply = client.predict(req).await.unwrap().into_inner();
            for (name, expected) in &reference.outputs {
                let per_row = expected.data.len() / rows;
                let mut want = expected.clone();
                want.shape[0] = 1;
                want.data = expected.data[row * per_row..(row + 1) * per_row].to_vec();
                assert_matches(
                    &format!("{} {name} row {row}", reference.model),
                    &reply.outputs[name],
                    &want,
                );
            }
        }
    }
}

#[tokio::test]
async fn requested_outputs_only() {
    let server = TestServer::start(&bundled_models()).await;
    let reference = references(&bundled_models())
        .into_iter()
        .find(|r| r.model == "wine_forest")
        .unwrap();
    let mut req = request(&reference, typed);
    req.outputs = vec!["label".to_string()];
    let reply = server.client().predict(req).await.unwrap().into_inner();
    assert_eq!(reply.outputs.keys().collect::<Vec<_>>(), vec!["label"]);
    assert_matches(
        "label",
        &reply.outputs["label"],
        &reference.outputs["label"],
    );
}

#[tokio::test]
async fn list_models_and_metadata_describe_the_repository() {
    let server = TestServer::start(&bundled_models()).await;
    let mut client = server.client();
    let list = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "cancer_boosted",
            "diabetes_linear",
            "digits_cnn",
            "digits_mlp",
            "wine_forest"
        ]
    );
    for model in &list.models {
        assert_eq!(model.versions.len(), 1, "{}", model.name);
        assert_eq!(model.versions[0].version, "1");
        assert_eq!(
            model.versions[0].state,
            pb::ModelState::Ready as i32,
            "{}",
            model.name
        );
    }

    let meta = client
        .get_model_metadata(pb::GetModelMetadataRequest {
            model: "digits_cnn".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.version, "1");
    assert_eq!(meta.versions, vec!["1"]);
    assert!(meta.batchable);
    assert_eq!(meta.inputs.len(), 1);
    assert_eq!(meta.inputs[0].name, "image");
    assert_eq!(meta.inputs[0].dtype, pb::DataType::Fp32 as i32);
    assert_eq!(meta.inputs[0].shape, vec![-1, 1, 8, 8]);
    let outputs: Vec<(&str, i32, Vec<i64>)> = meta
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.dtype, o.shape.clone()))
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("probabilities", pb::DataType::Fp32 as i32, vec![-1, 10]),
            ("label", pb::DataType::Int64 as i32, vec![-1]),
        ]
    );

    let forest = client
        .get_model_metadata(pb::GetModelMetadataRequest {
            model: "wine_forest".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        forest.inputs[0].shape,
        vec![-1, 13],
        "skl2onnx's unknown batch dim becomes -1"
    );
    assert!(forest.batchable);
}

/// A stream of feature batches for the MLP: batch `i` carries row `i % 8` of the reference.
fn mlp_batches() -> (common::Reference, Vec<pb::PredictRequest>) {
    let reference = references(&bundled_models())
        .into_iter()
        .find(|r| r.model == "digits_mlp")
        .unwrap();
    let input = &reference.inputs["X"];
    let requests = (0..1000)
        .map(|i| {
            let row = i % 8;
            let mut one = input.clone();
            one.shape[0] = 1;
            one.data = input.data[row * 64..(row + 1) * 64].to_vec();
            let mut req = request(&reference, typed);
            req.id = format!("batch-{i}");
            req.inputs.insert("X".into(), typed(&one));
            req
        })
        .collect();
    (reference, requests)
}

#[tokio::test]
async fn a_thousand_streamed_batches_come_back_in_order() {
    let server = TestServer::start(&bundled_models()).await;
    let (reference, requests) = mlp_batches();
    let labels = &reference.outputs["label"].data;
    let replies: Vec<pb::PredictStreamResponse> = server
        .client()
        .predict_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert_eq!(replies.len(), 1000);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.id, format!("batch-{i}"));
        let Some(pb::predict_stream_response::Result::Response(response)) = &reply.result else {
            panic!("batch {i} failed: {:?}", reply.result);
        };
        assert_eq!(response.id, reply.id);
        // Each reply carries its own row's label, so a mix-up would show.
        assert_eq!(
            values(&response.outputs["label"]),
            vec![labels[i % 8].as_f64().unwrap()],
            "batch {i}"
        );
    }
}

#[tokio::test]
async fn a_bad_message_gets_an_error_reply_and_the_stream_goes_on() {
    let server = TestServer::start(&bundled_models()).await;
    let (_, mut requests) = mlp_batches();
    requests.truncate(10);
    // Message 3: wrong width. Message 6: unknown model.
    requests[3].inputs.get_mut("X").unwrap().shape = vec![1, 63];
    requests[6].model = "no_such_model".into();
    let replies: Vec<pb::PredictStreamResponse> = server
        .client()
        .predict_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .unwrap();
    assert_eq!(replies.len(), 10);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.id, format!("batch-{i}"));
        match (i, &reply.result) {
            (3, Some(pb::predict_stream_response::Result::Error(e))) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
                assert!(e.message.contains("digits_mlp"), "{}", e.message);
                assert!(e.message.contains("'X'"), "{}", e.message);
            }
            (6, Some(pb::predict_stream_response::Result::Error(e))) => {
                assert_eq!(e.code, tonic::Code::NotFound as i32);
                assert!(e.message.contains("no_such_model"), "{}", e.message);
            }
            (3 | 6, other) => panic!("message {i} should have failed: {other:?}"),
            (_, Some(pb::predict_stream_response::Result::Response(_))) => {}
            (_, other) => panic!("message {i} should have succeeded: {other:?}"),
        }
    }
}
