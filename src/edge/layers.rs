//! The one tower stack every call passes through, gRPC and REST alike, outermost first:
//! call counting and tracing ([`crate::edge::counting`]) → request id → log span → API keys
//! ([`crate::edge::auth`]) → deadline → limit (with shedding). [`EdgeLayer`] builds it once; the
//! server applies it to tonic and to axum. What a layer refuses becomes an [`ApiError`] and is
//! answered in the caller's protocol, chosen by the transport's body type ([`Reply`]).
//!
//! Deadlines are our own layer, not tower's `Timeout`: tower's takes one fixed duration, while a
//! gRPC deadline is per request (`grpc-timeout`), and tonic's built-in handling answers an
//! expired call with CANCELLED where clients expect DEADLINE_EXCEEDED.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tower::{Layer, Service};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestId, PropagateRequestIdLayer, SetRequestId, SetRequestIdLayer,
};
use tower_http::trace::{
    DefaultOnBodyChunk, DefaultOnEos, DefaultOnFailure, DefaultOnResponse, MakeSpan, Trace,
    TraceLayer,
};
use tracing::Level;

use crate::edge::auth::ApiKeys;
use crate::edge::counting::{CallCounts, CountService};
use crate::edge::routes::{self, Group};
use crate::edge::status::ApiError;
use crate::error::ErrorKind;
use crate::traces::context::TraceParent;
use crate::traces::{Sampled, Tracer};

/// The deadlines of one request, put in its extensions by [`DeadlineService`].
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// The client's deadline (`grpc-timeout`), if it sent one.
    pub client: Option<Instant>,
    /// The server's limit on one request (`--request-timeout`).
    pub request_timeout: Duration,
}

impl Deadlines {
    /// The deadline of a unit of work that starts at `start`: the client's or the server's
    /// limit, whichever comes first.
    pub fn for_work_starting(&self, start: Instant) -> Instant {
        let server = start + self.request_timeout;
        self.client.map_or(server, |client| client.min(server))
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// tonic enforces `grpc-timeout` itself, outside our layers, and answers CANCELLED. Our
/// deadline comes this much earlier so that the client gets DEADLINE_EXCEEDED.
const AHEAD_OF_TONIC: Duration = Duration::from_millis(1);

/// A transport's response body, which says how a refusal of the edge is answered on it: a gRPC
/// status (in the headers of an empty reply) on tonic, KServe's JSON error on axum.
pub trait Reply: Sized {
    /// The reply that carries `error`.
    fn error(error: ApiError) -> Response<Self>;
}

impl Reply for tonic::body::Body {
    fn error(error: ApiError) -> Response<Self> {
        tonic::Status::from(error).into_http()
    }
}

impl Reply for axum::body::Body {
    fn error(error: ApiError) -> Response<Self> {
        axum::response::IntoResponse::into_response(error)
    }
}

/// The stack, built once from the server's settings and applied to both transports.
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    request_timeout: Duration,
    admission: Admission,
    counters: Arc<EdgeCounters>,
    tracer: Option<Tracer>,
    keys: Option<Keys>,
}

/// The API keys in force, replaced whole when their file is re-read.
pub type Keys = Arc<arc_swap::ArcSwap<ApiKeys>>;

/// What the edge counted, over both transports, for the metrics.
#[derive(Debug, Default)]
pub struct EdgeCounters {
    /// Every call by protocol, group and outcome.
    pub calls: CallCounts,
    /// Streaming calls open now.
    pub open_streams: std::sync::atomic::AtomicI64,
    /// Inference calls and stream messages shed because every permit was taken.
    pub shed: AtomicU64,
    /// Calls answered DEADLINE_EXCEEDED by the edge's clock.
    pub timed_out: AtomicU64,
}

/// The server's concurrency permits, taken by inference calls of both transports and by each
/// stream message; what finds none free is shed at once, and counted.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    /// One per open stream: an idle stream costs the transport's buffers (about 15 KiB), and
    /// clients could otherwise open them without end over many connections.
    streams: Arc<Semaphore>,
    max_open_streams: usize,
    counters: Arc<EdgeCounters>,
}

