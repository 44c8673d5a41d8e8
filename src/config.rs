//! Command-line flags and `PREDICTD_*` environment variables, parsed and checked once into the
//! typed settings the rest of the program uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::edge::tls::{ClientAuth, TlsFiles};
use crate::engine::open::OpenDefaults;
use crate::engine::repository::valid_model_name;
use crate::server::{Http2Config, ServeConfig};
use crate::serving::lifecycle::{LifecycleConfig, ModelControl};
use crate::serving::memory::Budget;
use crate::serving::scheduler::SchedulerConfig;
use crate::traces::otlp::{OtlpConfig, Protocol};

/// The defaults of `predictd serve`: the one place they are set. The flags show them in
/// `--help`, and [`ServeConfig::new`] starts from them.
pub mod defaults {
    use std::time::Duration;

    /// The gRPC server's address.
    pub const GRPC_ADDR: &str = "0.0.0.0:8001";
    /// The REST server's address.
    pub const HTTP_ADDR: &str = "0.0.0.0:8000";
    /// Requests that may wait per model.
    pub const QUEUE_CAPACITY: usize = 256;
    /// Most rows a model runs as one batch.
    pub const MAX_BATCH_SIZE: usize = 64;
    /// How long a partial batch may wait for more requests, in microseconds.
    pub const MAX_QUEUE_DELAY_US: u64 = 0;
    /// Largest request or reply message, in bytes.
    pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
    /// Longest a request may take.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// Inference requests in progress at once, over all models.
    pub const MAX_CONCURRENT_REQUESTS: usize = 1024;
    /// At about 15 KiB of transport buffers each, 4,096 idle streams hold some 60 MiB.
    pub const MAX_OPEN_STREAMS: usize = 4096;
    /// How long calls in flight may take to finish once shutdown begins.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    /// How often idle HTTP/2 connections are pinged.
    pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
    /// How long a keepalive ping's answer may take.
    pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
    /// Calls one HTTP/2 connection may have open at once.
    pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 1024;
    /// Whether Nagle's algorithm is off.
    pub const TCP_NODELAY: bool = true;
    /// How often poll mode looks at the repository.
    pub const REPOSITORY_POLL_INTERVAL: Duration = Duration::from_secs(10);

    /// Worker threads per model: one per core.
    pub fn workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// predictd: serve ONNX models over gRPC and REST.
#[derive(Debug, Parser)]
#[command(name = "predictd", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "PREDICTD_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every model of a model repository over gRPC and REST.
    Serve(Box<ServeArgs>),
    /// Score Parquet or CSV files with one model of a repository, offline, into one file.
    Batch(Box<BatchArgs>),
    /// Load one ONNX file and print its inputs and outputs, as the server would serve them.
    Inspect {
        /// The model file.
        path: PathBuf,
    },
}

/// Flags of `predictd batch`.
#[derive(Debug, Args)]
#[command(after_help = "\
Columns: --feed INPUT=COL,COL stacks scalar columns into INPUT's values per row, in the order given; \
one list column feeds a whole row. An input without --feed takes the column of its own name; a \
model with one input takes the numeric columns not kept, when there are exactly as many as it \
needs. Integers cast to floats and FP64 to FP32; other type changes are errors. [N] and [N, 1] \
outputs become one column; wider outputs a fixed-size list (Parquet) or COLUMN_0..COLUMN_{k-1} (CSV).")]
pub struct BatchArgs {
    /// The model repository: <DIR>/<name>/<version>/model.onnx.
    #[arg(long, default_value = "models", env = "PREDICTD_MODELS")]
    pub models: PathBuf,
    /// The model, as NAME or NAME:VERSION (latest when no version is given).
    #[arg(long)]
    pub model: String,
    /// Input file (.parquet or .csv), folder of part files (read in name order) or glob.
    #[arg(long = "input", required = true)]
    pub inputs: Vec<String>,
    /// Output file, .parquet or .csv; written under a temporary name and renamed when complete.
    #[arg(long)]
    pub output: PathBuf,
    /// INPUT=COL[,COL...]: the columns that feed a model input.
    #[arg(long = "feed", value_name = "INPUT=COLS", value_parser = crate::columns::Mapping::parse_feed)]
    pub feeds: Vec<(String, Vec<String>)>,
    /// OUTPUT[=COLUMN]: an output to write, and its column name [default: every output].
    #[arg(long = "fetch", value_name = "OUTPUT[=COLUMN]", value_parser = crate::columns::Mapping::parse_fetch)]
    pub fetches: Vec<(String, Option<String>)>,
    /// Columns copied to the output unchanged (ids, keys), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub keep: Vec<String>,
    /// Rows per batch read and scored.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_rows: u32,
    /// Scoring threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// I/N: score only shard I of N (0-based), for N processes that split one dataset. Shards
    /// are contiguous runs of Parquet row groups or CSV files; concatenated in order, the N
    /// outputs are the unsharded output.
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// Progress bar on stderr: auto shows it on a terminal.
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
    /// Write the run's rows, rows/s, duration and outcome to this Prometheus textfile (for
    /// node_exporter's textfile collector), replacing it atomically, whether the run succeeds
    /// or fails.
    #[arg(long, value_name = "FILE.prom")]
    pub metrics_file: Option<PathBuf>,
}

