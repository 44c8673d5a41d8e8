//! What a hostile client can make the server allocate. Each test runs the `predictd` binary as
//! a process of its own and reads its peak resident memory (`VmHWM`, reset before the attack)
//! from `/proc`, so the figures are the server's alone; each attack must be answered with a
//! clear error while that peak stays under the bound the test states, and the server must go on
//! answering.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::{Client, publish_model_file, scale_model, scale_request};
use predictd::proto::inference as kserve;
use predictd::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use predictd::proto::predictd::v1 as pb;
use tonic::transport::{Channel, Endpoint};

const MIB: u64 = 1024 * 1024;

/// A `predictd serve` process on ephemeral ports, killed when dropped.
struct Server {
    child: std::process::Child,
    grpc: SocketAddr,
    http: SocketAddr,
    _models: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Serves the scale model (`Y = X * 2`, X FP32 [N, 4]) with `flags`, once it is loaded.
    fn start(flags: &[&str]) -> Server {
        let models = tempfile::tempdir().unwrap();
        publish_model_file(models.path(), "scale", 1, &scale_model(2.0));
        let mut child = Command::new(env!("CARGO_BIN_EXE_predictd"))
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json", "--workers", "1"])
            .arg("--models")
            .arg(models.path())
            .args(flags)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (send, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let mut addrs = None;
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .expect("the server logs that it serves");
            if line.contains("predictd listening") {
                let log: serde_json::Value = serde_json::from_str(&line).unwrap();
                let addr = |key: &str| log[key].as_str().unwrap().parse::<SocketAddr>().unwrap();
                addrs = Some((addr("grpc"), addr("http")));
            }
            if line.contains("models loaded; serving") {
                break;
            }
        }
        // The rest of the log is read and dropped, so the server never blocks writing it.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        let (grpc, http) = addrs.expect("the listening line comes first");
        Server {
            child,
            grpc,
            http,
            _models: models,
        }
    }

    /// Resident memory now and at its peak since the last [`Server::reset_peak`], in bytes.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            let kb = line[name.len()..].trim().trim_end_matches("kB").trim();
            kb.parse::<u64>().unwrap() * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Starts measuring a new peak from the memory resident now.
    fn reset_peak(&self) -> u64 {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
        self.memory().0
    }

    /// Fails unless the peak since `reset_peak` returned `base` stayed within `bound` of it.
    fn assert_peak_within(&self, base: u64, bound: u64, what: &str) {
        let (_, peak) = self.memory();
        let grown = peak.saturating_sub(base);
        eprintln!(
            "{what}: peak {} MiB over the {} MiB resident before",
            grown / MIB,
            base / MIB
        );
        assert!(
            grown <= bound,
            "{what}: the server's peak memory grew {} MiB, over the {} MiB bound",
            grown / MIB,
            bound / MIB
        );
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The server still answers a plain request correctly.
    async fn assert_serving(&self) {
        let reply = Client::new(self.channel().await)
            .predict(scale_request("scale", ""))
            .await
            .expect("the server still answers")
            .into_inner();
        assert_eq!(common::values(&reply.outputs["Y"]), vec![2.0; 4]);
    }
}

/// An HTTP/1.1 POST with a body of bytes and extra headers: the status and the body answered.
async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = common::http_request(addr, "POST", path, body, headers).await;
    (status, body)
}

fn assert_names(message: &str, words: &[&str]) {
    for word in words {
        assert!(message.contains(word), "{message:?} does not name {word:?}");
    }
}

