//! The release binary serving a model folder, for benches that time predictd served: started
//! on free ports, called over KServe gRPC by the generated stubs with raw inputs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use predictd::engine::tensor::Tensor;
use predictd::proto::inference as pb;
use predictd::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

/// Large enough for any request or reply a bench sends.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// The release binary serving a folder, and its gRPC address; killed when dropped.
pub(crate) struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn start(models: &Path) -> Server {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (grpc, http) = (port(), port());
        let child = Command::new(env!("CARGO_BIN_EXE_predictd"))
            .args(["serve", "--models"])
            .arg(models)
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--max-message-bytes", &MAX_MESSAGE_BYTES.to_string()])
            // A batch of 8 at 512 tokens runs past the default 30 s on two cores.
            .args(["--request-timeout", "10m"])
            .env("PREDICTD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server {
            child,
            addr: format!("http://127.0.0.1:{grpc}"),
        }
    }

    /// kB of the server's resident memory now and at its peak.
    #[allow(dead_code)] // not every bench reports memory
    pub(crate) fn rss_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// A client once the server says it is ready (loading big models takes a while).
    pub(crate) async fn connect(&self) -> Client {
        let started = Instant::now();
        loop {
            if let Ok(client) = GrpcInferenceServiceClient::connect(self.addr.clone()).await {
                let mut client = client
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES);
                let ready = client
                    .server_ready(pb::ServerReadyRequest {})
                    .await
                    .is_ok_and(|r| r.into_inner().ready);
                if ready {
                    return client;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "the server did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub(crate) type Client = GrpcInferenceServiceClient<tonic::transport::Channel>;

/// A KServe request carrying `inputs` as raw bytes.
pub(crate) fn wire_request(model: &str, inputs: &[(String, Tensor)]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.to_string(),
        inputs: inputs
            .iter()
            .map(|(name, t)| pb::model_infer_request::InferInputTensor {
                name: name.clone(),
                datatype: t.dtype().name().to_string(),
                shape: t.shape().iter().map(|&d| d as i64).collect(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: inputs
            .iter()
            .map(|(_, t)| t.bytes().unwrap().clone())
            .collect(),
        ..Default::default()
    }
}
