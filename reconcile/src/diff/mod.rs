//! The comparison: a full outer join of batch rows and serving rows on [`RowKey`](tidemark_core::RowKey),
//! each aggregate compared within its tolerance from the spec.
//!
//! [`diff()`] is the entry point; `compare.rs` holds what a comparison says and how one key is compared,
//! `engine.rs` the columnar join over both sides (it depends on `compare`, never the other way).

mod compare;
mod engine;
#[cfg(test)]
mod tests;

use tidemark_core::{MetricRow, ValidSpec};

pub use self::compare::{AggregateDiff, Diff, KeyDiff, MetricDiffSummary, Verdict};
pub use self::engine::{Columns, diff_columns};
use self::engine::{aligned_clean, columns_pair};
use crate::error::Error;

/// Compares the batch rows (truth) with the serving rows of the same range. Both sides must hold at most
/// one row per key, and only metrics the spec defines. Differences come sorted by key.
///
/// Cost: when both sides hold the same keys in the same (key) order and every pair is within tolerance —
/// a clean range read from two stores that return rows in key order — one pass compares them row by row
/// and nothing is converted. Otherwise, or once that pass meets a row that breaks it, both sides are
/// converted to [`Columns`] (one pass over each side's rows, on two threads when large:
/// windows and dimensions interned to integers, aggregates copied into a flat array), then each metric's
/// integer keys are sorted and merged. Keys within tolerance are counted without allocating; only
/// differences are built from the original rows and sorted.
pub fn diff(spec: &ValidSpec, batch: &[MetricRow], serving: &[MetricRow]) -> Result<Diff, Error> {
    if let Some(clean) = aligned_clean(spec, batch, serving) {
        return Ok(clean);
    }
    let (batch, serving) = columns_pair(spec, batch, serving)?;
    diff_columns(&batch, &serving)
}
