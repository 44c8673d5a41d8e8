//! One copy in memory of each weight a model's plans hold.
//!
//! Every plan tract optimises packs the model's weights into its own copies, so a model with a
//! symbolic plan and a plan fixed to batch 1 held its weights twice, plus once more for each
//! plan built later. tract keeps a packed weight in one of two places: as a constant of the
//! graph (a convolution's kernel), or baked into the matrix product that reads it (a
//! transformer's linear layers, since tract 0.23). The plans of one model mostly pack the same
//! weights the same way (the packing follows the matrix kernel, which batch size rarely
//! changes), so before a plan is made runnable its constants and baked operands are compared,
//! by content, with those of the model's earlier plans, and the equal ones point at the earlier
//! copy.
//!
//! Content is compared byte for byte, with our own hash, because tract's `Tensor` hashes the
//! alignment of a plain tensor's allocation while its equality ignores it. Packed weights compare
//! equal only since the vendored tract-linalg zeroes their padding (`vendor/tract-linalg`,
//! `pack-padding.diff`): before, ResNet-18's batch-1 plan shared between 18 and 28 MB of the 43 MB
//! it could, from one start to the next, and BERT's 8 of its 36 baked matrices.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use tract_linalg::mmm::{EagerPackedInput, MMMInputValue, PackedMatrixStorage, PanelExtractInput};
use tract_onnx::prelude::{Blob, Tensor, TractResult, TypedModel};
use tract_onnx::tract_core::dyn_clone;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};

/// The weights of a model's plans so far, one of each content. Plans built after load (on a
/// request's thread) take the lock while they compare.
#[derive(Default)]
pub(crate) struct SharedWeights(Mutex<Known>);

#[derive(Default)]
struct Known {
    constants: HashSet<ByContent>,
    baked: HashSet<Arc<Blob>>,
}

/// A constant compared and hashed by its type, shape and bytes.
struct ByContent(Arc<Tensor>);

impl ByContent {
    /// The bytes of a plain tensor whose values hold no pointers (not strings or symbolic
    /// dimensions), which are then its whole content.
    fn plain_bytes(&self) -> Option<&[u8]> {
        let tensor = &*self.0;
        (tensor.is_plain_ram() && tensor.datum_type().is_copy()).then(|| tensor.as_bytes())
    }

    /// The packed matrices of a packed constant.
    fn packed_blobs(&self) -> impl Iterator<Item = &Blob> {
        self.0
            .storage_as::<PackedMatrixStorage>()
            .into_iter()
            .flat_map(|storage| storage.values().iter().filter_map(|v| eager(&**v)))
            .map(|eager| &*eager.packed)
    }
}

impl PartialEq for ByContent {
    fn eq(&self, other: &Self) -> bool {
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        let (a, b) = (&*self.0, &*other.0);
        if a.datum_type() != b.datum_type() || a.shape() != b.shape() {
            return false;
        }
        match (self.plain_bytes(), other.plain_bytes()) {
            // Bitwise, so that 0.0 and -0.0 stay apart (and a NaN weight equals itself).
            (Some(a), Some(b)) => a == b,
            (None, None) => a == b,
            _ => false,
        }
    }
}

impl Eq for ByContent {}

impl Hash for ByContent {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.datum_type().hash(state);
        self.0.shape().hash(state);
        if let Some(bytes) = self.plain_bytes() {
            bytes.hash(state);
        }
        // Equal packed constants hold equal packed matrices: tract's equality compares them.
        for blob in self.packed_blobs() {
            blob.as_bytes().hash(state);
        }
    }
}

/// The packed matrix an input value holds in memory, if it is of a kind that does.
pub(crate) fn eager(value: &dyn MMMInputValue) -> Option<&EagerPackedInput> {
    value
        .downcast_ref::<EagerPackedInput>()
        .or_else(|| value.downcast_ref::<PanelExtractInput>().map(|p| &p.data))
}

fn eager_mut(value: &mut dyn MMMInputValue) -> Option<&mut EagerPackedInput> {
    if value.is::<EagerPackedInput>() {
        return value.downcast_mut::<EagerPackedInput>();
    }
    value
        .downcast_mut::<PanelExtractInput>()
        .map(|p| &mut p.data)
}

impl SharedWeights {
    /// Points each weight of `model` that equals one met before at that one, and keeps the
    /// others for the next plan.
    pub(crate) fn share(&self, model: &mut TypedModel) -> TractResult<()> {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for node in &mut model.nodes {
            if let Some(product) = node.op_as_mut::<OptMatMul>() {
                share_baked(product, &mut known.baked);
                continue;
            }
            let Some(konst) = node.op_as::<Const>() else {
                continue;
            };
            let value = ByContent(Arc::clone(konst.val()));
            let Some(earlier) = known.constants.get(&value) else {
                known.constants.insert(value);
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
            // The fact of its output holds the value too.
            for output in &mut node.outputs {
                if output.fact.konst.is_some() {
                    output.fact.konst = Some(Arc::clone(&earlier));
                }
            }
        }
        Ok(())
    }
}

/// Points the packed weights baked into a matrix product at equal ones met before.
fn share_baked(product: &mut OptMatMul, known: &mut HashSet<Arc<Blob>>) {
    for op in &mut product.micro_ops {
        let ProtoFusedSpec::AddMatMul { a, b, .. } = op else {
            continue;
        };
        for operand in [a, b] {
            let MatMulOperand::Const(value) = operand else {
                continue;
            };
            let Some(eager) = eager_mut(&mut **value) else {
                continue;
            };
            match known.get(&eager.packed) {
                Some(earlier) => eager.packed = Arc::clone(earlier),
                None => {
                    known.insert(Arc::clone(&eager.packed));
                }
            }
        }
    }
}
