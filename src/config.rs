//! Command-line flags and `PREDICTD_*` environment variables, parsed and checked once into the
//! typed settings the rest of the program uses.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::scheduler::SchedulerConfig;
use crate::server::ServeConfig;

/// predictd: serve ONNX models over gRPC.
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
    /// Serve every model of a model repository over gRPC.
    Serve(ServeArgs),
    /// Load one ONNX file and print its inputs and outputs, as the server would serve them.
    Inspect {
        /// The model file.
        path: PathBuf,
    },
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
    #[arg(long, default_value = "0.0.0.0:8001", env = "PREDICTD_GRPC_ADDR")]
    pub grpc_addr: SocketAddr,
    /// Worker threads per model, unless its config.toml says otherwise [default: one per core].
    #[arg(long, env = "PREDICTD_WORKERS")]
    pub workers: Option<usize>,
    /// Requests that may wait per model before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 256, env = "PREDICTD_QUEUE_CAPACITY")]
    pub queue_capacity: usize,
    /// Largest request or reply message, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024, env = "PREDICTD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: usize,
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(ServeConfig {
            models: self.models.clone(),
            scheduler: SchedulerConfig {
                workers: positive("workers", self.workers.unwrap_or(cores))?,
                queue_capacity: positive("queue-capacity", self.queue_capacity)?,
            },
            max_message_bytes: positive("max-message-bytes", self.max_message_bytes)?,
        })
    }
}
