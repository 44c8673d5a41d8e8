//! Changing models while serving, against a real server: polling, the KServe repository API,
//! labels, unload with requests in flight and SIGHUP, with clients calling throughout.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    TestServer, heavy_request, http_post, publish_model_file, scale_model, scale_of, scale_request,
    until_factor, wait_for_stats, write_heavy_model,
};
use predictd::proto::inference as kserve;
use predictd::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use predictd::proto::predictd::v1 as pb;
use predictd::server::ServeConfig;
use predictd::serving::lifecycle::ModelControl;

type KServe = GrpcInferenceServiceClient<tonic::transport::Channel>;

/// What the callers saw: every answer's factor, in order, and every failure.
#[derive(Default)]
struct Seen {
    factors: Vec<f64>,
    failures: Vec<String>,
}

/// `n` clients calling `scale` (latest) in a loop until `stop`, each on its own connection.
async fn callers(
    server: &TestServer,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut client = server.new_client().await;
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            while !stop.load(Ordering::Relaxed) {
                match client.predict(scale_request("scale", "")).await {
                    Ok(reply) => seen.factors.push(scale_of(reply.get_ref())),
                    Err(status) => seen.failures.push(format!("{status:?}")),
                }
            }
            seen
        }));
    }
    tasks
}

async fn versions(server: &TestServer, model: &str) -> Vec<pb::ModelVersionStatus> {
    let listed = server
        .client()
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    listed
        .models
        .into_iter()
        .find(|m| m.name == model)
        .map(|m| m.versions)
        .unwrap_or_default()
}

fn poll_config(dir: &Path, interval: Duration) -> ServeConfig {
    let mut config = ServeConfig::new(dir);
    config.scheduler.workers = 2;
    config.lifecycle.control = ModelControl::Poll;
    config.lifecycle.poll_interval = interval;
    config
}

fn explicit_config(dir: &Path, startup: &[&str]) -> ServeConfig {
    let mut config = ServeConfig::new(dir);
    config.scheduler.workers = 2;
    config.lifecycle.control = ModelControl::Explicit;
    config.lifecycle.startup_models = startup.iter().map(|s| s.to_string()).collect();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_applies_new_removed_changed_and_corrupt_versions_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(1.0));
    let interval = Duration::from_millis(200);
    let server = TestServer::start_with(poll_config(dir.path(), interval)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(&server, 16, Arc::clone(&stop)).await;

    // A new version: the policy (latest 1) moves traffic to it.
    publish_model_file(dir.path(), "scale", 2, &scale_model(2.0));
    let took = until_factor(&server, 2.0, "version 2 serves").await;
    println!("new version served after {took:?} (poll interval {interval:?})");
    // The version removed: version 1 serves again.
    std::fs::remove_dir_all(dir.path().join("scale/2")).unwrap();
    until_factor(&server, 1.0, "version 1 serves again").await;
    // The file of version 1 changed in place (renamed over).
    publish_model_file(dir.path(), "scale", 1, &scale_model(3.0));
    until_factor(&server, 3.0, "the changed file serves").await;
    // A corrupt file: what served keeps serving, and the failure is reported.
    publish_model_file(dir.path(), "scale", 1, b"this is not an onnx file");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let listed = versions(&server, "scale").await;
            if listed.iter().any(|v| v.reason.contains("failed")) {
                assert_eq!(listed.len(), 1, "{listed:?}");
                assert_eq!(listed[0].state, pb::ModelState::Ready as i32, "{listed:?}");
                assert!(listed[0].reason.contains("does not load"), "{listed:?}");
                return;
            }
            tokio::time::sleep(interval / 4).await;
        }
    })
    .await
    .expect("the failed reload is reported");
    let reply = server
        .client()
        .predict(scale_request("scale", ""))
        .await
        .unwrap();
    assert_eq!(scale_of(reply.get_ref()), 3.0, "the old copy serves on");

    stop.store(true, Ordering::Relaxed);
    let mut answers = 0;
    for task in tasks {
        let seen = task.await.unwrap();
        assert!(
            seen.failures.is_empty(),
            "failed requests: {:?}",
            seen.failures
        );
        assert!(
            seen.factors.iter().all(|k| [1.0, 2.0, 3.0].contains(k)),
            "{:?}",
            seen.factors
        );
        answers += seen.factors.len();
    }
    assert!(answers > 100, "only {answers} answers");
    println!("{answers} answers, none failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_written_file_is_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(1.0));
    let interval = Duration::from_millis(100);
    let server = TestServer::start_with(poll_config(dir.path(), interval)).await;
    // A copy in progress, slow but never pausing for a whole poll interval: the file grows
    // every half interval, for six intervals.
    let full = scale_model(4.0);
    let target = dir.path().join("scale/2");
    std::fs::create_dir_all(&target).unwrap();
    let path = target.join("model.onnx");
    for n in 1..=12 {
        std::fs::write(&path, &full[..full.len() * n / 16]).unwrap();
        tokio::time::sleep(interval / 2).await;
        let listed = versions(&server, "scale").await;
        assert!(
            listed.iter().all(|v| v.version != "2"),
            "a half-written version 2 was tried: {listed:?}"
        );
    }
    std::fs::write(&path, &full).unwrap();
    until_factor(&server, 4.0, "the complete file serves").await;
    let listed = versions(&server, "scale").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].reason.is_empty(), "{listed:?}");
}

