//! Traces against real servers: predictd exports to an OTLP collector built here from the
//! generated OpenTelemetry service (gRPC) or an HTTP endpoint decoding the same protobuf, and
//! the spans it receives carry the caller's trace, the queue wait and the batch run, linked.
//! tests/interop/traces_check.py checks the same against the Python `opentelemetry-proto`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestServer, http_get, publish_model_file, scale_model, scale_request};
use predictd::proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use predictd::proto::opentelemetry::proto::common::v1::any_value;
use predictd::proto::opentelemetry::proto::trace::v1::{Span, span::SpanKind};
use predictd::server::ServeConfig;
use predictd::traces::otlp::{OtlpConfig, Protocol};
use prost::Message;

/// Every span a collector received.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource in request.resource_spans {
            let name = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.clone()?.value);
            assert_eq!(
                name,
                Some(any_value::Value::StringValue("predictd".into())),
                "the resource names the service"
            );
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }

    /// Waits until `done` holds for what arrived (the exporter sends every half second).
    async fn until(&self, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let start = Instant::now();
        loop {
            let spans = self.0.lock().unwrap().clone();
            if done(&spans) {
                return spans;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: after 20 s the collector has {} spans: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on an ephemeral port.
async fn grpc_collector() -> (Received, String) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (received, format!("http://{addr}"))
}

/// An OTLP/HTTP collector (protobuf bodies at /v1/traces) on an ephemeral port.
async fn http_collector() -> (Received, String) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                sink.add(ExportTraceServiceRequest::decode(body).unwrap());
                ExportTraceServiceResponse::default().encode_to_vec()
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (received, format!("http://{addr}"))
}

async fn traced_server(endpoint: &str, protocol: Protocol, ratio: f64) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(2.0));
    let mut config = ServeConfig::new(dir.keep());
    config.scheduler.workers = 1;
    config.traces = Some(OtlpConfig::new(endpoint, protocol, ratio).unwrap());
    TestServer::start_with(config).await
}

fn traceparent(trace: u8, parent: u8, sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        format!("{trace:02x}").repeat(16),
        format!("{parent:02x}").repeat(8),
        if sampled { "01" } else { "00" }
    )
}