impl Admission {
    /// `permits` permits and `max_open_streams` stream slots, counting into `counters`.
    pub fn new(permits: usize, max_open_streams: usize, counters: Arc<EdgeCounters>) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(permits)),
            streams: Arc::new(Semaphore::new(max_open_streams)),
            max_open_streams,
            counters,
        }
    }

    /// A slot for a stream, held as long as it is open, or the refusal (counted as shed) when
    /// every one is taken.
    pub fn try_open_stream(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            self.counters.shed.fetch_add(1, Relaxed);
            ApiError::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "the server has {} streams open, its limit (--max-open-streams); close one or retry later",
                    self.max_open_streams
                ),
            )
        })
    }

    /// A permit, or `None` (counted as shed) if every one is taken.
    pub fn try_admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok();
        if permit.is_none() {
            self.counters.shed.fetch_add(1, Relaxed);
        }
        permit
    }
}

impl EdgeLayer {
    /// Requests last at most `request_timeout` (less if the client says so); inference calls
    /// each hold a permit of `admission` (shared with stream messages) or are refused at once,
    /// and are traced when `tracer` samples them.
    pub fn new(
        request_timeout: Duration,
        admission: Admission,
        tracer: Option<Tracer>,
    ) -> EdgeLayer {
        EdgeLayer {
            request_timeout,
            counters: Arc::clone(&admission.counters),
            admission,
            tracer,
            keys: None,
        }
    }

    /// The same stack, refusing calls without a key of `keys` for their group.
    pub fn with_keys(mut self, keys: Option<Keys>) -> EdgeLayer {
        self.keys = keys;
        self
    }

    /// What this stack has refused so far.
    pub fn counters(&self) -> Arc<EdgeCounters> {
        Arc::clone(&self.counters)
    }
}

/// What [`EdgeLayer`] makes of a service.
pub type Edge<S> = CountService<Inner<S>>;

/// The edge inside its call counting.
pub type Inner<S> = SetRequestId<
    PropagateRequestId<
        Trace<
            AuthService<DeadlineService<LimitService<S>>>,
            SharedClassifier<ServerErrorsAsFailures>,
            CallSpan,
            (),
            DefaultOnResponse,
            DefaultOnBodyChunk,
            DefaultOnEos,
            DefaultOnFailure,
        >,
    >,
    MakeRequestUuid,
>;

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let limited = LimitService {
            inner,
            admission: self.admission.clone(),
        };
        let deadline = DeadlineService {
            inner: limited,
            request_timeout: self.request_timeout,
            counters: Arc::clone(&self.counters),
        };
        // 3. Keys before the deadline: a refused call costs no timer.
        let authorized = AuthService {
            inner: deadline,
            keys: self.keys.clone(),
        };
        // 2. One span per call carrying its request id, so every log line of the call names
        //    it, on the model's worker thread too. Client errors are not logged as errors.
        let traced = TraceLayer::new_for_http()
            .make_span_with(CallSpan)
            .on_request(())
            .on_response(DefaultOnResponse::new().level(Level::DEBUG))
            .on_failure(DefaultOnFailure::new().level(Level::DEBUG))
            .layer(authorized);
        // 1. Request id: the client's `x-request-id`, or a new UUID; echoed on the reply.
        let propagated = PropagateRequestIdLayer::x_request_id().layer(traced);
        let identified = SetRequestIdLayer::x_request_id(MakeRequestUuid).layer(propagated);
        // 0. Outermost, so that the refusals of every layer inside are counted (and traced) too.
        CountService::new(identified, Arc::clone(&self.counters), self.tracer.clone())
    }
}

/// The span of one call, named by its request id and, when there is one, its W3C trace (the
/// caller's, or ours if we sampled a new one), so that its log lines can be found by it.
#[derive(Debug, Clone, Copy)]
pub struct CallSpan;

impl<B> MakeSpan<B> for CallSpan {
    fn make_span(&mut self, request: &Request<B>) -> tracing::Span {
        let id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let span = tracing::info_span!(
            "call",
            request_id = %id,
            rpc = %request.uri().path(),
            trace_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let extensions = request.extensions();
        if let Some(parent) = extensions.get::<TraceParent>() {
            span.record("trace_id", tracing::field::display(parent.trace_id));
            span.record("parent_span_id", tracing::field::display(parent.parent_id));
        }
        if let Some(sampled) = extensions.get::<Sampled>() {
            span.record("trace_id", tracing::field::display(sampled.trace_id));
            span.record("span_id", tracing::field::display(sampled.span_id));
        }
        span
    }
}

/// The longest a repository call (a load) may take unless its client says less.
const REPOSITORY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Sets each request's [`Deadlines`] and answers DEADLINE_EXCEEDED (504) when the handler has
/// not answered by then.
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    request_timeout: Duration,
    counters: Arc<EdgeCounters>,
}

