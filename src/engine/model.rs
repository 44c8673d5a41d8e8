//! A loaded model: an ONNX graph optimised once by tract into a runnable plan, with its
//! signature. With the rest of `src/engine/`, the only code that speaks tract; everything else sees [`Tensor`]s.
//!
//! What we found about tract (0.23):
//! - Exporters such as skl2onnx declare the batch dimension as unknown (`None`), and tract cannot
//!   type such a graph. We give every unknown first dimension the symbol `N` and every other
//!   unknown dimension a fresh symbol before optimising; named `dim_param`s stay as they are.
//! - One plan optimised with a symbolic batch dimension runs any batch size, and plans are
//!   `Send + Sync`: worker threads share them.
//! - A plan optimised for one fixed batch size (the symbol bound with `set_symbols` on the
//!   decluttered graph, then optimised) is faster on small models: tract resolves shapes and
//!   picks kernels once instead of on every run. Measured (`benches/engine.rs`, and by hand
//!   after `row_ops`): the bundled CNN at one row 29 µs fixed against 53 µs symbolic, the MLP
//!   at 32 rows 11 µs against 17 µs and at 1,000 rows 0.22 ms against 0.59 ms; the tree
//!   ensemble is the same either way. `preferred_batch_sizes` builds such plans at load; a
//!   small model also gets one per batch size it meets, on first use ([`ExactPlans`]). Nothing
//!   is optimised per request beyond that first time.
//! - Padding a batch up to the next fixed size does not pay: 5 rows of the CNN take 179 µs
//!   symbolic and 247 µs padded to 8, and the MLP breaks even. So batches are never padded.
//! - tract runs a convolution over one image with lazy im2col, and over a batch with eager
//!   im2col into freshly allocated memory: the CNN costs 28 µs for one row, 46 µs a row at 8.
//!   So whether stacking rows pays is measured at load ([`Model::batches_pay`]).
//! - A `Cast` to INT64 can produce tract's symbolic-dimension type (TDim); outputs are cast to
//!   INT64 before they leave this module.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable, Symbol,
    TDim, TValue, Tensor as TractTensor, TypedModel, TypedSimplePlan,
};
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use crate::engine::shared_weights::SharedWeights;
use crate::engine::signature::{Dim, IndexLimit, Signature, TensorSpec, ValidInputs};
use crate::engine::tensor::{DType, Tensor, TensorError};
use crate::error::{Classify, ErrorKind};

/// The most rows the model runs at once: a bigger batch runs in slices of this many. By a
/// thousand rows the cost per row has levelled off, while tract's intermediates keep growing
/// with the run: the bundled MLP holds about 10 KB per row, so 4,096-row runs on two threads
/// took 40 MB more than 1,024-row runs in `predictd batch`, and were slower
/// (`benches/scripts/batch.sh`, docs/PERFORMANCE.md).
pub const RUN_ROWS: usize = 1024;

/// The symbol given to unknown first dimensions: the batch dimension.
const BATCH_SYMBOL: &str = "N";

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load {}: {reason}", .path.display())]
pub struct LoadError {
    /// The model file.
    pub path: PathBuf,
    /// What went wrong, with tract's chain of causes.
    pub reason: String,
}

