//! A tree ensemble compiled once, at load, into flat arrays for fast evaluation.
//!
//! Layout (measured in `benches/onnx_ml.rs`; numbers in docs/PERFORMANCE.md):
//! - Every node is 12 bytes (16 for f64 thresholds): threshold, feature (plus flags when the
//!   loop needs them), and the slot of its children. Children are stored side by side (true
//!   child at `next`, false child at `next + 1`), trees breadth-first, so the top levels of a
//!   tree share cache lines and the step to a child is one add of the comparison's outcome: no
//!   branch to mispredict.
//! - Comparison modes are normalised at load: GTE, GT and NEQ become LT, LEQ and EQ with their
//!   children swapped, and what a NaN does (go true or false) is one flag per node. A forest
//!   whose nodes share one mode (the usual case) runs a loop specialised for that mode, reading
//!   the feature without masking, and the NaN test is compiled out when no node needs it (NaN
//!   already compares false).
//! - A leaf compares false against anything (its threshold is NaN) and its `next` points at the
//!   slot before itself, so once reached it is never left. Blocks of 16 rows walk a tree
//!   together, level by level, with no test for "is this a leaf": their independent walks
//!   overlap while each waits on memory. The blocks of a chunk of 128 rows (512 for trees over
//!   32 KB) take each tree in turn, so its nodes, once loaded, serve the whole chunk (as
//!   onnxruntime batches 128 rows per tree): a forest bigger than the cache comes from memory
//!   once per chunk, not once per block. With fewer rows than a block (a single request), the
//!   16 lanes walk several trees at once instead.
//! - A lopsided tree (leaf-wise boosting) is walked so only to its average leaf depth. The rows
//!   not yet at a leaf then finish one by one, or, from 128 rows a call, a level at a time
//!   together, each dropping out at its leaf: one by one, each row's last step is a mispredicted
//!   branch unless the same rows come again and again (as the bench's batches of 1 and 32 do).
//! - Two nodes may share a child (LightGBM's categorical splits, opset-5 set membership): the
//!   second parent gets a copy of the child's node, which steps to the same grandchildren.
//! - Leaf weights are stored by shape: one weight per leaf, a dense row per leaf (random forest
//!   classifiers), or sparse lists; each shape has its own small accumulation loop, inlined
//!   into the walk.
//! - Sums run in the threshold type, tree by tree in the model's order, as onnxruntime's do.
//!
//! What was measured and dropped: walking every tree to its full depth is no faster than the
//! lopsided-tree rule on balanced forests and up to 10% slower on boosted ones; stepping rows in
//! register-held groups of 4 instead of 16 was 10-15% slower; one shared leaf-accumulation
//! closure (not inlined) made batches of 1,024 rows 40-60% slower; chunks of 64 rows were up to
//! 15% slower than 128, and 512 up to 7% slower on trees that fit in L1 (but 30% faster on
//! depth-12 forests); finishing lanes together by compacting a list of the unfinished ones was
//! slower than either way.

use std::collections::HashMap;
use std::fmt::Debug;

use tract_onnx::tract_hir::internal::*;

/// The number type of thresholds and sums: f32, or f64 for models that give doubles.
pub(crate) trait Value:
    Copy + PartialOrd + Debug + Send + Sync + 'static + Datum + std::ops::Add<Output = Self>
{
    const ZERO: Self;
    const NAN: Self;
    fn from_f64(v: f64) -> Self;
    fn is_nan(self) -> bool;
}

impl Value for f32 {
    const ZERO: Self = 0.0;
    const NAN: Self = f32::NAN;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Value for f64 {
    const ZERO: Self = 0.0;
    const NAN: Self = f64::NAN;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// A node's comparison, as ONNX names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

impl Mode {
    /// `None` is a leaf.
    pub(crate) fn parse(name: &str) -> TractResult<Option<Mode>> {
        Ok(Some(match name {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => return Ok(None),
            other => bail!("unknown node mode {other}"),
        }))
    }
}

/// How a forest's scores are combined across trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    pub(crate) fn parse(name: Option<&str>) -> TractResult<Aggregate> {
        Ok(match name.unwrap_or("SUM") {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => bail!("unknown aggregate_function {other}"),
        })
    }
}

/// One node as the ONNX attributes describe it.
#[derive(Debug, Clone)]
pub(crate) struct SourceNode {
    pub tree: i64,
    pub id: i64,
    pub feature: usize,
    pub value: f64,
    /// `None` for a leaf.
    pub mode: Option<Mode>,
    pub true_id: i64,
    pub false_id: i64,
    pub nan_goes_true: bool,
}

