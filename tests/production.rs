//! The request path under pressure: deadlines, cancellation, overload, message limits,
//! request ids and graceful drain, against a deliberately heavy model.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{
    TestServer, heavy_json, heavy_request, http_get, http_post, raw_unary, wait_for_stats,
    write_heavy_model,
};
use predictd::proto::predictd::v1 as pb;
use predictd::server::ServeConfig;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Layers of the heavy model: measured here, a request takes ~50 ms plus ~1.1 ms per row, so
/// the 300-row requests below take ~370 ms, far beyond the 30–50 ms deadlines they are given.
const LAYERS: usize = 512;

/// A repository holding only the heavy model, served by one worker without batching, so that
/// requests queue behind each other in a known order.
async fn heavy_server(configure: impl FnOnce(&mut ServeConfig)) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_heavy_model(dir.path(), "heavy", LAYERS);
    let mut config = ServeConfig::new(dir.path());
    config.scheduler.workers = 1;
    config.scheduler.max_batch_size = 0;
    configure(&mut config);
    (TestServer::start_with(config).await, dir)
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

const PREDICT: &str = "/predictd.v1.PredictionService/Predict";

#[tokio::test]
async fn a_client_deadline_shorter_than_the_work_answers_deadline_exceeded() {
    let (server, _dir) = heavy_server(|_| {}).await;
    // ~300 ms of work against a 30 ms deadline.
    let (code, message) = raw_unary(
        server.addr,
        PREDICT,
        &heavy_request("heavy", 300),
        &[("grpc-timeout", "30m")],
    )
    .await;
    assert_eq!(Code::from(code), Code::DeadlineExceeded, "{message}");
    assert!(message.contains("deadline"), "{message}");
    // A generous deadline lets the same work finish.
    let reply = server
        .client()
        .predict(with_timeout(
            heavy_request("heavy", 30),
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.outputs["Y"].shape, vec![30, 256]);
}

#[tokio::test]
async fn the_server_request_timeout_applies_without_a_client_deadline() {
    let (server, _dir) = heavy_server(|c| c.request_timeout = Duration::from_millis(50)).await;
    let Err(status) = server.client().predict(heavy_request("heavy", 300)).await else {
        panic!("300 ms of work finished within a 50 ms --request-timeout");
    };
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().contains("--request-timeout"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_queued_request_whose_client_gives_up_is_never_run() {
    let (server, _dir) = heavy_server(|_| {}).await;
    // A keeps the only worker busy for ~300 ms.
    let mut a_client = server.new_client().await;
    let a = tokio::spawn(async move { a_client.predict(heavy_request("heavy", 300)).await });
    wait_for_stats(&server, "heavy", "A is running", |s| s.started == 1).await;
    // B queues behind A; its 30 ms deadline passes while it waits.
    let (code, message) = raw_unary(
        server.addr,
        PREDICT,
        &heavy_request("heavy", 1),
        &[("grpc-timeout", "30m")],
    )
    .await;
    assert_eq!(Code::from(code), Code::DeadlineExceeded, "{message}");
    // C also queues behind A; a client that disconnects outright (its future dropped).
    let mut c_client = server.new_client().await;
    let c = tokio::spawn(async move { c_client.predict(heavy_request("heavy", 2)).await });
    tokio::task::yield_now().await;
    c.abort();
    assert!(a.await.unwrap().is_ok(), "A completes");
    // D runs after the queue has been worked through.
    server
        .client()
        .predict(heavy_request("heavy", 3))
        .await
        .unwrap();
    let stats = server.stats("heavy");
    assert_eq!(stats.succeeded, 2, "only A and D ran: {stats:?}");
    assert_eq!(
        stats.rows, 303,
        "B's and C's rows were never computed: {stats:?}"
    );
    assert!(stats.expired + stats.cancelled >= 1, "{stats:?}");
}

#[tokio::test]
async fn a_flood_is_refused_fast_while_health_and_listing_still_answer() {
    let (server, _dir) = heavy_server(|c| {
        c.max_concurrent_requests = 4;
        c.scheduler.queue_capacity = 2;
    })
    .await;
    let order = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for _ in 0..32 {
        let mut client = server.new_client().await;
        let order = Arc::clone(&order);
        flood.push(tokio::spawn(async move {
            let result = client.predict(heavy_request("heavy", 40)).await;
            (result.map(|_| ()), order.fetch_add(1, Ordering::SeqCst))
        }));
    }
    wait_for_stats(&server, "heavy", "the flood reaches the model", |s| {
        s.started >= 1
    })
    .await;
    // Probes answer while the model is saturated.
    let health = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest {
            service: "predictd.v1.PredictionService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let list = server
        .client()
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap();
    assert_eq!(list.into_inner().models.len(), 1);
    let probes_done = order.fetch_add(1, Ordering::SeqCst);

    let mut ok = 0;
    let mut refused = 0;
    let mut last_ok = 0;
    for task in flood {
        let (result, at) = task.await.unwrap();
        match result {
            Ok(()) => {
                ok += 1;
                last_ok = last_ok.max(at);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("max-concurrent-requests")
                        || status.message().contains("overloaded"),
                    "{}",
                    status.message()
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "32 heavy requests against 4 permits: some must be refused"
    );
    assert!(ok > 0, "admitted requests complete");
    assert!(
        probes_done < last_ok,
        "the probes answered before the admitted work finished"
    );
    // Still serving afterwards.
    server
        .client()
        .predict(heavy_request("heavy", 1))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stream_takes_a_permit_per_message_and_survives_refusals() {
    let (server, _dir) = heavy_server(|c| c.max_concurrent_requests = 2).await;
    let requests: Vec<pb::PredictRequest> = (0..20)
        .map(|i| pb::PredictRequest {
            id: format!("m{i}"),
            ..heavy_request("heavy", 20)
        })
        .collect();
    let mut replies = server
        .client()
        .predict_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let (mut ok, mut refused, mut n) = (0, 0, 0);
    while let Some(reply) = replies.message().await.unwrap() {
        assert_eq!(reply.id, format!("m{n}"), "replies stay in order");
        n += 1;
        match reply.result {
            Some(pb::predict_stream_response::Result::Response(_)) => ok += 1,
            Some(pb::predict_stream_response::Result::Error(e)) => {
                assert_eq!(e.code, Code::ResourceExhausted as i32, "{e:?}");
                refused += 1;
            }
            None => panic!("empty reply"),
        }
    }
    assert_eq!(n, 20);
    assert!(ok >= 2, "messages within the limit run");
    assert!(
        refused > 0,
        "a stream cannot take more than the server's permits"
    );
    // Each refused message is counted as shed.
    let (_, page) = http_get(server.http_addr, "/metrics").await;
    let shed = r#"predictd_edge_refused_total{reason="shed"} "#;
    let counted: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix(shed))
        .unwrap_or_else(|| panic!("no {shed} in\n{page}"))
        .parse()
        .unwrap();
    assert_eq!(counted, f64::from(refused));
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_server_keeps_serving() {
    let (server, _dir) = heavy_server(|c| c.max_message_bytes = 64 * 1024).await;
    let status = server
        .client()
        .predict(heavy_request("heavy", 100)) // 100 rows × 256 floats ≈ 100 KiB
        .await
        .expect_err("larger than --max-message-bytes");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    server
        .client()
        .predict(heavy_request("heavy", 10))
        .await
        .unwrap();
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let (server, _dir) = heavy_server(|_| {}).await;
    let mut request = tonic::Request::new(heavy_request("heavy", 1));
    request
        .metadata_mut()
        .insert("x-request-id", "trace-me-42".parse().unwrap());
    let reply = server.client().predict(request).await.unwrap();
    assert_eq!(reply.metadata().get("x-request-id").unwrap(), "trace-me-42");

    let reply = server
        .client()
        .predict(heavy_request("heavy", 1))
        .await
        .unwrap();
    let made = reply.metadata().get("x-request-id").expect("an id is made");
    assert_eq!(made.len(), 36, "a UUID: {made:?}");

    // Errors carry it too.
    let mut request = tonic::Request::new(heavy_request("nope", 1));
    request
        .metadata_mut()
        .insert("x-request-id", "failing-1".parse().unwrap());
    let status = server
        .client()
        .predict(request)
        .await
        .expect_err("unknown model");
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "failing-1");
}

#[tokio::test]
async fn shutdown_lets_calls_in_flight_finish_and_refuses_new_ones() {
    let (mut server, _dir) = heavy_server(|_| {}).await;
    let mut in_flight = Vec::new();
    for _ in 0..4 {
        let mut client = server.new_client().await;
        in_flight.push(tokio::spawn(async move {
            client.predict(heavy_request("heavy", 100)).await
        }));
    }
    wait_for_stats(&server, "heavy", "the calls are in flight", |s| {
        s.started >= 1
    })
    .await;
    let mut health = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let stopped = server.begin_stop();
    // Health flips first.
    assert_eq!(
        health.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    // An open Watch is a call in flight too; it would hold the drain for the whole grace.
    drop(health);
    for call in in_flight {
        let reply = call.await.unwrap().expect("a call in flight completes");
        assert_eq!(reply.into_inner().outputs["Y"].shape, vec![100, 256]);
    }
    stopped.await.unwrap();
    // Nothing listens any more: a new call is refused cleanly, not hung.
    let refused = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err(), "the listener is closed");
}

#[tokio::test]
async fn a_stream_ends_at_its_deadline_with_deadline_exceeded() {
    let (server, _dir) = heavy_server(|_| {}).await;
    let (send, messages) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(messages));
    request.set_timeout(Duration::from_millis(300));
    let mut replies = server
        .client()
        .predict_stream(request)
        .await
        .unwrap()
        .into_inner();
    send.send(heavy_request("heavy", 1)).await.unwrap();
    let first = replies.message().await.unwrap().expect("a reply");
    assert!(matches!(
        first.result,
        Some(pb::predict_stream_response::Result::Response(_))
    ));
    // The client keeps its side open; the server ends the stream at the deadline.
    let status = replies
        .message()
        .await
        .expect_err("the deadline ends the stream");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    drop(send);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_times_out_with_504_through_the_edge_stack() {
    let (server, _dir) = heavy_server(|c| c.request_timeout = Duration::from_millis(50)).await;
    let (status, body) =
        http_post(server.http_addr, "/v2/models/heavy/infer", &heavy_json(300)).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("--request-timeout"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_is_shed_with_429_while_grpc_holds_every_permit() {
    let (server, _dir) = heavy_server(|c| c.max_concurrent_requests = 1).await;
    let mut client = server.new_client().await;
    let busy = tokio::spawn(async move { client.predict(heavy_request("heavy", 300)).await });
    wait_for_stats(&server, "heavy", "the gRPC call runs", |s| s.started == 1).await;
    let (status, body) =
        http_post(server.http_addr, "/v2/models/heavy/infer", &heavy_json(1)).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("--max-concurrent-requests"), "{body}");
    // Probes and metadata are not behind the limit.
    let ready = http_post(server.http_addr, "/v2/repository/index", "{}").await;
    assert_eq!(ready.0, 200, "{}", ready.1);
    busy.await
        .unwrap()
        .expect("the call holding the permit completes");
    let (status, body) =
        http_post(server.http_addr, "/v2/models/heavy/infer", &heavy_json(1)).await;
    assert_eq!(status, 200, "the permit is back: {body}");
    assert_eq!(
        server.stats("heavy").started,
        2,
        "the shed request never reached the model"
    );
}

/// The names of this process's threads that start with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_joins_the_model_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    // A name of its own: other tests in this process run models of their own at the same time.
    write_heavy_model(dir.path(), "joined", 1);
    let mut config = ServeConfig::new(dir.path());
    config.scheduler.workers = 3;
    let server = TestServer::start_with(config).await;
    server
        .client()
        .predict(heavy_request("joined", 2))
        .await
        .expect("the model serves");
    assert_eq!(
        threads_named("joined-v1-").len(),
        3,
        "{:?}",
        threads_named("")
    );
    server.stop().await;
    assert_eq!(
        threads_named("joined-v1-"),
        Vec::<String>::new(),
        "serve returned with worker threads still running"
    );
}
