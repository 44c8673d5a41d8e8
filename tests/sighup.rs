//! SIGHUP rescans the repository. In a test binary of its own: the signal reaches the whole
//! process, and would rescan the other tests' servers at moments they do not expect.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestServer, publish_model_file, scale_model, scale_of, scale_request, until_factor};

#[tokio::test]
async fn sighup_rescans_the_repository_in_mode_none() {
    let dir = tempfile::tempdir().unwrap();
    publish_model_file(dir.path(), "scale", 1, &scale_model(1.0));
    let server = TestServer::start(dir.path()).await;
    publish_model_file(dir.path(), "scale", 2, &scale_model(2.0));
    publish_model_file(dir.path(), "fresh", 1, &scale_model(8.0));
    // Mode none does not poll: nothing changes until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = server
        .client()
        .predict(scale_request("scale", ""))
        .await
        .unwrap();
    assert_eq!(scale_of(reply.get_ref()), 1.0);
    let pid = std::process::id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    until_factor(&server, 2.0, "SIGHUP loads version 2").await;
    let reply = server
        .client()
        .predict(scale_request("fresh", ""))
        .await
        .unwrap();
    assert_eq!(scale_of(reply.get_ref()), 8.0);
}
