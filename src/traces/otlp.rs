//! The exporter: one task that takes finished spans from the tracer's queue, gathers them into
//! batches and sends them to an OpenTelemetry collector over OTLP, by gRPC or HTTP/protobuf.
//! A collector that is slow or away costs dropped spans (counted), never a request's time.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use crate::proto::opentelemetry::proto::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value,
};
use crate::proto::opentelemetry::proto::resource::v1::Resource;
use crate::proto::opentelemetry::proto::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use crate::traces::tracer::{Kind, SpanRecord, TraceCounters, Tracer, Value};

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (usually port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (usually port 4318, path `/v1/traces`).
    HttpProtobuf,
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Protocol, String> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(format!(
                "'{other}': expected grpc or http/protobuf (OTLP's protocol names)"
            )),
        }
    }
}

/// Where and how traces are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The collector: `http://host:port` (for HTTP, a path other than `/` is used as given;
    /// otherwise `/v1/traces` is appended, as OTLP's `OTEL_EXPORTER_OTLP_ENDPOINT` does).
    pub endpoint: Uri,
    /// How spans travel.
    pub protocol: Protocol,
    /// The share of new traces sampled, 0 to 1; a caller's sampled context is always traced.
    pub sampling_ratio: f64,
}

impl OtlpConfig {
    /// Checks that `endpoint` is one we can send to.
    pub fn new(endpoint: &str, protocol: Protocol, sampling_ratio: f64) -> Result<Self, String> {
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|e| format!("'{endpoint}' is not a URL: {e}"))?;
        match endpoint.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "'{endpoint}': TLS to the collector is not supported yet; send to a collector or agent on a trusted network over http://"
                ));
            }
            _ => return Err(format!("'{endpoint}': expected http://host:port")),
        }
        if endpoint.host().is_none() {
            return Err(format!("'{endpoint}': expected http://host:port"));
        }
        if !(0.0..=1.0).contains(&sampling_ratio) {
            return Err(format!(
                "the sampling ratio must be between 0 and 1, got {sampling_ratio}"
            ));
        }
        Ok(OtlpConfig {
            endpoint,
            protocol,
            sampling_ratio,
        })
    }
}

/// Finished spans that may wait for export; beyond them, spans are dropped (OpenTelemetry's
/// batch processor's default).
pub const QUEUE_CAPACITY: usize = 2048;
/// Most spans in one export.
const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for company before the batch leaves.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How long one export may take before its spans count as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The running exporter.
#[derive(Debug)]
pub struct Exporter {
    task: JoinHandle<()>,
    close: oneshot::Sender<()>,
}

/// Starts exporting to `config`'s collector on the current runtime; the tracer feeds it.
pub fn start(config: &OtlpConfig) -> (Tracer, Exporter) {
    let (tracer, spans) = Tracer::new(config.sampling_ratio, QUEUE_CAPACITY);
    let (close, closed) = oneshot::channel();
    let sink = Sink::new(config);
    tracing::info!(
        endpoint = %config.endpoint,
        protocol = ?config.protocol,
        sampling_ratio = config.sampling_ratio,
        "exporting traces over OTLP"
    );
    let task = tokio::spawn(run(spans, closed, sink, tracer.counters()));
    (tracer, Exporter { task, close })
}

impl Exporter {
    /// Sends what is queued and stops, waiting at most `within`.
    pub async fn finish(self, within: Duration) {
        let _ = self.close.send(());
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!(?within, "spans still unexported at shutdown; dropping them");
        }
    }
}

