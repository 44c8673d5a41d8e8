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
use predictd::server::{App, ServeConfig};
use predictd::serving::lifecycle::Lifecycle;
use predictd::serving::registry::Registry;
use predictd::serving::stats::StatsSnapshot;
use serde::Deserialize;
use std::sync::Arc;
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
    pub addr: std::net::SocketAddr,
    /// Where the REST front end listens.
    pub http_addr: std::net::SocketAddr,
    pub registry: Arc<Registry>,
    pub lifecycle: Arc<Lifecycle>,
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
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = App::new(config)
            .expect("repository readable")
            .with_http(http);
        let registry = app.registry();
        let lifecycle = app.lifecycle();
        let task = tokio::spawn(async move {
            app.serve(listener, async {
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
        wait_until_serving(channel.clone()).await;
        TestServer {
            channel,
            addr,
            http_addr,
            registry,
            lifecycle,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.channel.clone())
    }

    /// A client on a connection of its own.
    pub async fn new_client(&self) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Client::new(channel)
    }

    /// The counters of the latest version of `model`.
    pub fn stats(&self, model: &str) -> StatsSnapshot {
        let catalog = self.registry.snapshot();
        let (_, scheduler) = catalog.resolve(model, "").unwrap();
        scheduler.stats().snapshot()
    }

    /// Asks the server to stop and waits until it has drained.
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("not stopped yet")
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

/// A plain HTTP/1.1 POST of a JSON `body` to `path`: the status and the body of the answer.
pub async fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    http_call(addr, "POST", path, body).await
}

/// A plain HTTP/1.1 GET of `path`: the status and the body of the answer.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_call(addr, "GET", path, "").await
}

async fn http_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_request(addr, method, path, body, &[]).await;
    (status, body)
}

/// A plain HTTP/1.1 request with extra `headers`: the status, the headers (as text) and the
/// body of the answer.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: impl AsRef<[u8]>,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.as_ref();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before it has read the whole body; what it
    // answered is still there to read.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:.200}"));
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .map_or((answer.clone(), String::new()), |(h, b)| {
            (h.to_string(), b.to_string())
        });
    (status, head, body)
}

