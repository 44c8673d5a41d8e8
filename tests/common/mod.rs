//! Shared by the integration tests: a real server on an ephemeral port, generated clients, and
//! the onnxruntime reference files stored beside the bundled models.
#![allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use predictd::proto::predictd::v1 as pb;
use predictd::server::{ServeConfig, serve};
use serde::Deserialize;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub type Client = pb::prediction_service_client::PredictionServiceClient<Channel>;

/// The bundled model repository.
pub fn bundled_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A server running in this process; stops when dropped.
pub struct TestServer {
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Serves `models` on 127.0.0.1:0 and waits (on the health Watch stream, not a sleep) until
    /// the models are loaded.
    pub async fn start(models: &Path) -> TestServer {
        let mut config = ServeConfig::new(models);
        config.scheduler.workers = 2;
        Self::start_with(config).await
    }

    pub async fn start_with(config: ServeConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("server failed");
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel.clone());
        let mut watch = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(reply) = watch.message().await.unwrap() {
            if reply.status == ServingStatus::Serving as i32 {
                break;
            }
        }
        TestServer {
            channel,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.channel.clone())
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One tensor of a reference file.
#[derive(Debug, Clone, Deserialize)]
pub struct RefTensor {
    pub dtype: String,
    pub shape: Vec<i64>,
    pub data: Vec<serde_json::Value>,
}

/// `models/<name>/reference.json`: inputs, and the outputs onnxruntime computed for them.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub model: String,
    pub version: String,
    pub producer: String,
    pub inputs: BTreeMap<String, RefTensor>,
    pub outputs: BTreeMap<String, RefTensor>,
}

/// Every reference file of a repository.
pub fn references(models: &Path) -> Vec<Reference> {
    let mut refs: Vec<Reference> = Vec::new();
    for entry in std::fs::read_dir(models).unwrap() {
        let file = entry.unwrap().path().join("reference.json");
        if file.is_file() {
            let text = std::fs::read_to_string(&file).unwrap();
            refs.push(
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
            );
        }
    }
    refs.sort_by(|a, b| a.model.cmp(&b.model));
    refs
}

pub fn dtype(name: &str) -> pb::DataType {
    pb::DataType::from_str_name(name).unwrap_or_else(|| panic!("unknown dtype {name}"))
}

/// The reference tensor as a typed wire tensor.
pub fn typed(t: &RefTensor) -> pb::Tensor {
    let mut out = pb::Tensor {
        dtype: dtype(&t.dtype) as i32,
        shape: t.shape.clone(),
        ..Default::default()
    };
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    let i = |v: &serde_json::Value| v.as_i64().unwrap();
    match t.dtype.as_str() {
        "FP32" => out.float_values = t.data.iter().map(|v| f(v) as f32).collect(),
        "FP64" => out.double_values = t.data.iter().map(f).collect(),
        "INT64" => out.int64_values = t.data.iter().map(i).collect(),
        "INT32" => out.int32_values = t.data.iter().map(|v| i(v) as i32).collect(),
        "BOOL" => out.bool_values = t.data.iter().map(|v| v.as_bool().unwrap()).collect(),
        other => panic!("reference dtype {other} not handled by the test"),
    }
    out
}

/// The reference tensor as a raw (little-endian bytes) wire tensor.
pub fn raw(t: &RefTensor) -> pb::Tensor {
    let typed = typed(t);
    let mut bytes = Vec::new();
    typed
        .float_values
        .iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    typed
        .double_values
        .iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    typed
        .int64_values
        .iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    typed
        .int32_values
        .iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    typed
        .bool_values
        .iter()
        .for_each(|v| bytes.push(u8::from(*v)));
    pb::Tensor {
        dtype: typed.dtype,
        shape: typed.shape,
        raw: bytes.into(),
        ..Default::default()
    }
}

/// Values of a reply tensor as f64, whichever encoding it came in.
pub fn values(t: &pb::Tensor) -> Vec<f64> {
    let dt = pb::DataType::try_from(t.dtype).unwrap();
    if !t.raw.is_empty() {
        let chunk = |n| t.raw.chunks_exact(n);
        return match dt {
            pb::DataType::Fp32 => chunk(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            pb::DataType::Fp64 => chunk(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            pb::DataType::Int64 => chunk(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            pb::DataType::Int32 => chunk(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            pb::DataType::Bool => t.raw.iter().map(|&b| b as f64).collect(),
            other => panic!("raw {other:?} not handled by the test"),
        };
    }
    match dt {
        pb::DataType::Fp32 => t.float_values.iter().map(|&v| v as f64).collect(),
        pb::DataType::Fp64 => t.double_values.clone(),
        pb::DataType::Int64 => t.int64_values.iter().map(|&v| v as f64).collect(),
        pb::DataType::Int32 => t.int32_values.iter().map(|&v| v as f64).collect(),
        pb::DataType::Bool => t.bool_values.iter().map(|&v| v as u8 as f64).collect(),
        other => panic!("typed {other:?} not handled by the test"),
    }
}

/// Asserts a reply tensor equals onnxruntime's: integers and labels exactly, floats within
/// 1e-5 absolute plus 1e-4 relative (tract and onnxruntime sum in different orders).
pub fn assert_matches(context: &str, got: &pb::Tensor, expected: &RefTensor) {
    assert_eq!(
        pb::DataType::try_from(got.dtype).unwrap(),
        dtype(&expected.dtype),
        "{context}: dtype"
    );
    assert_eq!(got.shape, expected.shape, "{context}: shape");
    let got = values(got);
    let want: Vec<f64> = expected
        .data
        .iter()
        .map(|v| {
            v.as_f64()
                .or_else(|| v.as_bool().map(|b| b as u8 as f64))
                .unwrap()
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{context}: element count");
    let exact = !expected.dtype.starts_with("FP");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if exact {
            assert_eq!(g, w, "{context}: element {i}");
        } else {
            assert!(
                (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "{context}: element {i}: got {g}, onnxruntime {w}"
            );
        }
    }
}

/// A request for a reference's inputs.
pub fn request(reference: &Reference, encode: fn(&RefTensor) -> pb::Tensor) -> pb::PredictRequest {
    pb::PredictRequest {
        model: reference.model.clone(),
        version: String::new(),
        id: format!("ref-{}", reference.model),
        inputs: reference
            .inputs
            .iter()
            .map(|(name, t)| (name.clone(), encode(t)))
            .collect(),
        outputs: Vec::new(),
    }
}