async fn run(
    mut spans: mpsc::Receiver<SpanRecord>,
    mut closed: oneshot::Receiver<()>,
    mut sink: Sink,
    counters: Arc<TraceCounters>,
) {
    let resource = resource();
    let mut failing = false;
    loop {
        let mut batch = Vec::new();
        let closing = tokio::select! {
            biased;
            span = spans.recv() => match span {
                Some(span) => { batch.push(span); false }
                None => true,
            },
            _ = &mut closed => true,
        };
        if closing {
            // What is queued now is the last of it.
            while let Ok(span) = spans.try_recv() {
                batch.push(span);
            }
        } else {
            let until = Instant::now() + BATCH_DELAY;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, spans.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    _ => break,
                }
            }
        }
        for chunk in batch.chunks(MAX_BATCH) {
            let n = chunk.len() as u64;
            let request = encode(&resource, chunk);
            match tokio::time::timeout(EXPORT_TIMEOUT, sink.send(request)).await {
                Ok(Ok(rejected)) => {
                    counters.exported.fetch_add(n - rejected.min(n), Relaxed);
                    counters
                        .dropped_export_failed
                        .fetch_add(rejected.min(n), Relaxed);
                    if failing {
                        tracing::info!("exporting spans again");
                    }
                    failing = false;
                }
                result => {
                    counters.dropped_export_failed.fetch_add(n, Relaxed);
                    // Said once per outage, not once per batch.
                    if !failing {
                        let error = match result {
                            Ok(Err(e)) => e,
                            _ => format!("no answer within {EXPORT_TIMEOUT:?}"),
                        };
                        tracing::warn!(%error, spans = n, "cannot export spans; dropping them until the collector answers");
                    }
                    failing = true;
                }
            }
        }
        if closing {
            return;
        }
    }
}

/// The collector's end, by protocol.
enum Sink {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http {
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        uri: Uri,
    },
}

impl Sink {
    fn new(config: &OtlpConfig) -> Sink {
        match config.protocol {
            // Connects on first use and reconnects after failures, so a collector that starts
            // after us, or restarts, is picked up.
            Protocol::Grpc => Sink::Grpc(TraceServiceClient::new(
                tonic::transport::Endpoint::from(config.endpoint.clone()).connect_lazy(),
            )),
            Protocol::HttpProtobuf => {
                let uri = match config.endpoint.path() {
                    "" | "/" => {
                        let mut parts = config.endpoint.clone().into_parts();
                        parts.path_and_query =
                            Some(http::uri::PathAndQuery::from_static("/v1/traces"));
                        Uri::from_parts(parts).unwrap_or_else(|_| config.endpoint.clone())
                    }
                    _ => config.endpoint.clone(),
                };
                Sink::Http {
                    client: Box::new(Client::builder(TokioExecutor::new()).build_http()),
                    uri,
                }
            }
        }
    }

    /// Sends one batch; the spans the collector rejected, or why it failed.
    async fn send(&mut self, request: ExportTraceServiceRequest) -> Result<u64, String> {
        match self {
            Sink::Grpc(client) => {
                let reply = client
                    .export(request)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
                Ok(reply
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_spans.max(0) as u64))
            }
            Sink::Http { client, uri } => {
                let body = Full::new(Bytes::from(request.encode_to_vec()));
                let post = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(body)
                    .map_err(|e| e.to_string())?;
                let reply = client.request(post).await.map_err(|e| e.to_string())?;
                if reply.status().is_success() {
                    Ok(0)
                } else {
                    Err(format!("{uri} answered {}", reply.status()))
                }
            }
        }
    }
}

fn key_value(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.to_string()),
        Value::Int(n) => any_value::Value::IntValue(*n),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Who sends the spans: `OTEL_SERVICE_NAME`, as every OpenTelemetry SDK reads it, or predictd.
fn resource() -> Resource {
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "predictd".to_string());
    Resource {
        attributes: vec![
            key_value("service.name", &Value::from(name)),
            key_value("service.version", &Value::from(env!("CARGO_PKG_VERSION"))),
        ],
        ..Default::default()
    }
}

