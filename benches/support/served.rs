//! The release binary serving a model folder, for benches that time predictd served: started
//! on ports the system picks, called over KServe gRPC by the generated stubs with raw inputs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
    /// Starts it on ports the system picks, and reads the gRPC one from its "listening" log
    /// line (as the tests do): a port found free beforehand could be taken before it binds.
    /// The rest of its log is drained, warnings and errors passed on to ours.
    pub(crate) fn start(models: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_predictd"))
            .args(["serve", "--models"])
            .arg(models)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(["--max-message-bytes", &MAX_MESSAGE_BYTES.to_string()])
            // A batch of 8 at 512 tokens runs past the default 30 s on two cores.
            .args(["--request-timeout", "10m"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, addr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if log["message"] == "predictd listening" {
                    let _ = send.send(log["grpc"].as_str().unwrap_or_default().to_string());
                } else if log["level"] != "INFO" {
                    eprintln!("{line}");
                }
            }
        });
        let addr = addr
            .recv_timeout(Duration::from_secs(60))
            .expect("the server did not say where it listens");
        Server {
            child,
            addr: format!("http://{addr}"),
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