fn with_context(
    message: predictd::proto::predictd::v1::PredictRequest,
    headers: &[(&'static str, String)],
) -> tonic::Request<predictd::proto::predictd::v1::PredictRequest> {
    let mut request = tonic::Request::new(message);
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

fn attribute(span: &Span, key: &str) -> Option<any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(any_value::Value::IntValue(n)) => n,
        other => panic!("{key} of {span:?}: {other:?}"),
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

const PREDICT: &str = "predictd.v1.PredictionService/Predict";

#[tokio::test]
async fn a_sampled_call_is_one_trace_under_the_callers_span_with_its_queue_and_batch() {
    let (received, endpoint) = grpc_collector().await;
    // Ratio 0: only the callers' sampled contexts are traced.
    let server = traced_server(&endpoint, Protocol::Grpc, 0.0).await;
    let mut client = server.client();
    let sampled = traceparent(0xab, 0xcd, true);
    client
        .predict(with_context(
            scale_request("scale", ""),
            &[
                ("traceparent", sampled),
                ("tracestate", "vendor=opaque".to_string()),
            ],
        ))
        .await
        .unwrap();
    // Neither an unsampled context nor none at all is traced at ratio 0.
    client
        .predict(with_context(
            scale_request("scale", ""),
            &[("traceparent", traceparent(0x11, 0x22, false))],
        ))
        .await
        .unwrap();
    client.predict(scale_request("scale", "")).await.unwrap();
    // A refused call is traced with its status.
    let mut bad = scale_request("scale", "");
    bad.inputs.get_mut("X").unwrap().shape = vec![1, 3];
    let refused = client
        .predict(with_context(
            bad,
            &[("traceparent", traceparent(0x33, 0x44, true))],
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    received.until("four spans", |spans| spans.len() >= 4).await;
    // Give stray spans (there should be none) time to arrive.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let spans = received.0.lock().unwrap().clone();
    let traces: BTreeSet<Vec<u8>> = spans.iter().map(|s| s.trace_id.to_vec()).collect();
    assert_eq!(
        traces,
        BTreeSet::from([vec![0xab; 16], vec![0x33; 16]]),
        "one trace per sampled call, the callers' ids: {spans:#?}"
    );

    let of = |trace: u8| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.trace_id[..] == [trace; 16])
            .collect()
    };
    let good = of(0xab);
    assert_eq!(good.len(), 3, "call, queue and batch: {good:#?}");
    let call = good
        .iter()
        .find(|s| s.name == PREDICT)
        .expect("the call's span");
    assert_eq!(
        &call.parent_span_id[..],
        &[0xcd; 8],
        "under the caller's span"
    );
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert_eq!(call.trace_state, "vendor=opaque");
    assert_eq!(int(call, "rpc.grpc.status_code"), 0);
    assert!(call.status.is_none(), "an OK call has no error status");
    assert!(call.end_time_unix_nano > call.start_time_unix_nano);
    let queue = good
        .iter()
        .find(|s| s.name == "predictd.queue")
        .expect("queue span");
    let batch = good
        .iter()
        .find(|s| s.name == "predictd.batch")
        .expect("batch span");
    for child in [queue, batch] {
        assert_eq!(child.parent_span_id, call.span_id, "{}", child.name);
        assert_eq!(child.trace_state, "vendor=opaque");
        assert_eq!(
            attribute(child, "predictd.model"),
            Some(any_value::Value::StringValue("scale".into()))
        );
        assert_eq!(int(child, "predictd.model_version"), 1);
        assert_eq!(int(child, "predictd.rows"), 1);
        assert!(child.start_time_unix_nano >= call.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= call.end_time_unix_nano);
    }
    assert!(queue.end_time_unix_nano <= batch.start_time_unix_nano);
    assert_eq!(batch.links.len(), 1);
    assert_eq!(batch.links[0].span_id, call.span_id);

    let refused = of(0x33);
    assert_eq!(refused.len(), 1, "refused before the queue: {refused:#?}");
    assert_eq!(int(refused[0], "rpc.grpc.status_code"), 3);
    assert!(
        refused[0].status.is_none(),
        "a client's error is not the server's (OpenTelemetry's convention)"
    );

    let (_, page) = http_get(server.http_addr, "/metrics").await;
    assert!(
        page.contains("predictd_trace_spans_exported_total 4"),
        "{page}"
    );
}

#[tokio::test]
async fn a_batch_span_links_every_call_it_served() {
    let (received, endpoint) = grpc_collector().await;
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(2.0));
    let mut config = ServeConfig::new(dir.keep());
    config.scheduler.workers = 1;
    // A long queue delay, so that calls sent together are run together.
    config.scheduler.max_queue_delay = Duration::from_millis(300);
    config.traces = Some(OtlpConfig::new(&endpoint, Protocol::Grpc, 1.0).unwrap());
    let server = TestServer::start_with(config).await;
    let calls = 6;
    let replies = futures_util::future::join_all((0..calls).map(|i| {
        let mut client = server.client();
        async move {
            client
                .predict(with_context(
                    scale_request("scale", ""),
                    &[("traceparent", traceparent(0x10 + i, 0x70 + i, true))],
                ))
                .await
        }
    }))
    .await;
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");

    let spans = received
        .until("every call's spans", |spans| {
            named(spans, PREDICT).len() == calls as usize
                && named(spans, "predictd.queue").len() == calls as usize
        })
        .await;
    let calls_by_span: HashMap<Vec<u8>, &Span> = named(&spans, PREDICT)
        .into_iter()
        .map(|s| (s.span_id.to_vec(), s))
        .collect();
    let batches = named(&spans, "predictd.batch");
    let mut linked = BTreeSet::new();
    for batch in &batches {
        let parent = calls_by_span
            .get(&batch.parent_span_id.to_vec())
            .expect("a batch span is under one of its calls");
        assert_eq!(batch.trace_id, parent.trace_id);
        assert!(
            batch.links.iter().any(|l| l.span_id == parent.span_id),
            "and linked to it too"
        );
        for link in &batch.links {
            let call = calls_by_span
                .get(&link.span_id.to_vec())
                .expect("links name call spans");
            assert_eq!(link.trace_id, call.trace_id);
            assert!(linked.insert(link.span_id.to_vec()), "one batch per call");
        }
        assert_eq!(
            int(batch, "predictd.batch_requests"),
            batch.links.len() as i64
        );
        assert_eq!(int(batch, "predictd.rows"), batch.links.len() as i64);
    }
    assert_eq!(
        linked.len(),
        calls as usize,
        "every call is linked from its batch"
    );
    assert!(
        batches.iter().any(|b| b.links.len() > 1),
        "calls sent together were batched together: {batches:#?}"
    );
}

#[tokio::test]
async fn http_protobuf_export_traces_rest_calls_and_new_roots() {
    let (received, endpoint) = http_collector().await;
    let server = traced_server(&endpoint, Protocol::HttpProtobuf, 1.0).await;
    let body =
        r#"{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}"#;
    let (status, _) = common::http_post(server.http_addr, "/v2/models/scale/infer", body).await;
    assert_eq!(status, 200);
    let spans = received
        .until("three spans", |spans| spans.len() >= 3)
        .await;
    let call = spans
        .iter()
        .find(|s| s.name == "POST /v2/models/{model}/infer")
        .unwrap_or_else(|| panic!("the REST call's span: {spans:#?}"));
    assert!(call.parent_span_id.is_empty(), "a new trace has no parent");
    assert_eq!(int(call, "http.response.status_code"), 200);
    assert_eq!(
        attribute(call, "url.path"),
        Some(any_value::Value::StringValue(
            "/v2/models/scale/infer".into()
        ))
    );
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == call.trace_id && s.trace_id.len() == 16)
    );
}

#[tokio::test]
async fn a_collector_that_is_away_costs_dropped_spans_not_requests() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = traced_server(&endpoint, Protocol::Grpc, 1.0).await;
    let mut client = server.client();
    for _ in 0..5 {
        client.predict(scale_request("scale", "")).await.unwrap();
    }
    let start = Instant::now();
    loop {
        let (_, page) = http_get(server.http_addr, "/metrics").await;
        let dropped = page
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"predictd_trace_spans_dropped_total{reason="export_failed"} "#)
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped >= 15.0 {
            assert!(page.contains("predictd_trace_spans_exported_total 0"));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the failed exports are counted: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
