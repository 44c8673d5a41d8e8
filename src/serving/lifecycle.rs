//! Changing what is served while it serves: the start-up load, repository polls, `SIGHUP`
//! rescans, and the explicit load and unload of the KServe repository API all come through
//! here, one change at a time.
//!
//! A swap never leaves a gap: the new copy of a version is opened, optimised and warmed while
//! the old one serves, then one catalog swap moves new requests to it. Requests that already
//! hold the old catalog finish on the old copy, whose worker threads then end and whose memory
//! is freed. A load that fails leaves what was serving in place, and says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};

use crate::engine::open::{OpenDefaults, open};
use crate::engine::repository::{
    self, MODEL_FILE, ModelConfig, ModelEntry, ReloadOrder, RepositoryError, Slot,
};
use crate::engine::warmup::warm;
use crate::error::{Classify, ErrorKind};
use crate::serving::memory::{self, Budget};
use crate::serving::registry::Registry;
use crate::serving::scheduler::{Scheduler, SchedulerConfig};
use crate::serving::watch::{Decision, Hashes, ModelPrint, Watch};

/// How the served models may change (Triton's model control modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelControl {
    /// Every model of the repository loads at start-up; only `SIGHUP` rescans it.
    #[default]
    None,
    /// As `None`, and the repository is polled: changes on disk are applied once stable.
    Poll,
    /// Only the start-up models (`--load-model`) load; the repository API loads and unloads.
    Explicit,
}

impl std::str::FromStr for ModelControl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(ModelControl::None),
            "poll" => Ok(ModelControl::Poll),
            "explicit" => Ok(ModelControl::Explicit),
            other => Err(format!("'{other}': expected none, poll or explicit")),
        }
    }
}

/// How the lifecycle runs.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// The model control mode.
    pub control: ModelControl,
    /// How often the repository is polled (poll mode).
    pub poll_interval: Duration,
    /// The models explicit mode loads at start-up; `*` for all.
    pub startup_models: Vec<String>,
    /// The memory limit loads are checked against.
    pub budget: Budget,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            control: ModelControl::None,
            poll_interval: Duration::from_secs(10),
            startup_models: Vec::new(),
            budget: Budget::default(),
        }
    }
}