/// One leaf weight as the ONNX attributes describe it.
#[derive(Debug, Clone)]
pub(crate) struct SourceWeight {
    pub tree: i64,
    pub node: i64,
    pub target: usize,
    pub weight: f64,
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Node<T> {
    value: T,
    meta: u32,
    next: u32,
}

const FEATURE_MASK: u32 = (1 << 28) - 1;
const MODE_SHIFT: u32 = 28;
const MODE_LEQ: u32 = 0;
const MODE_LT: u32 = 1;
const MODE_EQ: u32 = 2;
const NAN_TRUE: u32 = 1 << 30;

/// Rows walked together through one tree.
const BLOCK: usize = 16;

/// Rows that walk each tree, a block at a time, before the next tree: the tree's nodes stay in
/// cache for all of them, and so do the rows (128 rows of 100 f32 are 50 KB, about L1).
const CHUNK: usize = 128;

/// The chunk for trees of more than [`BIG_TREE_BYTES`] on average, which do not fit in L1
/// anyway: more rows share each load of the tree from L2 or L3, the rows from L2.
const MAX_CHUNK: usize = 512;

const BIG_TREE_BYTES: usize = 32 << 10;

/// From this many rows in a call, the lanes that a block's level-by-level walk leaves short of
/// their leaf (in lopsided trees) walk on together rather than one by one.
const FINISH_TOGETHER_ROWS: usize = 128;

#[derive(Debug, Clone, Copy)]
struct Tree {
    root: u32,
    /// Levels every row of a block steps through together, without looking for leaves.
    levels: u32,
    /// Whether every leaf is at most `levels` deep, so no row needs more steps.
    complete: bool,
}

#[derive(Debug)]
enum Leaves<T> {
    /// One weight per leaf.
    Single { target: Vec<u32>, weight: Vec<T> },
    /// A weight for every target, per leaf, in target order.
    Dense { weights: Vec<T> },
    /// Any number of weights per leaf: leaf `l` owns `offsets[l]..offsets[l + 1]`.
    Sparse {
        offsets: Vec<u32>,
        target: Vec<u32>,
        weight: Vec<T>,
    },
}

/// A compiled tree ensemble.
#[derive(Debug)]
pub(crate) struct Forest<T> {
    nodes: Vec<Node<T>>,
    /// The leaf number of each slot (meaningful at leaves only).
    leaf_of: Vec<u32>,
    trees: Vec<Tree>,
    leaves: Leaves<T>,
    targets: usize,
    /// One more than the largest feature index any node reads.
    features: usize,
    /// The one comparison mode every node uses, if they share one.
    mode: Option<u32>,
    /// Whether any node sends NaN to its true branch.
    nan_flags: bool,
    /// Which targets any leaf gives a weight to.
    has_target: Vec<bool>,
    aggregate: Aggregate,
    /// Rows that walk each tree before the next tree does ([`CHUNK`] or [`MAX_CHUNK`]).
    chunk: usize,
}

impl<T: Value> Forest<T> {
    /// Compiles nodes and weights. Trees are taken in the order their first node appears.
    pub(crate) fn build(
        nodes: &[SourceNode],
        weights: &[SourceWeight],
        targets: usize,
        aggregate: Aggregate,
    ) -> TractResult<Forest<T>> {
        ensure!(!nodes.is_empty(), "the ensemble has no nodes");
        let mut index: HashMap<(i64, i64), usize> = HashMap::with_capacity(nodes.len());
        let mut tree_order: Vec<i64> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            if index.insert((n.tree, n.id), i).is_some() {
                bail!("node {} of tree {} is defined twice", n.id, n.tree);
            }
            if tree_order.last() != Some(&n.tree) && !tree_order.contains(&n.tree) {
                tree_order.push(n.tree);
            }
        }
        let mut leaf_weights: HashMap<(i64, i64), Vec<(u32, T)>> = HashMap::new();
        for w in weights {
            ensure!(
                w.target < targets,
                "a leaf weight is for target {} but there are {targets}",
                w.target
            );
            ensure!(
                index.contains_key(&(w.tree, w.node)),
                "a leaf weight names node {} of tree {}, which does not exist",
                w.node,
                w.tree
            );
            leaf_weights
                .entry((w.tree, w.node))
                .or_default()
                .push((w.target as u32, T::from_f64(w.weight)));
        }
        // Roots: nodes of a tree that no node of that tree points to.
        let mut is_child = vec![false; nodes.len()];
        for n in nodes.iter().filter(|n| n.mode.is_some()) {
            for child in [n.true_id, n.false_id] {
                let c = *index.get(&(n.tree, child)).ok_or_else(|| {
                    format_err!(
                        "node {} of tree {} points to missing node {child}",
                        n.id,
                        n.tree
                    )
                })?;
                is_child[c] = true;
            }
        }
        let mut roots: HashMap<i64, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if !is_child[i] && roots.insert(n.tree, i).is_some() {
                bail!("tree {} has more than one root", n.tree);
            }
        }

