//! The model repository: `models/<name>/<version>/model.onnx` with an optional
//! `models/<name>/config.toml`. Discovers what is there, loads it, and resolves
//! `(name, version)` requests, "latest" included, with errors that say what does exist.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Classify, ErrorKind};

/// The model file every version folder holds.
pub const MODEL_FILE: &str = "model.onnx";
/// The optional per-model settings file, beside the version folders.
pub const CONFIG_FILE: &str = "config.toml";

/// Per-model settings from `models/<name>/config.toml`. Every field is optional; unset fields
/// take the server's defaults. Unknown fields are an error, so a typo never goes unnoticed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Worker threads that run this model.
    pub workers: Option<usize>,
    /// Requests that may wait for a worker before new ones are refused.
    pub queue_capacity: Option<usize>,
    /// Most rows run as one batch; 0 turns batching off.
    pub max_batch_size: Option<usize>,
    /// How long a partial batch may wait for more requests, in microseconds.
    pub max_queue_delay_us: Option<u64>,
    /// Batch sizes that get a plan optimised for exactly that many rows; a batch of another
    /// size runs the plan for any size. Empty: that plan only.
    pub preferred_batch_sizes: Option<Vec<usize>>,
    /// The value that replaces nulls in floating-point inputs fed from table columns
    /// (`predictd batch`, the Python package); `nan` is allowed. Unset: a null is an error.
    pub fill_null: Option<f64>,
}

/// Where one model version stands.
#[derive(Debug, Clone)]
pub enum Slot<T> {
    /// Found, not loaded yet.
    Loading,
    /// Loaded and serving.
    Ready(T),
    /// Could not be loaded; the reason is for operators and clients alike.
    Failed(String),
}

/// One model's versions and settings.
#[derive(Debug, Clone)]
pub struct ModelEntry<T> {
    /// The settings from `config.toml` (defaults when there is none).
    pub config: ModelConfig,
    /// Versions by number.
    pub versions: BTreeMap<u64, Slot<T>>,
}

/// Every model of a repository, by name. `T` is what a ready version holds: a path before
/// loading, a [`Model`] after, and whatever a front end wraps around the model.
#[derive(Debug, Clone)]
pub struct Catalog<T> {
    /// Models by name.
    pub models: BTreeMap<String, ModelEntry<T>>,
}

impl<T> Default for Catalog<T> {
    fn default() -> Self {
        Catalog {
            models: BTreeMap::new(),
        }
    }
}

/// Why a request names no servable model version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No model by that name.
    #[error("model '{model}' not found; the repository has: {known}")]
    UnknownModel {
        /// The name asked for.
        model: String,
        /// The models there are.
        known: String,
    },
    /// The model has no such version.
    #[error("model '{model}' has no version '{version}'; its versions are: {known}")]
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
        /// The versions there are.
        known: String,
    },
    /// The version exists but cannot serve now.
    #[error("model '{model}' version {version} is not ready: {reason}")]
    NotReady {
        /// The model.
        model: String,
        /// The version.
        version: u64,
        /// Loading, or why it failed.
        reason: String,
    },
}

impl Classify for LookupError {
    fn kind(&self) -> ErrorKind {
        match self {
            LookupError::UnknownModel { .. } | LookupError::UnknownVersion { .. } => {
                ErrorKind::NotFound
            }
            LookupError::NotReady { .. } => ErrorKind::Unavailable,
        }
    }
}

fn list<I: IntoIterator<Item = D>, D: fmt::Display>(items: I) -> String {
    let all: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if all.is_empty() {
        "(none)".to_string()
    } else {
        all.join(", ")
    }
}

impl<T> Catalog<T> {
    /// Resolves a model name and version string ("" = the highest ready version).
    pub fn resolve(&self, model: &str, version: &str) -> Result<(u64, &T), LookupError> {
        let entry = self
            .models
            .get(model)
            .ok_or_else(|| LookupError::UnknownModel {
                model: model.to_string(),
                known: list(self.models.keys()),
            })?;
        let number = if version.is_empty() {
            // The highest ready version serves "latest"; if none is ready, report the highest.
            let ready = entry
                .versions
                .iter()
                .rev()
                .find(|(_, slot)| matches!(slot, Slot::Ready(_)));
            match ready.or_else(|| entry.versions.iter().next_back()) {
                Some((&v, _)) => v,
                None => {
                    return Err(LookupError::UnknownVersion {
                        model: model.to_string(),
                        version: "latest".to_string(),
                        known: format!("(none: put the model in {model}/1/{MODEL_FILE})"),
                    });
                }
            }
        } else {
            version
                .parse::<u64>()
                .ok()
                .filter(|v| entry.versions.contains_key(v))
                .ok_or_else(|| LookupError::UnknownVersion {
                    model: model.to_string(),
                    version: version.to_string(),
                    known: list(entry.versions.keys()),
                })?
        };
        match entry.versions.get(&number) {
            Some(Slot::Ready(t)) => Ok((number, t)),
            Some(Slot::Loading) => Err(LookupError::NotReady {
                model: model.to_string(),
                version: number,
                reason: "still loading".to_string(),
            }),
            Some(Slot::Failed(reason)) => Err(LookupError::NotReady {
                model: model.to_string(),
                version: number,
                reason: format!("failed to load: {reason}"),
            }),
            None => Err(LookupError::UnknownVersion {
                model: model.to_string(),
                version: number.to_string(),
                known: list(entry.versions.keys()),
            }),
        }
    }