/// Why a validated request failed inside the engine. These are our faults or the model's, not
/// the client's: they are reported as internal errors, and the engine's own words (its
/// [source](std::error::Error::source)) go to the log, not to the client.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// tract returned an error.
    #[error("the model failed while running")]
    Engine(#[source] Detail),
    /// tract panicked; the panic was contained to this request.
    #[error("the model panicked while running")]
    Panicked(#[source] Detail),
    /// An output has a type predictd cannot send.
    #[error("output '{output}' has type {dtype}, which predictd cannot send")]
    UnsupportedOutput {
        /// The output's name.
        output: String,
        /// tract's name of its type.
        dtype: String,
    },
}

/// What the engine said of a failure, for the log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Detail(pub String);

impl RunError {
    /// A failure of the engine, described by `detail`.
    pub fn engine(detail: impl Into<String>) -> RunError {
        RunError::Engine(Detail(detail.into()))
    }
}

impl Classify for RunError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// A model version ready to run.
pub struct Model {
    name: String,
    version: u64,
    signature: Signature,
    /// Runs any batch size; or, once load [drops it](Model::drop_unused_symbolic_plan), the one-row
    /// plan again.
    plan: Arc<TypedSimplePlan>,
    /// Plans fixed to one batch size each, built at load.
    fixed: Vec<(usize, Arc<TypedSimplePlan>)>,
    /// Plans fixed to the other batch sizes the model meets, for small models.
    exact: Option<ExactPlans>,
    /// Whether stacked rows run faster than one at a time (see [`Model::batches_pay`]).
    batches_pay: bool,
    /// The threads one run spreads over, and the executor that gives them
    /// ([`crate::engine::threads`]).
    threads: usize,
    executor: Executor,
}

/// The most bytes of ONNX file for which a model gets a plan for every batch size it meets.
/// Each plan may pack some weights its own way (the bundled CNN's, all of them), so this bounds
/// the memory at [`EXACT_PLANS`] copies; and a model this small is the kind whose runs are
/// short enough for the symbolic plan's overhead to matter (the bundled MLP is 18 KB, the CNN
/// 63 KB).
const EXACT_PLAN_MAX_FILE: u64 = 1 << 20;

/// The most batch sizes that get a plan built on first use, per model version.
const EXACT_PLANS: usize = 64;

/// The size the free dimensions other than the batch take when [`Model::stacking_gain`] times a
/// model: a common sequence length for a transformer. tract runs a batch of sequences slower
/// per row than one at a time once the tokens of the batch outgrow the cache: a MiniLM-shaped
/// BERT encoder took 44 ms for one row of 128 tokens and 110 ms for two stacked, so its rows
/// run one at a time (and side by side on its threads), as a CNN's do.
const OTHER_FREE_DIMENSIONS_TIMED_AT: usize = 128;

/// What it takes to build a plan fixed to a batch size after load, and the ones built so far.
/// A batch of a size not met before is optimised for that size, about 0.5 ms for the bundled
/// MLP, on the thread that runs it; later batches of that size reuse the plan. A size whose
/// plan failed to build, or that comes after [`EXACT_PLANS`] others, runs the symbolic plan.
struct ExactPlans {
    decluttered: TypedModel,
    batch: Symbol,
    labels: Vec<Option<String>>,
    built: Mutex<HashMap<usize, Option<Arc<TypedSimplePlan>>>>,
    /// The weights of the plans built so far, which a new plan's point at.
    weights: SharedWeights,
}

impl ExactPlans {
    fn get(&self, rows: usize) -> Option<Arc<TypedSimplePlan>> {
        {
            let built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(plan) = built.get(&rows) {
                return plan.clone();
            }
            if built.len() >= EXACT_PLANS {
                return None;
            }
        }
        // Built outside the lock, so that other sizes keep running meanwhile; two threads
        // meeting the same new size at once both build it, and the first one stored is kept.
        // This runs on a request's thread, so a panic in tract's optimiser is contained too.
        let plan = catch_unwind(AssertUnwindSafe(|| {
            fixed_plan(
                &self.decluttered,
                &self.batch,
                rows,
                &self.labels,
                &self.weights,
            )
            .map_err(|e| format!("{e:#}"))
        }))
        .unwrap_or_else(|panic| Err(panic_message(&*panic)));
        if let Err(error) = &plan {
            tracing::warn!(rows, %error, "no plan fixed to this batch size; using the symbolic one");
        }
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        built.entry(rows).or_insert(plan.ok()).clone()
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads `path`, fixes unknown dimensions to symbols, and optimises the graph once, plus
    /// once more for each of `fixed_batch_sizes` when the model has a batch dimension (sizes
    /// are ignored otherwise: such a model is never batched). Runs use the calling thread
    /// alone.
    pub fn load(
        name: &str,
        version: u64,
        path: &Path,
        fixed_batch_sizes: &[usize],
    ) -> Result<Model, LoadError> {
        Model::load_threaded(name, version, path, fixed_batch_sizes, 1)
    }

    /// [`Model::load`], with each run spread over `threads` threads (at most the cores), shared
    /// with every model given as many ([`crate::engine::threads`]).
    pub fn load_threaded(
        name: &str,
        version: u64,
        path: &Path,
        fixed_batch_sizes: &[usize],
        threads: usize,
    ) -> Result<Model, LoadError> {
        // tract panics on some malformed files (tract#499) instead of returning an error; a bad
        // upload must cost its own load, not the server.
        catch_unwind(AssertUnwindSafe(|| {
            Model::load_unguarded(name, version, path, fixed_batch_sizes, threads)
        }))
        .unwrap_or_else(|panic| {
            Err(LoadError {
                path: path.to_path_buf(),
                reason: format!(
                    "the file is not a model the engine can read (it failed with: {})",
                    panic_message(panic.as_ref())
                ),
            })
        })
    }

    fn load_unguarded(
        name: &str,
        version: u64,
        path: &Path,
        fixed_batch_sizes: &[usize],
        threads: usize,
    ) -> Result<Model, LoadError> {
        let fail = |e: tract_onnx::prelude::TractError| LoadError {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let (decluttered, batch, labels) = decluttered_model(path).map_err(fail)?;
        let weights = SharedWeights::default();
        let optimised = optimise(decluttered.clone(), &labels, &weights).map_err(fail)?;
        let mut signature = signature_of(&optimised).map_err(|reason| LoadError {
            path: path.to_path_buf(),
            reason,
        })?;
        signature.index_limits = index_limits(&decluttered);
        let mut sizes: Vec<usize> = fixed_batch_sizes
            .iter()
            .copied()
            .filter(|&n| n > 0 && signature.batchable())
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut fixed = Vec::with_capacity(sizes.len());
        for size in sizes {
            let bound = fixed_plan(&decluttered, &batch, size, &labels, &weights).map_err(|e| {
                LoadError {
                    path: path.to_path_buf(),
                    reason: format!("cannot build the plan for batch size {size}: {e:#}"),
                }
            })?;
            fixed.push((size, bound));
        }
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= EXACT_PLAN_MAX_FILE);
        let (threads, executor) = crate::engine::threads::executor(threads);
        let exact = (small && signature.batchable()).then(|| ExactPlans {
            decluttered,
            batch,
            labels,
            built: Mutex::default(),
            weights,
        });
        let plan = optimised.into_runnable().map_err(fail)?;
        let mut model = Model {
            name: name.to_string(),
            version,
            signature,
            plan,
            fixed,
            exact,
            batches_pay: true,
            threads,
            executor,
        };
        if model.signature.batchable() {
            // A large model's runs are long: two rows tell as well as eight.
            let gain = model.stacking_gain(if small { 8 } else { 2 });
            model.batches_pay = gain > 1.0;
            // Only a clear loss (CNNs: 2-11×) gives up the symbolic plan: a close call may go
            // the other way on the next load, and the model's memory with it.
            if gain < 2.0 / 3.0 {
                model.drop_unused_symbolic_plan();
            }
        }
        Ok(model)
    }

    /// Whether a batch of rows runs faster stacked into one run than one row at a time. Most
    /// models amortise their fixed costs over the rows; but tract runs a convolution over one
    /// image with lazy im2col and over a batch with eager im2col into fresh memory, so the
    /// bundled CNN takes 28 µs for one row and 46 µs a row in a batch of 8. Such a model runs
    /// its rows one at a time, and the scheduler does not batch it.
    pub fn batches_pay(&self) -> bool {
        self.batches_pay
    }

    /// Times `rows` rows of zeros stacked against the same rows one at a time, best of three
    /// each, at load, on the model's threads: a few ms for the bundled CNN; with it, ResNet-18
    /// loads in 0.9 s and ResNet-50 in 2.3 s on two threads. Other free dimensions take
    /// [`OTHER_FREE_DIMENSIONS_TIMED_AT`]. A model with text inputs, or whose zeros do not run,
    /// is taken to gain from batching. Gives one-at-a-time's time over stacked's: above 1,
    /// stacking pays.
    fn stacking_gain(&self, rows: usize) -> f64 {
        let zeros = |n: usize| -> Option<ValidInputs> {
            let mut named = Vec::new();
            for spec in &self.signature.inputs {
                let shape = spec
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(axis, dim)| match dim {
                        Dim::Fixed(n) => *n,
                        Dim::Symbol(_) if axis == 0 => n,
                        Dim::Symbol(_) => OTHER_FREE_DIMENSIONS_TIMED_AT,
                    })
                    .collect::<Vec<usize>>();
                let bytes = shape.iter().product::<usize>() * spec.dtype.size()?;
                let zeros = Tensor::from_bytes(spec.dtype, shape, Bytes::from(vec![0; bytes]));
                named.push((spec.name.clone(), zeros.ok()?));
            }
            self.signature.validate(named).ok()
        };
        let (Some(one), Some(stacked)) = (zeros(1), zeros(rows)) else {
            return f64::INFINITY;
        };
        let best_of_three = |run: &dyn Fn() -> bool| {
            (0..3)
                .map(|_| {
                    let started = std::time::Instant::now();
                    run().then(|| started.elapsed())
                })
                .min()
                .flatten()
        };
        // On the model's threads both ways, whatever else runs meanwhile.
        let stacked_time =
            best_of_three(&|| self.run_parts_on(stacked.clone(), &self.executor).is_ok());
        let single_time = best_of_three(&|| {
            let pieces = vec![one.clone(); rows];
            self.run_each(pieces, &self.executor).is_ok()
        });
        let gain = match (stacked_time, single_time) {
            (Some(stacked), Some(single)) => single.as_secs_f64() / stacked.as_secs_f64(),
            _ => f64::INFINITY,
        };
        tracing::debug!(model = %self.name, ?stacked_time, ?single_time, gain, "batching {rows} rows");
        gain
    }

    /// Lets the one-row plan stand in for the symbolic plan when no run can take the symbolic
    /// one: the model's rows run one at a time and it builds no plans after load, so every run
    /// is one row. The symbolic plan would still hold the weights it packed for kernels of its
    /// own: tract picks a product's kernel by its column count, and packs a 1×1 convolution's
    /// weights for another kernel when that count is symbolic, so ResNet-50's symbolic plan
    /// held 57 MB that its one-row plan does not share, MobileNet v2's 14 MB.
    fn drop_unused_symbolic_plan(&mut self) {
        if self.batches_pay || self.exact.is_some() {
            return;
        }
        if let Some((_, one_row)) = self.fixed.iter().find(|(rows, _)| *rows == 1) {
            self.plan = one_row.clone();
        }
    }

    /// The same model with only its symbolic plan, which then runs every batch size: what the
    /// fixed plans are measured against (`benches/engine.rs`). Models that
    /// [drop it](Self::drop_unused_symbolic_plan) at load are not for this.
    pub fn with_symbolic_plan_only(mut self) -> Model {
        self.fixed.clear();
        self.exact = None;
        self
    }

    /// The threads one run spreads over.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The batch sizes that have a plan of their own, ascending.
    pub fn fixed_batch_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.fixed.iter().map(|(n, _)| *n)
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The model's inputs and outputs.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Runs the model: once, or for a batch of more than [`RUN_ROWS`] rows (more than one, if
    /// [batches do not pay](Self::batches_pay)), once per slice of that many, the outputs
    /// stacked back in order. Each run takes the plan fixed to its row
    /// count when there is one. Panics inside tract are contained and reported as errors, so
    /// that a bad model or an engine bug fails one request, never the process.
    pub fn run(&self, inputs: ValidInputs) -> Result<Vec<Tensor>, RunError> {
        let parts = self.run_parts(inputs)?;
        self.stack(parts)
    }

    /// [`Self::run`]'s runs, their outputs in order and not yet [stacked](Self::stack): a
    /// caller that runs a batch a slice at a time stacks every slice's parts once.
    /// The run spreads over the model's threads only when no other run is in flight
    /// ([`crate::engine::threads::Running`]).
    pub fn run_parts(&self, inputs: ValidInputs) -> Result<Vec<Vec<Tensor>>, RunError> {
        let running = crate::engine::threads::Running::start();
        let executor = if running.alone() {
            &self.executor
        } else {
            &Executor::SingleThread
        };
        self.run_parts_on(inputs, executor)
    }

    fn run_parts_on(
        &self,
        inputs: ValidInputs,
        executor: &Executor,
    ) -> Result<Vec<Vec<Tensor>>, RunError> {
        let rows = inputs.rows().unwrap_or(0);
        let most = if self.batches_pay { RUN_ROWS } else { 1 };
        if rows <= most {
            return Ok(vec![self.run_plan(
                &self.plan_for(rows),
                inputs,
                executor,
            )?]);
        }
        let mut sizes = vec![most; rows / most];
        if !rows.is_multiple_of(most) {
            sizes.push(rows % most);
        }
        let slices = inputs
            .into_pieces(&sizes)
            .ok_or_else(|| RunError::engine(format!("{rows} rows do not split into {sizes:?}")))?;
        self.run_each(slices, executor)
    }

    /// Runs each slice on the plan for its rows, the outputs in order. Given more than one
    /// thread, the slices run side by side on them: splitting one image's products gains only
    /// 1.4× on two threads (ResNet-18: 77 ms on one, 54 ms on two), and the operators between
    /// them not at all. A slice run on a pool thread keeps its products on that thread: a pool
    /// thread waiting for a product's tasks takes any queued task, another slice's run too,
    /// and a run started inside a product re-enters tract's per-thread scratch, which panics
    /// and aborts the process while unwinding.
    fn run_each(
        &self,
        slices: Vec<ValidInputs>,
        executor: &Executor,
    ) -> Result<Vec<Vec<Tensor>>, RunError> {
        let plan = |slice: &ValidInputs| self.plan_for(slice.rows().unwrap_or(0));
        match executor {
            Executor::MultiThread(pool) if slices.len() > 1 => {
                use rayon::prelude::*;
                let run = |slice| self.run_plan(&plan(&slice), slice, &Executor::SingleThread);
                pool.install(|| slices.into_par_iter().map(run).collect())
            }
            _ => slices
                .into_iter()
                .map(|slice| self.run_plan(&plan(&slice), slice, executor))
                .collect(),
        }
    }

    /// The outputs of runs over consecutive slices of a batch, stacked back into the batch's.
    pub fn stack(&self, mut parts: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>, RunError> {
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        (0..self.signature.outputs.len())
            .map(|i| {
                let outputs: Vec<&Tensor> = parts.iter().filter_map(|p| p.get(i)).collect();
                Tensor::concat_rows(&outputs).ok_or_else(|| {
                    RunError::engine(format!(
                        "output '{}' of {} slices does not stack",
                        self.signature.outputs[i].name,
                        parts.len()
                    ))
                })
            })
            .collect()
    }

    /// The plan for a batch of `rows` rows (0 when the model has no batch dimension).
    fn plan_for(&self, rows: usize) -> Arc<TypedSimplePlan> {
        if rows == 0 {
            return self.plan.clone();
        }
        self.fixed
            .iter()
            .find(|(n, _)| *n == rows)
            .map(|(_, plan)| plan.clone())
            .or_else(|| self.exact.as_ref()?.get(rows))
            .unwrap_or_else(|| self.plan.clone())
    }

    /// Runs `plan`, its products spread by `executor`.
    fn run_plan(
        &self,
        plan: &Arc<TypedSimplePlan>,
        inputs: ValidInputs,
        executor: &Executor,
    ) -> Result<Vec<Tensor>, RunError> {
        let values = inputs
            .into_tensors()
            .iter()
            .map(to_tract)
            .collect::<Result<_, _>>()?;
        let outputs = catch_unwind(AssertUnwindSafe(|| {
            multithread_tract_scope(executor.clone(), || plan.run(values))
        }))
        .map_err(|panic| RunError::Panicked(Detail(panic_message(&*panic))))?
        .map_err(|e| RunError::engine(format!("{e:#}")))?;
        outputs
            .iter()
            .zip(&self.signature.outputs)
            .map(|(value, spec)| from_tract(value, &spec.name))
            .collect()
    }
}

/// What [`decluttered_model`] returns: the graph, its batch symbol and its output names.
type Decluttered = (TypedModel, Symbol, Vec<Option<String>>);

/// Parses the ONNX file, types it with symbolic unknown dimensions and declutters it. ONNX
/// output names live on the inference graph's outlets and are carried over by hand.
fn decluttered_model(path: &Path) -> tract_onnx::prelude::TractResult<Decluttered> {
    let mut graph = crate::engine::onnx_ml::onnx().model_for_path(path)?;
    let batch = graph.sym(BATCH_SYMBOL);
    for ix in 0..graph.input_outlets()?.len() {
        let mut fact: InferenceFact = graph.input_fact(ix)?.clone();
        if let Some(rank) = fact.shape.rank().concretize() {
            for axis in 0..usize::try_from(rank).unwrap_or(0) {
                if fact.shape.dim(axis).and_then(|d| d.concretize()).is_none() {
                    let symbol = if axis == 0 {
                        batch.clone()
                    } else {
                        graph.new_sym_with_prefix("d")
                    };
                    fact.shape.set_dim(axis, TDim::Sym(symbol));
                }
            }
        }
        graph.set_input_fact(ix, fact)?;
    }
    assert_free_dimensions_nonzero(&graph)?;
    let labels: Vec<Option<String>> = graph
        .output_outlets()?
        .iter()
        .map(|o| graph.outlet_label(*o).map(str::to_owned))
        .collect();
    let mut typed = graph.into_typed()?.into_decluttered()?;
    crate::engine::rewrite::row_ops::rewrite(&mut typed)?;
    crate::engine::rewrite::dense::rewrite(&mut typed)?;
    label_outputs(&mut typed, &labels)?;
    Ok((typed, batch, labels))
}

/// Tells tract that every free dimension of the inputs is at least 1, as validation makes
/// sure ([`crate::engine::signature::InputError::EmptyDimension`]). Without it, tract cannot
/// prove that a product such as `384·S` is large enough for its fast element-wise kernels
/// or for fusing a residual sum into the matrix product before it, and leaves those as generic
/// broadcasting ops: a BERT encoder ran at 128 tokens in 53.8 ms with its sequence length
/// free, 42.9 ms with this, and 43.5 ms with the length fixed. A dimension name tract cannot
/// parse back (an exporter may put anything in a `dim_param`) just goes without.
fn assert_free_dimensions_nonzero(graph: &InferenceModel) -> tract_onnx::prelude::TractResult<()> {
    let mut asserted = Vec::new();
    for ix in 0..graph.input_outlets()?.len() {
        let shape = &graph.input_fact(ix)?.shape;
        let rank = shape.rank().concretize().unwrap_or(0);
        for axis in 0..usize::try_from(rank).unwrap_or(0) {
            if let Some(TDim::Sym(symbol)) = shape.dim(axis).and_then(|d| d.concretize()) {
                if asserted.contains(&symbol) {
                    continue;
                }
                if let Err(error) = graph.symbols.add_assertion(format!("{symbol}>=1")) {
                    tracing::debug!(%symbol, %error, "free dimension left without a lower bound");
                }
                asserted.push(symbol);
            }
        }
    }
    Ok(())
}

/// Optimises a decluttered model, keeping its output names, its weights shared with the
/// model's other plans.
fn optimise(
    model: TypedModel,
    labels: &[Option<String>],
    weights: &SharedWeights,
) -> tract_onnx::prelude::TractResult<TypedModel> {
    let mut model = model.into_optimized()?;
    label_outputs(&mut model, labels)?;
    weights.share(&mut model)?;
    Ok(model)
}

/// A runnable plan with the batch symbol bound to `rows`.
fn fixed_plan(
    decluttered: &TypedModel,
    batch: &Symbol,
    rows: usize,
    labels: &[Option<String>],
    weights: &SharedWeights,
) -> tract_onnx::prelude::TractResult<Arc<TypedSimplePlan>> {
    let bound =
        decluttered.set_symbols(&HashMap::from([(batch.clone(), TDim::Val(rows as i64))]))?;
    optimise(bound, labels, weights)?.into_runnable()
}

fn label_outputs(
    model: &mut TypedModel,
    labels: &[Option<String>],
) -> tract_onnx::prelude::TractResult<()> {
    for (ix, label) in labels.iter().enumerate() {
        if let Some(label) = label {
            let outlet = model.output_outlets()?[ix];
            model.set_outlet_label(outlet, label.clone())?;
        }
    }
    Ok(())
}

/// Reads names, dtypes and shapes of the typed graph's inputs and outputs.
fn signature_of(model: &TypedModel) -> Result<Signature, String> {
    let spec = |outlet, name: String, role: &str| -> Result<TensorSpec, String> {
        let fact = model.outlet_fact(outlet).map_err(|e| format!("{e:#}"))?;
        let dtype = dtype_of(fact.datum_type).ok_or_else(|| {
            format!(
                "{role} '{name}' has type {:?}, which predictd does not serve",
                fact.datum_type
            )
        })?;
        let shape = fact
            .shape
            .iter()
            .map(|d| match d.to_usize() {
                Ok(n) => Dim::Fixed(n),
                Err(_) => Dim::Symbol(d.to_string()),
            })
            .collect();
        Ok(TensorSpec { name, dtype, shape })
    };
    let inputs = model
        .input_outlets()
        .map_err(|e| format!("{e:#}"))?
        .iter()
        .map(|&o| spec(o, model.node(o.node).name.clone(), "input"))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = model
        .output_outlets()
        .map_err(|e| format!("{e:#}"))?
        .iter()
        .map(|&o| {
            let name = model
                .outlet_label(o)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(o.node).name.clone());
            spec(o, name, "output")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let batch_symbol = batch_symbol(&inputs, &outputs);
    Ok(Signature {
        inputs,
        outputs,
        batch_symbol,
        index_limits: Vec::new(),
    })
}

/// The inputs whose values pick rows of a constant table, straight or through casts and
/// reshapes (a transformer's token ids into its embeddings): tract's `Gather` reads the row
/// unchecked and panics past the table, so validation checks them instead
/// ([`crate::engine::signature::IndexLimit`]).
fn index_limits(model: &TypedModel) -> Vec<IndexLimit> {
    use tract_onnx::tract_core::ops::array::Gather;
    use tract_onnx::tract_core::ops::cast::Cast;
    use tract_onnx::tract_core::ops::change_axes::AxisOp;
    let mut limits = Vec::new();
    for node in model.nodes() {
        let (Some(gather), [data, indices]) = (node.op_as::<Gather>(), node.inputs.as_slice())
        else {
            continue;
        };
        let Ok(table) = model.outlet_fact(*data) else {
            continue;
        };
        let rows = table.shape.get(gather.axis).and_then(|d| d.to_usize().ok());
        let (Some(rows), Some(_)) = (rows.filter(|&r| r > 0), &table.konst) else {
            continue;
        };
        let mut outlet = *indices;
        loop {
            let from = model.node(outlet.node);
            if let Some(input) = model.inputs.iter().position(|i| *i == outlet) {
                limits.push(IndexLimit {
                    input,
                    rows,
                    table: model.node(data.node).name.clone(),
                });
                break;
            }
            match from.inputs.as_slice() {
                [only] if from.op_is::<Cast>() || from.op_is::<AxisOp>() => outlet = *only,
                _ => break,
            }
        }
    }
    limits
}

/// The symbol that is the first dimension of every input and output, if there is one.
fn batch_symbol(inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Option<String> {
    let first = match inputs.first()?.shape.first()? {
        Dim::Symbol(s) => s.clone(),
        Dim::Fixed(_) => return None,
    };
    inputs
        .iter()
        .chain(outputs)
        .all(|s| matches!(s.shape.first(), Some(Dim::Symbol(d)) if *d == first))
        .then_some(first)
}

fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F16 => DType::F16,
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::I8 => DType::I8,
        DatumType::I16 => DType::I16,
        DatumType::I32 => DType::I32,
        // Shape computations come out as TDim; they are sent as INT64.
        DatumType::I64 | DatumType::TDim => DType::I64,
        DatumType::U8 => DType::U8,
        DatumType::U16 => DType::U16,
        DatumType::U32 => DType::U32,
        DatumType::U64 => DType::U64,
        DatumType::Bool => DType::Bool,
        DatumType::String => DType::String,
        _ => return None,
    })
}

fn datum_type_of(dtype: DType) -> DatumType {
    match dtype {
        DType::F16 => DatumType::F16,
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::I8 => DatumType::I8,
        DType::I16 => DatumType::I16,
        DType::I32 => DatumType::I32,
        DType::I64 => DatumType::I64,
        DType::U8 => DatumType::U8,
        DType::U16 => DatumType::U16,
        DType::U32 => DatumType::U32,
        DType::U64 => DatumType::U64,
        DType::Bool => DatumType::Bool,
        DType::String => DatumType::String,
    }
}

fn to_tract(tensor: &Tensor) -> Result<TValue, RunError> {
    let engine = |e: tract_onnx::prelude::TractError| RunError::engine(format!("{e:#}"));
    if let Some(made) = copied_aligned(tensor) {
        return made.map(TValue::from).map_err(engine);
    }
    let mut out = if let Some(strings) = tensor.strings() {
        tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(tensor.shape(), strings.to_vec())
            .map_err(|e| RunError::engine(e.to_string()))?
            .into()
    } else {
        TractTensor::zero_dt(datum_type_of(tensor.dtype()), tensor.shape()).map_err(engine)?
    };
    if let Some(bytes) = tensor.bytes() {
        // Lengths were checked when the tensor was made; a mismatch here is a bug.
        let dst = out.as_bytes_mut();
        if dst.len() != bytes.len() {
            return Err(RunError::engine(format!(
                "tensor of {} bytes does not fill {} bytes: this is a bug",
                bytes.len(),
                dst.len()
            )));
        }
        dst.copy_from_slice(bytes);
    }
    Ok(out.into())
}

/// A numeric tensor whose bytes are aligned for its type, copied once into tract's buffer.
/// The general path below zeroes the buffer first: a second pass over every input (4% of a
/// 1,024-row MLP call). Bytes cut from a wire message can sit at any offset and take that path.
fn copied_aligned(tensor: &Tensor) -> Option<tract_onnx::prelude::TractResult<TractTensor>> {
    let bytes = tensor.bytes()?;
    macro_rules! typed {
        ($($dtype:ident => $t:ty),*) => {
            match tensor.dtype() {
                $(DType::$dtype => bytemuck::try_cast_slice::<u8, $t>(&bytes[..])
                    .ok()
                    .map(|values| TractTensor::from_shape(tensor.shape(), values)),)*
                _ => None,
            }
        };
    }
    typed!(F32 => f32, F64 => f64, I64 => i64, I32 => i32, I16 => i16, I8 => i8,
           U64 => u64, U32 => u32, U16 => u16, U8 => u8)
}

fn from_tract(value: &TValue, name: &str) -> Result<Tensor, RunError> {
    let unsupported = |dt: DatumType| RunError::UnsupportedOutput {
        output: name.to_string(),
        dtype: format!("{dt:?}"),
    };
    let invalid = |e: TensorError| RunError::engine(format!("output '{name}': {e}"));
    let engine = |e: tract_onnx::prelude::TractError| RunError::engine(format!("{e:#}"));
    let tensor: &TractTensor = value;
    let shape = tensor.shape().to_vec();
    match tensor.datum_type() {
        DatumType::TDim => {
            let cast = tensor.cast_to::<i64>().map_err(engine)?;
            Tensor::from_bytes(DType::I64, shape, Bytes::copy_from_slice(cast.as_bytes()))
                .map_err(invalid)
        }
        DatumType::String => {
            let view = tensor.to_plain_array_view::<String>().map_err(engine)?;
            Tensor::from_strings(shape, view.iter().cloned().collect()).map_err(invalid)
        }
        dt => {
            let dtype = dtype_of(dt).ok_or_else(|| unsupported(dt))?;
            Tensor::from_bytes(dtype, shape, Bytes::copy_from_slice(tensor.as_bytes()))
                .map_err(invalid)
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn bundled(name: &str) -> Model {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name)
            .join("1/model.onnx");
        Model::load(name, 1, &path, &[]).expect("bundled model loads")
    }

    /// Whether validation's rule that free dimensions are at least 1 reaches tract: without it,
    /// the residual sums and GELU's products over a BERT encoder's hidden states stay generic
    /// broadcasting ops (its runs took 16-25% longer at 128 tokens).
    #[test]
    fn a_free_sequence_length_leaves_no_generic_element_wise_op_on_the_hidden_states() {
        use tract_onnx::tract_core::ops::binary::TypedBinOp;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deep/bert_small/1/model.onnx");
        let model = Model::load("bert_small", 1, &path, &[1]).unwrap();
        let tokens = &model.signature().inputs[0].shape;
        assert!(
            matches!(tokens.as_slice(), [Dim::Symbol(_), Dim::Symbol(_)]),
            "{tokens:?}"
        );
        // The plans fixed to a batch size: with the batch free too, tract cannot prove that
        // `N·S·32` is at least 32 (it does not multiply bounds), so the symbolic plan keeps them.
        // A transformer's rows run one at a time at full size, and a small model gets a plan
        // fixed to each batch size it meets.
        let one_row = &model.fixed[0].1;
        let generic: Vec<String> = one_row
            .model()
            .nodes()
            .iter()
            .filter(|node| node.op_as::<TypedBinOp>().is_some())
            // What stays generic is per token: a layer norm's mean, [1, S, 1].
            .filter(|node| node.outputs[0].fact.shape.last() != Some(&TDim::Val(1)))
            .map(|node| format!("{} {:?}", node.name, node.outputs[0].fact.shape))
            .collect();
        assert!(generic.is_empty(), "generic element-wise ops: {generic:?}");
    }

    /// A BERT encoder's token ids index its embeddings: an id past the vocabulary is refused by
    /// validation, where tract's `Gather` panicked ("range start index 64000 out of range for
    /// slice of length 32000").
    #[test]
    fn token_ids_past_the_vocabulary_are_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deep/bert_small/1/model.onnx");
        let model = Model::load("bert_small", 1, &path, &[]).unwrap();
        let limits = &model.signature().index_limits;
        assert_eq!(limits.len(), 1, "{limits:?}");
        assert_eq!(model.signature().inputs[limits[0].input].name, "input_ids");
        assert_eq!(limits[0].rows, 1000, "the small BERT's vocabulary");
        let request = |id: i64| {
            let tensor = |v: &[i64]| Tensor::from_values(vec![1, 3], v).unwrap();
            model.signature().validate([
                ("input_ids".to_string(), tensor(&[101, id, 102])),
                ("attention_mask".to_string(), tensor(&[1, 1, 1])),
            ])
        };
        assert!(model.run(request(999).unwrap()).is_ok());
        let err = request(2000).expect_err("past the vocabulary");
        assert!(
            err.to_string().contains("value 2000 at position 1"),
            "{err}"
        );
    }

    /// `rows` rows of pixel-like values, different on every row.
    fn pixels(model: &Model, rows: usize) -> ValidInputs {
        let spec = &model.signature().inputs[0];
        let mut shape = vec![rows];
        shape.extend(spec.shape[1..].iter().map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Symbol(_) => panic!("bundled image models have fixed widths"),
        }));
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|i| ((i * 7 + i / 64) % 17) as f32).collect();
        let tensor = Tensor::from_values(shape, &values).unwrap();
        model
            .signature()
            .validate([(spec.name.clone(), tensor)])
            .unwrap()
    }

    /// `rows` images of the small ResNet (`tests/deep/resnet_small`, 3×64×64), values in -1..1.
    pub(super) fn small_resnet_images(model: &Model, rows: usize) -> ValidInputs {
        let spec = &model.signature().inputs[0];
        let values: Vec<f32> = (0..rows * 3 * 64 * 64)
            .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let tensor = Tensor::from_values(vec![rows, 3, 64, 64], &values).unwrap();
        model
            .signature()
            .validate([(spec.name.clone(), tensor)])
            .unwrap()
    }

    pub(super) fn assert_same(name: &str, way: &str, expected: &[Tensor], got: &[Tensor]) {
        assert_eq!(expected.len(), got.len());
        for (e, g) in expected.iter().zip(got) {
            assert_eq!(e.shape(), g.shape(), "{name}, {way}");
            match e.dtype() {
                DType::F32 => {
                    let (e, g) = (e.to_values::<f32>().unwrap(), g.to_values::<f32>().unwrap());
                    for (ix, (a, b)) in e.iter().zip(&g).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5,
                            "{name}, {way}, element {ix}: {a} vs {b}"
                        );
                    }
                }
                _ => assert_eq!(e, g, "{name}, {way}"),
            }
        }
    }

    /// Stacked on plans fixed to each size (1,024 rows, then 9), one row at a time, on the
    /// symbolic plan, and on two threads both ways (rows side by side when one at a time): the
    /// same rows in the same order. The reference tests check whichever way
    /// the load-time measurement picks against onnxruntime; this pins the others to it.
    #[test]
    fn every_way_of_running_a_batch_gives_the_same_rows() {
        for (name, rows) in [("digits_mlp", 1033), ("digits_cnn", 40)] {
            let mut model = bundled(name);
            let inputs = pixels(&model, rows);
            model.batches_pay = true;
            let stacked = model.run(inputs.clone()).unwrap();
            assert_eq!(stacked[0].rows(), rows);
            model.batches_pay = false;
            assert_same(
                name,
                "one row at a time",
                &stacked,
                &model.run(inputs.clone()).unwrap(),
            );
            model.batches_pay = true;
            let model = model.with_symbolic_plan_only();
            assert_same(
                name,
                "symbolic plan",
                &stacked,
                &model.run(inputs.clone()).unwrap(),
            );
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(name);
            let mut threaded =
                Model::load_threaded(name, 1, &path.join("1/model.onnx"), &[], 2).unwrap();
            assert_eq!(threaded.threads(), 2.min(crate::engine::threads::cores()));
            for pays in [true, false] {
                threaded.batches_pay = pays;
                let way = format!("on two threads, stacked: {pays}");
                assert_same(name, &way, &stacked, &threaded.run(inputs.clone()).unwrap());
            }
        }
    }

    /// Requests at once on a model given two threads, some running their rows side by side on
    /// the pool while others spread one row's products over it: each gets its own rows, and
    /// the process lives. A pool thread that ran a whole row and waited for a product's tasks
    /// used to steal another row's run, which re-entered tract's per-thread scratch
    /// ("RefCell already borrowed") and aborted the server while unwinding. (Served runs take
    /// the pool only when alone; these take it at once, as a load's timing of a model may while
    /// other models run.)
    #[test]
    fn rows_side_by_side_and_split_products_at_once_keep_the_process_up() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deep/resnet_small/1/model.onnx");
        let mut model = Model::load_threaded("resnet_small", 1, &path, &[1], 2).unwrap();
        model.batches_pay = false;
        let (four, one) = (
            small_resnet_images(&model, 4),
            small_resnet_images(&model, 1),
        );
        let expected_four = model.run(four.clone()).unwrap();
        let expected_one = model.run(one.clone()).unwrap();
        std::thread::scope(|scope| {
            for caller in 0..4 {
                let (model, four, one) = (&model, four.clone(), one.clone());
                let (expected_four, expected_one) = (&expected_four, &expected_one);
                let on_pool = move |inputs: ValidInputs| {
                    let parts = model.run_parts_on(inputs, &model.executor).unwrap();
                    model.stack(parts).unwrap()
                };
                scope.spawn(move || {
                    for _ in 0..300 {
                        if caller % 2 == 0 {
                            assert_same(
                                "resnet_small",
                                "4 rows",
                                expected_four,
                                &on_pool(four.clone()),
                            );
                        } else {
                            assert_same(
                                "resnet_small",
                                "1 row",
                                expected_one,
                                &on_pool(one.clone()),
                            );
                        }
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod shared_weights_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;

    use super::*;
    use crate::engine::shared_weights::eager as eager_input;
    use tract_linalg::mmm::{EagerPackedInput, PackedMatrixStorage};
    use tract_onnx::tract_core::ops::konst::Const;
    use tract_onnx::tract_core::ops::matmul::optimized::{
        MatMulOperand, OptMatMul, ProtoFusedSpec,
    };

    /// The weights a plan holds, as bytes by allocation: its constants (a packed one by its
    /// packed matrices) and the packed operands baked into its matrix products.
    fn weights(plan: &TypedSimplePlan) -> HashMap<usize, usize> {
        let mut held = HashMap::new();
        let eager = |held: &mut HashMap<usize, usize>, e: &EagerPackedInput| {
            held.insert(Arc::as_ptr(&e.packed) as usize, e.packed.len());
        };
        for node in &plan.model().nodes {
            if let Some(product) = node.op_as::<OptMatMul>() {
                for op in &product.micro_ops {
                    if let ProtoFusedSpec::AddMatMul { a, b, .. } = op {
                        for operand in [a, b] {
                            if let MatMulOperand::Const(value) = operand
                                && let Some(e) = eager_input(&**value)
                            {
                                eager(&mut held, e);
                            }
                        }
                    }
                }
            }
            let Some(konst) = node.op_as::<Const>() else {
                continue;
            };
            let value = konst.val();
            if let Some(packed) = value.storage_as::<PackedMatrixStorage>() {
                for e in packed.values().iter().filter_map(|v| eager_input(&**v)) {
                    eager(&mut held, e);
                }
            } else if value.is_plain_ram() {
                let bytes = value.len() * value.datum_type().size_of();
                held.insert(Arc::as_ptr(value) as usize, bytes);
            }
        }
        held
    }

    /// Plans fixed to batch sizes, built at load and on first use, hold the weights they have
    /// in common with the symbolic plan in the symbolic plan's allocations, not in copies: nine
    /// tenths of what a fixed plan holds is the symbolic plan's, and all of a model's plans
    /// together hold little more than the symbolic one (a few layers of a fixed plan may pack
    /// for another kernel; the bundled CNN's layers are so small that every batch size packs
    /// them for another kernel, so it is not among these). They still give the same rows
    /// (every_way_of_running_a_batch_gives_the_same_rows, tests/deep_models.rs). A convolution
    /// keeps its packed kernel as a constant; a transformer's linear layers keep theirs baked
    /// into the matrix product. Packed weights used to carry uninitialised padding, so equal
    /// weights packed twice compared unequal, at random (vendor/tract-linalg/PATCH.md).
    #[test]
    fn a_models_plans_hold_one_copy_of_each_weight() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // The most all plans hold, in percent of the symbolic plan's weights: measured 100.05%
        // and 119% (more of the small ResNet's layers pack for another kernel at batch 1 than
        // of ResNet-18's, which hold 5% more).
        for (path, most_percent) in [
            (root.join("tests/deep/resnet_small/1/model.onnx"), 125),
            (root.join("tests/deep/bert_small/1/model.onnx"), 101),
        ] {
            let shown = path.display();
            let model = Model::load("m", 1, &path, &[1, 4]).unwrap();
            let symbolic = weights(&model.plan);
            let symbolic_bytes: usize = symbolic.values().sum();
            let mut later: Vec<Arc<TypedSimplePlan>> =
                model.fixed.iter().map(|(_, p)| Arc::clone(p)).collect();
            later.push(model.exact.as_ref().unwrap().get(7).unwrap());
            let mut all = symbolic.clone();
            for plan in &later {
                let held = weights(plan);
                let shared: usize = held
                    .iter()
                    .filter(|(at, _)| symbolic.contains_key(at))
                    .map(|(_, bytes)| bytes)
                    .sum();
                let bytes: usize = held.values().sum();
                assert!(
                    shared * 10 >= bytes * 9,
                    "{shown}: a fixed plan holds {bytes} bytes of weights, {shared} of them the symbolic plan's"
                );
                all.extend(held);
            }
            let all_bytes: usize = all.values().sum();
            assert!(
                all_bytes * 100 <= symbolic_bytes * most_percent,
                "{shown}: {} plans hold {all_bytes} bytes of weights, the symbolic one alone {symbolic_bytes}",
                later.len() + 1
            );
        }
    }

    /// A model whose rows run one at a time, and that builds no plans after load (a large one),
    /// keeps only its one-row plan's weights, and gives the rows it gave before.
    #[test]
    fn a_model_run_a_row_at_a_time_keeps_only_the_one_row_plan() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deep/resnet_small/1/model.onnx");
        let mut model = Model::load("resnet_small", 1, &path, &[1]).unwrap();
        let image = super::tests::small_resnet_images;
        let one_row = Arc::clone(&model.fixed[0].1);
        model.exact = None;
        model.batches_pay = true;
        model.drop_unused_symbolic_plan();
        assert!(
            !Arc::ptr_eq(&model.plan, &one_row),
            "kept while batches pay"
        );
        let before: Vec<_> = [1, 3]
            .map(|rows| model.run(image(&model, rows)).unwrap())
            .into();
        model.batches_pay = false;
        model.drop_unused_symbolic_plan();
        assert!(Arc::ptr_eq(&model.plan, &one_row));
        assert_eq!(weights(&model.plan), weights(&one_row));
        for (rows, expected) in [1, 3].into_iter().zip(&before) {
            let got = model.run(image(&model, rows)).unwrap();
            super::tests::assert_same("resnet_small", &format!("{rows} rows"), expected, &got);
        }
    }
}
