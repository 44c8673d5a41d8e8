//! The servers under test: predictd (batching on and off) and a bare tonic server.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use predictd::engine::model::Model;
use predictd::proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use predictd::proto::predictd::v1 as pb;
use predictd::server::{App, ServeConfig};
use predictd::serving::registry::Registry;
use predictd::serving::stats::StatsSnapshot;
use predictd::traces::otlp::{OtlpConfig, Protocol};
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
    /// Spans its collector received, when it traces.
    pub(crate) spans: Option<Arc<AtomicU64>>,
}

impl Served {
    /// What a scrape of this server's `/metrics` reads.
    pub(crate) fn metrics_sources(&self) -> predictd::metrics::Sources {
        predictd::metrics::Sources {
            registry: Arc::clone(&self.registry),
            edge: Arc::default(),
            traces: None,
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
    trace_ratio: Option<f64>,
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
    // Tracing exports to a collector on the server's runtime (as an agent beside it would
    // share its machine), one that counts the spans and drops them.
    let spans = trace_ratio.map(|ratio| {
        let (endpoint, spans) = runtime.block_on(start_collector());
        config.traces = Some(OtlpConfig::new(&endpoint, Protocol::Grpc, ratio).unwrap());
        spans
    });
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
        spans,
    }
}

/// Counts the spans it receives.
struct Collector(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on 127.0.0.1:0: its endpoint and its count of spans.
async fn start_collector() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::new(AtomicU64::new(0));
    let service = TraceServiceServer::new(Collector(Arc::clone(&spans)));
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (format!("http://{addr}"), spans)
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
