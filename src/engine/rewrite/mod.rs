//! Graph rewrites applied once at load: patterns of tract's ops replaced by faster ones of ours.

pub(crate) mod dense;
pub(crate) mod row_ops;