        // Slot 0 is a placeholder, so that a leaf's `next` (its own slot minus one) never wraps.
        let mut out: Vec<Node<T>> = vec![Node {
            value: T::NAN,
            meta: 0,
            next: 0,
        }];
        let mut leaf_of: Vec<u32> = vec![0];
        let mut per_leaf: Vec<Vec<(u32, T)>> = Vec::new();
        let mut trees = Vec::with_capacity(tree_order.len());
        // The slot each node was laid out at. Exporters may point two nodes at one child (a
        // DAG: LightGBM's categorical splits); the later parents get a copy of that child's node
        // in their own pair of slots, which steps to the same children, so no subtree is copied.
        let mut placed: Vec<Option<u32>> = vec![None; nodes.len()];
        let mut aliases: Vec<(u32, usize)> = Vec::new();
        let mut modes_used = [false; 3];
        let mut nan_flags = false;
        let mut features = 0usize;
        let mut depth_of: Vec<Option<u32>> = vec![None; nodes.len()];
        for tree in &tree_order {
            let root = *roots
                .get(tree)
                .ok_or_else(|| format_err!("tree {tree} has no root (its nodes form a cycle)"))?;
            let depth = longest_path(nodes, &index, root, &mut depth_of)?;
            let root_slot = out.len() as u32;
            out.push(Node {
                value: T::NAN,
                meta: 0,
                next: 0,
            });
            leaf_of.push(0);
            placed[root] = Some(root_slot);
            let mut queue = std::collections::VecDeque::from([(root, root_slot, 0u32)]);
            let (mut leaf_depths, mut leaf_count) = (0u64, 0u64);
            while let Some((src, slot, level)) = queue.pop_front() {
                let n = &nodes[src];
                match n.mode {
                    None => {
                        let leaf = per_leaf.len() as u32;
                        per_leaf.push(leaf_weights.remove(&(n.tree, n.id)).unwrap_or_default());
                        out[slot as usize] = Node {
                            value: T::NAN,
                            meta: 0,
                            next: slot - 1,
                        };
                        leaf_of[slot as usize] = leaf;
                        leaf_depths += u64::from(level);
                        leaf_count += 1;
                    }
                    Some(mode) => {
                        ensure!(
                            n.feature < FEATURE_MASK as usize,
                            "feature index {} is too large",
                            n.feature
                        );
                        features = features.max(n.feature + 1);
                        let (code, swap, nan_true) = match mode {
                            Mode::Leq => (MODE_LEQ, false, n.nan_goes_true),
                            Mode::Lt => (MODE_LT, false, n.nan_goes_true),
                            Mode::Eq => (MODE_EQ, false, n.nan_goes_true),
                            // x >= t is not (x < t) for every number; NaN keeps its own branch.
                            Mode::Gte => (MODE_LT, true, !n.nan_goes_true),
                            Mode::Gt => (MODE_LEQ, true, !n.nan_goes_true),
                            // NaN != t is true, so NaN goes to NEQ's true branch: EQ's false one.
                            Mode::Neq => (MODE_EQ, true, false),
                        };
                        modes_used[code as usize] = true;
                        nan_flags |= nan_true;
                        let next = out.len() as u32;
                        ensure!(next < u32::MAX - 2, "the ensemble has too many nodes");
                        let (t, f) = (index[&(n.tree, n.true_id)], index[&(n.tree, n.false_id)]);
                        let (first, second) = if swap { (f, t) } else { (t, f) };
                        out.extend(
                            [Node {
                                value: T::NAN,
                                meta: 0,
                                next: 0,
                            }; 2],
                        );
                        leaf_of.extend([0, 0]);
                        out[slot as usize] = Node {
                            value: T::from_f64(n.value),
                            meta: n.feature as u32
                                | (code << MODE_SHIFT)
                                | if nan_true { NAN_TRUE } else { 0 },
                            next,
                        };
                        for (child, child_slot) in [(first, next), (second, next + 1)] {
                            if placed[child].is_some() {
                                aliases.push((child_slot, child));
                            } else {
                                placed[child] = Some(child_slot);
                                queue.push_back((child, child_slot, level + 1));
                            }
                        }
                    }
                }
            }
            // Balanced trees are walked level by level to the bottom. A lopsided one (leaf-wise
            // boosting) only to its average leaf depth; the rows not yet at a leaf then finish
            // one by one, so the many shallow leaves do not pay for the few deep ones.
            let average = leaf_depths.checked_div(leaf_count).unwrap_or(0) as u32;
            let complete = depth <= average + 1;
            trees.push(Tree {
                root: root_slot,
                levels: if complete { depth } else { average },
                complete,
            });
        }
        for (slot, child) in aliases {
            let primary = placed[child].unwrap_or(0) as usize;
            let mut copy = out[primary];
            if is_leaf(&out, primary as u32) {
                copy.next = slot - 1;
                leaf_of[slot as usize] = leaf_of[primary];
            }
            out[slot as usize] = copy;
        }
        if let Some(orphan) = placed.iter().position(Option::is_none) {
            bail!(
                "node {} of tree {} is not reachable from its root",
                nodes[orphan].id,
                nodes[orphan].tree
            );
        }
        let mut has_target = vec![false; targets];
        for w in per_leaf.iter().flatten() {
            has_target[w.0 as usize] = true;
        }
        let mode = match modes_used {
            [true, false, false] => Some(MODE_LEQ),
            [false, true, false] => Some(MODE_LT),
            [false, false, true] => Some(MODE_EQ),
            [false, false, false] => Some(MODE_LEQ), // only leaves
            _ => None,
        };
        // The loops specialised to one mode read `meta` as the bare feature (plus NAN_TRUE).
        if matches!(mode, Some(MODE_LEQ | MODE_LT)) {
            for n in &mut out {
                n.meta &= !(3 << MODE_SHIFT);
            }
        }
        let tree_bytes = out.len() * std::mem::size_of::<Node<T>>() / tree_order.len().max(1);
        let chunk = if tree_bytes > BIG_TREE_BYTES {
            MAX_CHUNK
        } else {
            CHUNK
        };
        Ok(Forest {
            nodes: out,
            leaf_of,
            trees,
            leaves: Self::pack_leaves(per_leaf, targets),
            targets,
            features,
            mode,
            nan_flags,
            has_target,
            aggregate,
            chunk,
        })
    }

    fn pack_leaves(per_leaf: Vec<Vec<(u32, T)>>, targets: usize) -> Leaves<T> {
        if per_leaf.iter().all(|w| w.len() == 1) {
            return Leaves::Single {
                target: per_leaf.iter().map(|w| w[0].0).collect(),
                weight: per_leaf.iter().map(|w| w[0].1).collect(),
            };
        }
        let dense = per_leaf.iter().all(|w| {
            let mut seen = vec![false; targets];
            w.len() == targets
                && w.iter()
                    .all(|(t, _)| !std::mem::replace(&mut seen[*t as usize], true))
        });
        if dense {
            let mut weights = vec![T::ZERO; per_leaf.len() * targets];
            for (l, w) in per_leaf.iter().enumerate() {
                for &(t, v) in w {
                    weights[l * targets + t as usize] = v;
                }
            }
            return Leaves::Dense { weights };
        }
        let mut offsets = Vec::with_capacity(per_leaf.len() + 1);
        let (mut target, mut weight) = (Vec::new(), Vec::new());
        offsets.push(0);
        for w in &per_leaf {
            target.extend(w.iter().map(|p| p.0));
            weight.extend(w.iter().map(|p| p.1));
            offsets.push(target.len() as u32);
        }
        Leaves::Sparse {
            offsets,
            target,
            weight,
        }
    }

    pub(crate) fn trees(&self) -> usize {
        self.trees.len()
    }

    pub(crate) fn targets(&self) -> usize {
        self.targets
    }

    /// The number of features a row must have at least.
    pub(crate) fn features(&self) -> usize {
        self.features
    }

    pub(crate) fn has_target(&self) -> &[bool] {
        &self.has_target
    }

    pub(crate) fn aggregate(&self) -> Aggregate {
        self.aggregate
    }

    /// Aggregated raw scores, `rows x targets`, before base values: sums (for SUM and
    /// AVERAGE, not yet divided) or minima/maxima, plus for MIN and MAX whether each target of
    /// each row got any value.
    pub(crate) fn scores(
        &self,
        x: &[T],
        rows: usize,
        width: usize,
    ) -> TractResult<(Vec<T>, Vec<bool>)> {
        ensure!(
            width >= self.features,
            "the trees read feature {} but rows have {width} features",
            self.features - 1
        );
        ensure!(
            x.len() >= rows * width,
            "input is shorter than {rows} rows of {width}"
        );
        let targets = self.targets;
        let mut out = vec![T::ZERO; rows * targets];
        match self.aggregate {
            // One small closure per leaf layout, so that each inlines into the walk.
            Aggregate::Sum | Aggregate::Average => {
                match &self.leaves {
                    Leaves::Single { weight, .. } if targets == 1 => {
                        self.walk(x, rows, width, |row, leaf| {
                            out[row] = out[row] + weight[leaf]
                        })
                    }
                    Leaves::Single { target, weight } => self.walk(x, rows, width, |row, leaf| {
                        let i = row * targets + target[leaf] as usize;
                        out[i] = out[i] + weight[leaf];
                    }),
                    Leaves::Dense { weights } => self.walk(x, rows, width, |row, leaf| {
                        let dst = &mut out[row * targets..(row + 1) * targets];
                        let src = &weights[leaf * targets..(leaf + 1) * targets];
                        for (s, w) in dst.iter_mut().zip(src) {
                            *s = *s + *w;
                        }
                    }),
                    Leaves::Sparse { .. } => self.walk(x, rows, width, |row, leaf| {
                        self.for_each_weight(leaf, |t, w| {
                            let i = row * targets + t;
                            out[i] = out[i] + w;
                        })
                    }),
                }
                Ok((out, Vec::new()))
            }
            Aggregate::Min | Aggregate::Max => {
                let mut has = vec![false; rows * targets];
                let min = self.aggregate == Aggregate::Min;
                self.walk(x, rows, width, |row, leaf| {
                    self.for_each_weight(leaf, |t, w| {
                        let i = row * targets + t;
                        let better = if min { w < out[i] } else { w > out[i] };
                        if !has[i] || better {
                            out[i] = w;
                            has[i] = true;
                        }
                    })
                });
                Ok((out, has))
            }
        }
    }

    #[inline(always)]
    fn for_each_weight(&self, leaf: usize, mut f: impl FnMut(usize, T)) {
        match &self.leaves {
            Leaves::Single { target, weight } => f(target[leaf] as usize, weight[leaf]),
            Leaves::Dense { weights } => {
                for (t, w) in weights[leaf * self.targets..(leaf + 1) * self.targets]
                    .iter()
                    .enumerate()
                {
                    f(t, *w)
                }
            }
            Leaves::Sparse {
                offsets,
                target,
                weight,
            } => {
                for i in offsets[leaf] as usize..offsets[leaf + 1] as usize {
                    f(target[i] as usize, weight[i])
                }
            }
        }
    }

    /// Calls `on_leaf(row, leaf)` for every row and tree, trees in order for each row.
    fn walk(&self, x: &[T], rows: usize, width: usize, on_leaf: impl FnMut(usize, usize)) {
        match (self.mode, self.nan_flags) {
            (Some(MODE_LEQ), false) => {
                self.walk_with::<{ MODE_LEQ }, false>(x, rows, width, on_leaf)
            }
            (Some(MODE_LEQ), true) => self.walk_with::<{ MODE_LEQ }, true>(x, rows, width, on_leaf),
            (Some(MODE_LT), false) => self.walk_with::<{ MODE_LT }, false>(x, rows, width, on_leaf),
            (Some(MODE_LT), true) => self.walk_with::<{ MODE_LT }, true>(x, rows, width, on_leaf),
            (_, nan) => {
                if nan {
                    self.walk_with::<MIXED, true>(x, rows, width, on_leaf)
                } else {
                    self.walk_with::<MIXED, false>(x, rows, width, on_leaf)
                }
            }
        }
    }

    #[inline(always)]
    fn walk_with<const MODE: u32, const NAN: bool>(
        &self,
        x: &[T],
        rows: usize,
        width: usize,
        mut on_leaf: impl FnMut(usize, usize),
    ) {
        // Whole blocks of rows go tree by tree through a chunk of rows, so that each tree's
        // nodes, once in cache, serve every block of the chunk.
        let full = rows - rows % BLOCK;
        let together = rows >= FINISH_TOGETHER_ROWS;
        let mut offsets = [[0usize; BLOCK]; MAX_CHUNK / BLOCK];
        let mut chunk = 0;
        while chunk < full {
            let end = (chunk + self.chunk).min(full);
            let blocks = &mut offsets[..(end - chunk) / BLOCK];
            for (b, lanes) in blocks.iter_mut().enumerate() {
                for (l, offset) in lanes.iter_mut().enumerate() {
                    *offset = (chunk + b * BLOCK + l) * width;
                }
            }
            for tree in &self.trees {
                for (b, lanes) in blocks.iter().enumerate() {
                    let mut slots = [tree.root; BLOCK];
                    self.descend::<MODE, NAN>(&mut slots, x, lanes, tree, together);
                    let first = chunk + b * BLOCK;
                    for (l, slot) in slots.iter().enumerate() {
                        on_leaf(first + l, self.leaf_of[*slot as usize] as usize);
                    }
                }
            }
            chunk = end;
        }
        if full < rows {
            self.walk_few::<MODE, NAN>(x, full, rows - full, width, on_leaf);
        }
    }

    /// One block's lanes down `tree`, level by level; lane `l` reads the row at
    /// `x[offsets[l]..]`. The lanes not at a leaf after `tree.levels` steps finish one by one,
    /// or, if `together`, still a level at a time.
    #[inline(always)]
    fn descend<const MODE: u32, const NAN: bool>(
        &self,
        slots: &mut [u32; BLOCK],
        x: &[T],
        offsets: &[usize; BLOCK],
        tree: &Tree,
        together: bool,
    ) {
        let nodes = &self.nodes[..];
        // A fixed number of lanes, so the loop unrolls and the slots stay in registers.
        for _ in 0..tree.levels {
            for l in 0..BLOCK {
                slots[l] = step::<T, MODE, NAN>(nodes, slots[l], x, offsets[l]);
            }
        }
        if !tree.complete {
            if together {
                finish_together::<T, MODE, NAN>(nodes, slots, x, offsets);
            } else {
                finish_each::<T, MODE, NAN>(nodes, slots, x, offsets);
            }
        }
    }

    /// Fewer rows than a block (a single request, or the end of a batch): the lanes walk
    /// several trees at once instead, whose walks are just as independent.
    #[inline(always)]
    fn walk_few<const MODE: u32, const NAN: bool>(
        &self,
        x: &[T],
        start: usize,
        block: usize,
        width: usize,
        mut on_leaf: impl FnMut(usize, usize),
    ) {
        let nodes = &self.nodes[..];
        let per_pass = BLOCK / block;
        let mut offsets = [0usize; BLOCK];
        for (l, offset) in offsets[..per_pass * block].iter_mut().enumerate() {
            *offset = (start + l % block) * width;
        }
        for group in self.trees.chunks(per_pass) {
            let lanes = group.len() * block;
            let (slots, offsets) = (&mut [0u32; BLOCK][..lanes], &offsets[..lanes]);
            for (tree, lanes) in group.iter().zip(slots.chunks_mut(block)) {
                lanes.fill(tree.root);
            }
            // A leaf is never left, so the lanes of shallower trees can step on.
            let levels = group.iter().map(|t| t.levels).max().unwrap_or(0);
            for _ in 0..levels {
                for (slot, offset) in slots.iter_mut().zip(offsets) {
                    *slot = step::<T, MODE, NAN>(nodes, *slot, x, *offset);
                }
            }
            if group.iter().any(|t| !t.complete) {
                finish_each::<T, MODE, NAN>(nodes, slots, x, offsets);
            }
            // Lanes are tree-major: each row gets its trees' leaves in the model's order.
            for tree_lanes in slots.chunks(block) {
                for (r, slot) in tree_lanes.iter().enumerate() {
                    on_leaf(start + r, self.leaf_of[*slot as usize] as usize);
                }
            }
        }
    }
}

