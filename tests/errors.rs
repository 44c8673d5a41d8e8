//! Bad input gets a precise status naming the model, the tensor, what was expected and what
//! was sent — and the server keeps serving.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, bundled_models};
use predictd::proto::predictd::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A valid wine_forest row.
const ROW: [f32; 13] = [
    12.17, 1.45, 2.53, 19.0, 104.0, 1.89, 1.75, 0.45, 1.03, 2.95, 1.45, 2.23, 355.0,
];

fn x(tensor: pb::Tensor) -> pb::PredictRequest {
    pb::PredictRequest {
        model: "wine_forest".into(),
        inputs: [("X".to_string(), tensor)].into(),
        ..Default::default()
    }
}

fn floats(shape: Vec<i64>, values: &[f32]) -> pb::Tensor {
    pb::Tensor {
        shape,
        float_values: values.to_vec(),
        ..Default::default()
    }
}

/// Each case: what it is, the request, the code, and fragments the message must contain.
fn cases() -> Vec<(&'static str, pb::PredictRequest, Code, Vec<&'static str>)> {
    let good = || x(floats(vec![1, 13], &ROW));
    vec![
        (
            "unknown model",
            pb::PredictRequest {
                model: "no_such_model".into(),
                ..good()
            },
            Code::NotFound,
            vec!["no_such_model", "not found", "wine_forest"],
        ),
        (
            "unknown version",
            pb::PredictRequest {
                version: "7".into(),
                ..good()
            },
            Code::NotFound,
            vec!["wine_forest", "no version '7'", "1"],
        ),
        (
            "version that is not a number",
            pb::PredictRequest {
                version: "latest-ish".into(),
                ..good()
            },
            Code::NotFound,
            vec!["wine_forest", "latest-ish"],
        ),
        (
            "missing input",
            pb::PredictRequest {
                inputs: Default::default(),
                ..good()
            },
            Code::InvalidArgument,
            vec!["wine_forest", "missing input 'X'", "FP32 [N, 13]"],
        ),
        (
            "unknown input",
            {
                let mut r = good();
                r.inputs.insert("Y".into(), floats(vec![1, 13], &ROW));
                r
            },
            Code::InvalidArgument,
            vec!["wine_forest", "unknown input 'Y'", "'X'"],
        ),
        (
            "wrong dtype",
            x(pb::Tensor {
                shape: vec![1, 13],
                double_values: ROW.iter().map(|&v| f64::from(v)).collect(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "expected dtype FP32, got FP64"],
        ),
        (
            "wrong rank",
            x(floats(vec![13], &ROW)),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "expected shape [N, 13], got [13]"],
        ),
        (
            "wrong non-batch dimension",
            x(floats(vec![1, 12], &ROW[..12])),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "expected shape [N, 13], got [1, 12]"],
        ),
        (
            "raw byte length not matching the shape",
            x(pb::Tensor {
                dtype: pb::DataType::Fp32 as i32,
                shape: vec![1, 13],
                raw: vec![0u8; 40].into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "40 bytes", "[1, 13]", "needs 52"],
        ),
        (
            "typed value count not matching the shape",
            x(floats(vec![2, 13], &ROW)),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "13 value(s)", "[2, 13]", "needs 26"],
        ),
        (
            "negative dimension",
            x(floats(vec![-1, 13], &ROW)),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "negative", "[-1, 13]"],
        ),
        (
            "overflowing dimensions",
            x(floats(vec![i64::MAX, i64::MAX, 13], &ROW)),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "too many elements"],
        ),
        (
            "overflowing byte size",
            x(pb::Tensor {
                dtype: pb::DataType::Fp32 as i32,
                shape: vec![1 << 31, 1 << 31],
                raw: vec![0u8; 4].into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'"],
        ),
        (
            "empty batch",
            x(pb::Tensor {
                dtype: pb::DataType::Fp32 as i32,
                shape: vec![0, 13],
                ..Default::default()
            }),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "empty batch", "[0, 13]"],
        ),
        (
            "values in two fields",
            x(pb::Tensor {
                raw: vec![0u8; 52].into(),
                dtype: pb::DataType::Fp32 as i32,
                ..floats(vec![1, 13], &ROW)
            }),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "'raw'", "'float_values'"],
        ),
        (
            "raw without a dtype",
            x(pb::Tensor {
                shape: vec![1, 13],
                raw: vec![0u8; 52].into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "dtype is required"],
        ),
        (
            "unknown dtype number",
            x(pb::Tensor {
                dtype: 99,
                ..floats(vec![1, 13], &ROW)
            }),
            Code::InvalidArgument,
            vec!["wine_forest", "'X'", "unknown dtype 99"],
        ),
        (
            "typed field not matching the declared dtype",
            x(pb::Tensor {
                dtype: pb::DataType::Int64 as i32,
                ..floats(vec![1, 13], &ROW)
            }),
            Code::InvalidArgument,
            vec![
                "wine_forest",
                "'X'",
                "INT64",
                "'float_values'",
                "'int64_values'",
            ],
        ),
        (
            "unknown output",
            pb::PredictRequest {
                outputs: vec!["probability".into()],
                ..good()
            },
            Code::InvalidArgument,
            vec![
                "wine_forest",
                "unknown output 'probability'",
                "'label'",
                "'probabilities'",
            ],
        ),
    ]
}

#[tokio::test]
async fn every_bad_request_gets_a_precise_status_and_the_server_keeps_serving() {
    let server = TestServer::start(&bundled_models()).await;
    let mut client = server.client();
    for (what, request, code, fragments) in cases() {
        let status = client
            .predict(request)
            .await
            .expect_err(&format!("{what}: should fail"));
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        for fragment in fragments {
            assert!(
                status.message().contains(fragment),
                "{what}: message {:?} lacks {fragment:?}",
                status.message()
            );
        }
    }
    // The same cases inside one stream: each gets its error reply, the stream survives.
    let requests: Vec<pb::PredictRequest> = cases().into_iter().map(|(_, r, _, _)| r).collect();
    let count = requests.len();
    let mut replies = client
        .predict_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut codes = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        match reply.result {
            Some(pb::predict_stream_response::Result::Error(e)) => codes.push(e.code),
            other => panic!("expected an error reply, got {other:?}"),
        }
    }
    let expected: Vec<i32> = cases().into_iter().map(|(_, _, c, _)| c as i32).collect();
    assert_eq!(codes.len(), count);
    assert_eq!(codes, expected);

    // Still serving.
    let reply = client
        .predict(x(floats(vec![1, 13], &ROW)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.outputs["label"].int64_values, vec![1]);
}

#[tokio::test]
async fn metadata_errors_use_the_same_codes() {
    let server = TestServer::start(&bundled_models()).await;
    let mut client = server.client();
    let status = client
        .get_model_metadata(pb::GetModelMetadataRequest {
            model: "nope".into(),
            version: String::new(),
        })
        .await
        .expect_err("unknown model");
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .get_model_metadata(pb::GetModelMetadataRequest {
            model: "wine_forest".into(),
            version: "2".into(),
        })
        .await
        .expect_err("unknown version");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("its versions are: 1"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn health_reports_serving_once_models_are_loaded() {
    let server = TestServer::start(&bundled_models()).await;
    let mut health = HealthClient::new(server.channel.clone());
    for service in ["", "predictd.v1.PredictionService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let status = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), Code::NotFound);
}
