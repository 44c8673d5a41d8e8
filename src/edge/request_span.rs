//! The span of a sampled inference call, from its arrival at the edge to its status, named and
//! labelled after OpenTelemetry's RPC and HTTP conventions. [`crate::edge::counting`] starts
//! it and ends it, where every call's outcome is known; the spans for the call's queue wait
//! and batch run are its children ([`crate::serving::scheduler`]).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method, Request};

use crate::traces::context::{self, SpanId, TraceParent};
use crate::traces::tracer::{Kind, SpanRecord, Value, new_span_id};
use crate::traces::{Sampled, Tracer};

/// A sampled call's span, until its status is known.
#[derive(Debug)]
pub struct RequestSpan {
    sampled: Sampled,
    parent: Option<SpanId>,
    start: Instant,
    protocol: Protocol,
}

#[derive(Debug)]
enum Protocol {
    Grpc { method: String },
    Http { method: Method, path: String },
}

impl RequestSpan {
    /// Starts the span of `request` if `tracer` samples it (the caller's `traceparent`
    /// decides when it sent one), and puts its [`Sampled`] context in the request's
    /// extensions for the spans under it.
    pub fn start<B>(
        tracer: &Tracer,
        parent: Option<&TraceParent>,
        grpc: bool,
        request: &mut Request<B>,
    ) -> Option<RequestSpan> {
        let trace_id = tracer.sample(parent)?;
        let tracestate = context::tracestate(
            request
                .headers()
                .get_all("tracestate")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let sampled = Sampled {
            tracer: tracer.clone(),
            trace_id,
            span_id: new_span_id(),
            tracestate: tracestate.map(Arc::from),
        };
        request.extensions_mut().insert(sampled.clone());
        let path = request.uri().path();
        let protocol = if grpc {
            Protocol::Grpc {
                method: path.trim_start_matches('/').to_string(),
            }
        } else {
            Protocol::Http {
                method: request.method().clone(),
                path: path.to_string(),
            }
        };
        Some(RequestSpan {
            sampled,
            parent: parent.map(|p| p.parent_id),
            start: Instant::now(),
            protocol,
        })
    }

    /// Ends the span of a gRPC call answered `code`, with `headers` (those holding its
    /// status) for the message.
    pub fn finish_grpc(self, code: usize, headers: Option<&HeaderMap>) {
        let message = headers
            .and_then(|h| h.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .map(percent_decoded);
        // OpenTelemetry's convention for servers: these codes are the server's failures;
        // the rest (a bad argument, an unknown model) are the client's, and not errors.
        let error = matches!(code, 2 | 4 | 12 | 13 | 14 | 15).then(|| {
            let name = crate::edge::counting::GRPC_CODES
                .get(code)
                .copied()
                .unwrap_or("UNKNOWN");
            message.map_or_else(|| name.to_string(), |m| format!("{name}: {m}"))
        });
        self.finish(vec![("rpc.grpc.status_code", Value::from(code))], error);
    }

    /// Ends the span of an HTTP call answered `status`.
    pub fn finish_http(self, status: u16) {
        let error = (status >= 500).then(|| format!("HTTP {status}"));
        self.finish(
            vec![("http.response.status_code", Value::from(status as u64))],
            error,
        );
    }

    fn finish(self, mut attributes: Vec<(&'static str, Value)>, error: Option<String>) {
        let end = Instant::now();
        let name = match &self.protocol {
            Protocol::Grpc { method } => {
                let (service, name) = method.split_once('/').unwrap_or((method, ""));
                attributes.extend([
                    ("rpc.system", Value::from("grpc")),
                    ("rpc.service", Value::from(service.to_string())),
                    ("rpc.method", Value::from(name.to_string())),
                ]);
                Cow::Owned(method.clone())
            }
            Protocol::Http { method, path } => {
                let route = route(path);
                attributes.extend([
                    ("http.request.method", Value::from(method.to_string())),
                    ("url.path", Value::from(path.clone())),
                    ("http.route", Value::from(route.clone())),
                ]);
                Cow::Owned(format!("{method} {route}"))
            }
        };
        let tracer = &self.sampled.tracer;
        tracer.record(SpanRecord {
            trace_id: self.sampled.trace_id,
            span_id: self.sampled.span_id,
            parent: self.parent,
            remote_parent: self.parent.is_some(),
            tracestate: self.sampled.tracestate.clone(),
            name,
            kind: Kind::Server,
            start_unix_ns: tracer.unix_ns(self.start),
            end_unix_ns: tracer.unix_ns(end),
            attributes,
            links: Vec::new(),
            error,
        });
    }
}

/// A REST path with its model and version as placeholders, as span names and `http.route`
/// want it (a name per route, not per model).
fn route(path: &str) -> String {
    let mut out = Vec::new();
    let mut previous = "";
    for segment in path.split('/') {
        out.push(match previous {
            "models" => "{model}",
            "versions" => "{version}",
            _ => segment,
        });
        previous = segment;
    }
    out.join("/")
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_routes_name_the_route_not_the_model() {
        assert_eq!(route("/v2/models/iris/infer"), "/v2/models/{model}/infer");
        assert_eq!(
            route("/v2/models/iris/versions/2/infer"),
            "/v2/models/{model}/versions/{version}/infer"
        );
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(
            percent_decoded("model 'x': 100%25 wrong%0Aline"),
            "model 'x': 100% wrong\nline"
        );
        assert_eq!(percent_decoded("bad %zz %4"), "bad %zz %4");
    }
}
