//! nghttp2's h2load, run as a child process.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::{Expect, Tally};
use crate::{PER_CONNECTION, WARMUP};

/// Runs h2load once; `None` when it could not run (the reason is printed).
pub(crate) fn h2load_load(
    addr: SocketAddr,
    body: &Path,
    log: &Path,
    expect: &Expect,
    concurrency: usize,
    seconds: f64,
) -> Option<(Tally, f64)> {
    let connections = concurrency.div_ceil(PER_CONNECTION);
    let streams = concurrency.div_ceil(connections);
    let _ = std::fs::remove_file(log);
    let output = Command::new("h2load")
        // h2load takes whole units: "500ms".
        .args(["-D", &format!("{}ms", (seconds * 1000.0).round() as u64)])
        .args(["--warm-up-time", &format!("{}ms", WARMUP.as_millis())])
        .args(["-c", &connections.to_string()])
        .args(["-m", &streams.to_string()])
        .args(["-t", "1"])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc"])
        .args(["-H", "te: trailers"])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!(
            "http://{addr}/predictd.v1.PredictionService/Predict"
        ))
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "h2load failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            eprintln!("cannot run h2load: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    // "finished in 5.00s, 65432.10 req/s, 9.87MB/s"
    let finished = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|s| s.trim().strip_suffix(" req/s"))
        .and_then(|s| s.parse::<f64>().ok());
    // "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
    let count = |label: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with("requests:"))?;
        line.trim_start_matches("requests:")
            .split(',')
            .map(str::trim)
            .find(|part| part.ends_with(label))?
            .split(' ')
            .next()?
            .parse()
            .ok()
    };
    // "traffic: 1.2MB (1234567) total, 0.5MB (543210) headers (space savings 95.1%), 0.6MB (654321) data"
    let data_bytes = text
        .lines()
        .find(|l| l.starts_with("traffic:"))
        .and_then(|l| l.rsplit(',').next())
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse::<u64>().ok());
    let (Some(req_per_s), Some(done), Some(succeeded), Some(data_bytes)) =
        (finished, count("done"), count("succeeded"), data_bytes)
    else {
        eprintln!("cannot read h2load's output:\n{text}");
        return None;
    };
    // h2load counts HTTP 200 as success; a gRPC error is a 200 with no DATA. Every good reply
    // carries exactly one frame of the known size.
    let frame = expect.frame_len() as u64;
    let good = data_bytes / frame;
    let mut tally = Tally {
        errors: done.saturating_sub(good),
        ..Default::default()
    };
    if data_bytes % frame != 0 || succeeded != done {
        tally.errors = tally.errors.max(1);
        tally.first_error = Some(format!(
            "h2load: {done} done, {succeeded} succeeded, {data_bytes} DATA bytes, not a \
             multiple of the {frame}-byte reply frame"
        ));
    } else if tally.errors > 0 {
        tally.first_error = Some(format!(
            "h2load: {done} replies but only {good} carried a reply frame (the rest are gRPC \
             errors)"
        ));
    }
    // Log columns: start (µs since epoch), HTTP status, µs to the end of the response.
    if let Ok(log) = std::fs::read_to_string(log) {
        tally.latencies_us = log
            .lines()
            .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
            .collect();
    }
    Some((tally, req_per_s))
}

pub(crate) fn h2load_version() -> Option<String> {
    let out = Command::new("h2load").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