/// One step of a walk: from the node at `slot` to the child the row at `x[offset..]` picks.
#[inline(always)]
fn step<T: Value, const MODE: u32, const NAN: bool>(
    nodes: &[Node<T>],
    slot: u32,
    x: &[T],
    offset: usize,
) -> u32 {
    let n = &nodes[slot as usize];
    // Forests of one mode keep no mode bits, so without NaN flags `meta` is the feature.
    let feature = if MODE == MIXED || NAN {
        n.meta & FEATURE_MASK
    } else {
        n.meta
    };
    let v = x[offset + feature as usize];
    n.next + u32::from(!goes_true::<T, MODE, NAN>(v, n))
}

/// Walks each lane not yet at a leaf on to its leaf, one lane after another.
#[inline(always)]
fn finish_each<T: Value, const MODE: u32, const NAN: bool>(
    nodes: &[Node<T>],
    slots: &mut [u32],
    x: &[T],
    offsets: &[usize],
) {
    for (slot, offset) in slots.iter_mut().zip(offsets) {
        while !is_leaf(nodes, *slot) {
            *slot = step::<T, MODE, NAN>(nodes, *slot, x, *offset);
        }
    }
}

/// Walks the lanes not yet at a leaf on to their leaves a level at a time, so their walks
/// overlap as the levels before did, each lane dropping out as it arrives.
#[inline(always)]
fn finish_together<T: Value, const MODE: u32, const NAN: bool>(
    nodes: &[Node<T>],
    slots: &mut [u32; BLOCK],
    x: &[T],
    offsets: &[usize; BLOCK],
) {
    let mut walking = 0u32;
    for (l, slot) in slots.iter().enumerate() {
        walking |= u32::from(!is_leaf(nodes, *slot)) << l;
    }
    while walking != 0 {
        let mut lanes = walking;
        walking = 0;
        while lanes != 0 {
            let l = lanes.trailing_zeros() as usize;
            lanes &= lanes - 1;
            slots[l] = step::<T, MODE, NAN>(nodes, slots[l], x, offsets[l]);
            walking |= u32::from(!is_leaf(nodes, slots[l])) << l;
        }
    }
}

