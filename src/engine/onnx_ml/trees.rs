//! `TreeEnsembleClassifier` and `TreeEnsembleRegressor` (ai.onnx.ml 1 to 3): attributes read
//! into a [`Forest`], and the scores finished the way onnxruntime finishes them: base values,
//! averaging, post-transforms, and its rules for two-class models with one score column.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::adapter::{Kernel, boxed, rows_and_width, rows_and_width_of, tensor_of, values_as};
use super::attrs::{Labels, Pick, ints_of_len, numbers};
use super::forest::{Aggregate, Forest, Mode, SourceNode, SourceWeight, Value};
use super::post::{Post, logistic, probit};

pub(crate) fn classifier(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let labels = Labels::read(node, "classlabels_int64s", "classlabels_strings")?
        .ok_or_else(|| format_err!("TreeEnsembleClassifier has no class labels"))?;
    let ensemble = Ensemble::read(ctx, node, "class", labels.len(), Aggregate::Sum)?;
    let class_ids = node
        .get_attr_opt_vec::<i64>("class_ids")?
        .unwrap_or_default();
    let binary_case = labels.len() == 2 && {
        let mut ids = class_ids.clone();
        ids.sort_unstable();
        ids.dedup();
        ids.len() == 1
    };
    let all_positive =
        numbers(ctx, node, "class_weights")?.is_none_or(|(w, _)| w.iter().all(|v| *v >= 0.0));
    Ok((
        boxed(TreeClassifier {
            ensemble,
            labels,
            binary_case,
            all_positive,
        }),
        vec![],
    ))
}

pub(crate) fn regressor(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let targets = node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1);
    node.expect_attr("n_targets", targets >= 1, "at least 1")?;
    let aggregate = Aggregate::parse(node.get_attr_opt::<&str>("aggregate_function")?)?;
    let ensemble = Ensemble::read(ctx, node, "target", targets as usize, aggregate)?;
    Ok((
        boxed(TreeRegressor {
            ensemble,
            typed_like_input: false,
        }),
        vec![],
    ))
}

/// The forest in the precision the model asks for, with what both kinds of op share.
#[derive(Debug)]
struct Ensemble {
    forest: Precision,
    base: Vec<f64>,
    post: Post,
}

#[derive(Debug)]
enum Precision {
    F32(Forest<f32>),
    F64(Forest<f64>),
}

impl Ensemble {
    fn read(
        ctx: &ParsingContext,
        node: &NodeProto,
        prefix: &str,
        targets: usize,
        aggregate: Aggregate,
    ) -> TractResult<Ensemble> {
        let n = node
            .get_attr_opt_vec::<i64>("nodes_nodeids")?
            .unwrap_or_default()
            .len();
        node.expect_attr("nodes_nodeids", n > 0, "at least one node")?;
        let trees = ints_of_len(node, "nodes_treeids", n)?;
        let ids = ints_of_len(node, "nodes_nodeids", n)?;
        let features = ints_of_len(node, "nodes_featureids", n)?;
        let trues = ints_of_len(node, "nodes_truenodeids", n)?;
        let falses = ints_of_len(node, "nodes_falsenodeids", n)?;
        let modes: Vec<String> = node.get_attr_opt_vec("nodes_modes")?.unwrap_or_default();
        node.expect_attr("nodes_modes", modes.len() == n, || format!("{n} entries"))?;
        let (values, values_f64) =
            numbers(ctx, node, "nodes_values")?.unwrap_or((vec![0.0; n], false));
        node.expect_attr("nodes_values", values.len() == n, || format!("{n} entries"))?;
        let missing = node
            .get_attr_opt_vec::<i64>("nodes_missing_value_tracks_true")?
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![0; n]);
        node.expect_attr(
            "nodes_missing_value_tracks_true",
            missing.len() == n,
            || format!("{n} entries"),
        )?;
        let nodes = (0..n)
            .map(|i| {
                ensure!(features[i] >= 0, "negative feature index {}", features[i]);
                Ok(SourceNode {
                    tree: trees[i],
                    id: ids[i],
                    feature: features[i] as usize,
                    value: values[i],
                    mode: Mode::parse(&modes[i])?,
                    true_id: trues[i],
                    false_id: falses[i],
                    nan_goes_true: missing[i] != 0,
                })
            })
            .collect::<TractResult<Vec<_>>>()?;

