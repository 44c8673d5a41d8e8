//! Metrics in the Prometheus text format, on the HTTP port's `/metrics` (or a port of its own).
//! Everything is read at scrape time from the counters the request path already keeps — the
//! same ones the KServe statistics report — so there is one bookkeeping and the request path
//! pays nothing more for being scraped.
//!
//! Triton's names (`nv_inference_*`, labels `model` and `version`) for what its dashboards
//! chart; predictd's own histograms (`predictd_*`, in seconds and rows) for the rest.

pub mod process;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::edge::layers::EdgeCounters;
use crate::engine::repository::{Slot, State};
use crate::serving::histogram::HistogramSnapshot;
use crate::serving::registry::Registry;
use crate::serving::scheduler::Scheduler;
use crate::serving::stats::StatsSnapshot;
use crate::traces::tracer::TraceCounters;
use text::{Kind, Page};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The models and their counters.
    pub registry: Arc<Registry>,
    /// What the edge refused.
    pub edge: Arc<EdgeCounters>,
    /// What became of the spans, when tracing is on.
    pub traces: Option<Arc<TraceCounters>>,
}

/// `GET /metrics`.
pub fn router(sources: Sources) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(sources)
}

async fn scrape(axum::extract::State(sources): axum::extract::State<Sources>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&sources))
}

/// A per-version counter, read from its counters' snapshot.
type Counter = fn(&StatsSnapshot) -> f64;
/// A per-version histogram, read from its scheduler.
type Distribution = fn(&Scheduler) -> HistogramSnapshot;

/// Microseconds in a count of nanoseconds, as Triton's `_us` counters are.
fn micros(ns: u64) -> f64 {
    (ns / 1_000) as f64
}