/// A KServe v2 JSON request for the heavy model, `rows` rows of 0.5.
pub fn heavy_json(rows: usize) -> String {
    let data = vec!["0.5"; rows * 256].join(",");
    format!(
        r#"{{"inputs":[{{"name":"X","shape":[{rows},256],"datatype":"FP32","data":[{data}]}}]}}"#
    )
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
    // Reference files write NaN as null.
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let i = |v: &serde_json::Value| v.as_i64().unwrap();
    match t.dtype.as_str() {
        "FP32" => out.float_values = t.data.iter().map(|v| f(v) as f32).collect(),
        "FP64" => out.double_values = t.data.iter().map(f).collect(),
        "INT64" => out.int64_values = t.data.iter().map(i).collect(),
        "INT32" => out.int32_values = t.data.iter().map(|v| i(v) as i32).collect(),
        "BOOL" => out.bool_values = t.data.iter().map(|v| v.as_bool().unwrap()).collect(),
        "STRING" => {
            out.string_values = t
                .data
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        }
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

/// Waits on the health Watch stream (an event, not polling) until the server reports SERVING,
/// at most five minutes.
pub async fn wait_until_serving(channel: Channel) {
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let serving = tokio::time::timeout(std::time::Duration::from_secs(300), async {
        while let Some(reply) = watch.message().await.unwrap() {
            if reply.status == ServingStatus::Serving as i32 {
                return true;
            }
        }
        false
    });
    assert!(
        serving.await.unwrap_or(false),
        "the server never reported SERVING"
    );
}

/// Waits until `condition` holds of `model`'s counters, woken by the scheduler as runs begin
/// (no polling); fails the test after 30 s rather than hanging.
pub async fn wait_for_stats(
    server: &TestServer,
    model: &str,
    what: &str,
    condition: impl Fn(&StatsSnapshot) -> bool,
) {
    let catalog = server.registry.snapshot();
    let (_, scheduler) = catalog.resolve(model, "").unwrap();
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        scheduler.stats().wait_for(condition),
    );
    waited
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// Writes `<root>/<name>/1/model.onnx`, a deliberately heavy model: `X` FP32 [N, 256] through
/// `layers` chained 256×256 MatMuls to `Y` FP32 [N, 256]. Its cost grows with rows × layers.
pub fn write_heavy_model(root: &Path, name: &str, layers: usize) {
    const W: i64 = 256;
    let weight = fp32_initializer(
        "W",
        vec![W, W],
        (0..W * W).map(|i| ((i % 7) as f32 - 3.0) / 256.0).collect(),
    );
    write_model(
        root,
        name,
        &matmul_chain(name, layers, W, vec![weight], |_| "W".to_string()),
    );
}

/// `X` FP32 [N, width]: the inputs and outputs of the test models.
fn fp32_rows(name: &str, width: i64) -> tract_onnx::pb::ValueInfoProto {
    use tract_onnx::pb;
    let dim = |value| pb::tensor_shape_proto::Dimension {
        value: Some(value),
        ..Default::default()
    };
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        dim(pb::tensor_shape_proto::dimension::Value::DimParam(
                            "N".into(),
                        )),
                        dim(pb::tensor_shape_proto::dimension::Value::DimValue(width)),
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn fp32_initializer(name: &str, dims: Vec<i64>, values: Vec<f32>) -> tract_onnx::pb::TensorProto {
    tract_onnx::pb::TensorProto {
        name: name.into(),
        dims,
        data_type: tract_onnx::pb::tensor_proto::DataType::Float as i32,
        float_data: values,
        ..Default::default()
    }
}

/// A graph `X` → `nodes` → `Y`, FP32 [N, width] at both ends, as an opset-13 model.
fn onnx_model(
    name: &str,
    width: i64,
    node: Vec<tract_onnx::pb::NodeProto>,
    initializer: Vec<tract_onnx::pb::TensorProto>,
) -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb;
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: name.into(),
            node,
            initializer,
            input: vec![fp32_rows("X", width)],
            output: vec![fp32_rows("Y", width)],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `X` through `layers` MatMuls by the initializers `weight(layer)` names, to `Y`.
fn matmul_chain(
    name: &str,
    layers: usize,
    width: i64,
    weights: Vec<tract_onnx::pb::TensorProto>,
    weight: impl Fn(usize) -> String,
) -> Vec<u8> {
    let nodes = (0..layers)
        .map(|l| tract_onnx::pb::NodeProto {
            input: vec![if l == 0 { "X".into() } else { format!("h{l}") }, weight(l)],
            output: vec![if l + 1 == layers {
                "Y".into()
            } else {
                format!("h{}", l + 1)
            }],
            name: format!("matmul{l}"),
            op_type: "MatMul".into(),
            ..Default::default()
        })
        .collect();
    onnx_model(name, width, nodes, weights)
}

fn write_model(root: &Path, name: &str, bytes: &[u8]) {
    let dir = root.join(name).join("1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), bytes).unwrap();
}

/// A request for the heavy model with `rows` rows.
pub fn heavy_request(name: &str, rows: usize) -> pb::PredictRequest {
    pb::PredictRequest {
        model: name.into(),
        id: format!("heavy-{rows}"),
        inputs: [(
            "X".to_string(),
            pb::Tensor {
                shape: vec![rows as i64, 256],
                float_values: vec![0.5; rows * 256],
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// The gRPC status of a unary call made on a bare HTTP/2 stream. Unlike tonic's client, this
/// does not enforce `grpc-timeout` itself, so what comes back is what the server said — as it
/// would be for grpc-go, grpc-java or h2load.
pub async fn raw_unary(
    addr: std::net::SocketAddr,
    path: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
) -> (i32, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut client = client.ready().await.unwrap();
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    let body = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    send.send_data(framed.into(), true).unwrap();
    let response = response.await.unwrap();
    let status = |headers: &http::HeaderMap| {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or("")
            .to_string();
        Some((code, message))
    };
    if let Some(found) = status(response.headers()) {
        return found;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body
        .trailers()
        .await
        .unwrap()
        .expect("gRPC replies end with trailers");
    status(&trailers).expect("trailers carry grpc-status")
}

/// The bytes of a tiny model that scales its input: `Y = X * k`, `X` and `Y` FP32 [N, 4]. Its
/// answers show which copy served a request.
pub fn scale_model(k: f32) -> Vec<u8> {
    let node = tract_onnx::pb::NodeProto {
        input: vec!["X".into(), "k".into()],
        output: vec!["Y".into()],
        name: "mul".into(),
        op_type: "Mul".into(),
        ..Default::default()
    };
    onnx_model(
        "scale",
        4,
        vec![node],
        vec![fp32_initializer("k", vec![], vec![k])],
    )
}

/// Puts `bytes` at `<root>/<name>/<version>/model.onnx` the safe way: written beside it under
/// another name, then renamed in, so a poll never sees it half-written.
pub fn publish_model_file(root: &Path, name: &str, version: u64, bytes: &[u8]) {
    let dir = root.join(name).join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let staged = root.join(format!(".{name}-{version}.onnx.partial"));
    std::fs::write(&staged, bytes).unwrap();
    std::fs::rename(&staged, dir.join("model.onnx")).unwrap();
}

/// A request for the scale model (`version` "" for the latest): one row of ones.
pub fn scale_request(name: &str, version: &str) -> pb::PredictRequest {
    pb::PredictRequest {
        model: name.into(),
        version: version.into(),
        inputs: [(
            "X".to_string(),
            pb::Tensor {
                shape: vec![1, 4],
                float_values: vec![1.0; 4],
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// The factor a scale model's answer shows.
pub fn scale_of(reply: &pb::PredictResponse) -> f64 {
    values(reply.outputs.get("Y").expect("output Y"))[0]
}

/// Writes `<root>/<name>/1/model.onnx`: `X` FP32 [N, width] through `layers` MatMuls, each
/// with weights of its own, so that the file (4 × layers × width² bytes) is what the model's
/// memory is made of.
pub fn write_wide_model(root: &Path, name: &str, layers: usize, width: i64) {
    let weights = (0..layers)
        .map(|l| {
            let values = (0..width * width)
                .map(|i| (((i + l as i64) % 13) as f32 - 6.0) / (16.0 * width as f32))
                .collect();
            fp32_initializer(&format!("W{l}"), vec![width, width], values)
        })
        .collect();
    write_model(
        root,
        name,
        &matmul_chain(name, layers, width, weights, |l| format!("W{l}")),
    );
}

/// Resident and peak resident memory of this process, in bytes (`VmRSS`, `VmHWM`).
pub fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kb * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets this process's peak resident memory to its current one.
pub fn reset_peak_memory() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// Waits until a fresh request is answered with factor `k`; returns how long that took.
pub async fn until_factor(server: &TestServer, k: f64, what: &str) -> std::time::Duration {
    let started = std::time::Instant::now();
    let mut client = server.client();
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if let Ok(reply) = client.predict(scale_request("scale", "")).await
                && scale_of(reply.get_ref()) == k
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
    started.elapsed()
}
