//! `/metrics` against a real server: the counts match the requests sent, over both protocols,
//! and the page obeys the text format. Prometheus itself, promtool and an independent parser
//! check it in tests/interop/metrics_check.py.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, http_get, http_post, publish_model_file, scale_model, scale_request};
use predictd::proto::predictd::v1 as pb;
use predictd::server::ServeConfig;

/// The value of the sample `series` (name and labels, as written) on `page`.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} on the page:\n{page}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_what_was_sent_over_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(2.0));
    let server = TestServer::start(dir.path()).await;
    for _ in 0..5 {
        server
            .client()
            .predict(scale_request("scale", ""))
            .await
            .unwrap();
    }
    let good = r#"{"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 4], "data": [1, 1, 1, 1, 1, 1, 1, 1]}]}"#;
    let bad =
        r#"{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 3], "data": [1, 1, 1]}]}"#;
    assert_eq!(
        http_post(server.http_addr, "/v2/models/scale/infer", good)
            .await
            .0,
        200
    );
    assert_eq!(
        http_post(server.http_addr, "/v2/models/scale/infer", bad)
            .await
            .0,
        400
    );
    server
        .client()
        .predict(scale_request("scale", ""))
        .await
        .unwrap();

    let missing = server.client().predict(scale_request("nope", "")).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    let (status, page) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    let labels = r#"{model="scale",version="1"}"#;
    assert_eq!(
        sample(&page, &format!("nv_inference_request_success{labels}")),
        7.0
    );
    assert_eq!(
        sample(&page, &format!("nv_inference_count{labels}")),
        8.0,
        "rows"
    );
    assert_eq!(
        sample(
            &page,
            r#"nv_inference_request_failure{model="scale",version="1",reason="OTHER"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &page,
            r#"predictd_requests_refused_total{model="scale",version="1",reason="invalid"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &page,
            &format!("predictd_request_duration_seconds_count{labels}")
        ),
        7.0
    );
    assert_eq!(
        sample(
            &page,
            r#"predictd_request_duration_seconds_bucket{model="scale",version="1",le="+Inf"}"#
        ),
        7.0
    );
    assert_eq!(
        sample(&page, &format!("predictd_batch_rows_sum{labels}")),
        8.0
    );
    assert_eq!(
        sample(
            &page,
            r#"predictd_model_state{model="scale",version="1",state="READY"}"#
        ),
        1.0
    );
    assert!(sample(&page, "process_resident_memory_bytes") > 1e6);
    // Calls by protocol, group and outcome, counted at the edge.
    for (series, n) in [
        (
            r#"predictd_requests_total{protocol="grpc",group="inference",code="OK"}"#,
            6.0,
        ),
        (
            r#"predictd_requests_total{protocol="grpc",group="inference",code="NOT_FOUND"}"#,
            1.0,
        ),
        (
            r#"predictd_requests_total{protocol="http",group="inference",code="200"}"#,
            1.0,
        ),
        (
            r#"predictd_requests_total{protocol="http",group="inference",code="400"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&page, series), n, "{series}");
    }
    // The KServe statistics read the same counters.
    let (_, stats) = http_get(server.http_addr, "/v2/models/scale/stats").await;
    assert!(stats.contains(r#""inference_count":8"#), "{stats}");

    // Every family is declared once, before its samples, with a known type.
    let mut declared = std::collections::HashSet::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(declared.insert(name.to_string()), "{name} declared twice");
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "{name} has no TYPE before it");
        }
    }
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(2.0));
    let mut config = ServeConfig::new(dir.path());
    config.metrics = false;
    let server = TestServer::start_with(config).await;
    assert_eq!(http_get(server.http_addr, "/metrics").await.0, 404);
}

#[tokio::test]
async fn open_streams_are_counted_while_they_are_open() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(2.0));
    let server = TestServer::start(dir.path()).await;
    let (send, receive) = tokio::sync::mpsc::channel(4);
    let mut replies = server
        .client()
        .predict_stream(tokio_stream::wrappers::ReceiverStream::new(receive))
        .await
        .unwrap()
        .into_inner();
    send.send(scale_request("scale", "")).await.unwrap();
    let reply = replies.message().await.unwrap().expect("one reply");
    assert!(
        matches!(
            reply.result,
            Some(pb::predict_stream_response::Result::Response(_))
        ),
        "{reply:?}"
    );
    let (_, page) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(sample(&page, "predictd_open_streams"), 1.0);
    drop(send);
    assert!(
        replies.message().await.unwrap().is_none(),
        "the stream ends"
    );
    // The server lets go of the stream just after its last frame: look until it has.
    let mut open = 1.0;
    for _ in 0..1000 {
        open = sample(
            &http_get(server.http_addr, "/metrics").await.1,
            "predictd_open_streams",
        );
        if open == 0.0 {
            break;
        }
    }
    assert_eq!(open, 0.0, "the stream is no longer counted once it ended");
    let (_, page) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(
        sample(
            &page,
            r#"predictd_requests_total{protocol="grpc",group="inference",code="OK"}"#
        ),
        1.0,
        "the stream is one call"
    );
}
