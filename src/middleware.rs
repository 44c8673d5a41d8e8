//! The layers every request passes through, and the one place where their errors become
//! gRPC statuses. [`crate::server`] assembles them into one stack.
//!
//! Deadlines are our own layer, not tower's `Timeout`: tower's takes one fixed duration, while a
//! gRPC deadline is per request (`grpc-timeout`), and tonic's built-in handling answers an
//! expired call with CANCELLED where clients expect DEADLINE_EXCEEDED.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::error::Overloaded;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceBuilder};

/// The deadlines of one request, put in its extensions by [`DeadlineLayer`].
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

/// Sets each request's [`Deadlines`] and answers DEADLINE_EXCEEDED when the handler has not
/// answered by then.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    request_timeout: Duration,
}

impl DeadlineLayer {
    /// A layer whose requests last at most `request_timeout` (less if the client says so).
    pub fn new(request_timeout: Duration) -> Self {
        DeadlineLayer { request_timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            request_timeout: self.request_timeout,
        }
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    request_timeout: Duration,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: Default + 'static,
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
        let deadlines = Deadlines {
            client,
            request_timeout: self.request_timeout,
        };
        request.extensions_mut().insert(deadlines);
        let deadline = deadlines.for_work_starting(now);
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline.into(), call).await {
                Ok(result) => result,
                Err(_) => Ok(deadline_exceeded(&deadlines).into_http()),
            }
        })
    }
}

/// The status of a request whose deadline passed, saying whose deadline it was.
pub fn deadline_exceeded(deadlines: &Deadlines) -> Status {
    let server = deadlines.request_timeout;
    match deadlines.client {
        Some(_) => Status::deadline_exceeded(format!(
            "the deadline passed before the request was answered (the client's grpc-timeout, or the server's --request-timeout of {server:?}, whichever came first)"
        )),
        None => Status::deadline_exceeded(format!(
            "the request was not answered within the server's --request-timeout of {server:?}"
        )),
    }
}

/// The status of a call refused because every concurrency permit is taken.
pub fn overloaded() -> Status {
    Status::resource_exhausted(
        "the server is at its limit of concurrent requests (--max-concurrent-requests); retry later",
    )
}

/// Turns what the layers below return as errors into gRPC statuses: the one place it happens.
fn rescue(result: Result<Response<Body>, BoxError>) -> Result<Response<Body>, Infallible> {
    Ok(result.unwrap_or_else(|error| {
        let status = if error.is::<Overloaded>() {
            overloaded()
        } else {
            Status::from_error(error)
        };
        status.into_http()
    }))
}

/// A gRPC service whose inference methods sit behind the global concurrency limit, with load
/// shedding: when every permit is taken such a call is refused at once with RESOURCE_EXHAUSTED
/// instead of waiting. Its other methods (metadata, listings) bypass the limit, so they answer
/// under overload. It keeps the inner service's gRPC name, so tonic routes to it as before.
pub struct Limited<T> {
    limited: BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>,
    direct: T,
    /// The method names (last path segment) that take a permit.
    methods: &'static [&'static str],
    /// An error from `poll_ready`, answered as a status by the next limited `call`: tonic wants
    /// services that never fail, so errors become replies.
    failed: Option<BoxError>,
}

impl<T: Clone> Clone for Limited<T> {
    fn clone(&self) -> Self {
        Limited {
            limited: self.limited.clone(),
            direct: self.direct.clone(),
            methods: self.methods,
            failed: None,
        }
    }
}

impl<T> Limited<T>
where
    T: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    T::Future: Send + 'static,
{
    /// Puts the `methods` of `service` behind the limit whose permits are `permits` (shared by
    /// every inference service, and by the messages of streams).
    pub fn new(
        service: T,
        permits: &Arc<tokio::sync::Semaphore>,
        methods: &'static [&'static str],
    ) -> Self {
        let limited = ServiceBuilder::new()
            // Shedding sits right above the limit: it turns "no permit now" into an error now.
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(Arc::clone(
                permits,
            )))
            .service(service.clone());
        Limited {
            limited: BoxCloneSyncService::new(limited),
            direct: service,
            methods,
            failed: None,
        }
    }
}

impl<T: NamedService> NamedService for Limited<T> {
    const NAME: &'static str = T::NAME;
}

impl<T> Service<Request<Body>> for Limited<T>
where
    T: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    T::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The request is not known yet: get ready for either path. A permit taken here for a
        // call that turns out to bypass the limit is released as soon as the call is routed.
        if let Err(error) = std::task::ready!(self.limited.poll_ready(cx)) {
            self.failed = Some(error);
        }
        self.direct.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or("");
        if !self.methods.contains(&method) {
            self.failed = None;
            let call = self.direct.call(request);
            return Box::pin(call);
        }
        match self.failed.take() {
            Some(error) => Box::pin(std::future::ready(rescue(Err(error)))),
            None => {
                let call = self.limited.call(request);
                Box::pin(async move { rescue(call.await) })
            }
        }
    }
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
