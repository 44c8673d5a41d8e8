//! Memory across reloads: repeated reloads do not grow the process, and a reload's peak is
//! measured with and without `reload = "unload-first"`. A test binary of its own, so that no
//! other test's memory moves the figures.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, bundled_models, memory, reset_peak_memory, write_wide_model};
use predictd::proto::inference as kserve;
use predictd::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use predictd::proto::predictd::v1 as pb;
use predictd::server::ServeConfig;
use predictd::serving::lifecycle::ModelControl;

const MIB: f64 = 1024.0 * 1024.0;

async fn reload(server: &TestServer, model: &str, config: &str) {
    let mut client = GrpcInferenceServiceClient::new(server.channel.clone());
    let parameters = [(
        "config".to_string(),
        kserve::ModelRepositoryParameter {
            parameter_choice: Some(
                kserve::model_repository_parameter::ParameterChoice::StringParam(config.into()),
            ),
        },
    )];
    client
        .repository_model_load(kserve::RepositoryModelLoadRequest {
            repository_name: String::new(),
            model_name: model.to_string(),
            parameters: parameters.into_iter().collect(),
        })
        .await
        .unwrap();
    // Memory is measured once the old copy is gone.
    server.lifecycle.retired().await;
}

async fn predict_digit(server: &TestServer) {
    let reply = server
        .client()
        .predict(pb::PredictRequest {
            model: "digits_cnn".into(),
            inputs: [(
                "image".to_string(),
                pb::Tensor {
                    shape: vec![1, 1, 8, 8],
                    float_values: vec![3.0; 64],
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.get_ref().outputs["probabilities"].shape, vec![1, 10]);
}

fn explicit(dir: &std::path::Path) -> ServeConfig {
    let mut config = ServeConfig::new(dir);
    config.scheduler.workers = 2;
    config.lifecycle.control = ModelControl::Explicit;
    config.lifecycle.startup_models = vec!["*".into()];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_free_what_they_replace() {
    // 50 forced reloads of a bundled model, serving between them.
    let server = TestServer::start_with(explicit(&bundled_models())).await;
    predict_digit(&server).await;
    reload(&server, "digits_cnn", "").await;
    predict_digit(&server).await;
    let (first, _) = memory();
    for _ in 1..50 {
        reload(&server, "digits_cnn", "").await;
        predict_digit(&server).await;
    }
    let (last, _) = memory();
    println!(
        "RSS after reload 1: {:.1} MiB, after reload 50: {:.1} MiB ({:+.1}%)",
        first as f64 / MIB,
        last as f64 / MIB,
        (last as f64 / first as f64 - 1.0) * 100.0
    );
    assert!(
        (last as f64) <= first as f64 * 1.10,
        "RSS grew from {first} to {last} bytes over 49 reloads"
    );
    server.stop().await;

    // A model whose weights dominate (8 × 1024² floats, 32 MiB): a reload's peak over the
    // steady state, loading the new copy first (the default) and unloading the old one first.
    let dir = tempfile::tempdir().unwrap();
    write_wide_model(dir.path(), "wide", 8, 1024);
    let server = TestServer::start_with(explicit(dir.path())).await;
    let mut extra = Vec::new();
    for (order, config) in [
        ("load-first", "{}"),
        ("unload-first", r#"{"reload": "unload-first"}"#),
    ] {
        reload(&server, "wide", config).await;
        let (steady, _) = memory();
        reset_peak_memory();
        reload(&server, "wide", config).await;
        let (after, peak) = memory();
        println!(
            "{order}: steady {:.1} MiB, peak during a reload {:.1} MiB (+{:.1} MiB), after {:.1} MiB",
            steady as f64 / MIB,
            peak as f64 / MIB,
            (peak.saturating_sub(steady)) as f64 / MIB,
            after as f64 / MIB
        );
        assert!(
            (after as f64) <= steady as f64 * 1.10,
            "{order}: the replaced copy was not freed: {steady} bytes before, {after} after"
        );
        extra.push(peak.saturating_sub(steady));
    }
    assert!(
        extra[1] < extra[0],
        "unload-first should need less memory than load-first: {} vs {} bytes over the steady state",
        extra[1],
        extra[0]
    );
}
