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
    /// Threads one run of this model spreads over; models given the same number share them
    /// (see [`crate::engine::threads`]).
    pub threads: Option<usize>,
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
    /// Which of the version folders are served. Unset: the highest one only.
    pub version_policy: Option<VersionPolicy>,
    /// Names for versions (`stable = 2`, `canary = 3`), usable wherever a request names a
    /// version. Moving one reloads no model.
    #[serde(default)]
    pub labels: BTreeMap<String, u64>,
    /// How a version is exercised before it takes traffic.
    pub warmup: Option<Warmup>,
    /// Whether a reload loads the new copy before the old one goes (the default) or frees the
    /// old one first, for pods with no memory to hold both.
    pub reload: Option<ReloadOrder>,
}

/// Which version folders of a model are served (Triton's version policy).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The highest `n` versions.
    Latest(usize),
    /// Every version.
    All,
    /// The versions listed.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// Whether `version` is served, of the versions `all` (ascending) found on disk.
    pub fn selects(&self, version: u64, all: &[u64]) -> bool {
        match self {
            VersionPolicy::All => true,
            VersionPolicy::Specific(list) => list.contains(&version),
            VersionPolicy::Latest(n) => all.iter().rev().take(*n).any(|&v| v == version),
        }
    }
}

/// The data a version is warmed with before it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmupData {
    /// Zeros (empty strings).
    #[default]
    Zero,
    /// Uniform values in [0, 1) for floating-point inputs, zeros for the rest.
    Random,
}

/// `[warmup]`: runs made on a freshly loaded version before it is marked ready, so that its
/// first real requests do not pay for first-run allocations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Rows per warm-up run, one run (or `count`) each. Unset: the model's fixed-plan batch
    /// sizes, or 1.
    pub batch_sizes: Option<Vec<usize>>,
    /// Runs per batch size; 0 turns warm-up off.
    #[serde(default = "one")]
    pub count: usize,
    /// What the runs are fed.
    #[serde(default)]
    pub data: WarmupData,
}

fn one() -> usize {
    1
}

impl Default for Warmup {
    fn default() -> Self {
        Warmup {
            batch_sizes: None,
            count: 1,
            data: WarmupData::Zero,
        }
    }
}

/// The order of a reload's two halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadOrder {
    /// The new copy loads and warms while the old one serves; then traffic moves. Needs memory
    /// for both.
    #[default]
    LoadFirst,
    /// The old copy stops (its requests finish) and is freed before the new one loads: the
    /// model is unavailable meanwhile.
    UnloadFirst,
}

impl ModelConfig {
    /// Whether `self` and `other` differ only in their labels: moving a label needs no load.
    pub fn same_but_labels(&self, other: &ModelConfig) -> bool {
        ModelConfig {
            labels: BTreeMap::new(),
            ..self.clone()
        } == ModelConfig {
            labels: BTreeMap::new(),
            ..other.clone()
        }
    }
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
    /// Not loaded: unloaded, or not asked for in explicit model control.
    Unloaded,
}

/// One model's versions and settings.
#[derive(Debug, Clone)]
pub struct ModelEntry<T> {
    /// The settings from `config.toml` (defaults when there is none).
    pub config: ModelConfig,
    /// Versions by number.
    pub versions: BTreeMap<u64, Slot<T>>,
    /// Versions still serving what was loaded before, because loading their new file or
    /// settings failed: why.
    pub failed_reloads: BTreeMap<u64, String>,
}

/// A version's state as every protocol reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Being loaded.
    Loading,
    /// Serving.
    Ready,
    /// Could not be loaded.
    Failed,
    /// Not loaded.
    Unloaded,
}

impl<T> ModelEntry<T> {
    /// An entry with these versions and no failed reloads.
    pub fn new(config: ModelConfig, versions: BTreeMap<u64, Slot<T>>) -> ModelEntry<T> {
        ModelEntry {
            config,
            versions,
            failed_reloads: BTreeMap::new(),
        }
    }