/// The page, as a scrape sees it now.
pub fn render(sources: &Sources) -> String {
    let catalog = sources.registry.snapshot();
    let mut versions = Vec::new();
    for (name, entry) in &catalog.models {
        for (&version, slot) in &entry.versions {
            versions.push((
                name.as_str(),
                version.to_string(),
                slot,
                entry.status(version).0,
            ));
        }
    }
    let ready: Vec<_> = versions
        .iter()
        .filter_map(|(name, version, slot, _)| match slot {
            Slot::Ready(s) => Some((*name, version.as_str(), s, s.stats().snapshot())),
            _ => None,
        })
        .collect();
    let mut page = Page::default();

    let counters: [(&str, Kind, &str, Counter); 9] = [
        (
            "nv_inference_request_success",
            Kind::Counter,
            "Requests answered with outputs.",
            |s| s.succeeded as f64,
        ),
        (
            "nv_inference_count",
            Kind::Counter,
            "Rows inferred (Triton's inferences: a batch of n rows counts n).",
            |s| s.rows as f64,
        ),
        (
            "nv_inference_exec_count",
            Kind::Counter,
            "Model runs (one per batch).",
            |s| s.batches as f64,
        ),
        (
            "nv_inference_pending_request_count",
            Kind::Gauge,
            "Requests queued and not yet answered.",
            |s| s.pending() as f64,
        ),
        (
            "nv_inference_request_duration_us",
            Kind::Counter,
            "Cumulative time from queueing to answer, in microseconds.",
            |s| micros(s.total_ns),
        ),
        (
            "nv_inference_queue_duration_us",
            Kind::Counter,
            "Cumulative time requests waited for their batch to start, in microseconds.",
            |s| micros(s.queue_ns),
        ),
        (
            "nv_inference_compute_input_duration_us",
            Kind::Counter,
            "Cumulative time stacking requests' inputs into batches, in microseconds.",
            |s| micros(s.input_ns),
        ),
        (
            "nv_inference_compute_infer_duration_us",
            Kind::Counter,
            "Cumulative model time, per request of each batch, in microseconds.",
            |s| micros(s.compute_ns),
        ),
        (
            "nv_inference_compute_output_duration_us",
            Kind::Counter,
            "Cumulative time splitting batches' outputs into replies, in microseconds.",
            |s| micros(s.output_ns),
        ),
    ];
    for (name, kind, help, value) in counters {
        page.family(name, kind, help);
        for (model, version, _, s) in &ready {
            page.sample(name, &[("model", model), ("version", version)], value(s));
        }
    }
    page.family(
        "nv_inference_request_failure",
        Kind::Counter,
        "Failed requests, by Triton's reasons: REJECTED (queue full), CANCELED (caller gone before the run), BACKEND (the model failed), OTHER (tensors that do not fit, deadline passed in the queue).",
    );
    for (model, version, _, s) in &ready {
        for (reason, n) in [
            ("REJECTED", s.rejected),
            ("CANCELED", s.cancelled),
            ("BACKEND", s.failed),
            ("OTHER", s.invalid + s.expired),
        ] {
            page.sample(
                "nv_inference_request_failure",
                &[("model", model), ("version", version), ("reason", reason)],
                n as f64,
            );
        }
    }
    page.family(
        "predictd_requests_refused_total",
        Kind::Counter,
        "Requests a model refused or dropped unrun, by reason: invalid (tensors that do not fit), rejected (queue full), expired (deadline passed in the queue), cancelled (caller gone).",
    );
    for (model, version, _, s) in &ready {
        for (reason, n) in [
            ("invalid", s.invalid),
            ("rejected", s.rejected),
            ("expired", s.expired),
            ("cancelled", s.cancelled),
        ] {
            page.sample(
                "predictd_requests_refused_total",
                &[("model", model), ("version", version), ("reason", reason)],
                n as f64,
            );
        }
    }

    let histograms: [(&str, &str, Distribution); 4] = [
        (
            "predictd_request_duration_seconds",
            "Time from queueing to answer, per request.",
            |s| s.stats().request_seconds.0.snapshot(),
        ),
        (
            "predictd_queue_duration_seconds",
            "Time a request waited for its batch to start.",
            |s| s.stats().queue_seconds.0.snapshot(),
        ),
        (
            "predictd_compute_duration_seconds",
            "Model time of a request's batch, per request.",
            |s| s.stats().compute_seconds.0.snapshot(),
        ),
        ("predictd_batch_rows", "Rows per model run.", |s| {
            s.stats().batch_rows.0.snapshot()
        }),
    ];
    for (name, help, snapshot) in histograms {
        page.family(name, Kind::Histogram, help);
        for (model, version, scheduler, _) in &ready {
            page.histogram(
                name,
                &[("model", model), ("version", version)],
                &snapshot(scheduler),
            );
        }
    }

    page.family(
        "predictd_model_state",
        Kind::Gauge,
        "1 for each model version's state: READY, LOADING, FAILED or UNLOADED.",
    );
    for (model, version, _, state) in &versions {
        let state = match state {
            State::Ready => "READY",
            State::Loading => "LOADING",
            State::Failed => "FAILED",
            State::Unloaded => "UNLOADED",
        };
        page.sample(
            "predictd_model_state",
            &[("model", model), ("version", version), ("state", state)],
            1.0,
        );
    }
    page.family(
        "predictd_model_load_duration_seconds",
        Kind::Gauge,
        "How long opening, optimising and warming the serving copy took.",
    );
    for (model, version, scheduler, _) in &ready {
        page.sample(
            "predictd_model_load_duration_seconds",
            &[("model", model), ("version", version)],
            scheduler.load_time().as_secs_f64(),
        );
    }

    page.family(
        "predictd_edge_refused_total",
        Kind::Counter,
        "Calls the edge answered itself, by reason: shed (every concurrency permit taken), timed_out (deadline passed).",
    );
    let edge = &sources.edge;
    page.family(
        "predictd_open_streams",
        Kind::Gauge,
        "Streaming calls (PredictStream, ModelStreamInfer) open now.",
    );
    page.sample(
        "predictd_open_streams",
        &[],
        edge.open_streams.load(Relaxed) as f64,
    );
    page.family(
        "predictd_requests_total",
        Kind::Counter,
        "Calls by protocol (grpc, http), endpoint group and outcome (the gRPC status name, or the HTTP status).",
    );
    for (protocol, group, code, n) in edge.calls.nonzero() {
        page.sample(
            "predictd_requests_total",
            &[
                ("protocol", protocol),
                ("group", group.label()),
                ("code", &code),
            ],
            n as f64,
        );
    }
    page.sample(
        "predictd_edge_refused_total",
        &[("reason", "shed")],
        edge.shed.load(Relaxed) as f64,
    );
    page.sample(
        "predictd_edge_refused_total",
        &[("reason", "timed_out")],
        edge.timed_out.load(Relaxed) as f64,
    );

    if let Some(traces) = &sources.traces {
        page.family(
            "predictd_trace_spans_exported_total",
            Kind::Counter,
            "Spans the OTLP collector accepted.",
        );
        page.sample(
            "predictd_trace_spans_exported_total",
            &[],
            traces.exported.load(Relaxed) as f64,
        );
        page.family(
            "predictd_trace_spans_dropped_total",
            Kind::Counter,
            "Spans dropped, by reason: queue_full (the export queue was full; requests never wait for it), export_failed (the collector could not be reached, or refused them).",
        );
        for (reason, n) in [
            ("queue_full", &traces.dropped_queue_full),
            ("export_failed", &traces.dropped_export_failed),
        ] {
            page.sample(
                "predictd_trace_spans_dropped_total",
                &[("reason", reason)],
                n.load(Relaxed) as f64,
            );
        }
    }

    let process = process::read();
    let gauges: [(&str, Kind, &str, Option<f64>); 5] = [
        (
            "process_cpu_seconds_total",
            Kind::Counter,
            "User and system CPU time, in seconds.",
            process.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory, in bytes.",
            process.resident_bytes.map(|b| b as f64),
        ),
        (
            "process_open_fds",
            Kind::Gauge,
            "Open file descriptors.",
            process.open_fds.map(|n| n as f64),
        ),
        (
            "process_max_fds",
            Kind::Gauge,
            "The most file descriptors the process may open.",
            process.max_fds.map(|n| n as f64),
        ),
        (
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time, in seconds since the Unix epoch.",
            process.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in gauges {
        if let Some(value) = value {
            page.family(name, kind, help);
            page.sample(name, &[], value);
        }
    }
    page.finish()
}
