//! The servers under test: predictd (batching on and off) and a bare tonic server.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use predictd::engine::model::Model;
use predictd::proto::predictd::v1 as pb;
use predictd::server::{App, ServeConfig};
use predictd::serving::registry::Registry;
use predictd::serving::stats::StatsSnapshot;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use pb::prediction_service_server::{PredictionService, PredictionServiceServer};

use crate::common;
use crate::generators::ClientRuntime;
use crate::settings::parse;
use crate::{BARE_THREADS, CLIENT_THREADS};

/// A server on its own runtime; stops when dropped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn server_runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// A predictd instance and its live registry (the models' schedulers and counters).
pub(crate) struct Served {
    pub(crate) running: Running,
    registry: Arc<Registry>,
    /// Its model worker threads, by thread id: both instances name them alike
    /// (`<model>-v<version>-<i>`), so the CPU accounting tells them apart by id.
    pub(crate) worker_tids: HashSet<u64>,
}

impl Served {
    /// What a scrape of this server's `/metrics` reads.
    pub(crate) fn metrics_sources(&self) -> predictd::metrics::Sources {
        predictd::metrics::Sources {
            registry: Arc::clone(&self.registry),
            edge: Arc::default(),
        }
    }

    /// The counters of `model`'s served (latest) version now.
    pub(crate) fn stats(&self, model: &str) -> StatsSnapshot {
        let catalog = self.registry.snapshot();
        let (_, scheduler) = catalog
            .resolve(model, "")
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        scheduler.stats().snapshot()
    }

    /// The model the server runs, and its number of worker threads.
    pub(crate) fn model(&self, model: &str) -> (Arc<Model>, usize) {
        let catalog = self.registry.snapshot();
        let (_, scheduler) = catalog
            .resolve(model, "")
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        (Arc::clone(scheduler.model()), scheduler.config().workers)
    }
}

/// The ids of this process's live threads.
fn thread_ids() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| t.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The real server (through `App`, keeping its registry) on 127.0.0.1:0, on its own runtime on
/// threads named `runtime_name`, with the defaults `predictd serve` uses, batching on or off
/// (`max_batch_size = 0`); returns once health says SERVING.
pub(crate) fn start_served(
    models: &Path,
    client: &ClientRuntime,
    batching: bool,
    runtime_name: &str,
) -> Served {
    let threads_before = thread_ids();
    let runtime = server_runtime(runtime_name);
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let mut config = ServeConfig::new(models);
    if !batching {
        config.scheduler.max_batch_size = 0;
    }
    if let Ok(sizes) = std::env::var("LOAD_PREFERRED_BATCH_SIZES") {
        config.open.preferred_batch_sizes = sizes
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse("LOAD_PREFERRED_BATCH_SIZES", s.trim()))
            .collect();
    }
    let app = App::new(config).expect("the model repository is readable");
    let registry = app.registry();
    runtime.spawn(async move {
        app.serve(listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("predictd server failed");
    });
    client.block_on(async {
        common::wait_until_serving(connect(addr).await).await;
    });
    // The model workers start before SERVING and live as long as the registry; the runtime's
    // own threads are told by name.
    let worker_tids = thread_ids()
        .difference(&threads_before)
        .copied()
        .filter(|tid| {
            let comm =
                std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
            let comm = comm.trim_end();
            !comm.starts_with(runtime_name) && !comm.starts_with(CLIENT_THREADS)
        })
        .collect();
    Served {
        running: Running {
            addr,
            stop: Some(stop),
            runtime: Some(runtime),
        },
        registry,
        worker_tids,
    }
}

/// The RPC stack and nothing else: `predict` returns a pre-built reply.
struct Bare {
    replies: HashMap<String, pb::PredictResponse>,
}

#[tonic::async_trait]
impl PredictionService for Bare {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let request = request.into_inner();
        match self.replies.get(&request.model) {
            Some(reply) => Ok(Response::new(reply.clone())),
            None => Err(Status::not_found(request.model)),
        }
    }

    type PredictStreamStream = tokio_stream::Empty<Result<pb::PredictStreamResponse, Status>>;

    async fn predict_stream(
        &self,
        _: Request<tonic::Streaming<pb::PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn get_model_metadata(
        &self,
        _: Request<pb::GetModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadata>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

pub(crate) fn start_bare(replies: HashMap<String, pb::PredictResponse>) -> Running {
    let runtime = server_runtime(BARE_THREADS);
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    runtime.spawn(async move {
        Server::builder()
            .add_service(PredictionServiceServer::new(Bare { replies }))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .expect("bare tonic server failed");
    });
    Running {
        addr,
        stop: Some(stop),
        runtime: Some(runtime),
    }
}

pub(crate) async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}