/// What a load request brings beyond the model's name: Triton's load parameters.
#[derive(Debug, Default)]
pub struct LoadRequest {
    /// `config`: settings that replace the model's config.toml, as JSON with its fields.
    pub config: Option<String>,
    /// `file:<version>/model.onnx`: model files, uploaded.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Why a repository change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The repository API changes models only in explicit model control.
    #[error(
        "loading and unloading models through the API needs --model-control explicit; this server runs '{0}'"
    )]
    NotExplicit(&'static str),
    /// The name cannot name a model folder.
    #[error("'{0}' is not a model name: one folder name, not hidden, no '/' or '..'")]
    BadName(String),
    /// Nothing by that name.
    #[error("model '{model}' not found{where_}")]
    NotFound {
        /// The name asked for.
        model: String,
        /// Where it was looked for.
        where_: String,
    },
    /// A load parameter is malformed.
    #[error("load of model '{model}': parameter '{parameter}': {reason}")]
    BadParameter {
        /// The model.
        model: String,
        /// The parameter's name.
        parameter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Some versions did not load; what served before still serves.
    #[error("model '{model}': {}", .failures.join("; "))]
    Load {
        /// The model.
        model: String,
        /// Why each version failed.
        failures: Vec<String>,
        /// Whether memory was the reason.
        memory: bool,
    },
    /// Uploaded files could not be stored.
    #[error("load of model '{model}': cannot store the uploaded files: {error}")]
    Store {
        /// The model.
        model: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The repository cannot be read.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

impl Classify for LifecycleError {
    fn kind(&self) -> ErrorKind {
        match self {
            LifecycleError::NotExplicit(_) => ErrorKind::FailedPrecondition,
            LifecycleError::BadName(_) | LifecycleError::BadParameter { .. } => {
                ErrorKind::InvalidArgument
            }
            LifecycleError::NotFound { .. } => ErrorKind::NotFound,
            LifecycleError::Load { memory: true, .. } => ErrorKind::ResourceExhausted,
            LifecycleError::Load { .. } => ErrorKind::InvalidArgument,
            LifecycleError::Store { .. } | LifecycleError::Repository(_) => ErrorKind::Internal,
        }
    }
}

/// Where a loaded model came from, and what it looked like then.
#[derive(Debug)]
struct Loaded {
    /// Its folder: the repository's, or the copy of an upload.
    dir: PathBuf,
    /// Settings given by a load request in place of its config.toml.
    overrides: Option<ModelConfig>,
    /// What was on disk when it was last applied (applied even if it failed, so that a broken
    /// file is not retried on every poll).
    print: ModelPrint,
}

impl Loaded {
    fn uploaded(&self, repository: &Path) -> bool {
        !self.dir.starts_with(repository)
    }
}

/// What the changes so far have left, guarded so that changes happen one at a time.
#[derive(Debug, Default)]
struct State {
    loaded: BTreeMap<String, Loaded>,
    hashes: Hashes,
    watch: Watch,
}

/// A model found on disk, ready to apply.
struct Found {
    entry: ModelEntry<PathBuf>,
    print: ModelPrint,
    /// When its files were last written.
    written: Option<std::time::SystemTime>,
}

/// What to do with one version.
enum Plan {
    Keep(Scheduler),
    Load(PathBuf),
    Fail(String),
}

/// The one place the served models change.
#[derive(Debug)]
pub struct Lifecycle {
    repository: PathBuf,
    registry: Arc<Registry>,
    scheduler: SchedulerConfig,
    open: OpenDefaults,
    config: LifecycleConfig,
    /// Where uploaded model files are copied to be opened: made at the first upload (so that
    /// a server that takes none needs no writable temporary folder), removed with the server.
    uploads: PathBuf,
    state: Mutex<State>,
    /// Old copies whose requests are still finishing.
    retiring: Arc<watch::Sender<usize>>,
}

impl Lifecycle {
    /// A lifecycle changing `registry` from the repository `repository`.
    pub fn new(
        repository: PathBuf,
        registry: Arc<Registry>,
        scheduler: SchedulerConfig,
        open: OpenDefaults,
        config: LifecycleConfig,
    ) -> Lifecycle {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let uploads =
            std::env::temp_dir().join(format!("predictd-uploads-{}-{stamp}", std::process::id()));
        Lifecycle {
            repository,
            registry,
            scheduler,
            open,
            config,
            uploads,
            state: Mutex::default(),
            retiring: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The model control mode.
    pub fn control(&self) -> ModelControl {
        self.config.control
    }

    /// Completes once every copy replaced or unloaded so far has finished its requests and
    /// been freed.
    pub async fn retired(&self) {
        let mut count = self.retiring.subscribe();
        let _ = count.wait_for(|&n| n == 0).await;
    }

    /// Loads the models the control mode starts with; the others are listed as unloaded.
    pub async fn start(&self) -> Result<(), RepositoryError> {
        let mut state = self.state.lock().await;
        let dir = self.repository.clone();
        let found = blocking(move || repository::discover(&dir)).await?;
        let wanted = |name: &str| match self.config.control {
            ModelControl::Explicit => self
                .config
                .startup_models
                .iter()
                .any(|m| m == "*" || m == name),
            ModelControl::None | ModelControl::Poll => true,
        };
        let mut pending = found.pending();
        for (name, entry) in &mut pending.models {
            if !wanted(name) {
                entry
                    .versions
                    .values_mut()
                    .for_each(|s| *s = Slot::Unloaded);
            }
        }
        self.registry.publish(pending);
        for name in &self.config.startup_models {
            if name != "*" && !found.models.contains_key(name) {
                tracing::error!(model = %name, repository = %self.repository.display(), "--load-model names no model of the repository");
            }
        }
        for name in found.models.keys().filter(|n| wanted(n)) {
            let dir = self.repository.join(name);
            let found = match self.look(&mut state, dir.clone()).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "cannot read the model's folder");
                    let versions = [(1, Slot::Failed(e.to_string()))].into();
                    self.registry.replace(
                        name,
                        Some(ModelEntry::new(ModelConfig::default(), versions)),
                    );
                    continue;
                }
            };
            // Failures are logged and listed; the other models serve regardless.
            let _ = self.apply(&mut state, name, dir, None, found, false).await;
        }
        Ok(())
    }

    /// Loads (or, if it is loaded, reloads) model `name` as the repository API asks. The load
    /// runs to its end even if the caller goes away meanwhile.
    pub async fn load(
        self: &Arc<Self>,
        name: &str,
        request: LoadRequest,
    ) -> Result<(), LifecycleError> {
        let this = Arc::clone(self);
        let name = name.to_string();
        detached(async move { this.load_now(&name, request).await }).await
    }

    /// Stops serving model `name`: new requests are refused, those in flight finish. Runs to
    /// its end even if the caller goes away meanwhile.
    pub async fn unload(self: &Arc<Self>, name: &str) -> Result<(), LifecycleError> {
        let this = Arc::clone(self);
        let name = name.to_string();
        detached(async move { this.unload_now(&name).await }).await
    }

    async fn load_now(&self, name: &str, request: LoadRequest) -> Result<(), LifecycleError> {
        self.explicit_only()?;
        if !repository::valid_model_name(name) {
            return Err(LifecycleError::BadName(name.to_string()));
        }
        let overrides = match &request.config {
            None => None,
            Some(json) if json.trim().is_empty() => None,
            Some(json) => Some(serde_json::from_str::<ModelConfig>(json).map_err(|e| {
                LifecycleError::BadParameter {
                    model: name.to_string(),
                    parameter: "config".to_string(),
                    reason: format!(
                        "{e} (a JSON object with the fields of config.toml, e.g. {{\"max_batch_size\": 8}})"
                    ),
                }
            })?),
        };
        let mut state = self.state.lock().await;
        let dir = if request.files.is_empty() {
            let dir = self.repository.join(name);
            if !dir.is_dir() {
                return Err(LifecycleError::NotFound {
                    model: name.to_string(),
                    where_: format!(" in the repository {}", self.repository.display()),
                });
            }
            dir
        } else {
            self.store_upload(name, &request.files)?
        };
        let found = self.look(&mut state, dir.clone()).await?;
        let result = self
            .apply(&mut state, name, dir, overrides, found, true)
            .await;
        self.forget_unused_uploads(&state);
        result
    }

    async fn unload_now(&self, name: &str) -> Result<(), LifecycleError> {
        self.explicit_only()?;
        let mut state = self.state.lock().await;
        let catalog = self.registry.snapshot();
        let Some(entry) = catalog.models.get(name) else {
            return Err(LifecycleError::NotFound {
                model: name.to_string(),
                where_: String::new(),
            });
        };
        let old = ready(entry);
        let versions = entry
            .versions
            .keys()
            .map(|&v| (v, Slot::Unloaded))
            .collect();
        self.registry
            .replace(name, Some(ModelEntry::new(entry.config.clone(), versions)));
        state.loaded.remove(name);
        self.forget_unused_uploads(&state);
        tracing::info!(model = name, "model unloaded; requests in flight finish");
        drop(retire(&self.retiring, name, old));
        Ok(())
    }

    /// Applies what changed in the repository since it was last looked at: at once (`SIGHUP`),
    /// or only changes two polls in a row agree on (`settle`). Explicit mode rescans only the
    /// models it has loaded.
    pub async fn rescan(&self, settle: bool) {
        let mut state = self.state.lock().await;
        let mut names: Vec<String> = state
            .loaded
            .iter()
            .filter(|(_, l)| !l.uploaded(&self.repository))
            .map(|(name, _)| name.clone())
            .collect();
        if self.config.control != ModelControl::Explicit {
            let dir = self.repository.clone();
            match blocking(move || repository::model_names(&dir)).await {
                Ok(found) => names.extend(found),
                Err(e) => {
                    tracing::error!(error = %e, "cannot rescan the repository");
                    return;
                }
            }
        }
        names.sort();
        names.dedup();
        for name in names {
            if state
                .loaded
                .get(&name)
                .is_some_and(|l| l.uploaded(&self.repository))
            {
                continue;
            }
            let dir = self.repository.join(&name);
            let found = if dir.is_dir() {
                match self.look(&mut state, dir.clone()).await {
                    Ok(found) => Some(found),
                    Err(e) => {
                        tracing::error!(model = %name, error = %e, "cannot read the model's folder");
                        continue;
                    }
                }
            } else {
                None
            };
            let now = found.as_ref().map(|f| f.print.clone());
            let applied = state.loaded.get(&name).map(|l| &l.print);
            let decision = if settle {
                let applied = applied.cloned();
                // Written at least an interval ago (or stamped in the future: copied with its
                // times from elsewhere, not being written here).
                let quiet = found
                    .as_ref()
                    .and_then(|f| f.written)
                    .is_none_or(|written| {
                        written
                            .elapsed()
                            .map_or(true, |age| age >= self.config.poll_interval)
                    });
                state.watch.observe(&name, now, applied.as_ref(), quiet)
            } else if now.as_ref() == applied {
                Decision::Unchanged
            } else {
                Decision::Apply
            };
            if decision != Decision::Apply {
                continue;
            }
            match found {
                Some(found) => {
                    let overrides = state.loaded.get(&name).and_then(|l| l.overrides.clone());
                    let _ = self
                        .apply(&mut state, &name, dir, overrides, found, false)
                        .await;
                }
                None => self.remove(&mut state, &name),
            }
        }
    }

    /// Rescans on `SIGHUP` (as heard by `hangups`, from [`listen_for_hangups`]), and in poll
    /// mode every poll interval, until the task is dropped.
    pub async fn run(self: Arc<Self>, mut hangups: Option<tokio::signal::unix::Signal>) {
        let interval = self.config.poll_interval.max(Duration::from_millis(10));
        // A change seen once is looked at again sooner, so that it is applied about one
        // interval after it appears rather than two.
        let settle = (interval / 4).min(Duration::from_secs(1));
        loop {
            let wait = match self.config.control {
                ModelControl::Poll if self.state.lock().await.watch.pending() => settle,
                ModelControl::Poll => interval,
                ModelControl::None | ModelControl::Explicit => Duration::from_secs(86_400),
            };
            let hangup = async {
                match hangups.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {
                    if self.config.control == ModelControl::Poll {
                        self.rescan(true).await;
                    }
                }
                Some(()) = hangup => {
                    tracing::info!("SIGHUP: rescanning the model repository");
                    self.rescan(false).await;
                }
            }
        }
    }

    fn explicit_only(&self) -> Result<(), LifecycleError> {
        match self.config.control {
            ModelControl::Explicit => Ok(()),
            ModelControl::None => Err(LifecycleError::NotExplicit("none")),
            ModelControl::Poll => Err(LifecycleError::NotExplicit("poll")),
        }
    }

    /// Reads the model in `dir` and what its files hold, off the reactor.
    async fn look(&self, state: &mut State, dir: PathBuf) -> Result<Found, RepositoryError> {
        let mut hashes = std::mem::take(&mut state.hashes);
        let (hashes, found) = blocking(move || {
            let found = repository::discover_model(&dir).map(|entry| {
                let (print, written) = hashes.print(&dir, &entry);
                Found {
                    entry,
                    print,
                    written,
                }
            });
            (hashes, found)
        })
        .await;
        state.hashes = hashes;
        found
    }

    /// Makes what `found` describes serve as model `name`: unchanged versions keep their
    /// workers (unless `force`), changed and new ones are loaded and warmed before they take
    /// traffic, and the versions it no longer lists are retired once something else serves.
    async fn apply(
        &self,
        state: &mut State,
        name: &str,
        dir: PathBuf,
        overrides: Option<ModelConfig>,
        found: Found,
        force: bool,
    ) -> Result<(), LifecycleError> {
        let Found { entry, print, .. } = found;
        // A copy, not the catalog: holding the catalog would hold every worker's queue open,
        // and unload-first waits for the old workers to end.
        let mut old = self.registry.snapshot().models.get(name).cloned();
        let config_error = match (&overrides, &print.config) {
            (None, Err(reason)) => Some(reason.clone()),
            _ => None,
        };
        let config = match (&overrides, &print.config, &old) {
            (Some(o), _, _) => o.clone(),
            (None, Ok(c), _) => c.clone(),
            (None, Err(_), Some(e)) => e.config.clone(),
            (None, Err(_), None) => ModelConfig::default(),
        };
        let settings_kept = old
            .as_ref()
            .is_some_and(|e| e.config.same_but_labels(&config));
        let previous = state.loaded.get(name).map(|l| &l.print);

        let mut plans: BTreeMap<u64, Plan> = BTreeMap::new();
        for (&v, slot) in &entry.versions {
            let plan = match (slot, &config_error) {
                (_, Some(reason)) => Plan::Fail(reason.clone()),
                (Slot::Ready(path), None) => {
                    let same_file = previous.and_then(|p| p.files.get(&v)) == print.files.get(&v);
                    match ready_in(&old, v) {
                        Some(s) if !force && settings_kept && same_file => Plan::Keep(s),
                        _ => Plan::Load(path.clone()),
                    }
                }
                (Slot::Failed(reason), None) => Plan::Fail(reason.clone()),
                (Slot::Loading | Slot::Unloaded, None) => continue,
            };
            plans.insert(v, plan);
        }

        // Unload-first: the old copies of what is reloaded stop, and their memory is freed,
        // before the new ones load.
        if config.reload == Some(ReloadOrder::UnloadFirst)
            && let Some(current) = old.as_mut()
        {
            let going: Vec<u64> = plans
                .iter()
                .filter(|(v, p)| {
                    matches!(p, Plan::Load(_))
                        && matches!(current.versions.get(v), Some(Slot::Ready(_)))
                })
                .map(|(v, _)| *v)
                .collect();
            if !going.is_empty() {
                let mut stopped = Vec::new();
                for v in &going {
                    if let Some(Slot::Ready(s)) = current.versions.insert(*v, Slot::Loading) {
                        stopped.push(s);
                    }
                }
                self.registry.replace(name, Some(current.clone()));
                tracing::info!(model = name, versions = ?going, "unload-first: the old copies stop before the new ones load");
                let _ = retire(&self.retiring, name, stopped).await;
            }
        }

        // Versions with no copy serving show LOADING while they load.
        let loading: Vec<u64> = plans
            .iter()
            .filter(|(v, p)| matches!(p, Plan::Load(_)) && ready_in(&old, **v).is_none())
            .map(|(v, _)| *v)
            .collect();
        if !loading.is_empty() {
            let mut interim = old
                .clone()
                .unwrap_or_else(|| ModelEntry::new(config.clone(), BTreeMap::new()));
            for v in loading {
                interim.versions.insert(v, Slot::Loading);
            }
            self.registry.replace(name, Some(interim));
        }

        // An upload is named as its parameter was, not by where its copy sits.
        let shown = |path: &Path| match path.strip_prefix(&self.uploads) {
            Ok(copy) => format!(
                "file:{}",
                copy.components().skip(2).collect::<PathBuf>().display()
            ),
            Err(_) => path.display().to_string(),
        };

        let mut versions = BTreeMap::new();
        let mut failed_reloads = BTreeMap::new();
        let mut failures = Vec::new();
        let mut memory = false;
        for (v, plan) in plans {
            let outcome = match plan {
                Plan::Keep(s) => Ok(s),
                Plan::Load(path) => {
                    let shown = shown(&path);
                    self.load_version(name, v, path, shown, &config)
                        .await
                        .map_err(|(over_budget, reason)| {
                            memory |= over_budget;
                            reason
                        })
                }
                Plan::Fail(reason) => Err(reason),
            };
            match outcome {
                Ok(s) => {
                    versions.insert(v, Slot::Ready(s));
                }
                Err(reason) => {
                    failures.push(format!("version {v}: {reason}"));
                    match ready_in(&old, v) {
                        Some(s) => {
                            failed_reloads.insert(v, reason);
                            versions.insert(v, Slot::Ready(s));
                        }
                        _ => {
                            versions.insert(v, Slot::Failed(reason));
                        }
                    }
                }
            }
        }
        // Never lose a model that was serving: while none of the versions now listed serves,
        // the ones that served stay.
        if !versions.values().any(|s| matches!(s, Slot::Ready(_)))
            && let Some(old) = &old
        {
            for (v, s) in ready_versions(old) {
                versions.entry(v).or_insert(Slot::Ready(s));
            }
        }
        let kept: Vec<&Scheduler> = versions
            .values()
            .filter_map(|s| match s {
                Slot::Ready(s) => Some(s),
                _ => None,
            })
            .collect();
        let leaving: Vec<Scheduler> = old
            .take()
            .as_ref()
            .map(ready)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !kept.iter().any(|k| Arc::ptr_eq(k.model(), s.model())))
            .collect();
        let serving: Vec<u64> = versions
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Ready(_)))
            .map(|(v, _)| *v)
            .collect();
        let mut entry = ModelEntry::new(config, versions);
        entry.failed_reloads = failed_reloads;
        self.registry.replace(name, Some(entry));
        tracing::info!(
            model = name,
            versions = ?serving,
            retiring = leaving.len(),
            "model applied"
        );
        drop(retire(&self.retiring, name, leaving));
        state.loaded.insert(
            name.to_string(),
            Loaded {
                dir,
                overrides,
                print,
            },
        );
        if failures.is_empty() {
            Ok(())
        } else {
            for failure in &failures {
                tracing::error!(model = name, reason = %failure, "model version failed to load");
            }
            Err(LifecycleError::Load {
                model: name.to_string(),
                failures,
                memory,
            })
        }
    }

    /// Removes a model whose folder is gone (poll mode, once two polls agree).
    fn remove(&self, state: &mut State, name: &str) {
        let catalog = self.registry.snapshot();
        let old = catalog.models.get(name).map(ready).unwrap_or_default();
        self.registry.replace(name, None);
        state.loaded.remove(name);
        tracing::info!(model = name, "model folder removed: model unloaded");
        drop(retire(&self.retiring, name, old));
    }

    /// Opens, warms and starts one version, off the reactor, if memory allows. The error says
    /// whether memory was the reason.
    async fn load_version(
        &self,
        name: &str,
        version: u64,
        path: PathBuf,
        shown: String,
        config: &ModelConfig,
    ) -> Result<Scheduler, (bool, String)> {
        let name = name.to_string();
        let config = config.clone();
        let open_defaults = self.open.clone();
        let scheduler = self.scheduler.overridden_by(&config);
        let budget = self.config.budget;
        blocking(move || {
            let started = Instant::now();
            let file_bytes = std::fs::metadata(&path)
                .map_err(|e| (false, format!("{shown}: {e}")))?
                .len();
            let plans = 1 + config
                .preferred_batch_sizes
                .as_ref()
                .unwrap_or(&open_defaults.preferred_batch_sizes)
                .len();
            budget
                .check(memory::estimate(file_bytes, plans))
                .map_err(|e| (true, e.to_string()))?;
            let opened = std::panic::catch_unwind(|| {
                open(&name, version, &path, &config, &open_defaults)
            });
            let model = match opened {
                Ok(Ok(model)) => model,
                Ok(Err(e)) => return Err((false, format!("{shown} does not load: {}", e.reason))),
                Err(_) => {
                    return Err((
                        false,
                        format!("{shown} does not load: the ONNX loader panicked on it"),
                    ));
                }
            };
            let loaded_ms = started.elapsed().as_millis() as u64;
            warm(&model, &config.warmup.clone().unwrap_or_default()).map_err(|e| {
                (
                    false,
                    format!(
                        "{shown}: the warm-up run failed ({e}); set [warmup] count = 0 in its config.toml to skip it"
                    ),
                )
            })?;
            let scheduler = Scheduler::start(Arc::new(model), scheduler)
                .map_err(|e| (false, format!("cannot start worker threads: {e}")))?
                .loaded_in(started.elapsed());
            // Opening and optimising freed as much as the model keeps.
            memory::release_free_memory();
            tracing::info!(
                model = %name,
                version,
                path = %shown,
                ms = started.elapsed().as_millis() as u64,
                load_ms = loaded_ms,
                rss_mib = memory::resident_bytes().unwrap_or(0) >> 20,
                "model loaded"
            );
            Ok(scheduler)
        })
        .await
    }

    /// Copies uploaded files into a fresh folder for `name`, checking every path.
    fn store_upload(
        &self,
        name: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<PathBuf, LifecycleError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = self.uploads.join(name).join(stamp.to_string());
        for (key, _) in files {
            upload_version(key).map_err(|reason| LifecycleError::BadParameter {
                model: name.to_string(),
                parameter: key.clone(),
                reason,
            })?;
        }
        for (key, bytes) in files {
            let Ok(version) = upload_version(key) else {
                continue;
            };
            let version_dir = dir.join(version.to_string());
            std::fs::create_dir_all(&version_dir)
                .and_then(|()| std::fs::write(version_dir.join(MODEL_FILE), bytes))
                .map_err(|error| LifecycleError::Store {
                    model: name.to_string(),
                    error,
                })?;
        }
        Ok(dir)
    }

    /// Deletes the copies of uploads no loaded model comes from: their bytes are in memory.
    fn forget_unused_uploads(&self, state: &State) {
        let Ok(models) = std::fs::read_dir(&self.uploads) else {
            return;
        };
        for model in models.flatten() {
            let Ok(copies) = std::fs::read_dir(model.path()) else {
                continue;
            };
            for copy in copies.flatten() {
                let path = copy.path();
                if !state.loaded.values().any(|l| l.dir == path) {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        // Nothing to remove if nothing was ever uploaded.
        let _ = std::fs::remove_dir_all(&self.uploads);
    }
}

/// Starts listening for `SIGHUP`. Called before the server reports itself ready: once a
/// listener exists, the signal no longer ends the process (its default), so an operator's
/// `kill -HUP` can never stop a serving server.
pub fn listen_for_hangups() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; it will not rescan the repository");
            None
        }
    }
}