/// When `predictd batch` draws a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// When stderr is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never (cron, logs).
    Never,
}

impl BatchArgs {
    /// The checked settings of a run.
    pub fn to_options(&self) -> Result<crate::batch::Options, crate::batch::BatchError> {
        let (model, version) = match self.model.split_once(':') {
            Some((m, v)) => (m.to_string(), v.to_string()),
            None => (self.model.clone(), String::new()),
        };
        Ok(crate::batch::Options {
            models: self.models.clone(),
            model,
            version,
            inputs: self.inputs.clone(),
            output: self.output.clone(),
            mapping: crate::columns::Mapping {
                feeds: self.feeds.clone(),
                fetches: self.fetches.clone(),
                keep: self.keep.clone(),
            },
            batch_rows: self.batch_rows as usize,
            threads: self
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            shard: crate::batch::parse_shard(&self.shard)?,
        })
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Flags of `predictd serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model repository: <DIR>/<name>/<version>/model.onnx.
    #[arg(long, default_value = "models", env = "PREDICTD_MODELS")]
    pub models: PathBuf,
    /// Address of the gRPC server.
    #[arg(long, default_value = defaults::GRPC_ADDR, env = "PREDICTD_GRPC_ADDR")]
    pub grpc_addr: SocketAddr,
    /// Address of the REST (KServe v2 HTTP/JSON) server.
    #[arg(long, default_value = defaults::HTTP_ADDR, env = "PREDICTD_HTTP_ADDR")]
    pub http_addr: SocketAddr,
    /// Worker threads per model, unless its config.toml says otherwise [default: one per core].
    #[arg(long, env = "PREDICTD_WORKERS")]
    pub workers: Option<usize>,
    /// Threads one run of a model spreads its matrix products over, unless its config.toml says
    /// otherwise [default: every core]. Models given the same number share one pool of that
    /// many threads, and a run uses it only when no other run is in flight: a lone request
    /// uses every core, and under load each run stays on its worker, so workers × threads
    /// never oversubscribes the cores. 1 runs each request on its worker alone.
    #[arg(long, env = "PREDICTD_THREADS")]
    pub threads: Option<usize>,
    /// Requests that may wait per model before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = defaults::QUEUE_CAPACITY, env = "PREDICTD_QUEUE_CAPACITY")]
    pub queue_capacity: usize,
    /// Most rows a model runs as one batch; requests waiting together are stacked up to it.
    /// 0 turns batching off.
    #[arg(long, default_value_t = defaults::MAX_BATCH_SIZE, env = "PREDICTD_MAX_BATCH_SIZE")]
    pub max_batch_size: usize,
    /// How long a partial batch may wait for more requests, in microseconds (0: never wait).
    #[arg(long, default_value_t = defaults::MAX_QUEUE_DELAY_US, env = "PREDICTD_MAX_QUEUE_DELAY_US")]
    pub max_queue_delay_us: u64,
    /// Batch sizes that get a plan optimised for exactly that many rows, comma-separated; other
    /// sizes run the plan for any size. Empty: that plan only.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = crate::engine::open::DEFAULT_PREFERRED_BATCH_SIZES.to_vec(),
        env = "PREDICTD_PREFERRED_BATCH_SIZES"
    )]
    pub preferred_batch_sizes: Vec<usize>,
    /// Largest request or reply message, in bytes.
    #[arg(long, default_value_t = defaults::MAX_MESSAGE_BYTES, env = "PREDICTD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: usize,
    /// Longest a request may take; a client's shorter grpc-timeout wins. Expiry answers
    /// DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = defaults::REQUEST_TIMEOUT.into(), env = "PREDICTD_REQUEST_TIMEOUT")]
    pub request_timeout: humantime::Duration,
    /// Inference requests and stream messages in progress at once, over all models; beyond it
    /// they get RESOURCE_EXHAUSTED at once.
    #[arg(long, default_value_t = defaults::MAX_CONCURRENT_REQUESTS, env = "PREDICTD_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: usize,
    /// Streaming calls open at once, over all connections; beyond it new streams get
    /// RESOURCE_EXHAUSTED, so that idle streams cannot take the server's memory.
    #[arg(long, default_value_t = defaults::MAX_OPEN_STREAMS, env = "PREDICTD_MAX_OPEN_STREAMS")]
    pub max_open_streams: usize,
    /// How long calls in flight may take to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = defaults::SHUTDOWN_GRACE.into(), env = "PREDICTD_SHUTDOWN_GRACE")]
    pub shutdown_grace: humantime::Duration,
    /// How often to ping idle HTTP/2 connections (0s: never).
    #[arg(long, default_value_t = defaults::HTTP2_KEEPALIVE_INTERVAL.into(), env = "PREDICTD_HTTP2_KEEPALIVE_INTERVAL")]
    pub http2_keepalive_interval: humantime::Duration,
    /// How long to wait for a keepalive ping's answer before closing the connection.
    #[arg(long, default_value_t = defaults::HTTP2_KEEPALIVE_TIMEOUT.into(), env = "PREDICTD_HTTP2_KEEPALIVE_TIMEOUT")]
    pub http2_keepalive_timeout: humantime::Duration,
    /// Calls one HTTP/2 connection may have open at once.
    #[arg(
        long,
        default_value_t = defaults::HTTP2_MAX_CONCURRENT_STREAMS,
        env = "PREDICTD_HTTP2_MAX_CONCURRENT_STREAMS"
    )]
    pub http2_max_concurrent_streams: u32,
    /// Disable Nagle's algorithm so small replies leave at once.
    #[arg(long, default_value_t = defaults::TCP_NODELAY, action = clap::ArgAction::Set, env = "PREDICTD_TCP_NODELAY")]
    pub tcp_nodelay: bool,
    /// How models change while serving: none (loaded at start-up; SIGHUP rescans), poll (the
    /// repository is also polled, changes applied once stable), explicit (only --load-model
    /// models at start-up; the repository API loads and unloads).
    #[arg(long, default_value = "none", env = "PREDICTD_MODEL_CONTROL")]
    pub model_control: ModelControl,
    /// How often poll mode looks at the repository.
    #[arg(long, default_value_t = defaults::REPOSITORY_POLL_INTERVAL.into(), env = "PREDICTD_REPOSITORY_POLL_INTERVAL")]
    pub repository_poll_interval: humantime::Duration,
    /// A model explicit mode loads at start-up; repeat it, or give '*' for all.
    #[arg(
        long = "load-model",
        value_name = "NAME",
        value_delimiter = ',',
        env = "PREDICTD_LOAD_MODEL"
    )]
    pub load_models: Vec<String>,
    /// The memory a load must stay under (e.g. 2GiB, 512MiB, or bytes); a load estimated to
    /// cross it fails cleanly [default: the cgroup's limit, if any].
    #[arg(long, value_parser = parse_bytes, env = "PREDICTD_MEMORY_LIMIT")]
    pub memory_limit: Option<u64>,
    /// Serve Prometheus metrics at /metrics on the HTTP port (and on --metrics-addr).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "PREDICTD_METRICS")]
    pub metrics: bool,
    /// Also serve /metrics on this address, for a scraper kept off the API port.
    #[arg(long, env = "PREDICTD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Export traces of inference calls to this OpenTelemetry collector (http://host:port)
    /// [default: no tracing].
    #[arg(long, env = "PREDICTD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// How traces travel to the collector: grpc or http/protobuf (path /v1/traces unless the
    /// endpoint names one).
    #[arg(long, default_value = "grpc", env = "PREDICTD_OTLP_PROTOCOL")]
    pub otlp_protocol: Protocol,
    /// The share of calls without a sampled traceparent that are traced, 0 to 1; a caller's
    /// sampled traceparent is always followed.
    #[arg(long, default_value_t = 1.0, env = "PREDICTD_TRACE_SAMPLING_RATIO")]
    pub trace_sampling_ratio: f64,
    /// API keys, one per line with the endpoint groups it may call (`<key> inference,metadata`,
    /// `*` for all); every call but health probes then needs `authorization: Bearer <key>`.
    /// Re-read on SIGHUP.
    #[arg(long, env = "PREDICTD_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    /// Serve TLS on every port with this certificate chain (PEM, leaf first); re-read on SIGHUP
    /// and when the file changes.
    #[arg(long, requires = "tls_key", env = "PREDICTD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert", env = "PREDICTD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: client certificates must be signed by a CA in this file (PEM).
    #[arg(long, requires = "tls_cert", env = "PREDICTD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: required (no certificate, no connection) or optional (clients
    /// without one are let in; a certificate given must still verify).
    #[arg(
        long,
        default_value = "required",
        requires = "tls_client_ca",
        env = "PREDICTD_TLS_CLIENT_AUTH"
    )]
    pub tls_client_auth: ClientAuth,
}

/// A size in bytes: a number, optionally with KiB, MiB, GiB (or KB, MB, GB, powers of ten).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}': expected a size such as 2GiB or 536870912"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "'{text}': unknown unit '{other}'; use KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// A flag value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    /// The flag.
    pub flag: &'static str,
    /// Why its value cannot work.
    pub reason: String,
}

impl ServeArgs {
    /// Checks the flags and turns them into the server's settings.
    pub fn to_config(&self) -> Result<ServeConfig, ConfigError> {
        let positive = |flag, value: usize| {
            if value == 0 {
                Err(ConfigError {
                    flag,
                    reason: "must be at least 1".to_string(),
                })
            } else {
                Ok(value)
            }
        };
        if !self.models.is_dir() {
            return Err(ConfigError {
                flag: "models",
                reason: format!("{} is not a folder", self.models.display()),
            });
        }
        if !(0.0..=1.0).contains(&self.trace_sampling_ratio) {
            return Err(ConfigError {
                flag: "trace-sampling-ratio",
                reason: format!("must be between 0 and 1, got {}", self.trace_sampling_ratio),
            });
        }
        let request_timeout: Duration = self.request_timeout.into();
        if request_timeout.is_zero() {
            return Err(ConfigError {
                flag: "request-timeout",
                reason: "must be longer than zero".to_string(),
            });
        }
        Ok(ServeConfig {
            models: self.models.clone(),
            scheduler: SchedulerConfig {
                workers: positive("workers", self.workers.unwrap_or_else(defaults::workers))?,
                queue_capacity: positive("queue-capacity", self.queue_capacity)?,
                max_batch_size: self.max_batch_size,
                max_queue_delay: Duration::from_micros(self.max_queue_delay_us),
            },
            open: OpenDefaults {
                preferred_batch_sizes: self.preferred_batch_sizes.clone(),
                threads: positive(
                    "threads",
                    self.threads.unwrap_or_else(crate::engine::threads::cores),
                )?,
            },
            max_message_bytes: positive("max-message-bytes", self.max_message_bytes)?,
            request_timeout,
            max_concurrent_requests: positive(
                "max-concurrent-requests",
                self.max_concurrent_requests,
            )?,
            max_open_streams: positive("max-open-streams", self.max_open_streams)?,
            shutdown_grace: self.shutdown_grace.into(),
            http2: Http2Config {
                keepalive_interval: Some(self.http2_keepalive_interval.into())
                    .filter(|d: &Duration| !d.is_zero()),
                keepalive_timeout: self.http2_keepalive_timeout.into(),
                max_concurrent_streams: self.http2_max_concurrent_streams.max(1),
                tcp_nodelay: self.tcp_nodelay,
            },
            lifecycle: self.lifecycle()?,
            metrics: self.metrics,
            traces: self
                .otlp_endpoint
                .as_deref()
                .map(|endpoint| {
                    OtlpConfig::new(endpoint, self.otlp_protocol, self.trace_sampling_ratio)
                })
                .transpose()
                .map_err(|reason| ConfigError {
                    flag: "otlp-endpoint",
                    reason,
                })?,
            api_keys: self.api_keys.clone(),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                    client_auth: self.tls_client_auth,
                }),
                _ => None,
            },
        })
    }

    fn lifecycle(&self) -> Result<LifecycleConfig, ConfigError> {
        if !self.load_models.is_empty() && self.model_control != ModelControl::Explicit {
            return Err(ConfigError {
                flag: "load-model",
                reason:
                    "applies only with --model-control explicit; the other modes load every model"
                        .to_string(),
            });
        }
        if let Some(bad) = self
            .load_models
            .iter()
            .find(|m| *m != "*" && !valid_model_name(m))
        {
            return Err(ConfigError {
                flag: "load-model",
                reason: format!("'{bad}' is not a model name"),
            });
        }
        let poll_interval: Duration = self.repository_poll_interval.into();
        if poll_interval.is_zero() {
            return Err(ConfigError {
                flag: "repository-poll-interval",
                reason: "must be longer than zero".to_string(),
            });
        }
        Ok(LifecycleConfig {
            control: self.model_control,
            poll_interval,
            startup_models: self.load_models.clone(),
            budget: Budget {
                configured: self.memory_limit,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("3MB"), Ok(3_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("2TiB").is_err());
    }
}
