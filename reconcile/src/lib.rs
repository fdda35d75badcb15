//! tidemark-reconcile: compares the batch view (truth) with the serving store per
//! (metric, window, dimensions) and classifies every difference.
//!
//! Built so far: [`diff`] (the comparison), [`explain`] (cause attribution) and [`lateness`] (lateness
//! distribution and advice). Still to come (see the reconciler issue): reading the evidence from the stores,
//! correction batches applied through the serving store, the contract report and backfill. This crate depends on tidemark-core (and later tidemark-store) only, never on tidemark-stream
//! or tidemark-batch.

pub mod contract;
pub mod corrections;
pub mod diff;
mod error;
pub mod explain;
pub mod html;
pub mod lateness;
pub mod svg;

pub use contract::{ContractInput, ContractReport, Emission, MetricContract, contract_report};
pub use corrections::{BlastRadius, CorrectionPlan, plan_corrections};
pub use diff::{AggregateDiff, Diff, KeyDiff, MetricSummary, Verdict, diff};
pub use error::Error;
pub use explain::{Cause, Evidence, Explained, explain};
