//! tidemark-reconcile: compares the batch view (truth) with the serving store per
//! (metric, window, dimensions) and classifies every difference.
//!
//! - [`Reconcile`] (`run.rs`): one run over a range against the stores a spec names (what
//!   `tidemark reconcile` runs);
//! - the pure parts it is made of: [`diff`] (the comparison, with its columnar engine over both sides),
//!   [`explain`] (cause attribution), [`corrections`] (the idempotent correction batch), [`contract`] (the
//!   contract report), [`html`] (the offline report page) and [`lateness`] (lateness
//!   distribution and advice).
//!
//! This crate depends on tidemark-core and tidemark-store only, never on tidemark-stream or tidemark-batch.

pub mod contract;
pub mod corrections;
pub mod diff;
mod error;
pub mod explain;
pub mod html;
pub mod lateness;
mod run;
pub mod svg;

pub use contract::{ContractInput, ContractReport, Emission, MetricContract, contract_report};
pub use corrections::{BlastRadius, CorrectionPlan, plan_corrections};
pub use diff::{AggregateDiff, Columns, Diff, KeyDiff, MetricDiffSummary, Verdict, diff, diff_columns};
pub use error::Error;
pub use explain::{Cause, Evidence, Explained, explain};
pub use run::{Applied, EvidenceSummary, Reconcile, ReconcileOutcome};
