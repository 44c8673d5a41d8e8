//! A repository with several versions, a broken model file, a config typo and an empty model
//! folder: the good models serve, the bad ones are reported with their reasons.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use common::{TestServer, bundled_models, references, request, typed};
use predictd::proto::predictd::v1 as pb;
use tonic::Code;

fn copy_model(from: &str, to: &Path) {
    fs::create_dir_all(to).unwrap();
    fs::copy(
        bundled_models().join(from).join("1/model.onnx"),
        to.join("model.onnx"),
    )
    .unwrap();
}

/// `linear` v1 and v2 (copies of diabetes_linear, both served by its version policy), `newest`
/// (the same, under the default policy: the latest only), `broken` (not ONNX), `typo` (a config key
/// that does not exist), `empty` (no version folder), `mislaid` (a version folder that is not a
/// number beside a good one).
fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    copy_model("diabetes_linear", &root.join("linear/1"));
    copy_model("diabetes_linear", &root.join("linear/2"));
    fs::write(
        root.join("linear/config.toml"),
        "version_policy = \"all\"\n",
    )
    .unwrap();
    copy_model("diabetes_linear", &root.join("newest/1"));
    copy_model("diabetes_linear", &root.join("newest/2"));
    fs::create_dir_all(root.join("broken/1")).unwrap();
    fs::write(
        root.join("broken/1/model.onnx"),
        b"this is not an onnx file",
    )
    .unwrap();
    copy_model("diabetes_linear", &root.join("typo/1"));
    fs::write(root.join("typo/config.toml"), "worker = 2\n").unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    copy_model("diabetes_linear", &root.join("mislaid/1"));
    copy_model("diabetes_linear", &root.join("mislaid/latest"));
    dir
}

fn linear_request(model: &str, version: &str) -> pb::PredictRequest {
    let reference = references(&bundled_models())
        .into_iter()
        .find(|r| r.model == "diabetes_linear")
        .unwrap();
    pb::PredictRequest {
        model: model.into(),
        version: version.into(),
        ..request(&reference, typed)
    }
}

#[tokio::test]
async fn good_models_serve_and_bad_ones_say_why() {
    let repo = repository();
    let server = TestServer::start(repo.path()).await;
    let mut client = server.client();

    let list = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let states: Vec<(String, Vec<(String, i32)>)> = list
        .models
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.versions
                    .iter()
                    .map(|v| (v.version.clone(), v.state))
                    .collect(),
            )
        })
        .collect();
    let ready = pb::ModelState::Ready as i32;
    let failed = pb::ModelState::Failed as i32;
    assert_eq!(
        states,
        vec![
            ("broken".to_string(), vec![("1".to_string(), failed)]),
            ("empty".to_string(), vec![]),
            (
                "linear".to_string(),
                vec![("2".to_string(), ready), ("1".to_string(), ready)]
            ),
            ("mislaid".to_string(), vec![("1".to_string(), ready)]),
            ("newest".to_string(), vec![("2".to_string(), ready)]),
            ("typo".to_string(), vec![("1".to_string(), failed)]),
        ]
    );
    let reason = |name: &str| {
        list.models
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .versions[0]
            .reason
            .clone()
    };
    assert!(
        reason("broken").contains("broken/1/model.onnx"),
        "{}",
        reason("broken")
    );
    assert!(reason("typo").contains("config.toml"), "{}", reason("typo"));
    assert!(reason("typo").contains("worker"), "{}", reason("typo"));

    // Latest is the highest version; an explicit version is honoured.
    let reply = client
        .predict(linear_request("linear", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, "2");
    let reply = client
        .predict(linear_request("linear", "1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, "1");
    // The default version policy serves the latest only.
    let status = client
        .predict(linear_request("newest", "1"))
        .await
        .expect_err("version 1 is not served");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let status = client
        .predict(linear_request("broken", ""))
        .await
        .expect_err("broken model");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("model 'broken' version 1 is not ready: failed to load"),
        "{}",
        status.message()
    );

    let status = client
        .predict(linear_request("empty", ""))
        .await
        .expect_err("no versions");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("empty/1/model.onnx"),
        "{}",
        status.message()
    );

    let status = client
        .get_model_metadata(pb::GetModelMetadataRequest {
            model: "typo".into(),
            version: String::new(),
        })
        .await
        .expect_err("failed model");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn a_missing_repository_is_an_error_not_an_empty_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = predictd::server::serve(
        listener,
        predictd::server::ServeConfig::new("/definitely/not/here"),
        std::future::pending(),
    )
    .await
    .expect_err("no such folder");
    assert!(err.to_string().contains("/definitely/not/here"), "{err}");
}

/// `predictd serve`, `predictd batch` and the Python package (`open_named`) and `predictd
/// inspect` (`open_file`) open a model through one function: each bundled model gets the same
/// plans and gives the same outputs in all of them, and those are onnxruntime's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_front_end_opens_a_model_the_same_way() {
    use predictd::engine::open::{OpenDefaults, open_file, open_named};
    use predictd::v1::convert::{tensor_from_wire, tensor_to_wire};

    let models = bundled_models();
    let server = TestServer::start(&models).await;
    let catalog = server.registry.snapshot();
    for reference in references(&models) {
        let name = reference.model.as_str();
        let (version, scheduler) = catalog.resolve(name, "").unwrap();
        let served = scheduler.model();
        let named = open_named(&models, name, "", &OpenDefaults::default())
            .unwrap()
            .model;
        let file = models
            .join(name)
            .join(version.to_string())
            .join("model.onnx");
        let inspected = open_file(&file, &OpenDefaults::default()).unwrap().model;
        let inputs: Vec<_> = reference
            .inputs
            .iter()
            .map(|(input, t)| (input.clone(), tensor_from_wire(typed(t)).unwrap()))
            .collect();
        let run = |model: &predictd::engine::model::Model| {
            let valid = model.signature().validate(inputs.clone()).unwrap();
            model.run(valid).unwrap()
        };
        let served_outputs = run(served);
        for (front, model) in [("batch and Python", &named), ("inspect", &inspected)] {
            assert_eq!(
                (model.name(), model.version()),
                (served.name(), served.version()),
                "{front}"
            );
            assert_eq!(
                model.fixed_batch_sizes().collect::<Vec<_>>(),
                served.fixed_batch_sizes().collect::<Vec<_>>(),
                "{front}: {name}'s plans"
            );
            assert!(run(model) == served_outputs, "{front}: {name}'s outputs");
        }
        for (spec, output) in served.signature().outputs.iter().zip(&served_outputs) {
            if let Some(expected) = reference.outputs.get(&spec.name) {
                let context = format!("{name} {}", spec.name);
                common::assert_matches(&context, &tensor_to_wire(output, false), expected);
            }
        }
    }
}

#[test]
fn every_bundled_model_warms_up_on_zeros_and_on_random_data() {
    use predictd::engine::repository::{Slot, Warmup, WarmupData};
    let catalog = predictd::engine::open::open_repository(&bundled_models()).unwrap();
    let mut warmed = 0;
    for (name, entry) in &catalog.models {
        for slot in entry.versions.values() {
            let Slot::Ready(model) = slot else {
                panic!("{name} did not load");
            };
            for data in [WarmupData::Zero, WarmupData::Random] {
                let warmup = Warmup {
                    batch_sizes: Some(vec![1, 3]),
                    count: 2,
                    data,
                };
                predictd::engine::warmup::warm(model, &warmup)
                    .unwrap_or_else(|e| panic!("{name} {data:?}: {e}"));
            }
            warmed += 1;
        }
    }
    assert_eq!(warmed, 5, "the five bundled models");
}
