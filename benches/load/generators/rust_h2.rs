//! `rust-h2`: raw HTTP/2 with the `h2` crate and a pre-encoded gRPC frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use predictd::proto::predictd::v1 as pb;
use prost::Message;

use super::{Expect, Tally, gather};
use crate::{CHECK_EVERY, PER_CONNECTION, WARMUP};

/// The closed loop over raw HTTP/2 (the `h2` crate): a pre-encoded gRPC frame per request, the
/// gRPC status read from the trailers, the reply's DATA length checked on every reply and the
/// reply decoded and checked on a sample.
pub(crate) async fn rust_load(
    addr: SocketAddr,
    body: Bytes,
    expect: Arc<Expect>,
    concurrency: usize,
    seconds: f64,
) -> Tally {
    let connections = concurrency.div_ceil(PER_CONNECTION);
    let uri: http::Uri = format!("http://{addr}/predictd.v1.PredictionService/Predict")
        .parse()
        .unwrap();
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        senders.push(sender);
    }
    let t0 = Instant::now() + WARMUP;
    let t1 = t0 + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let sender = senders[i % connections].clone();
            let (uri, body, expect) = (uri.clone(), body.clone(), Arc::clone(&expect));
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut replies = 0u64;
                loop {
                    let begin = Instant::now();
                    if begin >= t1 {
                        break;
                    }
                    replies += 1;
                    let sample = replies % CHECK_EVERY == 1;
                    let result = grpc_call(&sender, &uri, &body, sample).await;
                    let end = Instant::now();
                    let checked = result.and_then(|reply| match reply {
                        Reply::Sampled(frame) => {
                            let message = pb::PredictResponse::decode(&frame[5.min(frame.len())..])
                                .map_err(|e| format!("undecodable reply: {e}"))?;
                            if frame.len() != expect.frame_len() {
                                return Err(format!("reply frame of {} bytes", frame.len()));
                            }
                            expect.check(&message)
                        }
                        Reply::Length(n) if n == expect.frame_len() => Ok(()),
                        Reply::Length(n) => Err(format!(
                            "reply of {n} DATA bytes, expected {}",
                            expect.frame_len()
                        )),
                    });
                    match checked {
                        Ok(()) => {
                            if begin >= t0 && end <= t1 {
                                tally.latencies_us.push((end - begin).as_secs_f64() * 1e6);
                            }
                        }
                        Err(problem) => {
                            tally.errors += 1;
                            tally.first_error.get_or_insert(problem);
                        }
                    }
                }
                tally
            })
        })
        .collect();
    gather(tasks).await
}

/// A good reply: its whole DATA when sampled, else just its length.
enum Reply {
    Sampled(Vec<u8>),
    Length(usize),
}

/// One unary gRPC call over raw HTTP/2; `Err` for anything but grpc-status 0.
async fn grpc_call(
    sender: &h2::client::SendRequest<Bytes>,
    uri: &http::Uri,
    body: &Bytes,
    sample: bool,
) -> Result<Reply, String> {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(())
        .unwrap();
    let mut sender = sender.clone().ready().await.map_err(|e| e.to_string())?;
    let (response, mut stream) = sender
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    stream
        .send_data(body.clone(), true)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let (head, mut data) = response.into_parts();
    let mut frame = Vec::new();
    let mut length = 0;
    while let Some(chunk) = data.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        length += chunk.len();
        if sample {
            frame.extend_from_slice(&chunk);
        }
        let _ = data.flow_control().release_capacity(chunk.len());
    }
    let trailers = data.trailers().await.map_err(|e| e.to_string())?;
    // A trailers-only reply (an error) carries grpc-status in its headers.
    let headers = trailers.as_ref().unwrap_or(&head.headers);
    let status = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    if head.status != http::StatusCode::OK || status != Some("0") {
        let message = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return Err(format!(
            "HTTP {}, grpc-status {}: {message}",
            head.status,
            status.unwrap_or("missing")
        ));
    }
    Ok(if sample {
        Reply::Sampled(frame)
    } else {
        Reply::Length(length)
    })
}
