//! API keys against a real server: every endpoint group, over gRPC and REST, with no key, a
//! wrong key, a key without the group and a right key; probes answer without one. That the key
//! file is re-read on SIGHUP is tested in tests/keys_reload.rs (the signal reaches the whole process).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, http_request, publish_model_file, raw_unary, scale_model};
use predictd::edge::routes::Group;
use predictd::proto::inference as kserve;
use predictd::server::ServeConfig;

/// A key per group, each listing only its own.
const GROUPS: [(Group, &str); 5] = [
    (Group::Metadata, "metadata-key-0000000000000000000000"),
    (Group::Inference, "inference-key-000000000000000000000"),
    (Group::Statistics, "statistics-key-00000000000000000000"),
    (
        Group::ModelRepository,
        "repository-key-00000000000000000000",
    ),
    (Group::Metrics, "metrics-key-000000000000000000000000"),
];

fn key_of(group: Group) -> &'static str {
    GROUPS.iter().find(|(g, _)| *g == group).unwrap().1
}

/// Some other group's key.
fn key_without(group: Group) -> &'static str {
    GROUPS.iter().find(|(g, _)| *g != group).unwrap().1
}

async fn keyed_server() -> TestServer {
    let dir = tempfile::tempdir().unwrap().keep();
    let models = dir.join("models");
    publish_model_file(&models, "scale", 1, &scale_model(2.0));
    let keys = dir.join("keys");
    let text: String = GROUPS
        .iter()
        .map(|(group, key)| format!("{key} {}\n", group.label()))
        .collect();
    std::fs::write(&keys, text).unwrap();
    let mut config = ServeConfig::new(models);
    config.scheduler.workers = 1;
    config.api_keys = Some(keys);
    TestServer::start_with(config).await
}

fn infer_request() -> kserve::ModelInferRequest {
    kserve::ModelInferRequest {
        model_name: "scale".into(),
        inputs: vec![kserve::model_infer_request::InferInputTensor {
            name: "X".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            contents: Some(kserve::InferTensorContents {
                fp32_contents: vec![1.0; 4],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The gRPC code of one call of `group`'s with `headers`.
async fn grpc_call(server: &TestServer, group: Group, headers: &[(&str, &str)]) -> i32 {
    use predictd::proto::methods::grpc_inference_service as m;
    let addr = server.addr;
    let (code, message) = match group {
        Group::Health => {
            raw_unary(
                addr,
                m::SERVER_READY,
                &kserve::ServerReadyRequest {},
                headers,
            )
            .await
        }
        Group::Metadata => {
            raw_unary(
                addr,
                m::SERVER_METADATA,
                &kserve::ServerMetadataRequest {},
                headers,
            )
            .await
        }
        Group::Inference => raw_unary(addr, m::MODEL_INFER, &infer_request(), headers).await,
        Group::Statistics => {
            raw_unary(
                addr,
                m::MODEL_STATISTICS,
                &kserve::ModelStatisticsRequest::default(),
                headers,
            )
            .await
        }
        Group::ModelRepository => {
            raw_unary(
                addr,
                m::REPOSITORY_INDEX,
                &kserve::RepositoryIndexRequest::default(),
                headers,
            )
            .await
        }
        Group::Metrics | Group::Other => unreachable!("no gRPC method"),
    };
    assert!(
        !message.contains("-key-"),
        "a refusal never repeats the key: {message}"
    );
    code
}

/// The HTTP status of one call of `group`'s with `headers`, and whether it asked for a bearer
/// token.
async fn http_call(server: &TestServer, group: Group, headers: &[(&str, &str)]) -> (u16, bool) {
    let infer =
        r#"{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}"#;
    let (method, path, body) = match group {
        Group::Health => ("GET", "/v2/health/ready", ""),
        Group::Metadata => ("GET", "/v2", ""),
        Group::Inference => ("POST", "/v2/models/scale/infer", infer),
        Group::Statistics => ("GET", "/v2/models/stats", ""),
        Group::ModelRepository => ("POST", "/v2/repository/index", "{}"),
        Group::Metrics => ("GET", "/metrics", ""),
        Group::Other => ("GET", "/nowhere", ""),
    };
    let (status, head, _) = http_request(server.http_addr, method, path, body, headers).await;
    let asks = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("www-authenticate: Bearer"));
    (status, asks)
}

/// What is tried, the headers sent, the gRPC code and the HTTP status expected.
type Case = (&'static str, Vec<(&'static str, String)>, i32, u16);

#[tokio::test]
async fn every_group_needs_its_own_key_on_both_protocols_but_probes_need_none() {
    let server = keyed_server().await;
    let bearer = |key: &str| format!("Bearer {key}");
    for group in Group::ALL {
        if group == Group::Other {
            continue;
        }
        let cases: Vec<Case> = if group == Group::Health {
            vec![
                ("no key", vec![], 0, 200),
                (
                    "a wrong key",
                    vec![("authorization", bearer("wrong"))],
                    0,
                    200,
                ),
            ]
        } else {
            vec![
                ("no key", vec![], 16, 401),
                (
                    "a wrong key",
                    vec![(
                        "authorization",
                        bearer("not-a-key-000000000000000000000000"),
                    )],
                    16,
                    401,
                ),
                (
                    "another group's key",
                    vec![("authorization", bearer(key_without(group)))],
                    7,
                    403,
                ),
                (
                    "its key",
                    vec![("authorization", bearer(key_of(group)))],
                    0,
                    200,
                ),
            ]
        };
        for (what, headers, code, status) in cases {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            if group != Group::Metrics {
                assert_eq!(
                    grpc_call(&server, group, &headers).await,
                    code,
                    "gRPC {} with {what}",
                    group.label()
                );
            }
            let (got, asks) = http_call(&server, group, &headers).await;
            assert_eq!(got, status, "REST {} with {what}", group.label());
            assert_eq!(asks, status == 401, "www-authenticate with a 401 only");
        }
    }
    // A path in no group needs a key, any key, and is then answered by its protocol.
    let any = [(
        "authorization",
        "Bearer metrics-key-000000000000000000000000",
    )];
    assert_eq!(http_call(&server, Group::Other, &[]).await.0, 401);
    assert_eq!(http_call(&server, Group::Other, &any).await.0, 404);
}
