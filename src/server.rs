//! Assembles the gRPC server: model loading, health, reflection, the prediction service, and
//! the one tower stack every request passes through. Also the graceful drain.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::grpc::inference::InferenceService;
use crate::grpc::prediction::PredictionService;
use crate::middleware::{DeadlineLayer, Limited};
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::predictd::v1::prediction_service_server::PredictionServiceServer;
use crate::registry::{Registry, start_schedulers};
use crate::repository::{self, Catalog, RepositoryError};
use crate::rest;
use crate::scheduler::SchedulerConfig;

/// Everything `serve` needs to know, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model repository.
    pub models: PathBuf,
    /// Workers, queue depth and batching for models whose config.toml does not say.
    pub scheduler: SchedulerConfig,
    /// Batch sizes with a plan of their own, for models whose config.toml does not say.
    pub preferred_batch_sizes: Vec<usize>,
    /// The largest message decoded or encoded, in bytes.
    pub max_message_bytes: usize,
    /// The longest a request may take, unless the client's `grpc-timeout` is shorter.
    pub request_timeout: Duration,
    /// Inference requests (and stream messages) in progress at once, over all models; beyond
    /// it, requests get RESOURCE_EXHAUSTED at once.
    pub max_concurrent_requests: usize,
    /// How long requests in flight may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
    /// HTTP/2 and TCP settings.
    pub http2: Http2Config,
}

/// Transport settings.
#[derive(Debug, Clone, Copy)]
pub struct Http2Config {
    /// How often to ping an idle connection; `None` never pings.
    pub keepalive_interval: Option<Duration>,
    /// How long to wait for a ping's answer before closing the connection.
    pub keepalive_timeout: Duration,
    /// Streams (calls) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Send small replies at once rather than coalescing them (Nagle's algorithm off).
    pub tcp_nodelay: bool,
}

impl ServeConfig {
    /// Defaults for serving `models`: one worker per core per model, 256 queued requests per
    /// model, batches of up to 64 rows, 30 s requests, 64 MiB messages.
    pub fn new(models: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            models: models.into(),
            scheduler: SchedulerConfig {
                workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
                queue_capacity: 256,
                max_batch_size: 64,
                max_queue_delay: Duration::ZERO,
            },
            preferred_batch_sizes: repository::DEFAULT_PREFERRED_BATCH_SIZES.to_vec(),
            max_message_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            shutdown_grace: Duration::from_secs(30),
            http2: Http2Config {
                keepalive_interval: Some(Duration::from_secs(60)),
                keepalive_timeout: Duration::from_secs(20),
                max_concurrent_streams: 1024,
                tcp_nodelay: true,
            },
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The repository folder cannot be read.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The reflection service could not be built from our descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The REST server failed.
    #[error("the REST server failed: {0}")]
    Http(std::io::Error),
}

/// The health service names of the inference services, as tonic routes them.
const PREDICTION: &str = <PredictionServiceServer<PredictionService> as NamedService>::NAME;
const INFERENCE: &str = <GrpcInferenceServiceServer<InferenceService> as NamedService>::NAME;

/// Serves gRPC on `listener` until `shutdown` completes, then drains. Models load in the
/// background: until they have, health reports NOT_SERVING and predictions answer UNAVAILABLE.
///
/// Shutdown: health flips to NOT_SERVING first, the listener closes and connections are told
/// to send no new calls (HTTP/2 GOAWAY), calls in flight — streams included — get up to
/// `shutdown_grace` to finish, then this returns.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    App::new(config)?.serve(listener, shutdown).await
}

/// A server whose repository has been found but not yet served. Holding one gives access to
/// the live registry (the models and their counters), which tests and embedders use.
#[derive(Debug)]
pub struct App {
    config: ServeConfig,
    found: Catalog<PathBuf>,
    registry: Arc<Registry>,
    /// Where the REST front end listens, if it is served.
    http: Option<TcpListener>,
}

impl App {
    /// Finds the models of `config.models`; nothing is loaded yet.
    pub fn new(config: ServeConfig) -> Result<App, ServeError> {
        let found = repository::discover(&config.models)?;
        let registry = Arc::new(Registry::new(found.pending()));
        Ok(App {
            config,
            found,
            registry,
            http: None,
        })
    }

    /// Also serves the KServe v2 REST protocol on `listener`.
    pub fn with_http(mut self, listener: TcpListener) -> App {
        self.http = Some(listener);
        self
    }

