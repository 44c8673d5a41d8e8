//! Assembles the gRPC server: model loading, health, reflection, the prediction service, and
//! the one tower stack every request passes through. Also the graceful drain.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use arc_swap::ArcSwap;

use crate::edge::auth::{ApiKeys, KeysError};
use crate::edge::layers::{Admission, EdgeLayer, Keys};
use crate::edge::tls::{Tls, TlsError, TlsFiles, TlsListener};
use crate::engine::open::OpenDefaults;
use crate::engine::repository::{self, RepositoryError};
use crate::kserve::grpc::InferenceService;
use crate::kserve::rest;
use crate::metrics;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::predictd::v1::prediction_service_server::PredictionServiceServer;
use crate::serving::lifecycle::{Lifecycle, LifecycleConfig, ModelControl, listen_for_hangups};
use crate::serving::memory::Budget;
use crate::serving::registry::Registry;
use crate::serving::scheduler::SchedulerConfig;
use crate::traces::Tracer;
use crate::traces::otlp::{self, OtlpConfig};
use crate::v1::service::PredictionService;

/// Everything `serve` needs to know, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model repository.
    pub models: PathBuf,
    /// Workers, queue depth and batching for models whose config.toml does not say.
    pub scheduler: SchedulerConfig,
    /// How models are opened, where their config.toml does not say.
    pub open: OpenDefaults,
    /// The largest message decoded or encoded, in bytes.
    pub max_message_bytes: usize,
    /// The longest a request may take, unless the client's `grpc-timeout` is shorter.
    pub request_timeout: Duration,
    /// Inference requests (and stream messages) in progress at once, over all models; beyond
    /// it, requests get RESOURCE_EXHAUSTED at once.
    pub max_concurrent_requests: usize,
    /// Streaming calls open at once, over all connections; beyond it, new streams get
    /// RESOURCE_EXHAUSTED.
    pub max_open_streams: usize,
    /// How long requests in flight may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
    /// HTTP/2 and TCP settings.
    pub http2: Http2Config,
    /// How models change while serving.
    pub lifecycle: LifecycleConfig,
    /// Whether `/metrics` is served.
    pub metrics: bool,
    /// Where traces are exported, if anywhere.
    pub traces: Option<OtlpConfig>,
    /// The API key file; when set, every call but probes needs a key for its group.
    pub api_keys: Option<PathBuf>,
    /// TLS for every port, when set.
    pub tls: Option<TlsFiles>,
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
    /// The defaults of `predictd serve` ([`crate::config::defaults`], which its flags show)
    /// for serving `models`.
    pub fn new(models: impl Into<PathBuf>) -> ServeConfig {
        use crate::config::defaults;
        ServeConfig {
            models: models.into(),
            scheduler: SchedulerConfig {
                workers: defaults::workers(),
                queue_capacity: defaults::QUEUE_CAPACITY,
                max_batch_size: defaults::MAX_BATCH_SIZE,
                max_queue_delay: Duration::from_micros(defaults::MAX_QUEUE_DELAY_US),
            },
            open: OpenDefaults::default(),
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            request_timeout: defaults::REQUEST_TIMEOUT,
            max_concurrent_requests: defaults::MAX_CONCURRENT_REQUESTS,
            max_open_streams: defaults::MAX_OPEN_STREAMS,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            http2: Http2Config {
                keepalive_interval: Some(defaults::HTTP2_KEEPALIVE_INTERVAL),
                keepalive_timeout: defaults::HTTP2_KEEPALIVE_TIMEOUT,
                max_concurrent_streams: defaults::HTTP2_MAX_CONCURRENT_STREAMS,
                tcp_nodelay: defaults::TCP_NODELAY,
            },
            lifecycle: LifecycleConfig {
                control: ModelControl::None,
                poll_interval: defaults::REPOSITORY_POLL_INTERVAL,
                startup_models: Vec::new(),
                budget: Budget::default(),
            },
            metrics: true,
            traces: None,
            api_keys: None,
            tls: None,
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
    /// The API key file cannot be used.
    #[error("--api-keys: {0}")]
    Keys(#[from] KeysError),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// How often the TLS files are looked at for changes (SIGHUP re-reads them at once).
const TLS_FILES_POLL: Duration = Duration::from_secs(5);

/// How long the spans still queued at shutdown may take to reach the collector.
const EXPORT_AT_EXIT: Duration = Duration::from_secs(5);

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
    registry: Arc<Registry>,
    lifecycle: Arc<Lifecycle>,
    /// Where the REST front end listens, if it is served.
    http: Option<TcpListener>,
    /// Where `/metrics` is also served, on a port of its own.
    metrics: Option<TcpListener>,
    /// The API keys in force, if the server has any.
    keys: Option<Keys>,
    /// The TLS configuration in force, if the server speaks TLS.
    tls: Option<Arc<Tls>>,
}

impl App {
    /// Finds the models of `config.models`; nothing is loaded yet.
    pub fn new(config: ServeConfig) -> Result<App, ServeError> {
        let keys = match &config.api_keys {
            Some(path) => Some(Arc::new(ArcSwap::from_pointee(ApiKeys::load(path)?))),
            None => None,
        };
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(Tls::load(files.clone())?)),
            None => None,
        };
        let found = repository::discover(&config.models)?;
        let registry = Arc::new(Registry::new(found.pending()));
        let lifecycle = Lifecycle::new(
            config.models.clone(),
            Arc::clone(&registry),
            config.scheduler,
            config.open.clone(),
            config.lifecycle.clone(),
        );
        Ok(App {
            config,
            registry,
            lifecycle: Arc::new(lifecycle),
            http: None,
            metrics: None,
            keys,
            tls,
        })
    }

    /// Also serves the KServe v2 REST protocol on `listener`.
    pub fn with_http(mut self, listener: TcpListener) -> App {
        self.http = Some(listener);
        self
    }

    /// Also serves `/metrics` on `listener` (besides the REST port).
    pub fn with_metrics(mut self, listener: TcpListener) -> App {
        self.metrics = Some(listener);
        self
    }

    /// What is served now.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// What changes the models served.
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        Arc::clone(&self.lifecycle)
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
            registry,
            lifecycle,
            http,
            metrics: metrics_listener,
            keys,
            tls,
        } = self;
        if let Some(tls) = &tls {
            tokio::spawn(Arc::clone(tls).watch(TLS_FILES_POLL));
        }
        if let (Some(keys), Some(path)) = (&keys, &config.api_keys) {
            tokio::spawn(reread_keys_on_hangup(path.clone(), Arc::clone(keys)));
        }

        let (reporter, health) = tonic_health::server::health_reporter();
        set_health(&registry, &reporter, ServingStatus::NotServing).await;
        let changes = tokio::spawn(run_lifecycle(
            Arc::clone(&lifecycle),
            Arc::clone(&registry),
            reporter.clone(),
        ));

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // One pool of permits for every inference request and stream message.
        let admission = Admission::new(
            config.max_concurrent_requests,
            config.max_open_streams,
            Arc::default(),
        );
        let prediction = PredictionServiceServer::new(PredictionService::new(
            Arc::clone(&registry),
            admission.clone(),
        ))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        let inference = GrpcInferenceServiceServer::new(InferenceService::new(
            Arc::clone(&registry),
            Arc::clone(&lifecycle),
            admission.clone(),
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
        // The one stack both transports' calls pass through: request id, trace, deadline,
        // and the concurrency limit for inference calls.
        let (tracer, exporter) = config.traces.as_ref().map(otlp::start).unzip();
        let traces = tracer.as_ref().map(Tracer::counters);
        let edge = EdgeLayer::new(config.request_timeout, admission, tracer).with_keys(keys);
        let sources = metrics::Sources {
            registry: Arc::clone(&registry),
            edge: edge.counters(),
            traces,
        };
        let mut http_routes = rest::router(
            Arc::clone(&registry),
            Arc::clone(&lifecycle),
            config.max_message_bytes,
        );
        if config.metrics {
            http_routes = http_routes.merge(metrics::router(sources.clone()));
        }
        let rest = serve_rest(
            http,
            http_routes.layer(edge.clone()),
            config.http2.tcp_nodelay,
            tls.clone(),
            draining_begins(),
        );
        let metrics_only = serve_rest(
            metrics_listener.filter(|_| config.metrics),
            metrics::router(sources).layer(edge.clone()),
            config.http2.tcp_nodelay,
            tls.clone(),
            draining_begins(),
        );

        let http2 = config.http2;
        let server = Server::builder()
            .http2_keepalive_interval(http2.keepalive_interval)
            .http2_keepalive_timeout(Some(http2.keepalive_timeout))
            .max_concurrent_streams(Some(http2.max_concurrent_streams))
            .layer(edge)
            .add_service(health)
            .add_service(reflection().build_v1()?)
            // grpcurl 1.8 and many tools still ask the v1alpha reflection service.
            .add_service(reflection().build_v1alpha()?)
            .add_service(prediction)
            .add_service(inference);
        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match &tls {
                // tonic applies TCP_NODELAY only to sockets it accepts itself, not to a
                // listener handed in; without it, small replies wait out the client's delayed
                // ACK (~40 ms).
                None => Box::pin(server.serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(http2.tcp_nodelay)),
                    drain,
                )),
                Some(tls) => {
                    let incoming = tls.incoming(listener, false, http2.tcp_nodelay);
                    let connections =
                        futures_util::stream::unfold(incoming, |mut incoming| async {
                            let connection = incoming.recv().await?;
                            Some((Ok::<_, std::io::Error>(connection), incoming))
                        });
                    Box::pin(server.serve_with_incoming_shutdown(connections, drain))
                }
            };

        let grace = config.shutdown_grace;
        let grace_expired = draining_begins();
        tokio::select! {
            result = async { tokio::try_join!(
                async { server.await.map_err(ServeError::from) },
                async { rest.await.map_err(ServeError::Http) },
                async { metrics_only.await.map_err(ServeError::Http) },
            ) } => { result?; }
            () = async { grace_expired.await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "shutdown grace expired; calls still in flight are dropped");
            }
        }
        // No model changes once draining is over: the catalog is closed next.
        changes.abort();
        join_workers(&registry, grace).await;
        // The spans of the last calls, sent before the process ends.
        if let Some(exporter) = exporter {
            exporter.finish(EXPORT_AT_EXIT).await;
        }
        Ok(())
    }
}