/// The version an upload parameter names: `file:<version>/model.onnx`, nothing else, so that
/// no upload writes outside its folder.
fn upload_version(key: &str) -> Result<u64, String> {
    let expected = || format!("expected file:<version>/{MODEL_FILE}, a positive version number");
    let path = key.strip_prefix("file:").ok_or_else(expected)?;
    let (version, file) = path.split_once('/').ok_or_else(expected)?;
    if file != MODEL_FILE {
        return Err(expected());
    }
    version
        .parse::<u64>()
        .ok()
        .filter(|v| *v > 0 && version.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(expected)
}

/// The scheduler serving version `v` in `entry`, if one does.
fn ready_in(entry: &Option<ModelEntry<Scheduler>>, v: u64) -> Option<Scheduler> {
    match entry.as_ref()?.versions.get(&v)? {
        Slot::Ready(s) => Some(s.clone()),
        _ => None,
    }
}

fn ready_versions(entry: &ModelEntry<Scheduler>) -> Vec<(u64, Scheduler)> {
    entry
        .versions
        .iter()
        .filter_map(|(&v, slot)| match slot {
            Slot::Ready(s) => Some((v, s.clone())),
            _ => None,
        })
        .collect()
}

fn ready(entry: &ModelEntry<Scheduler>) -> Vec<Scheduler> {
    ready_versions(entry).into_iter().map(|(_, s)| s).collect()
}

/// Lets schedulers that no longer serve finish: their worker threads end once the requests
/// holding them are answered; then their memory is freed. The returned task ends then.
fn retire(
    retiring: &Arc<watch::Sender<usize>>,
    name: &str,
    schedulers: Vec<Scheduler>,
) -> tokio::task::JoinHandle<()> {
    let name = name.to_string();
    let retiring = Arc::clone(retiring);
    retiring.send_modify(|n| *n += 1);
    let versions: Vec<u64> = schedulers.iter().map(|s| s.model().version()).collect();
    let threads: Vec<_> = schedulers
        .iter()
        .flat_map(Scheduler::take_threads)
        .collect();
    drop(schedulers);
    tokio::task::spawn_blocking(move || {
        if !threads.is_empty() {
            for thread in threads {
                let _ = thread.join();
            }
            memory::release_free_memory();
            tracing::info!(
                model = %name,
                versions = ?versions,
                rss_mib = memory::resident_bytes().unwrap_or(0) >> 20,
                "old copies retired: their requests finished and their memory is freed"
            );
        }
        retiring.send_modify(|n| *n -= 1);
    })
}

/// Runs a change on a task of its own, so that a caller going away (a dropped request future)
/// does not stop it halfway.
async fn detached<T: Send + 'static>(
    change: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    settle(tokio::spawn(change).await).await
}