    /// What is served now.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Loads the models in the background and serves gRPC on `listener` (and REST, if asked)
    /// until `shutdown`, then drains.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let App {
            config,
            found,
            registry,
            http,
        } = self;

        let (reporter, health) = tonic_health::server::health_reporter();
        set_health(&registry, &reporter, ServingStatus::NotServing).await;
        tokio::spawn(load_models(
            found,
            Arc::clone(&registry),
            config.scheduler,
            config.preferred_batch_sizes.clone(),
            reporter.clone(),
        ));

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // One pool of permits for every inference request and stream message.
        let permits = Arc::new(Semaphore::new(config.max_concurrent_requests));
        let prediction = PredictionServiceServer::new(PredictionService::new(
            Arc::clone(&registry),
            Arc::clone(&permits),
        ))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        let inference = GrpcInferenceServiceServer::new(InferenceService::new(
            Arc::clone(&registry),
            Arc::clone(&permits),
        ))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

        let (draining, drained) = watch::channel(false);
        let drain = {
            let registry = Arc::clone(&registry);
            async move {
                shutdown.await;
                // Load balancers and Kubernetes probes see NOT_SERVING before connections close.
                set_health(&registry, &reporter, ServingStatus::NotServing).await;
                tracing::info!("shutting down: no new calls; finishing the ones in flight");
                let _ = draining.send(true);
            }
        };
        let draining_begins = move || {
            let mut drained = drained.clone();
            async move {
                let _ = drained.wait_for(|&draining| draining).await;
            }
        };
        let rest = serve_rest(
            http,
            rest::router(
                Arc::clone(&registry),
                Arc::clone(&permits),
                config.request_timeout,
                config.max_message_bytes,
            ),
            config.http2.tcp_nodelay,
            draining_begins(),
        );

        let http2 = config.http2;
        let server = Server::builder()
            .http2_keepalive_interval(http2.keepalive_interval)
            .http2_keepalive_timeout(Some(http2.keepalive_timeout))
            .max_concurrent_streams(Some(http2.max_concurrent_streams))
            // The stack every call passes through, outermost first. Inference services add the
            // global concurrency limit and load shedding beneath it (see `Limited`).
            .layer(
                ServiceBuilder::new()
                    // 1. Request id: the client's `x-request-id`, or a new UUID; echoed on the reply.
                    .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                    .layer(PropagateRequestIdLayer::x_request_id())
                    // 2. One span per call carrying that id, so every log line of the call names
                    //    it, on the model's worker thread too. Client errors are not logged as errors.
                    .layer(
                        TraceLayer::new_for_grpc()
                            .make_span_with(call_span)
                            .on_request(())
                            .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                            .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
                    )
                    // 3. Deadline: the client's grpc-timeout or --request-timeout, whichever is
                    //    sooner; expiry answers DEADLINE_EXCEEDED and withdraws queued work.
                    .layer(DeadlineLayer::new(config.request_timeout)),
            )
            .add_service(health)
            .add_service(reflection().build_v1()?)
            // grpcurl 1.8 and many tools still ask the v1alpha reflection service.
            .add_service(reflection().build_v1alpha()?)
            // Inference services sit behind the concurrency limit; health and reflection do not,
            // so probes answer even when every permit is taken.
            .add_service(Limited::new(
                prediction,
                &permits,
                &["Predict", "PredictStream"],
            ))
            .add_service(Limited::new(
                inference,
                &permits,
                &["ModelInfer", "ModelStreamInfer"],
            ))
            // tonic applies TCP_NODELAY only to sockets it accepts itself, not to a listener
            // handed in; without it, small replies wait out the client's delayed ACK (~40 ms).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(http2.tcp_nodelay)),
                drain,
            );

        let grace = config.shutdown_grace;
        let grace_expired = draining_begins();
        tokio::select! {
            result = async { tokio::try_join!(
                async { server.await.map_err(ServeError::from) },
                async { rest.await.map_err(ServeError::Http) },
            ) } => { result?; }
            () = async { grace_expired.await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "shutdown grace expired; calls still in flight are dropped");
            }
        }
        Ok(())
    }
}

/// Serves the REST front end on `listener` (if any) through the same request-id and trace
/// layers as gRPC, until `drain` completes; then finishes the requests in flight.
async fn serve_rest(
    listener: Option<TcpListener>,
    router: axum::Router,
    nodelay: bool,
    drain: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(listener) = listener else {
        return Ok(());
    };
    let router = router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(call_span)
                    .on_request(())
                    .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                    .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
            ),
    );
    let listener = listener.tap_io(move |tcp| {
        if let Err(e) = tcp.set_nodelay(nodelay) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(drain)
        .await
}

/// The span of one call, named by its request id.
fn call_span<B>(request: &http::Request<B>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("call", request_id = %id, rpc = %request.uri().path())
}

/// Loads and starts every model off the reactor, publishes them, then reports SERVING.
async fn load_models(
    found: Catalog<PathBuf>,
    registry: Arc<Registry>,
    defaults: SchedulerConfig,
    preferred_batch_sizes: Vec<usize>,
    reporter: HealthReporter,
) {
    let loaded = tokio::task::spawn_blocking(move || {
        let models = repository::load(&found, &preferred_batch_sizes);
        start_schedulers(&models, defaults)
    })
    .await;
    match loaded {
        Ok(catalog) => {
            registry.publish(catalog);
            set_health(&registry, &reporter, ServingStatus::Serving).await;
            tracing::info!("models loaded; serving");
        }
        Err(e) => {
            tracing::error!(error = %e, "model loading stopped unexpectedly; staying NOT_SERVING")
        }
    }
}

/// Tells gRPC health and every protocol's readiness probe whether we take traffic.
async fn set_health(registry: &Registry, reporter: &HealthReporter, status: ServingStatus) {
    registry.set_serving(status == ServingStatus::Serving);
    reporter.set_service_status("", status).await;
    reporter.set_service_status(PREDICTION, status).await;
    reporter.set_service_status(INFERENCE, status).await;
}