/// Re-reads the API key file on every SIGHUP; a file that no longer reads keeps the keys in
/// force (and says why), so a bad edit never opens or closes the server.
async fn reread_keys_on_hangup(path: PathBuf, keys: Keys) {
    let Some(mut hangups) = listen_for_hangups() else {
        return;
    };
    while hangups.recv().await.is_some() {
        match ApiKeys::load(&path) {
            Ok(read) => {
                tracing::info!(path = %path.display(), keys = ?read, "API keys re-read");
                keys.store(Arc::new(read));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot re-read the API keys; the ones in force stay")
            }
        }
    }
}

/// Serves the REST front end on `listener` (if any) until `drain` completes; then finishes the
/// requests in flight.
async fn serve_rest(
    listener: Option<TcpListener>,
    router: axum::Router,
    nodelay: bool,
    tls: Option<Arc<Tls>>,
    drain: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(listener) = listener else {
        return Ok(());
    };
    if let Some(tls) = tls {
        let local = listener.local_addr()?;
        let incoming = tls.incoming(listener, true, nodelay);
        return axum::serve(TlsListener { incoming, local }, router)
            .with_graceful_shutdown(drain)
            .await;
    }
    let listener = listener.tap_io(move |tcp| {
        if let Err(e) = tcp.set_nodelay(nodelay) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(drain)
        .await
}

/// Closes every model's queue and waits, off the reactor, for its worker threads to finish what
/// they hold; a worker still busy after `grace` (a call whose connection outlived the drain) is
/// left to end with the process.
async fn join_workers(registry: &Registry, grace: Duration) {
    let threads = registry.close();
    let count = threads.len();
    let joined = tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    });
    match tokio::time::timeout(grace, joined).await {
        Ok(_) => tracing::debug!(threads = count, "worker threads joined"),
        Err(_) => tracing::warn!(
            ?grace,
            "worker threads still busy after the grace; not waiting"
        ),
    }
}

/// Loads the start-up models, then reports SERVING; from then on, applies repository changes
/// as the model control mode says. Reloads never touch the server's health: it serves
/// throughout.
async fn run_lifecycle(
    lifecycle: Arc<Lifecycle>,
    registry: Arc<Registry>,
    reporter: HealthReporter,
) {
    let hangups = listen_for_hangups();
    match lifecycle.start().await {
        Ok(()) => {
            set_health(&registry, &reporter, ServingStatus::Serving).await;
            tracing::info!("models loaded; serving");
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the model repository; staying NOT_SERVING");
            return;
        }
    }
    lifecycle.run(hangups).await;
}

/// Tells gRPC health and every protocol's readiness probe whether we take traffic.
async fn set_health(registry: &Registry, reporter: &HealthReporter, status: ServingStatus) {
    registry.set_serving(status == ServingStatus::Serving);
    reporter.set_service_status("", status).await;
    reporter.set_service_status(PREDICTION, status).await;
    reporter.set_service_status(INFERENCE, status).await;
}
