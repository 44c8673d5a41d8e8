//! Packing an on-demand operand once per product instead of once per reader.
//!
//! An operand that packs its panels on demand (a lazy im2col, a block-quant extraction: any
//! [`MMMInputValue`] with a scratch panel buffer) is packed again by every reader of a panel
//! that does not come straight after the last reader of the same panel: every chunk of the
//! rayon dispatch that covers another band of the other operand, and every cache block of
//! [`super::run_blocked`]. For a convolution whose output channels split into several chunks,
//! each chunk re-runs the whole im2col. On torchvision's ResNet-18 at 224×224, batch 1, the
//! lazy im2col took 11% of a one-thread run and 18% of the (longer) CPU time of a two-thread
//! run.
//!
//! When the product is split over threads, every panel is packed exactly once, up front, the
//! panels split over the same threads, into one buffer that the product then reads as an
//! eagerly packed operand: ResNet-18's two-thread run went from 33.0 to 30.0 ms (medians of
//! six). It costs a write of the whole packed operand and reads from further down the caches
//! than the on-demand path's one panel, packed just before its tiles read it. So it is done
//! only for an operand that fits [`PREPACK_MAX_BYTES`] and that the dispatch would pack more
//! than once, which [`super::on_demand_packs`] counts by walking the tiles as the dispatch
//! will: not for the im2col of ResNet-18's first two stages, whose few panels of output
//! channels leave their chunks split by columns only. That took its two-thread run from 63.5 to
//! 61.2 ms on a slower machine, and ResNet-50's from 154 to 147 ms. One thread is left alone:
//! there the on-demand path measured the same as packing up front, and packs into one panel's
//! buffer instead of the whole operand's.
use super::*;
use crate::pack::PackedFormat;
use std::alloc::Layout;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest packed operand packed up front. Above it the operand would no longer sit in the
/// last-level cache between its packing and its reads, and the on-demand path, which packs
/// into a buffer the size of one panel, keeps the memory too.
pub const PREPACK_MAX_BYTES: usize = 16 * 1024 * 1024;

/// `non_linear` with each on-demand `AddMatMul` operand that the dispatch would pack more than
/// once replaced by its panels packed once, or `None` when there is none to replace.
pub(super) fn prepack_on_demand_operands<'s, K: MatMatMulKer>(
    ker: &K,
    m: usize,
    n: usize,
    non_linear: &'s [FusedSpec<'_>],
) -> TractResult<Option<Vec<FusedSpec<'s>>>> {
    let (m_panels, n_panels) = (m.divceil(ker.mr()), n.divceil(ker.nr()));
    let Some(threads) = split_threads(m_panels, n_panels) else { return Ok(None) };
    // The walk's own parameters, as `run_with_scratch_space` will pass them.
    let (k, elem) = (matmul_k(non_linear), K::Acc::datum_type().size_of());
    let col_outer = col_outer(non_linear);
    let mut replaced = false;
    let mut specs = Vec::with_capacity(non_linear.len());
    for spec in non_linear {
        let FusedSpec::AddMatMul { a, b, packing } = spec else {
            specs.push(spec.clone());
            continue;
        };
        let on_demand = |x: &dyn MMMInputValue| x.scratch_panel_buffer_layout().is_some();
        if !on_demand(&**a) && !on_demand(&**b) {
            specs.push(spec.clone());
            continue;
        }
        // Up front only what the walk would pack more than once (the module's text says why).
        let (a_packs, b_packs) =
            on_demand_packs(m_panels, n_panels, ker.mr(), ker.nr(), k, elem, col_outer, threads);
        let (format_a, format_b) = &ker.packings()[*packing];
        let a_packed = if a_packs > m_panels { pack_once(&**a, &**format_a)? } else { None };
        let b_packed = if b_packs > n_panels { pack_once(&**b, &**format_b)? } else { None };
        replaced |= a_packed.is_some() || b_packed.is_some();
        let side = |packed: Option<EagerPackedInput>, original: &'s AsInputValue<'_>| match packed {
            Some(p) => AsInputValue::Owned(Box::new(p)),
            None => AsInputValue::Borrowed(&**original),
        };
        specs.push(FusedSpec::AddMatMul {
            a: side(a_packed, a),
            b: side(b_packed, b),
            packing: *packing,
        });
    }
    Ok(replaced.then_some(specs))
}

/// Every panel of `input` packed into one buffer, if `input` packs on demand into the plain
/// packed format `format` and fits [`PREPACK_MAX_BYTES`].
fn pack_once(
    input: &dyn MMMInputValue,
    format: &dyn MMMInputFormat,
) -> TractResult<Option<EagerPackedInput>> {
    let (Some(panel), Some(format)) =
        (input.scratch_panel_buffer_layout(), format.downcast_ref::<PackedFormat>())
    else {
        return Ok(None);
    };
    let panel = panel.pad_to_align();
    let panels = input.panels_count();
    let Some(bytes) = panel.size().checked_mul(panels).filter(|b| *b <= PREPACK_MAX_BYTES) else {
        return Ok(None);
    };
    if bytes == 0 {
        return Ok(None);
    }
    let mut blob = unsafe { Blob::for_layout(Layout::from_size_align(bytes, panel.align())?) };
    let base = blob.as_bytes_mut().as_mut_ptr() as usize;
    // An operand may hand back a panel it already holds instead of writing the buffer it was
    // given; none does today, and such an operand keeps the on-demand path.
    let elsewhere = AtomicBool::new(false);
    let pack = |i: usize| -> TractResult<()> {
        let dst = (base + i * panel.size()) as *mut u8;
        if input.panel_bytes(i, Some(dst))? != dst as *const u8 {
            elsewhere.store(true, Ordering::Relaxed);
        }
        Ok(())
    };
    for_each_panel(panels, &pack)?;
    if elsewhere.load(Ordering::Relaxed) {
        return Ok(None);
    }
    Ok(Some(EagerPackedInput {
        fact: PackedExoticFact {
            format: Box::new(format.clone()),
            mn: input.mn().to_dim(),
            k: input.k(),
        },
        packed: Arc::new(blob),
        panel_bytes: panel.size(),
        mn: input.mn(),
    }))
}

/// The threads [`super::chunked_dispatch_rayon`] will split an `m_panels × n_panels` product
/// over, if more than one.
fn split_threads(m_panels: usize, n_panels: usize) -> Option<usize> {
    use crate::multithread::*;
    let threads = match current_tract_executor() {
        Executor::SingleThread => 1,
        Executor::MultiThread(pool) => pool.current_num_threads(),
        Executor::RayonGlobal => rayon::current_num_threads(),
    };
    // The dispatch's own gate, with the 2D product's zero multiply-accumulate count.
    let splits = threads > 1
        && !(m_panels * n_panels < current_threading_panel_threshold()
            && 0 < current_threading_mac_threshold());
    splits.then_some(threads)
}

/// `pack(i)` for every panel, over the threads of the installed executor.
fn for_each_panel(
    panels: usize,
    pack: &(dyn Fn(usize) -> TractResult<()> + Sync),
) -> TractResult<()> {
    use rayon::prelude::*;
    match crate::multithread::current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 => {
            pool.install(|| (0..panels).into_par_iter().try_for_each(pack))
        }
        Executor::RayonGlobal => (0..panels).into_par_iter().try_for_each(pack),
        _ => (0..panels).try_for_each(pack),
    }
}