/// Whether `slot` holds a leaf: a leaf's `next` is the slot before it, so that it steps to
/// itself; an inner node's children always lie after it (or, for a copy, after the original).
#[inline(always)]
fn is_leaf<T>(nodes: &[Node<T>], slot: u32) -> bool {
    nodes[slot as usize].next.wrapping_add(1) == slot
}

/// The number of steps from `node` to its deepest leaf, memoised in `depth_of`; a cycle is an
/// error (a node on the current path is marked with `u32::MAX` while its children are explored).
fn longest_path(
    nodes: &[SourceNode],
    index: &HashMap<(i64, i64), usize>,
    node: usize,
    depth_of: &mut [Option<u32>],
) -> TractResult<u32> {
    match depth_of[node] {
        Some(u32::MAX) => bail!(
            "tree {} has a cycle through node {}",
            nodes[node].tree,
            nodes[node].id
        ),
        Some(d) => return Ok(d),
        None => {}
    }
    let n = &nodes[node];
    let depth = if n.mode.is_none() {
        0
    } else {
        depth_of[node] = Some(u32::MAX);
        let t = longest_path(nodes, index, index[&(n.tree, n.true_id)], depth_of)?;
        let f = longest_path(nodes, index, index[&(n.tree, n.false_id)], depth_of)?;
        1 + t.max(f)
    };
    depth_of[node] = Some(depth);
    Ok(depth)
}