        let attr = |name: &str| format!("{prefix}_{name}");
        let w_ids = node
            .get_attr_opt_vec::<i64>(&attr("ids"))?
            .unwrap_or_default();
        let m = w_ids.len();
        let w_trees = ints_of_len(node, &attr("treeids"), m)?;
        let w_nodes = ints_of_len(node, &attr("nodeids"), m)?;
        let (w_values, weights_f64) = numbers(ctx, node, &attr("weights"))?.unwrap_or_default();
        node.expect_attr(&attr("weights"), w_values.len() == m, || {
            format!("{m} entries")
        })?;
        let weights = (0..m)
            .map(|i| {
                ensure!(w_ids[i] >= 0, "negative {} {}", attr("ids"), w_ids[i]);
                Ok(SourceWeight {
                    tree: w_trees[i],
                    node: w_nodes[i],
                    target: w_ids[i] as usize,
                    weight: w_values[i],
                })
            })
            .collect::<TractResult<Vec<_>>>()?;

        let (base, base_f64) = numbers(ctx, node, "base_values")?.unwrap_or_default();
        node.expect_attr(
            "base_values",
            base.len() <= 1 || base.len() == targets,
            || format!("0, 1 or {targets} entries, got {}", base.len()),
        )?;
        let post = Post::parse(node.get_attr_opt::<&str>("post_transform")?)?;
        // Models that give doubles are compared and summed in f64, as onnxruntime does.
        let forest = if values_f64 || weights_f64 || base_f64 {
            Precision::F64(Forest::build(&nodes, &weights, targets, aggregate)?)
        } else {
            Precision::F32(Forest::build(&nodes, &weights, targets, aggregate)?)
        };
        Ok(Ensemble { forest, base, post })
    }

    fn features(&self) -> usize {
        match &self.forest {
            Precision::F32(f) => f.features(),
            Precision::F64(f) => f.features(),
        }
    }

    fn check_width(&self, op: &str, fact: &TypedFact) -> TractResult<TDim> {
        let (rows, width) = rows_and_width(op, fact)?;
        if let Ok(width) = width.to_usize() {
            ensure!(
                width >= self.features(),
                "{op} reads feature {} but its input has {width} features",
                self.features() - 1
            );
        }
        Ok(rows)
    }

    /// Runs the forest and hands each row's raw scores, with which targets have a score, to
    /// `finish`, which writes that row's outputs.
    fn run(
        &self,
        op: &str,
        input: &TValue,
        mut finish: impl FnMut(usize, &[f64], &[bool]),
    ) -> TractResult<usize> {
        let (rows, width) = rows_and_width_of(op, input.shape())?;
        match &self.forest {
            Precision::F32(f) => self.run_with(f, input, rows, width, &mut finish)?,
            Precision::F64(f) => self.run_with(f, input, rows, width, &mut finish)?,
        }
        Ok(rows)
    }

    fn run_with<T: Value + Into<f64>>(
        &self,
        forest: &Forest<T>,
        input: &TValue,
        rows: usize,
        width: usize,
        finish: &mut impl FnMut(usize, &[f64], &[bool]),
    ) -> TractResult<()> {
        let x = values_as::<T>(input)?;
        let (scores, has) = forest.scores(&x, rows, width)?;
        let targets = forest.targets();
        let mut row_scores = vec![0.0f64; targets];
        let mut row_has = vec![false; targets];
        let average = forest.aggregate() == Aggregate::Average;
        let n_trees = forest.trees() as f64;
        for r in 0..rows {
            for t in 0..targets {
                let s: f64 = scores[r * targets + t].into();
                // onnxruntime divides in the threshold type; f64 division of an f32 sum
                // rounds the same way once the result goes back to f32.
                row_scores[t] = if average { s / n_trees } else { s };
                row_has[t] = if has.is_empty() {
                    forest.has_target()[t]
                } else {
                    has[r * targets + t]
                };
            }
            finish(r, &row_scores, &row_has);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct TreeClassifier {
    ensemble: Ensemble,
    labels: Labels,
    /// Two classes, and every leaf weight is for the same one of them.
    binary_case: bool,
    all_positive: bool,
}

impl Kernel for TreeClassifier {
    fn name(&self) -> &'static str {
        "TreeEnsembleClassifier"
    }

    fn outputs(&self) -> usize {
        2
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = self.ensemble.check_width(self.name(), inputs[0])?;
        Ok(tvec!(
            self.labels.datum_type().fact([rows.clone()]),
            f32::fact([rows, self.labels.len().into()])
        ))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let classes = self.labels.len();
        let mut picks = Vec::new();
        let mut probabilities = Vec::new();
        let rows = self
            .ensemble
            .run(self.name(), &inputs[0], |_, scores, has| {
                let start = probabilities.len();
                probabilities.resize(start + classes, 0.0);
                picks.push(self.finish(scores, has, &mut probabilities[start..]));
            })?;
        Ok(tvec!(
            self.labels.tensor(&picks)?,
            tensor_of(&[rows, classes], probabilities)?
        ))
    }
}

impl TreeClassifier {
    /// One row: the predicted class, and its class scores written to `out`. This follows
    /// onnxruntime's TreeEnsembleClassifier, quirks included, because users compare against it.
    fn finish(&self, scores: &[f64], has: &[bool], out: &mut [f32]) -> Pick {
        let base = &self.ensemble.base;
        let post = self.ensemble.post;
        let written = |s: f64, h: bool| if h { s as f32 } else { 0.0 };
        if scores.len() != 2 {
            let mut best: Option<(usize, f64)> = None;
            for (k, (&s, &h)) in scores.iter().zip(has).enumerate() {
                let (s, h) = match base.get(k) {
                    Some(b) => (s + b, true),
                    None => (s, h),
                };
                if h && best.is_none_or(|(_, m)| s > m) {
                    best = Some((k, s));
                }
                out[k] = written(s, h);
            }
            post.apply(out);
            return Pick::Class(best.map_or(0, |(k, _)| k));
        }
        let (mut s0, mut s1) = (scores[0], scores[1]);
        let (h0, h1) = (has[0], has[1]);
        // `second`: how onnxruntime derives class 0's column from a single score.
        let mut second = None;
        let mut single = false;
        match base.len() {
            2 if h1 => {
                s1 = base[1] + s0;
                s0 = -s1;
            }
            2 => {
                s1 += base[1];
                s0 += base[0];
            }
            1 => {
                s0 += base[0];
                single = !h1;
            }
            _ => {
                second = Some(3);
                single = !h1;
            }
        }
        let positive = if !single && h1 {
            s1
        } else if h0 {
            s0
        } else {
            0.0
        };
        let pick = if self.binary_case {
            let (wins, code) = if self.all_positive {
                (positive > 0.5, if positive > 0.5 { 0 } else { 1 })
            } else {
                (positive > 0.0, if positive > 0.0 { 2 } else { 3 })
            };
            second = Some(code);
            Pick::Class(usize::from(wins))
        } else {
            Pick::Raw(i64::from(positive > 0.0))
        };
        if !single {
            out[0] = written(s0, h0);
            out[1] = written(s1, h1);
            post.apply(out);
            return pick;
        }
        let s = s0 as f32;
        let pair = match (post, second) {
            (Post::Probit, _) => [probit(s), 0.0],
            (Post::Logistic, _) => [logistic(-s), logistic(s)],
            (_, Some(0 | 1)) => [1.0 - s, s],
            (_, Some(_)) => [-s, s],
            (_, None) => [s, 0.0],
        };
        out.copy_from_slice(&pair);
        pick
    }
}

#[derive(Debug)]
struct TreeRegressor {
    ensemble: Ensemble,
    /// `TreeEnsemble` (opset 5) answers in its input's float type; the older op in f32.
    typed_like_input: bool,
}

impl Kernel for TreeRegressor {
    fn name(&self) -> &'static str {
        "TreeEnsembleRegressor"
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rows = self.ensemble.check_width(self.name(), inputs[0])?;
        let dt = if self.typed_like_input && inputs[0].datum_type == DatumType::F64 {
            DatumType::F64
        } else {
            DatumType::F32
        };
        Ok(tvec!(dt.fact([rows, self.targets().into()])))
    }

    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let targets = self.targets();
        let mut out = Vec::new();
        let rows = self
            .ensemble
            .run(self.name(), &inputs[0], |_, scores, has| {
                let start = out.len();
                out.resize(start + targets, 0.0);
                self.finish(scores, has, &mut out[start..]);
            })?;
        let out = tensor_of(&[rows, targets], out)?;
        if self.typed_like_input && inputs[0].datum_type() == DatumType::F64 {
            return Ok(tvec!(out.cast_to::<f64>()?.into_owned().into_tvalue()));
        }
        Ok(tvec!(out))
    }
}