async fn load(
    client: &mut KServe,
    model: &str,
    parameters: Vec<(&str, kserve::model_repository_parameter::ParameterChoice)>,
) -> Result<(), tonic::Status> {
    client
        .repository_model_load(kserve::RepositoryModelLoadRequest {
            repository_name: String::new(),
            model_name: model.to_string(),
            parameters: parameters
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        kserve::ModelRepositoryParameter {
                            parameter_choice: Some(v),
                        },
                    )
                })
                .collect(),
        })
        .await
        .map(|_| ())
}

async fn unload(client: &mut KServe, model: &str) -> Result<(), tonic::Status> {
    client
        .repository_model_unload(kserve::RepositoryModelUnloadRequest {
            repository_name: String::new(),
            model_name: model.to_string(),
            parameters: Default::default(),
        })
        .await
        .map(|_| ())
}

async fn index(client: &mut KServe) -> BTreeMap<(String, String), (String, String)> {
    client
        .repository_index(kserve::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models
        .into_iter()
        .map(|m| ((m.name, m.version), (m.state, m.reason)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explicit_mode_loads_unloads_and_takes_uploads() {
    use kserve::model_repository_parameter::ParameterChoice::{BytesParam, StringParam};
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(1.0));
    publish_model_file(dir.path(), "other", 1, &scale_model(7.0));
    let server = TestServer::start_with(explicit_config(dir.path(), &["scale"])).await;
    let mut client = KServe::new(server.channel.clone());

    let listed = index(&mut client).await;
    assert_eq!(listed[&("scale".into(), "1".into())].0, "READY");
    assert_eq!(
        listed[&("other".into(), "1".into())],
        ("UNAVAILABLE".to_string(), "unloaded".to_string())
    );
    let refused = server
        .client()
        .predict(scale_request("other", ""))
        .await
        .expect_err("not loaded");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    load(&mut client, "other", vec![]).await.unwrap();
    let reply = server
        .client()
        .predict(scale_request("other", ""))
        .await
        .unwrap();
    assert_eq!(scale_of(reply.get_ref()), 7.0);

    // A config override replaces config.toml's settings.
    load(
        &mut client,
        "other",
        vec![("config", StringParam(r#"{"max_batch_size": 0}"#.into()))],
    )
    .await
    .unwrap();
    let config = client
        .model_config(kserve::ModelConfigRequest {
            name: "other".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.max_batch_size, 0);

    // An upload replaces the files; a bad upload leaves what serves untouched.
    let bad = load(
        &mut client,
        "scale",
        vec![("file:1/model.onnx", BytesParam(b"not onnx".to_vec()))],
    )
    .await
    .expect_err("not ONNX");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(
        bad.message().contains("file:1/model.onnx"),
        "{}",
        bad.message()
    );
    assert!(bad.message().contains("model 'scale'"), "{}", bad.message());
    let reply = server
        .client()
        .predict(scale_request("scale", ""))
        .await
        .unwrap();
    assert_eq!(scale_of(reply.get_ref()), 1.0, "the old version serves on");
    load(
        &mut client,
        "scale",
        vec![("file:1/model.onnx", BytesParam(scale_model(5.0)))],
    )
    .await
    .unwrap();
    let reply = server
        .client()
        .predict(scale_request("scale", ""))
        .await
        .unwrap();
    assert_eq!(scale_of(reply.get_ref()), 5.0);
    // A load without files goes back to the repository's.
    load(&mut client, "scale", vec![]).await.unwrap();
    let reply = server
        .client()
        .predict(scale_request("scale", ""))
        .await
        .unwrap();
    assert_eq!(scale_of(reply.get_ref()), 1.0);

    unload(&mut client, "other").await.unwrap();
    let refused = server
        .client()
        .predict(scale_request("other", ""))
        .await
        .expect_err("unloaded");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("unloaded"),
        "{}",
        refused.message()
    );

    // Bad input.
    for (model, parameters, code, words) in [
        (
            "nope",
            vec![],
            tonic::Code::NotFound,
            "model 'nope' not found",
        ),
        (
            "../scale",
            vec![],
            tonic::Code::InvalidArgument,
            "not a model name",
        ),
        (
            "scale",
            vec![("file:../../etc/model.onnx", BytesParam(vec![1]))],
            tonic::Code::InvalidArgument,
            "file:<version>/model.onnx",
        ),
        (
            "scale",
            vec![("config", StringParam("{\"workers\": \"many\"}".into()))],
            tonic::Code::InvalidArgument,
            "parameter 'config'",
        ),
    ] {
        let err = load(&mut client, model, parameters).await.expect_err(model);
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(words), "{}", err.message());
    }
    let err = unload(&mut client, "nope").await.expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let reply = server
        .client()
        .predict(scale_request("scale", ""))
        .await
        .unwrap();
    assert_eq!(
        scale_of(reply.get_ref()),
        1.0,
        "bad requests changed nothing"
    );

    let metadata = client
        .server_metadata(kserve::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        metadata
            .extensions
            .contains(&"model_repository".to_string())
    );
}

#[tokio::test]
async fn rest_loads_and_unloads_with_triton_bodies() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(1.0));
    let server = TestServer::start_with(explicit_config(dir.path(), &[])).await;
    let (status, body) =
        http_post(server.http_addr, "/v2/repository/models/scale/load", "{}").await;
    assert_eq!(status, 200, "{body}");
    let upload = format!(
        r#"{{"parameters": {{"config": "{{}}", "file:1/model.onnx": "{}"}}}}"#,
        base64_of(&scale_model(6.0))
    );
    let (status, body) = http_post(
        server.http_addr,
        "/v2/repository/models/scale/load",
        &upload,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reply = server
        .client()
        .predict(scale_request("scale", ""))
        .await
        .unwrap();
    assert_eq!(scale_of(reply.get_ref()), 6.0);
    let bad = r#"{"parameters": {"file:1/model.onnx": "bm90IG9ubng="}}"#;
    let (status, body) = http_post(server.http_addr, "/v2/repository/models/scale/load", bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("file:1/model.onnx"), "{body}");
    let (status, body) =
        http_post(server.http_addr, "/v2/repository/models/nope/unload", "{}").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_post(
        server.http_addr,
        "/v2/repository/models/scale/unload",
        r#"{"parameters": {"unload_dependents": false}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_post(server.http_addr, "/v2/repository/index", "{}").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""state":"UNAVAILABLE""#), "{body}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn loading_needs_explicit_model_control() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(1.0));
    let server = TestServer::start(dir.path()).await;
    let mut client = KServe::new(server.channel.clone());
    let err = load(&mut client, "scale", vec![])
        .await
        .expect_err("mode none");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("--model-control explicit"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unload_lets_the_requests_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    write_heavy_model(dir.path(), "heavy", 512);
    let mut config = explicit_config(dir.path(), &["*"]);
    config.scheduler.workers = 1;
    config.scheduler.max_batch_size = 0;
    let server = TestServer::start_with(config).await;
    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut client = server.new_client().await;
        calls.push(tokio::spawn(async move {
            client.predict(heavy_request("heavy", 20)).await
        }));
    }
    wait_for_stats(&server, "heavy", "a call runs and the others wait", |s| {
        s.started == 1 && s.received == 6
    })
    .await;
    let mut client = KServe::new(server.channel.clone());
    unload(&mut client, "heavy").await.unwrap();
    let refused = server
        .client()
        .predict(heavy_request("heavy", 1))
        .await
        .expect_err("unloaded");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    for call in calls {
        let reply = call
            .await
            .unwrap()
            .expect("a call in flight at unload completes");
        assert_eq!(reply.get_ref().outputs["Y"].shape, vec![20, 256]);
    }
}

#[tokio::test]
async fn labels_name_versions_and_moving_one_reloads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(1.0));
    publish_model_file(dir.path(), "scale", 2, &scale_model(2.0));
    let config = "version_policy = \"all\"\n[labels]\nstable = 1\ncanary = 2\n";
    std::fs::write(dir.path().join("scale/config.toml"), config).unwrap();
    let server = TestServer::start_with(poll_config(dir.path(), Duration::from_millis(100))).await;
    let mut client = server.client();
    let factor = |reply: tonic::Response<pb::PredictResponse>| scale_of(reply.get_ref());
    assert_eq!(
        factor(
            client
                .predict(scale_request("scale", "stable"))
                .await
                .unwrap()
        ),
        1.0
    );
    assert_eq!(
        factor(
            client
                .predict(scale_request("scale", "canary"))
                .await
                .unwrap()
        ),
        2.0
    );
    assert_eq!(
        factor(client.predict(scale_request("scale", "")).await.unwrap()),
        2.0
    );
    let (status, body) = http_post(
        server.http_addr,
        "/v2/models/scale/versions/stable/infer",
        r#"{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""data":[1.0,1.0,1.0,1.0]"#), "{body}");
    let unknown = client
        .predict(scale_request("scale", "beta"))
        .await
        .expect_err("no such label");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().contains("stable (= 1)"),
        "{}",
        unknown.message()
    );

    // Move `stable` to 2: the same workers answer (their counters go on), no model reloads.
    let before = server.registry.snapshot();
    let (_, v2) = before.resolve("scale", "2").unwrap();
    let v2_model = Arc::clone(v2.model());
    drop(before);
    std::fs::write(
        dir.path().join("scale/config.toml"),
        "version_policy = \"all\"\n[labels]\nstable = 2\ncanary = 2\n",
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(reply) = client.predict(scale_request("scale", "stable")).await
                && scale_of(reply.get_ref()) == 2.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the label moves");
    let after = server.registry.snapshot();
    let (_, v2) = after.resolve("scale", "2").unwrap();
    assert!(
        Arc::ptr_eq(v2.model(), &v2_model),
        "moving a label reloaded the model"
    );
}

#[tokio::test]
async fn a_load_past_the_memory_limit_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(1.0));
    let mut config = explicit_config(dir.path(), &["*"]);
    config.lifecycle.budget.configured = Some(1 << 20);
    let server = TestServer::start_with(config).await;
    let listed = versions(&server, "scale").await;
    assert_eq!(listed[0].state, pb::ModelState::Failed as i32, "{listed:?}");
    assert!(listed[0].reason.contains("1 MiB limit"), "{listed:?}");
    let mut client = KServe::new(server.channel.clone());
    let err = load(&mut client, "scale", vec![])
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("unload-first"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_goes_on_when_its_client_gives_up_and_loads_run_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    write_heavy_model(dir.path(), "heavy", 512);
    publish_model_file(dir.path(), "scale", 1, &scale_model(1.0));
    let server = TestServer::start_with(explicit_config(dir.path(), &["scale"])).await;
    let mut client = KServe::new(server.channel.clone());
    // The client gives up once the load has begun (the version shows LOADING): a deadline
    // alone could expire before the call reaches the server, and test nothing.
    let mut hasty_client = client.clone();
    let hasty = tokio::spawn(async move { load(&mut hasty_client, "heavy", vec![]).await });
    let began = Instant::now();
    loop {
        let listed = index(&mut client).await;
        if listed
            .get(&("heavy".into(), "1".into()))
            .is_some_and(|(state, _)| state == "LOADING")
        {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the load never showed LOADING: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    hasty.abort();
    assert!(
        hasty.await.unwrap_err().is_cancelled(),
        "the client gave up before the answer"
    );
    // Changes run one at a time: once these two loads of one model, sent together, are done,
    // so is the abandoned one.
    let (mut first, mut second) = (client.clone(), client.clone());
    let (a, b) = tokio::join!(
        load(&mut first, "scale", vec![]),
        load(&mut second, "scale", vec![])
    );
    a.unwrap();
    b.unwrap();
    let listed = index(&mut client).await;
    assert_eq!(
        listed[&("heavy".into(), "1".into())].0,
        "READY",
        "{listed:?}"
    );
    assert_eq!(
        listed[&("scale".into(), "1".into())].0,
        "READY",
        "{listed:?}"
    );
    let reply = server
        .client()
        .predict(heavy_request("heavy", 1))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().outputs["Y"].shape, vec![1, 256]);
    server.lifecycle.retired().await;
}