#[tokio::test]
async fn a_huge_shape_without_data_is_refused_without_allocating_it() {
    let server = Server::start(&[]);
    let base = server.reset_peak();
    let huge = vec![1i64 << 31, 1i64 << 31];

    let v1 = Client::new(server.channel().await)
        .predict(pb::PredictRequest {
            model: "scale".into(),
            inputs: [(
                "X".to_string(),
                pb::Tensor {
                    shape: huge.clone(),
                    dtype: pb::DataType::Fp32 as i32,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(v1.code(), tonic::Code::InvalidArgument, "{v1:?}");
    assert_names(v1.message(), &["'scale'", "'X'", "2147483648"]);

    let mut kserve_client = GrpcInferenceServiceClient::new(server.channel().await);
    for raw in [false, true] {
        let request = kserve::ModelInferRequest {
            model_name: "scale".into(),
            inputs: vec![kserve::model_infer_request::InferInputTensor {
                name: "X".into(),
                datatype: "FP32".into(),
                shape: huge.clone(),
                ..Default::default()
            }],
            raw_input_contents: if raw {
                vec![Default::default()]
            } else {
                vec![]
            },
            ..Default::default()
        };
        let refused = kserve_client.model_infer(request).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert_names(refused.message(), &["'scale'", "'X'", "2147483648"]);
    }

    let shape = "[2147483648, 2147483648]";
    let bodies = [
        (
            None,
            format!(
                r#"{{"inputs": [{{"name": "X", "shape": {shape}, "datatype": "FP32", "data": []}}]}}"#
            ),
        ),
        (
            Some(()),
            format!(
                r#"{{"inputs": [{{"name": "X", "shape": {shape}, "datatype": "FP32", "parameters": {{"binary_data_size": 0}}}}]}}"#
            ),
        ),
    ];
    for (binary, body) in bodies {
        let length = body.len().to_string();
        let headers: Vec<(&str, &str)> = binary
            .map(|()| ("inference-header-content-length", length.as_str()))
            .into_iter()
            .collect();
        let (status, answer) = post(
            server.http,
            "/v2/models/scale/infer",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_names(&answer, &["'scale'", "'X'", "2147483648"]);
    }
    server.assert_peak_within(base, 8 * MIB, "shape [2^31, 2^31] with no data");
    server.assert_serving().await;
}

fn gzip(data: impl std::io::Read) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::copy(&mut { data }, &mut encoder).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_once_it_decompresses_past_the_body_limit() {
    let limit = 8 * MIB;
    let server = Server::start(&["--max-message-bytes", &limit.to_string()]);
    let path = "/v2/models/scale/infer";
    let gzipped = [("content-encoding", "gzip")];

    // A gzip body is read as the body it holds.
    let request = br#"{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#;
    let (status, answer) = post(server.http, path, &gzipped, &gzip(&request[..])).await;
    assert_eq!(status, 200, "{answer}");
    let reply: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        reply["outputs"][0]["data"],
        serde_json::json!([2.0, 4.0, 6.0, 8.0])
    );

    // 1 GiB of zeros in about 1 MiB.
    let bomb = gzip(std::io::repeat(0).take(1024 * MIB));
    assert!(bomb.len() < 2 * MIB as usize, "{} bytes", bomb.len());
    let base = server.reset_peak();
    let (status, answer) = post(server.http, path, &gzipped, &bomb).await;
    assert_eq!(status, 413, "{answer}");
    assert_names(&answer, &["'scale'", &limit.to_string(), "decompressed"]);
    server.assert_peak_within(base, 2 * limit + 8 * MIB, "a 1 GiB gzip bomb");

    let (status, answer) = post(server.http, path, &gzipped, &bomb[..1000]).await;
    assert_eq!(status, 400, "a truncated gzip body: {answer}");
    assert_names(&answer, &["'scale'", "cannot be read"]);
    server.assert_serving().await;
}

use std::io::Read as _;

#[tokio::test]
async fn compressed_grpc_messages_are_refused_unread() {
    let server = Server::start(&[]);
    let mut client = Client::new(server.channel().await)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let refused = client
        .predict(scale_request("scale", ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    assert_names(refused.message(), &["gzip"]);
    server.assert_serving().await;
}

#[tokio::test]
async fn json_nested_a_million_deep_is_refused() {
    let server = Server::start(&[]);
    let depth = 1_000_000;
    let body = format!(
        r#"{{"inputs": [{{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": {}{}}}]}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let base = server.reset_peak();
    let (status, answer) = post(server.http, "/v2/models/scale/infer", &[], body.as_bytes()).await;
    assert_eq!(status, 400, "{answer}");
    assert_names(&answer, &["'scale'", "recursion limit"]);
    server.assert_peak_within(base, 16 * MIB, "JSON nested 10^6 deep");
    server.assert_serving().await;
}

/// A stream request of `rows` rows of ones, as raw bytes.
fn stream_request(rows: usize) -> kserve::ModelInferRequest {
    kserve::ModelInferRequest {
        model_name: "scale".into(),
        inputs: vec![kserve::model_infer_request::InferInputTensor {
            name: "X".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 4],
            ..Default::default()
        }],
        raw_input_contents: vec![1.0f32.to_le_bytes().repeat(rows * 4).into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_reads_its_replies_is_held_back_by_flow_control() {
    let server = Server::start(&[]);
    let rows = 16 * 1024; // 256 KiB a message, and as much a reply
    let message = 4 * rows as u64 * 4;
    let sent = Arc::new(AtomicUsize::new(0));
    let offered = 4000; // 1 GiB, were it all taken
    let requests = {
        let sent = Arc::clone(&sent);
        futures_util::stream::iter(0..offered).map(move |_| {
            sent.fetch_add(1, Ordering::Relaxed);
            stream_request(rows)
        })
    };
    let base = server.reset_peak();
    let mut client = GrpcInferenceServiceClient::new(server.channel().await)
        .max_decoding_message_size(usize::MAX);
    let replies = client.model_stream_infer(requests).await.unwrap();
    // The replies are never read. The server may take what the transport's windows and its
    // stream window hold, then stops reading.
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let taken = sent.load(Ordering::Relaxed);
    eprintln!("the client got to send {taken} of {offered} messages");
    assert!(taken < 200, "the server kept reading: {taken} messages");
    server.assert_peak_within(base, 200 * message + 16 * MIB, "a stream never read");
    server.assert_serving().await;
    drop(replies);
}

use futures_util::StreamExt as _;

/// Tries to open `streams` ModelStreamInfer calls spread over `connections` connections, each
/// sending one tiny message and reading its reply, and holds open the ones that opened until
/// they are dropped. Returns them and the refusals.
async fn hold_streams(
    server: &Server,
    connections: usize,
    streams: usize,
) -> (Vec<impl Send>, Vec<tonic::Status>) {
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(server.channel().await);
    }
    let mut opening = futures_util::stream::iter(0..streams)
        .map(|i| {
            let channel = channels[i % connections].clone();
            async move {
                let (send, receive) = tokio::sync::mpsc::channel(1);
                send.send(stream_request(1)).await.unwrap();
                let mut client = GrpcInferenceServiceClient::new(channel);
                let stream = tokio_stream::wrappers::ReceiverStream::new(receive);
                let mut replies = client.model_stream_infer(stream).await?.into_inner();
                let first = replies.message().await?.expect("a reply");
                assert!(first.error_message.is_empty(), "{}", first.error_message);
                // Kept open: the sender lives as long as the replies are held.
                Ok::<_, tonic::Status>((replies, send))
            }
        })
        .buffer_unordered(1024);
    let (mut held, mut refused) = (Vec::new(), Vec::new());
    while let Some(opened) = opening.next().await {
        match opened {
            Ok(stream) => held.push(stream),
            Err(status) => refused.push(status),
        }
    }
    (held, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_tiny_streams_are_capped_by_max_open_streams() {
    let server = Server::start(&[]);
    let cap = predictd::config::defaults::MAX_OPEN_STREAMS;
    let base = server.reset_peak();
    // 100 connections, each within its 1,024-stream HTTP/2 limit.
    let (held, refused) = hold_streams(&server, 100, 100_000).await;
    assert_eq!(held.len(), cap, "streams held open");
    assert_eq!(refused.len(), 100_000 - cap);
    for status in &refused[..10] {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert_names(status.message(), &["--max-open-streams", &cap.to_string()]);
    }
    server.assert_peak_within(base, 128 * MIB, "100,000 tiny streams");
    // Unary calls still pass, and once the streams close, new ones open.
    server.assert_serving().await;
    drop(held);
    let (again, refused) = hold_streams(&server, 1, 10).await;
    assert_eq!((again.len(), refused.len()), (10, 0), "{refused:?}");
}

#[tokio::test]
async fn a_json_body_costs_a_small_multiple_of_its_size() {
    let limit = 64 * MIB;
    let server = Server::start(&[]);
    // The densest JSON numbers: "0," is two bytes a value.
    let values = (limit as usize - 200) / 2 / 4 * 4;
    let body = format!(
        r#"{{"inputs": [{{"name": "X", "shape": [{}, 4], "datatype": "FP32", "data": [{}0]}}]}}"#,
        values / 4,
        "0,".repeat(values - 1)
    );
    let base = server.reset_peak();
    let (status, answer) = post(server.http, "/v2/models/scale/infer", &[], body.as_bytes()).await;
    assert_eq!(status, 200, "{answer:.300}");
    server.assert_peak_within(base, 8 * limit, "a 64 MiB JSON body");
}