/// A task's value; its panic, passed on; or, for a task cancelled because the runtime is
/// shutting down, nothing ever (the caller is being dropped too).
async fn settle<T>(joined: Result<T, tokio::task::JoinError>) -> T {
    match joined {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => std::future::pending().await,
        },
    }
}

/// Runs blocking work (disk, model loads) off the reactor.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    settle(tokio::task::spawn_blocking(work).await).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_name_a_version_folder_and_the_model_file_only() {
        assert_eq!(upload_version("file:1/model.onnx"), Ok(1));
        assert_eq!(upload_version("file:12/model.onnx"), Ok(12));
        for bad in [
            "file:../model.onnx",
            "file:1/../../x/model.onnx",
            "file:0/model.onnx",
            "file:+1/model.onnx",
            "file:1/config.toml",
            "file:1/sub/model.onnx",
            "1/model.onnx",
            "file:/etc/passwd",
        ] {
            assert!(upload_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn model_control_modes_parse_by_their_triton_names() {
        assert_eq!("poll".parse(), Ok(ModelControl::Poll));
        assert_eq!("explicit".parse(), Ok(ModelControl::Explicit));
        assert_eq!("none".parse(), Ok(ModelControl::None));
        assert!("POLL".parse::<ModelControl>().is_err());
    }
}