    /// The state of `version` and why (empty when there is nothing to say).
    pub fn status(&self, version: u64) -> (State, String) {
        match self.versions.get(&version) {
            Some(Slot::Ready(_)) => match self.failed_reloads.get(&version) {
                Some(reason) => (
                    State::Ready,
                    format!("serving the copy loaded before; the new one failed: {reason}"),
                ),
                None => (State::Ready, String::new()),
            },
            Some(Slot::Loading) => (State::Loading, String::new()),
            Some(Slot::Failed(reason)) => (State::Failed, reason.clone()),
            Some(Slot::Unloaded) | None => (State::Unloaded, "unloaded".to_string()),
        }
    }
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

/// The versions there are, and the labels that name them.
fn known_versions<T>(entry: &ModelEntry<T>) -> String {
    let labels = entry
        .config
        .labels
        .iter()
        .map(|(label, v)| format!("{label} (= {v})"));
    list(entry.versions.keys().map(u64::to_string).chain(labels))
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
                .or_else(|| entry.config.labels.get(version).copied())
                .filter(|v| entry.versions.contains_key(v))
                .ok_or_else(|| LookupError::UnknownVersion {
                    model: model.to_string(),
                    version: version.to_string(),
                    known: known_versions(entry),
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
            Some(Slot::Unloaded) => Err(LookupError::NotReady {
                model: model.to_string(),
                version: number,
                reason: "unloaded; load it to serve it".to_string(),
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
            Slot::Unloaded => Slot::Unloaded,
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
            Slot::Unloaded => Slot::Unloaded,
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
                    failed_reloads: entry.failed_reloads.clone(),
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
    let mut catalog = Catalog::default();
    for name in model_names(dir)? {
        let entry = discover_model(&dir.join(&name))?;
        catalog.models.insert(name, entry);
    }
    Ok(catalog)
}

/// The names of the model folders under `dir`, sorted; hidden folders are not models.
pub fn model_names(dir: &Path) -> Result<Vec<String>, RepositoryError> {
    let dirs = sorted_dirs(dir).map_err(|error| RepositoryError {
        path: dir.to_path_buf(),
        error,
    })?;
    Ok(dirs
        .iter()
        .filter_map(|d| d.file_name()?.to_str().map(str::to_owned))
        .filter(|name| !name.starts_with('.'))
        .collect())
}

/// Whether `name` can name a model folder of a repository: one plain path component, so that
/// no request reaches outside the repository.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).components().count() == 1
}

/// Finds the versions of the model in `model_dir` that its version policy serves.
pub fn discover_model(model_dir: &Path) -> Result<ModelEntry<PathBuf>, RepositoryError> {
    let config = read_config(model_dir);
    let mut found = Vec::new();
    for version_dir in sorted_dirs(model_dir).map_err(|error| RepositoryError {
        path: model_dir.to_path_buf(),
        error,
    })? {
        let label = version_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        match label.parse::<u64>().ok().filter(|v| *v > 0) {
            Some(version) => found.push((version, version_dir)),
            None => {
                tracing::warn!(path = %version_dir.display(), "skipping folder: version folders are positive integers")
            }
        }
    }
    found.sort();
    let numbers: Vec<u64> = found.iter().map(|(v, _)| *v).collect();
    let policy = config
        .as_ref()
        .ok()
        .and_then(|c| c.version_policy.clone())
        .unwrap_or_default();
    let mut versions = BTreeMap::new();
    for (version, version_dir) in found {
        if !policy.selects(version, &numbers) {
            continue;
        }
        let file = version_dir.join(MODEL_FILE);
        let slot = match &config {
            Err(reason) => Slot::Failed(reason.clone()),
            Ok(_) if !file.is_file() => Slot::Failed(format!("{} is missing", file.display())),
            Ok(_) => Slot::Ready(file),
        };
        versions.insert(version, slot);
    }
    if numbers.is_empty() {
        tracing::warn!(
            path = %model_dir.display(),
            "model has no version folders; put its file in {}/1/{MODEL_FILE}",
            model_dir.display()
        );
    }
    Ok(ModelEntry::new(config.unwrap_or_default(), versions))
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
            ModelEntry::new(
                ModelConfig {
                    labels: BTreeMap::from([("stable".to_string(), 1)]),
                    ..ModelConfig::default()
                },
                BTreeMap::from([
                    (1, Slot::Ready("one")),
                    (2, Slot::Ready("two")),
                    (3, Slot::Failed("bad file".to_string())),
                ]),
            ),
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
            "model 'm' has no version '7'; its versions are: 1, 2, 3, stable (= 1)"
        );
        let err = c.resolve("m", "abc").expect_err("not a number");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let err = c.resolve("m", "3").expect_err("failed");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("bad file"), "{err}");
    }

    #[test]
    fn a_label_names_a_version() {
        assert_eq!(catalog().resolve("m", "stable"), Ok((1, &"one")));
        let err = catalog().resolve("m", "canary").expect_err("no such label");
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn version_policies_pick_versions() {
        let all = [1, 2, 5];
        let picked = |p: VersionPolicy| -> Vec<u64> {
            all.iter()
                .copied()
                .filter(|&v| p.selects(v, &all))
                .collect()
        };
        assert_eq!(picked(VersionPolicy::default()), vec![5]);
        assert_eq!(picked(VersionPolicy::Latest(2)), vec![2, 5]);
        assert_eq!(picked(VersionPolicy::All), vec![1, 2, 5]);
        assert_eq!(picked(VersionPolicy::Specific(vec![1, 7])), vec![1]);
    }

    #[test]
    fn config_toml_spells_policies_labels_warmup_and_reload() {
        let config: ModelConfig = toml::from_str(
            "version_policy = { latest = 2 }\nreload = \"unload-first\"\n\
             [labels]\nstable = 2\ncanary = 3\n[warmup]\nbatch_sizes = [1, 8]\ndata = \"random\"\n",
        )
        .expect("parses");
        assert_eq!(config.version_policy, Some(VersionPolicy::Latest(2)));
        assert_eq!(config.reload, Some(ReloadOrder::UnloadFirst));
        assert_eq!(config.labels.get("canary"), Some(&3));
        let warmup = config.warmup.clone().expect("warmup");
        assert_eq!(
            (warmup.batch_sizes, warmup.count, warmup.data),
            (Some(vec![1, 8]), 1, WarmupData::Random)
        );
        let all: ModelConfig = toml::from_str("version_policy = \"all\"").expect("parses");
        assert_eq!(all.version_policy, Some(VersionPolicy::All));
        let moved = ModelConfig {
            labels: BTreeMap::from([("stable".to_string(), 3)]),
            ..config.clone()
        };
        assert!(moved.same_but_labels(&config));
        assert!(!ModelConfig::default().same_but_labels(&config));
    }

    #[test]
    fn model_names_stay_inside_the_repository() {
        assert!(valid_model_name("iris"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "/abs"] {
            assert!(!valid_model_name(bad), "{bad:?}");
        }
    }
}