impl TreeRegressor {
    fn targets(&self) -> usize {
        match &self.ensemble.forest {
            Precision::F32(f) => f.targets(),
            Precision::F64(f) => f.targets(),
        }
    }

    /// One row, as onnxruntime's TreeEnsembleRegressor finishes it.
    fn finish(&self, scores: &[f64], has: &[bool], out: &mut [f32]) {
        let base = &self.ensemble.base;
        let post = self.ensemble.post;
        if scores.len() == 1 {
            let origin = if base.len() == 1 { base[0] } else { 0.0 };
            let v = match self.forest_aggregate() {
                Aggregate::Sum | Aggregate::Average => scores[0] + origin,
                Aggregate::Min | Aggregate::Max if has[0] => scores[0] + origin,
                Aggregate::Min | Aggregate::Max => origin,
            } as f32;
            out[0] = if post == Post::Probit { probit(v) } else { v };
            return;
        }
        let use_base = base.len() == scores.len();
        for (k, (&s, &h)) in scores.iter().zip(has).enumerate() {
            let b = if use_base { base[k] } else { 0.0 };
            out[k] = if h { (s + b) as f32 } else { 0.0 };
        }
        post.apply(out);
    }

    fn forest_aggregate(&self) -> Aggregate {
        match &self.ensemble.forest {
            Precision::F32(f) => f.aggregate(),
            Precision::F64(f) => f.aggregate(),
        }
    }
}