/// Marks the loop that reads each node's own mode.
const MIXED: u32 = 3;

#[inline(always)]
fn goes_true<T: Value, const MODE: u32, const NAN: bool>(v: T, n: &Node<T>) -> bool {
    let mode = if MODE == MIXED {
        (n.meta >> MODE_SHIFT) & 3
    } else {
        MODE
    };
    let cmp = match mode {
        MODE_LEQ => v <= n.value,
        MODE_LT => v < n.value,
        _ => v == n.value,
    };
    if NAN {
        cmp | ((n.meta & NAN_TRUE != 0) & v.is_nan())
    } else {
        cmp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i64, feature: usize, value: f64, mode: &str, t: i64, f: i64) -> SourceNode {
        SourceNode {
            tree: 0,
            id,
            feature,
            value,
            mode: Mode::parse(mode).unwrap(),
            true_id: t,
            false_id: f,
            nan_goes_true: false,
        }
    }

    fn leaf(id: i64) -> SourceNode {
        node(id, 0, 0.0, "LEAF", 0, 0)
    }

    fn weight(node: i64, w: f64) -> SourceWeight {
        SourceWeight {
            tree: 0,
            node,
            target: 0,
            weight: w,
        }
    }

    fn one_split(mode: &str, nan_goes_true: bool) -> Forest<f32> {
        let mut root = node(0, 0, 1.0, mode, 1, 2);
        root.nan_goes_true = nan_goes_true;
        Forest::build(
            &[root, leaf(1), leaf(2)],
            &[weight(1, 10.0), weight(2, 20.0)],
            1,
            Aggregate::Sum,
        )
        .unwrap()
    }

    fn score(f: &Forest<f32>, x: f32) -> f32 {
        f.scores(&[x], 1, 1).unwrap().0[0]
    }

    #[test]
    fn every_mode_sends_values_and_nan_where_onnx_says() {
        // (mode, [x = 0, 1, 2, NaN] -> true branch?) without missing-value tracking.
        let table = [
            ("BRANCH_LEQ", [true, true, false, false]),
            ("BRANCH_LT", [true, false, false, false]),
            ("BRANCH_GTE", [false, true, true, false]),
            ("BRANCH_GT", [false, false, true, false]),
            ("BRANCH_EQ", [false, true, false, false]),
            ("BRANCH_NEQ", [true, false, true, true]),
        ];
        for (mode, expected) in table {
            let forest = one_split(mode, false);
            for (x, goes_true) in [0.0, 1.0, 2.0, f32::NAN].into_iter().zip(expected) {
                let want = if goes_true { 10.0 } else { 20.0 };
                assert_eq!(score(&forest, x), want, "{mode} at {x}");
            }
            // Tracking missing values sends NaN to the true branch, whatever the mode.
            assert_eq!(
                score(&one_split(mode, true), f32::NAN),
                10.0,
                "{mode} tracking NaN"
            );
        }
    }

    #[test]
    fn deep_unbalanced_trees_walk_to_their_leaf() {
        // A chain: node i tests x <= i, true goes to leaf, false to node i+1; 40 levels deep.
        let depth = 40;
        let mut nodes = Vec::new();
        let mut weights = Vec::new();
        for i in 0..depth {
            nodes.push(node(2 * i, 0, i as f64, "BRANCH_LEQ", 2 * i + 1, 2 * i + 2));
            nodes.push(leaf(2 * i + 1));
            weights.push(weight(2 * i + 1, i as f64));
        }
        nodes.push(leaf(2 * depth));
        weights.push(weight(2 * depth, -1.0));
        let forest: Forest<f32> = Forest::build(&nodes, &weights, 1, Aggregate::Sum).unwrap();
        assert!(!forest.trees[0].complete);
        for x in [0.0f32, 3.5, 39.0, 100.0] {
            let want = if x > 39.0 { -1.0 } else { x.ceil() };
            assert_eq!(score(&forest, x), want, "at {x}");
        }
    }

    #[test]
    fn children_shared_by_two_parents_are_followed() {
        // x == 1 or x == 2 goes to leaf 3 (shared), anything else to leaf 4.
        let nodes = [
            node(0, 0, 1.0, "BRANCH_EQ", 3, 1),
            node(1, 0, 2.0, "BRANCH_EQ", 3, 4),
            leaf(3),
            leaf(4),
        ];
        let forest: Forest<f32> = Forest::build(
            &nodes,
            &[weight(3, 7.0), weight(4, -7.0)],
            1,
            Aggregate::Sum,
        )
        .unwrap();
        for (x, want) in [(1.0, 7.0), (2.0, 7.0), (3.0, -7.0), (f32::NAN, -7.0)] {
            assert_eq!(score(&forest, x), want, "at {x}");
        }
    }

    /// xorshift64, so that the test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Grows a random subtree of at most `depth` levels into `nodes`; returns its root's id.
    fn grow(
        rng: &mut Rng,
        tree: i64,
        depth: u32,
        modes: &[&str],
        nodes: &mut Vec<SourceNode>,
        weights: &mut Vec<SourceWeight>,
    ) -> i64 {
        let id = nodes.len() as i64;
        nodes.push(leaf(id));
        nodes[id as usize].tree = tree;
        if depth == 0 || rng.below(5) == 0 {
            weights.push(SourceWeight {
                tree,
                node: id,
                target: 0,
                weight: rng.below(1000) as f64 / 7.0 - 50.0,
            });
            return id;
        }
        let t = grow(rng, tree, depth - 1, modes, nodes, weights);
        let f = grow(rng, tree, depth - 1, modes, nodes, weights);
        let mode = modes[rng.below(modes.len() as u64) as usize];
        let mut split = node(
            id,
            rng.below(5) as usize,
            rng.below(9) as f64 / 2.0,
            mode,
            t,
            f,
        );
        split.tree = tree;
        split.nan_goes_true = modes.len() > 1 && rng.below(2) == 0;
        nodes[id as usize] = split;
        id
    }

    /// One row through one tree as the ONNX text reads the nodes.
    fn walk_source(nodes: &HashMap<(i64, i64), &SourceNode>, tree: i64, row: &[f32]) -> i64 {
        let mut n = nodes[&(tree, 0)];
        while let Some(mode) = n.mode {
            let (v, t) = (row[n.feature], n.value as f32);
            let cmp = match mode {
                Mode::Leq => v <= t,
                Mode::Lt => v < t,
                Mode::Gte => v >= t,
                Mode::Gt => v > t,
                Mode::Eq => v == t,
                Mode::Neq => v != t,
            };
            let goes_true = cmp || (n.nan_goes_true && v.is_nan());
            n = nodes[&(tree, if goes_true { n.true_id } else { n.false_id })];
        }
        n.id
    }

    #[test]
    fn every_batch_size_sums_each_rows_trees_in_order() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let all = [
            "BRANCH_LEQ",
            "BRANCH_LT",
            "BRANCH_GTE",
            "BRANCH_GT",
            "BRANCH_EQ",
            "BRANCH_NEQ",
        ];
        let trees = 23;
        for modes in [&all[..1], &all[1..2], &all[..]] {
            let (mut nodes, mut weights) = (Vec::new(), Vec::new());
            for tree in 0..trees {
                let start = nodes.len();
                grow(&mut rng, tree, 7, modes, &mut nodes, &mut weights);
                // Ids within a tree count from 0, as exporters write them.
                for n in &mut nodes[start..] {
                    n.id -= start as i64;
                    n.true_id -= start as i64;
                    n.false_id -= start as i64;
                }
                for w in weights.iter_mut().filter(|w| w.tree == tree) {
                    w.node -= start as i64;
                }
            }
            let by_id: HashMap<(i64, i64), &SourceNode> =
                nodes.iter().map(|n| ((n.tree, n.id), n)).collect();
            let weight: HashMap<(i64, i64), f32> = weights
                .iter()
                .map(|w| ((w.tree, w.node), w.weight as f32))
                .collect();
            let mut forest: Forest<f32> =
                Forest::build(&nodes, &weights, 1, Aggregate::Sum).unwrap();
            assert!(
                forest.trees.iter().any(|t| !t.complete),
                "some trees are lopsided, so rows finish after the level-by-level walk"
            );
            for chunk in [CHUNK, MAX_CHUNK] {
                forest.chunk = chunk;
                for rows in [1, 3, 15, 16, 17, 40, 127, 128, 129, 300, 1100] {
                    let x: Vec<f32> = (0..rows * 5)
                        .map(|_| match rng.below(10) {
                            0 => f32::NAN,
                            _ => rng.below(9) as f32 / 2.0,
                        })
                        .collect();
                    let (got, _) = forest.scores(&x, rows, 5).unwrap();
                    for (r, row) in x.chunks(5).enumerate() {
                        let mut want = 0.0f32;
                        for tree in 0..trees {
                            want += weight[&(tree, walk_source(&by_id, tree, row))];
                        }
                        assert_eq!(
                            got[r], want,
                            "{modes:?}, chunk {chunk}, {rows} rows: row {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn malformed_trees_are_refused() {
        let missing_child = [node(0, 0, 1.0, "BRANCH_LEQ", 1, 7), leaf(1)];
        assert!(Forest::<f32>::build(&missing_child, &[], 1, Aggregate::Sum).is_err());
        let cycle = [
            node(0, 0, 1.0, "BRANCH_LEQ", 1, 1),
            node(1, 0, 1.0, "BRANCH_LEQ", 0, 0),
        ];
        assert!(Forest::<f32>::build(&cycle, &[], 1, Aggregate::Sum).is_err());
        let forest = one_split("BRANCH_LEQ", false);
        assert!(
            forest.scores(&[], 1, 0).is_err(),
            "rows narrower than the features read"
        );
    }
}
