//! The `predictd` binary as an operator runs it: SIGTERM drains calls in flight and exits 0,
//! and every log line of a call carries its request id and the caller's trace id.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Client, heavy_request, write_heavy_model};
use tonic::transport::Channel;

/// Kills the server if the test fails before it exits by itself.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a log line containing `needle` and returns it.
fn line_with(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) -> String {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no log line with {needle:?}; saw:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if line.contains(needle) {
            return line;
        }
    }
}

// Multi-threaded: the log reader below blocks its thread while the calls run on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_calls_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    write_heavy_model(dir.path(), "heavy", 512);
    let child = Command::new(env!("CARGO_BIN_EXE_predictd"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--log-format",
            "json",
        ])
        .arg("--models")
        .arg(dir.path())
        .env("PREDICTD_LOG", "predictd=debug,info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let (send, lines) = mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    let mut seen = Vec::new();
    let listening = line_with(&lines, &mut seen, "predictd listening");
    let log: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let addr = log["grpc"].as_str().unwrap().to_string();
    line_with(&lines, &mut seen, "models loaded; serving");

    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut in_flight = Vec::new();
    for i in 0..4 {
        let mut client = Client::new(channel.clone());
        let mut request = tonic::Request::new(heavy_request("heavy", 100));
        request
            .metadata_mut()
            .insert("x-request-id", format!("drain-{i}").parse().unwrap());
        let traceparent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b{i}-01");
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        in_flight.push(tokio::spawn(async move { client.predict(request).await }));
    }
    // Once one has run, the others are queued behind it on the only worker.
    let ran = line_with(&lines, &mut seen, "model ran");
    assert!(
        ran.contains("\"request_id\":\"drain-"),
        "worker log lines carry the request id: {ran}"
    );
    assert!(
        ran.contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\""),
        "and the caller's W3C trace id: {ran}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for call in in_flight {
        let reply = call
            .await
            .unwrap()
            .expect("a call in flight when SIGTERM arrived completes");
        assert_eq!(reply.into_inner().outputs["Y"].shape, vec![100, 256]);
    }
    let exit = child.0.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    line_with(&lines, &mut seen, "shutting down");

    // Gone: a new call cannot be made.
    let mut late = Client::new(channel);
    assert!(late.predict(heavy_request("heavy", 1)).await.is_err());
}