/// The W3C sampled flag, and OTLP's flags saying whether the parent is remote.
const SAMPLED: u32 = 0x1;
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// One OTLP request carrying `spans`.
fn encode(resource: &Resource, spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    let spans = spans
        .iter()
        .map(|record| Span {
            trace_id: Bytes::copy_from_slice(&record.trace_id.0),
            span_id: Bytes::copy_from_slice(&record.span_id.0),
            trace_state: record.tracestate.as_deref().unwrap_or("").to_string(),
            parent_span_id: record
                .parent
                .map_or_else(Bytes::new, |p| Bytes::copy_from_slice(&p.0)),
            flags: SAMPLED | HAS_IS_REMOTE | if record.remote_parent { IS_REMOTE } else { 0 },
            name: record.name.to_string(),
            kind: match record.kind {
                Kind::Server => span::SpanKind::Server,
                Kind::Internal => span::SpanKind::Internal,
            } as i32,
            start_time_unix_nano: record.start_unix_ns,
            end_time_unix_nano: record.end_unix_ns,
            attributes: record
                .attributes
                .iter()
                .map(|(k, v)| key_value(k, v))
                .collect(),
            links: record
                .links
                .iter()
                .map(|(trace_id, span_id)| span::Link {
                    trace_id: Bytes::copy_from_slice(&trace_id.0),
                    span_id: Bytes::copy_from_slice(&span_id.0),
                    flags: SAMPLED | HAS_IS_REMOTE,
                    ..Default::default()
                })
                .collect(),
            status: record.error.as_ref().map(|message| Status {
                message: message.clone(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "predictd".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::context::{SpanId, TraceId};

    #[test]
    fn endpoints_are_checked_and_http_gets_the_traces_path() {
        let grpc = OtlpConfig::new("http://127.0.0.1:4317", Protocol::Grpc, 1.0).unwrap();
        assert_eq!(grpc.endpoint.port_u16(), Some(4317));
        assert!(OtlpConfig::new("https://collector:4317", Protocol::Grpc, 1.0).is_err());
        assert!(OtlpConfig::new("collector:4317", Protocol::Grpc, 1.0).is_err());
        assert!(OtlpConfig::new("http://c:4317", Protocol::Grpc, 1.5).is_err());
        let http = OtlpConfig::new("http://c:4318", Protocol::HttpProtobuf, 0.5).unwrap();
        let Sink::Http { uri, .. } = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { Sink::new(&http) })
        else {
            panic!("an HTTP sink");
        };
        assert_eq!(uri.to_string(), "http://c:4318/v1/traces");
        assert_eq!(
            "http/protobuf".parse::<Protocol>(),
            Ok(Protocol::HttpProtobuf)
        );
        assert!("http/json".parse::<Protocol>().is_err());
    }

    #[test]
    fn a_span_encodes_with_its_ids_parent_links_and_status() {
        let record = SpanRecord {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([1; 8]),
            parent: Some(SpanId([2; 8])),
            remote_parent: true,
            tracestate: Some(Arc::from("k=v")),
            name: "inference.GRPCInferenceService/ModelInfer".into(),
            kind: Kind::Server,
            start_unix_ns: 10,
            end_unix_ns: 20,
            attributes: vec![("rpc.grpc.status_code", Value::Int(3))],
            links: vec![(TraceId([8; 16]), SpanId([9; 8]))],
            error: Some("INVALID_ARGUMENT".to_string()),
        };
        let request = encode(&resource(), &[record]);
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(&span.trace_id[..], &[7; 16]);
        assert_eq!(&span.parent_span_id[..], &[2; 8]);
        assert_eq!(span.trace_state, "k=v");
        assert_eq!(span.flags, SAMPLED | HAS_IS_REMOTE | IS_REMOTE);
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (10, 20)
        );
        assert_eq!(&span.links[0].span_id[..], &[9; 8]);
        assert_eq!(
            span.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
        assert_eq!(span.attributes[0].key, "rpc.grpc.status_code");
        // Round trip through the wire format, as a collector reads it.
        let decoded =
            ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, request);
    }
}
