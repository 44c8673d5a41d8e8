//! SIGHUP re-reads the API keys. In a test binary of its own: the signal reaches the whole
//! process, and would rescan other tests' repositories at moments they do not expect.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestServer, http_request, publish_model_file, scale_model};
use predictd::server::ServeConfig;

fn hangup() {
    let pid = std::process::id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test]
async fn sighup_rereads_the_api_keys_and_a_broken_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    publish_model_file(&models, "scale", 1, &scale_model(1.0));
    let keys = dir.path().join("keys");
    let old = "old-key-00000000000000000000000000000";
    let new = "new-key-00000000000000000000000000000";
    std::fs::write(&keys, format!("{old} metadata\n")).unwrap();
    let mut config = ServeConfig::new(&models);
    config.api_keys = Some(keys.clone());
    let server = TestServer::start_with(config).await;
    let status = |key: &'static str| {
        let addr = server.http_addr;
        async move {
            let auth = format!("Bearer {key}");
            http_request(addr, "GET", "/v2", "", &[("authorization", &auth)])
                .await
                .0
        }
    };
    assert_eq!((status(old).await, status(new).await), (200, 401));
    // A broken file is refused whole: the keys in force stay.
    std::fs::write(&keys, "short metadata\n").unwrap();
    hangup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((status(old).await, status(new).await), (200, 401));
    std::fs::write(&keys, format!("{new} metadata\n")).unwrap();
    hangup();
    let started = std::time::Instant::now();
    while (status(old).await, status(new).await) != (401, 200) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new keys were not read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
