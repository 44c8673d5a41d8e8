//! The one way a model file becomes a runnable [`Model`]: its file, its `config.toml` and the
//! caller's defaults. `predictd serve`, `predictd batch`, `predictd inspect` and the Python
//! package all come through here, so one model gets the same plans, and the same outputs,
//! wherever it runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::model::{LoadError, Model};
use crate::engine::repository::{self, Catalog, LookupError, ModelConfig, RepositoryError};

/// The batch sizes that get a plan of their own unless a model's config says otherwise: a lone
/// request runs a plan fixed to one row, up to 1.8× faster than the symbolic one on small
/// models (`benches/engine.rs`; see [`crate::engine::model`]). Small models also get a plan
/// for every other batch size they meet, on first use, so a scoring job's full runs take
/// their own fixed plan without asking.
pub const DEFAULT_PREFERRED_BATCH_SIZES: &[usize] = &[1];

/// What a model's `config.toml` leaves unsaid about opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenDefaults {
    /// Batch sizes with a plan of their own.
    pub preferred_batch_sizes: Vec<usize>,
    /// The threads one run spreads over ([`crate::engine::threads`]).
    pub threads: usize,
}

impl Default for OpenDefaults {
    fn default() -> Self {
        OpenDefaults {
            preferred_batch_sizes: DEFAULT_PREFERRED_BATCH_SIZES.to_vec(),
            threads: crate::engine::threads::cores(),
        }
    }
}

/// Opens version `version` of model `name` from `path`, with `config`'s settings over
/// `defaults`.
pub fn open(
    name: &str,
    version: u64,
    path: &Path,
    config: &ModelConfig,
    defaults: &OpenDefaults,
) -> Result<Model, LoadError> {
    let sizes = config
        .preferred_batch_sizes
        .as_deref()
        .unwrap_or(&defaults.preferred_batch_sizes);
    let threads = config.threads.unwrap_or(defaults.threads);
    Model::load_threaded(name, version, path, sizes, threads)
}

/// A model opened by name from a repository, with the settings it was opened with.
#[derive(Debug)]
pub struct Opened {
    /// The model.
    pub model: Model,
    /// Its `config.toml`.
    pub config: ModelConfig,
}

/// Why a model named in a repository could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The repository cannot be read.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// No such model or version, or its folder is broken.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The model file does not load.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Opens model `name` at `version` ("" for the latest) from the repository `dir`.
pub fn open_named(
    dir: &Path,
    name: &str,
    version: &str,
    defaults: &OpenDefaults,
) -> Result<Opened, OpenError> {
    let found = repository::discover(dir)?;
    let (number, path) = found.resolve(name, version)?;
    let config = found
        .models
        .get(name)
        .map(|m| m.config.clone())
        .unwrap_or_default();
    let model = open(name, number, path, &config, defaults)?;
    Ok(Opened { model, config })
}

/// Opens one model file as the server would serve it: named and numbered by its folders when
/// it sits in a repository (`<name>/<version>/model.onnx`, beside `<name>/config.toml`), else
/// as version 1 of `model` with no config.
pub fn open_file(path: &Path, defaults: &OpenDefaults) -> Result<Opened, OpenError> {
    let version_dir = path.parent();
    let model_dir = version_dir.and_then(Path::parent);
    let version = version_dir
        .and_then(|d| d.file_name()?.to_str()?.parse::<u64>().ok())
        .filter(|v| *v > 0);
    let name = model_dir
        .and_then(|d| d.file_name()?.to_str())
        .filter(|_| version.is_some())
        .unwrap_or("model");
    let config = match (model_dir, version) {
        (Some(dir), Some(_)) => repository::read_config(dir).map_err(|reason| LoadError {
            path: path.to_path_buf(),
            reason,
        })?,
        _ => ModelConfig::default(),
    };
    let model = open(name, version.unwrap_or(1), path, &config, defaults)?;
    Ok(Opened { model, config })
}

/// Opens every discovered version, logging how long each took. A version that fails is logged
/// and marked failed with its reason; the others open regardless.
pub fn open_all(found: &Catalog<PathBuf>, defaults: &OpenDefaults) -> Catalog<Arc<Model>> {
    found.try_map(|name, version, config, path| {
        let started = Instant::now();
        match open(name, version, path, config, defaults) {
            Ok(model) => {
                tracing::info!(
                    model = name,
                    version,
                    path = %path.display(),
                    ms = started.elapsed().as_millis() as u64,
                    "model loaded"
                );
                Ok(Arc::new(model))
            }
            Err(e) => {
                tracing::error!(model = name, version, path = %path.display(), reason = %e.reason, "model failed to load");
                Err(e.to_string())
            }
        }
    })
}

/// Discovers and opens a whole repository with the default settings.
pub fn open_repository(dir: &Path) -> Result<Catalog<Arc<Model>>, RepositoryError> {
    Ok(open_all(
        &repository::discover(dir)?,
        &OpenDefaults::default(),
    ))
}
