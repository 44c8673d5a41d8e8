//! Assembles the gRPC server: model loading, health, reflection and the prediction service.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::grpc::prediction::PredictionService;
use crate::proto::predictd::v1::prediction_service_server::PredictionServiceServer;
use crate::registry::{Registry, start_schedulers};
use crate::repository::{self, Catalog, RepositoryError};
use crate::scheduler::SchedulerConfig;

/// Everything `serve` needs to know, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model repository.
    pub models: PathBuf,
    /// Workers and queue depth for models whose config.toml does not say.
    pub scheduler: SchedulerConfig,
    /// The largest message decoded or encoded, in bytes.
    pub max_message_bytes: usize,
}

impl ServeConfig {
    /// Defaults for serving `models`: one worker per core per model, 256 queued requests per
    /// model, 64 MiB messages.
    pub fn new(models: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            models: models.into(),
            scheduler: SchedulerConfig {
                workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
                queue_capacity: 256,
            },
            max_message_bytes: 64 * 1024 * 1024,
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
}

/// The health service name of the prediction service, as tonic routes it.
const PREDICTION: &str = <PredictionServiceServer<PredictionService> as NamedService>::NAME;

/// Serves gRPC on `listener` until `shutdown` completes. Models load in the background: until
/// they have, health reports NOT_SERVING and predictions answer UNAVAILABLE.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let found = repository::discover(&config.models)?;
    let registry = Arc::new(Registry::new(found.pending()));

    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    tokio::spawn(load_models(
        found,
        Arc::clone(&registry),
        config.scheduler,
        reporter,
    ));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let prediction = PredictionServiceServer::new(PredictionService::new(registry))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    Server::builder()
        .add_service(health)
        .add_service(reflection().build_v1()?)
        // grpcurl 1.8 and many tools still ask the v1alpha reflection service.
        .add_service(reflection().build_v1alpha()?)
        .add_service(prediction)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Loads and starts every model off the reactor, publishes them, then reports SERVING.
async fn load_models(
    found: Catalog<PathBuf>,
    registry: Arc<Registry>,
    defaults: SchedulerConfig,
    reporter: HealthReporter,
) {
    let loaded = tokio::task::spawn_blocking(move || {
        let models = repository::load(&found);
        start_schedulers(&models, defaults)
    })
    .await;
    match loaded {
        Ok(catalog) => {
            registry.publish(catalog);
            set_health(&reporter, ServingStatus::Serving).await;
            tracing::info!("models loaded; serving");
        }
        Err(e) => {
            tracing::error!(error = %e, "model loading stopped unexpectedly; staying NOT_SERVING")
        }
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(PREDICTION, status).await;
}
