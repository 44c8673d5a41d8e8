//! Where every call's outcome is known: counts each call by protocol, endpoint group and
//! outcome — the gRPC status or the HTTP status — and ends the span of a sampled inference
//! call ([`RequestSpan`]). It is the outermost layer of the edge, so refusals by the layers
//! inside are counted and traced too. A gRPC call's status may only come in its trailers, so
//! the reply body is wrapped and the call counted when they pass (or as CANCELLED, if the reply
//! is dropped unfinished).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::Service;

use crate::edge::layers::EdgeCounters;
use crate::edge::request_span::RequestSpan;
use crate::edge::routes::{self, Group};
use crate::traces::Tracer;
use crate::traces::context;

/// The gRPC status names, by code.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
/// The HTTP statuses counted by name; the rest are counted as "other".
pub const HTTP_STATUSES: [u16; 13] = [
    200, 400, 401, 403, 404, 405, 413, 415, 429, 500, 501, 503, 504,
];

/// Calls by protocol, group and outcome.
#[derive(Debug)]
pub struct CallCounts {
    grpc: Vec<AtomicU64>,
    http: Vec<AtomicU64>,
}

impl Default for CallCounts {
    fn default() -> Self {
        let cells = |n: usize| {
            (0..Group::ALL.len() * n)
                .map(|_| AtomicU64::new(0))
                .collect()
        };
        CallCounts {
            grpc: cells(GRPC_CODES.len()),
            http: cells(HTTP_STATUSES.len() + 1),
        }
    }
}

/// One line of [`CallCounts::nonzero`]: protocol, group, outcome, count.
pub type CallCount = (&'static str, Group, String, u64);

impl CallCounts {
    fn grpc(&self, group: Group, code: usize) {
        // A code we do not know (above 16) is counted as UNKNOWN.
        let code = if code < GRPC_CODES.len() { code } else { 2 };
        let cell = group.index() * GRPC_CODES.len() + code;
        if let Some(c) = self.grpc.get(cell) {
            c.fetch_add(1, Relaxed);
        }
    }

    fn http(&self, group: Group, status: u16) {
        let column = HTTP_STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(HTTP_STATUSES.len());
        if let Some(c) = self
            .http
            .get(group.index() * (HTTP_STATUSES.len() + 1) + column)
        {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Every count that is not zero.
    pub fn nonzero(&self) -> Vec<CallCount> {
        let mut out = Vec::new();
        for group in Group::ALL {
            for (code, name) in GRPC_CODES.iter().enumerate() {
                let n = self.grpc[group.index() * GRPC_CODES.len() + code].load(Relaxed);
                if n > 0 {
                    out.push(("grpc", group, name.to_string(), n));
                }
            }
            for column in 0..=HTTP_STATUSES.len() {
                let n = self.http[group.index() * (HTTP_STATUSES.len() + 1) + column].load(Relaxed);
                if n > 0 {
                    let status = HTTP_STATUSES
                        .get(column)
                        .map_or("other".to_string(), u16::to_string);
                    out.push(("http", group, status, n));
                }
            }
        }
        out
    }
}

/// Counts each call `inner` answers into the edge's counters, and traces the inference calls
/// `tracer` samples.
#[derive(Debug, Clone)]
pub struct CountService<S> {
    inner: S,
    counters: Arc<EdgeCounters>,
    tracer: Option<Tracer>,
}

impl<S> CountService<S> {
    /// `inner`, counted into `counters` and traced by `tracer`.
    pub fn new(inner: S, counters: Arc<EdgeCounters>, tracer: Option<Tracer>) -> CountService<S> {
        CountService {
            inner,
            counters,
            tracer,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> Service<Request<B>> for CountService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = Response<Counted<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let group = routes::group(request.method(), request.uri().path());
        // Noted for the layers inside, which decide by group too.
        request.extensions_mut().insert(group);
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        // The caller's W3C trace: its log lines name it, and it decides whether we trace.
        let parent = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(context::parse);
        if let Some(parent) = parent {
            request.extensions_mut().insert(parent);
        }
        let span = match &self.tracer {
            Some(tracer) if group == Group::Inference => {
                RequestSpan::start(tracer, parent.as_ref(), grpc, &mut request)
            }
            _ => None,
        };
        let counters = Arc::clone(&self.counters);
        let open = routes::is_stream(request.uri().path()).then(|| OpenStream::new(&counters));
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let pending = if !grpc {
                let status = response.status().as_u16();
                counters.calls.http(group, status);
                if let Some(span) = span {
                    span.finish_http(status);
                }
                None
            } else {
                let pending = Pending {
                    counters,
                    group,
                    span,
                };
                // A trailers-only reply (an error, usually) has its status in the headers.
                match grpc_status(response.headers()) {
                    Some(code) => {
                        pending.grpc(code, Some(response.headers()));
                        None
                    }
                    None => Some(pending),
                }
            };
            Ok(response.map(|inner| Counted {
                inner,
                pending,
                _open: open,
            }))
        })
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<usize> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A reply body that counts its gRPC call when the trailers with its status pass.
#[derive(Debug)]
pub struct Counted<B> {
    inner: B,
    /// Where to count, until counted.
    pending: Option<Pending>,
    /// For a stream: open until its reply is done with.
    _open: Option<OpenStream>,
}

/// A streaming call in progress, counted in the open streams while it lives.
#[derive(Debug)]
struct OpenStream(Arc<EdgeCounters>);

impl OpenStream {
    fn new(counters: &Arc<EdgeCounters>) -> OpenStream {
        counters.open_streams.fetch_add(1, Relaxed);
        OpenStream(Arc::clone(counters))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Relaxed);
    }
}

/// A gRPC call whose status is still to come.
#[derive(Debug)]
struct Pending {
    counters: Arc<EdgeCounters>,
    group: Group,
    span: Option<RequestSpan>,
}

impl Pending {
    /// Counts the call as answered `code` (with `headers` holding its status), ending its span.
    fn grpc(self, code: usize, headers: Option<&HeaderMap>) {
        self.counters.calls.grpc(self.group, code);
        if let Some(span) = self.span {
            span.finish_grpc(code, headers);
        }
    }
}

impl<B> Counted<B> {
    fn count(&mut self, code: usize, trailers: Option<&HeaderMap>) {
        if let Some(pending) = self.pending.take() {
            pending.grpc(code, trailers);
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        // Dropped before its status passed: the client went away, or the stream was reset.
        self.count(1, None);
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = grpc_status(trailers)
                {
                    self.count(code, Some(trailers));
                }
            }
            // An error mid-body, or an end without a status: UNKNOWN, as clients see it.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => self.count(2, None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