/// `TreeEnsemble` (ai.onnx.ml 5): the same ensemble in a newer encoding (split values and
/// leaf weights as tensors, leaves numbered apart from nodes, set-membership splits). It is
/// read into the same [`Forest`]; a membership split becomes a chain of equality tests that
/// share the split's true branch.
pub(crate) fn tree_ensemble(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let tensor = |name: &str| -> TractResult<Option<Tensor>> {
        node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)?
            .map(|p| ctx.load_tensor(p))
            .transpose()
    };
    let floats = |t: &Tensor| -> TractResult<Vec<f64>> {
        Ok(t.cast_to::<f64>()?
            .try_as_plain_ram()?
            .as_slice::<f64>()?
            .to_vec())
    };
    let splits_tensor = tensor("nodes_splits")?.ok_or_else(|| format_err!("no nodes_splits"))?;
    let double = splits_tensor.datum_type() == DatumType::F64;
    let splits = floats(&splits_tensor)?;
    let n = splits.len();
    let features = ints_of_len(node, "nodes_featureids", n)?;
    let modes: Vec<i64> = match tensor("nodes_modes")? {
        Some(t) => t
            .cast_to::<i64>()?
            .try_as_plain_ram()?
            .as_slice::<i64>()?
            .to_vec(),
        None => bail!("no nodes_modes"),
    };
    node.expect_attr("nodes_modes", modes.len() == n, || format!("{n} entries"))?;
    let true_ids = ints_of_len(node, "nodes_truenodeids", n)?;
    let false_ids = ints_of_len(node, "nodes_falsenodeids", n)?;
    let flag_list = |name: &str| -> TractResult<Vec<bool>> {
        let v = node
            .get_attr_opt_vec::<i64>(name)?
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![0; n]);
        node.expect_attr(name, v.len() == n, || format!("{n} entries"))?;
        Ok(v.into_iter().map(|b| b != 0).collect())
    };
    let (true_leaf, false_leaf) = (
        flag_list("nodes_trueleafs")?,
        flag_list("nodes_falseleafs")?,
    );
    let missing = flag_list("nodes_missing_value_tracks_true")?;
    let leaf_targets: Vec<i64> = node.get_attr_vec("leaf_targetids")?;
    let leaf_weights =
        floats(&tensor("leaf_weights")?.ok_or_else(|| format_err!("no leaf_weights"))?)?;
    ensure!(
        leaf_targets.len() == leaf_weights.len(),
        "leaf_targetids and leaf_weights differ in length"
    );
    let roots: Vec<i64> = node.get_attr_vec("tree_roots")?;
    let members = match tensor("membership_values")? {
        Some(t) => floats(&t)?,
        None => Vec::new(),
    };
    // The sets of the membership splits, in node order, separated by NaN.
    let mut sets = members.split(|v| v.is_nan()).map(<[f64]>::to_vec);
    let mut member_sets: Vec<Option<Vec<f64>>> = vec![None; n];
    for (i, &m) in modes.iter().enumerate() {
        if m == 6 {
            member_sets[i] = Some(sets.next().unwrap_or_default());
        }
    }

    // Internal node i keeps id i; leaf j becomes id n + j; chain nodes come after.
    let leaf_id = |j: i64| n as i64 + j;
    let mut next_id = (n + leaf_targets.len()) as i64;
    let mut source = Vec::new();
    let mut weights = Vec::new();
    for (tree, &root) in roots.iter().enumerate() {
        let tree = tree as i64;
        let mut stack = vec![(root, false)];
        let mut seen = std::collections::HashSet::new();
        while let Some((id, is_leaf)) = stack.pop() {
            if !seen.insert((id, is_leaf)) {
                continue;
            }
            if is_leaf {
                let j = usize::try_from(id).ok().filter(|&j| j < leaf_targets.len());
                let j = j.ok_or_else(|| format_err!("leaf {id} does not exist"))?;
                source.push(SourceNode {
                    tree,
                    id: leaf_id(id),
                    feature: 0,
                    value: 0.0,
                    mode: None,
                    true_id: 0,
                    false_id: 0,
                    nan_goes_true: false,
                });
                ensure!(leaf_targets[j] >= 0, "negative leaf target");
                weights.push(SourceWeight {
                    tree,
                    node: leaf_id(id),
                    target: leaf_targets[j] as usize,
                    weight: leaf_weights[j],
                });
                continue;
            }
            let i = usize::try_from(id)
                .ok()
                .filter(|&i| i < n)
                .ok_or_else(|| format_err!("node {id} does not exist"))?;
            ensure!(features[i] >= 0, "negative feature index");
            let child = |leaf: bool, c: i64| if leaf { leaf_id(c) } else { c };
            let (t, f) = (
                child(true_leaf[i], true_ids[i]),
                child(false_leaf[i], false_ids[i]),
            );
            stack.push((true_ids[i], true_leaf[i]));
            stack.push((false_ids[i], false_leaf[i]));
            let base = SourceNode {
                tree,
                id,
                feature: features[i] as usize,
                value: splits[i],
                mode: None,
                true_id: t,
                false_id: f,
                nan_goes_true: missing[i],
            };
            let mode = match modes[i] {
                0 => Mode::Leq,
                1 => Mode::Lt,
                2 => Mode::Gte,
                3 => Mode::Gt,
                4 => Mode::Eq,
                5 => Mode::Neq,
                6 => {
                    let set = member_sets[i].take().unwrap_or_default();
                    ensure!(!set.is_empty(), "membership split {id} has an empty set");
                    // x in {a, b, c}: x == a, else x == b, else x == c, else the false branch.
                    let mut ids: Vec<i64> = vec![id];
                    for _ in 1..set.len() {
                        ids.push(next_id);
                        next_id += 1;
                    }
                    for (k, value) in set.iter().enumerate() {
                        source.push(SourceNode {
                            id: ids[k],
                            value: *value,
                            mode: Some(Mode::Eq),
                            false_id: ids.get(k + 1).copied().unwrap_or(f),
                            ..base.clone()
                        });
                    }
                    continue;
                }
                other => bail!("unknown node mode {other}"),
            };
            source.push(SourceNode {
                mode: Some(mode),
                ..base
            });
        }
    }
    let targets = node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1);
    node.expect_attr("n_targets", targets >= 1, "at least 1")?;
    let aggregate = match node.get_attr_opt::<i64>("aggregate_function")?.unwrap_or(1) {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        2 => Aggregate::Min,
        3 => Aggregate::Max,
        other => bail!("unknown aggregate_function {other}"),
    };
    // The ONNX text numbers SOFTMAX 1 and LOGISTIC 2; onnxruntime 1.32 reads 1 as LOGISTIC and
    // 2 as SOFTMAX (its own enum's order). Exported models are checked against onnxruntime, so
    // we read them as it does.
    let post = match node.get_attr_opt::<i64>("post_transform")?.unwrap_or(0) {
        0 => Post::None,
        1 => Post::Logistic,
        2 => Post::Softmax,
        3 => Post::SoftmaxZero,
        4 => Post::Probit,
        other => bail!("unknown post_transform {other}"),
    };
    let targets = targets as usize;
    let forest = if double {
        Precision::F64(Forest::build(&source, &weights, targets, aggregate)?)
    } else {
        Precision::F32(Forest::build(&source, &weights, targets, aggregate)?)
    };
    let ensemble = Ensemble {
        forest,
        base: Vec::new(),
        post,
    };
    Ok((
        boxed(TreeRegressor {
            ensemble,
            typed_like_input: true,
        }),
        vec![],
    ))
}
