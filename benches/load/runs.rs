//! One load run: which server, which load generator, and what it measured.

use crate::cpu::CpuUse;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    /// predictd with its defaults: batching on.
    Served,
    /// The same server while `/metrics` is rendered ten times a second (a scrape every
    /// 100 ms, ten times the usual rate).
    Scraped,
    /// A third predictd instance, like the first but tracing 1% of calls
    /// (`TRACE_RATIO`) to an OTLP collector beside it.
    Traced,
    /// predictd with batching off (`max_batch_size = 0`).
    NoBatch,
    /// The bare tonic server.
    Bare,
}

impl Target {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Target::Served => "served",
            Target::Scraped => "scraped",
            Target::Traced => "traced",
            Target::NoBatch => "nobatch",
            Target::Bare => "bare",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Client {
    /// The raw HTTP/2 Rust client (the default).
    Rust,
    /// The generated tonic client.
    Tonic,
    /// nghttp2's h2load.
    H2load,
}

impl Client {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Client::Rust => "rust-h2",
            Client::Tonic => "tonic",
            Client::H2load => "h2load",
        }
    }
}

/// One load run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    pub(crate) req_per_s: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    /// Non-OK replies, plus checked replies of the wrong size or shape.
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// CPU used during the run.
    pub(crate) cpu: CpuUse,
    /// predictd only: mean rows per model run during the run (warm-up included), from the
    /// model's counters: Δrows ÷ Δbatches.
    pub(crate) rows_per_run: Option<f64>,
}