impl<S, B, R> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Reply + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let now = Instant::now();
        let client = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|t| now + t.saturating_sub(AHEAD_OF_TONIC));
        // A model load takes as long as the model does: only the client's deadline bounds it.
        let request_timeout = if routes::group_of(&request) == Group::ModelRepository {
            REPOSITORY_TIMEOUT
        } else {
            self.request_timeout
        };
        let deadlines = Deadlines {
            client,
            request_timeout,
        };
        request.extensions_mut().insert(deadlines);
        let deadline = deadlines.for_work_starting(now);
        let call = self.inner.call(request);
        let counters = Arc::clone(&self.counters);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline.into(), call).await {
                Ok(result) => result,
                Err(_) => {
                    counters.timed_out.fetch_add(1, Relaxed);
                    Ok(R::error(deadline_exceeded(&deadlines)))
                }
            }
        })
    }
}

/// Refuses a call without a key for its group (when the server has keys): UNAUTHENTICATED
/// (401, with `www-authenticate: Bearer`) or PERMISSION_DENIED (403).
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    keys: Option<Keys>,
}

impl<S, B, R> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Reply + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future =
        futures_util::future::Either<std::future::Ready<Result<Response<R>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        use futures_util::future::Either;
        let refused = self.keys.as_ref().and_then(|keys| {
            keys.load()
                .check(request.headers(), routes::group_of(&request))
                .err()
        });
        match refused {
            None => Either::Right(self.inner.call(request)),
            Some(error) => {
                let unauthenticated = error.kind() == ErrorKind::Unauthenticated;
                let mut reply = R::error(error);
                if unauthenticated {
                    reply.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    );
                }
                Either::Left(std::future::ready(Ok(reply)))
            }
        }
    }
}

/// Holds inference calls to the server's concurrency permits, shedding the ones that find none
/// free: they are answered RESOURCE_EXHAUSTED (429) at once instead of waiting. Other groups
/// pass freely, so probes and metadata answer under overload.
#[derive(Debug, Clone)]
pub struct LimitService<S> {
    inner: S,
    admission: Admission,
}

impl<S, B, R> Service<Request<B>> for LimitService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Reply + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if routes::group_of(&request) != Group::Inference {
            return Box::pin(self.inner.call(request));
        }
        let Some(permit) = self.admission.try_admit() else {
            return Box::pin(std::future::ready(Ok(R::error(overloaded()))));
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let reply = call.await;
            drop(permit);
            reply
        })
    }
}

/// The refusal of a request whose deadline passed, saying whose deadline it was.
pub fn deadline_exceeded(deadlines: &Deadlines) -> ApiError {
    let server = deadlines.request_timeout;
    let message = match deadlines.client {
        Some(_) => format!(
            "the deadline passed before the request was answered (the client's grpc-timeout, or the server's --request-timeout of {server:?}, whichever came first)"
        ),
        None => format!(
            "the request was not answered within the server's --request-timeout of {server:?}"
        ),
    };
    ApiError::new(ErrorKind::DeadlineExceeded, message)
}

/// The refusal of a call that finds every concurrency permit taken.
pub fn overloaded() -> ApiError {
    ApiError::new(
        ErrorKind::ResourceExhausted,
        "the server is at its limit of concurrent requests (--max-concurrent-requests); retry later",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None, "at most 8 digits");
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn the_earlier_deadline_wins() {
        let now = Instant::now();
        let server_only = Deadlines {
            client: None,
            request_timeout: Duration::from_secs(30),
        };
        assert_eq!(
            server_only.for_work_starting(now),
            now + Duration::from_secs(30)
        );
        let client_sooner = Deadlines {
            client: Some(now + Duration::from_millis(50)),
            ..server_only
        };
        assert_eq!(
            client_sooner.for_work_starting(now),
            now + Duration::from_millis(50)
        );
        let client_later = Deadlines {
            client: Some(now + Duration::from_secs(60)),
            ..server_only
        };
        assert_eq!(
            client_later.for_work_starting(now),
            now + Duration::from_secs(30)
        );
    }
}
