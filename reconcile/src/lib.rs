//! tidemark-reconcile: compares the batch view (truth) with the serving store per
//! (metric, window, dimensions) and classifies every difference.
//!
//! Built so far: [`diff`] (the comparison) and [`lateness`] (lateness distribution and advice). Still to come (see the reconciler issue): cause attribution,
//! correction batches applied through the serving store, the contract report, backfill and lateness
//! advice. This crate depends on tidemark-core (and later tidemark-store) only, never on tidemark-stream
//! or tidemark-batch.

pub mod diff;
mod error;
pub mod lateness;

pub use diff::{AggregateDiff, Diff, KeyDiff, MetricSummary, Verdict, diff};
pub use error::Error;
