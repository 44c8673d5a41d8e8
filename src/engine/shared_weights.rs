//! One copy in memory of each constant a model's plans hold.
//!
//! Every plan tract optimises packs the model's weights into its own constants, so a model with a
//! symbolic plan and a plan fixed to batch 1 held its weights twice, plus once more for each
//! plan built later. The plans of one model mostly pack the same weights the same way (the
//! packing depends on the matrix kernel, which batch size rarely changes for a convolution or a
//! layer's weights), so before a plan is made runnable its constants are compared, by content,
//! with those of the model's earlier plans, and the equal ones point at the earlier copy.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use tract_onnx::prelude::{Tensor, TractResult, TypedModel};
use tract_onnx::tract_core::dyn_clone;
use tract_onnx::tract_core::ops::konst::Const;

/// The constants of a model's plans so far, one of each content. Plans built after load (on a
/// request's thread) take the lock while they compare.
#[derive(Default)]
pub(crate) struct SharedWeights(Mutex<HashSet<ByContent>>);

/// A constant compared and hashed by its content (tract's `Tensor` equality, which compares
/// packed weights by their bytes too).
struct ByContent(Arc<Tensor>);

impl PartialEq for ByContent {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for ByContent {}

impl Hash for ByContent {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl SharedWeights {
    /// Points each constant of `model` that equals one met before at that one (in the node and
    /// in the fact of its output, which holds it too), and keeps the others for the next plan.
    pub(crate) fn share(&self, model: &mut TypedModel) -> TractResult<()> {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for node in &mut model.nodes {
            let Some(konst) = node.op_as::<Const>() else {
                continue;
            };
            let value = ByContent(Arc::clone(konst.val()));
            let Some(earlier) = known.get(&value) else {
                known.insert(value);
                continue;
            };
            if Arc::ptr_eq(&earlier.0, &value.0) {
                continue;
            }
            let earlier = Arc::clone(&earlier.0);
            let exotic = konst.exotic_fact().map(dyn_clone::clone_box);
            node.op = Box::new(Const::new_with_opt_exotic_fact(
                Arc::clone(&earlier),
                exotic,
            )?);
            for output in &mut node.outputs {
                if output.fact.konst.is_some() {
                    output.fact.konst = Some(Arc::clone(&earlier));
                }
            }
        }
        Ok(())
    }
}