    /// The versions of `model` that can serve now, ascending (none for an unknown model).
    pub fn ready_versions(&self, model: &str) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.models
            .get(model)
            .into_iter()
            .flat_map(|entry| &entry.versions)
            .filter(|(_, slot)| matches!(slot, Slot::Ready(_)))
            .map(|(&v, _)| v)
    }

    /// The same catalog with every ready version marked as still loading: what a server shows
    /// between discovering a repository and loading it.
    pub fn pending<U>(&self) -> Catalog<U> {
        self.map_slots(|_, _, _, slot| match slot {
            Slot::Failed(reason) => Slot::Failed(reason.clone()),
            Slot::Loading | Slot::Ready(_) => Slot::Loading,
        })
    }

    /// The same catalog with every ready value transformed; failures of `f` mark that version
    /// failed.
    pub fn try_map<U>(
        &self,
        mut f: impl FnMut(&str, u64, &ModelConfig, &T) -> Result<U, String>,
    ) -> Catalog<U> {
        self.map_slots(|name, version, config, slot| match slot {
            Slot::Loading => Slot::Loading,
            Slot::Failed(reason) => Slot::Failed(reason.clone()),
            Slot::Ready(t) => match f(name, version, config, t) {
                Ok(u) => Slot::Ready(u),
                Err(reason) => Slot::Failed(reason),
            },
        })
    }

    fn map_slots<U>(
        &self,
        mut f: impl FnMut(&str, u64, &ModelConfig, &Slot<T>) -> Slot<U>,
    ) -> Catalog<U> {
        let models = self
            .models
            .iter()
            .map(|(name, entry)| {
                let versions = entry
                    .versions
                    .iter()
                    .map(|(&v, slot)| (v, f(name, v, &entry.config, slot)))
                    .collect();
                let entry = ModelEntry {
                    config: entry.config.clone(),
                    versions,
                };
                (name.clone(), entry)
            })
            .collect();
        Catalog { models }
    }
}

/// Why the repository itself cannot be read (a fault of the whole server, not one model).
#[derive(Debug, thiserror::Error)]
#[error("cannot read the model repository {}: {error}", .path.display())]
pub struct RepositoryError {
    /// The folder.
    pub path: PathBuf,
    /// The I/O error.
    pub error: std::io::Error,
}

/// Finds every model and version under `dir`; nothing is loaded yet. Folders that are not
/// models are skipped with a warning, never silently.
pub fn discover(dir: &Path) -> Result<Catalog<PathBuf>, RepositoryError> {
    let io = |error| RepositoryError {
        path: dir.to_path_buf(),
        error,
    };
    let mut catalog = Catalog::default();
    for model_dir in sorted_dirs(dir).map_err(io)? {
        let Some(name) = model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
        else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let config = read_config(&model_dir);
        let mut versions = BTreeMap::new();
        for version_dir in sorted_dirs(&model_dir).map_err(io)? {
            let label = version_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("");
            let Some(version) = label.parse::<u64>().ok().filter(|v| *v > 0) else {
                tracing::warn!(path = %version_dir.display(), "skipping folder: version folders are positive integers");
                continue;
            };
            let file = version_dir.join(MODEL_FILE);
            let slot = match &config {
                Err(reason) => Slot::Failed(reason.clone()),
                Ok(_) if !file.is_file() => Slot::Failed(format!("{} is missing", file.display())),
                Ok(_) => Slot::Ready(file),
            };
            versions.insert(version, slot);
        }
        if versions.is_empty() {
            tracing::warn!(
                path = %model_dir.display(),
                "model has no version folders; put its file in {}/1/{MODEL_FILE}",
                model_dir.display()
            );
        }
        let config = config.unwrap_or_default();
        catalog.models.insert(name, ModelEntry { config, versions });
    }
    Ok(catalog)
}

/// The settings in `model_dir/config.toml`; defaults when there is none.
pub fn read_config(model_dir: &Path) -> Result<ModelConfig, String> {
    let path = model_dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelConfig::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn sorted_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog<&'static str> {
        let mut c = Catalog::default();
        c.models.insert(
            "m".to_string(),
            ModelEntry {
                config: ModelConfig::default(),
                versions: BTreeMap::from([
                    (1, Slot::Ready("one")),
                    (2, Slot::Ready("two")),
                    (3, Slot::Failed("bad file".to_string())),
                ]),
            },
        );
        c
    }

    #[test]
    fn latest_is_the_highest_ready_version() {
        assert_eq!(catalog().resolve("m", ""), Ok((2, &"two")));
        assert_eq!(catalog().resolve("m", "1"), Ok((1, &"one")));
    }

    #[test]
    fn lookup_errors_say_what_exists() {
        let c = catalog();
        let err = c.resolve("x", "").expect_err("unknown model");
        assert_eq!(
            err.to_string(),
            "model 'x' not found; the repository has: m"
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let err = c.resolve("m", "7").expect_err("unknown version");
        assert_eq!(
            err.to_string(),
            "model 'm' has no version '7'; its versions are: 1, 2, 3"
        );
        let err = c.resolve("m", "abc").expect_err("not a number");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let err = c.resolve("m", "3").expect_err("failed");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("bad file"), "{err}");
    }
}
