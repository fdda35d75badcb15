//! tidemark-reconcile: compares the batch view (truth) with the serving store per
//! (metric, window, dimensions) and classifies every difference.
//!
//! - [`Reconcile`] (`run.rs`): one run over a range against the stores a spec names (what
//!   `tidemark reconcile` runs), the steps of docs/reconcile.md one call each;
//! - the pure parts it is made of: `diff/` (the comparison, [`diff()`]; its columnar engine, [`Columns`] and
//!   [`diff_columns`]), `evidence.rs` (what the stores tell besides the rows), `explain.rs` (cause
//!   attribution, [`explain()`]), `corrections.rs` (the idempotent correction batch, [`plan_corrections`]),
//!   `contract.rs` (the contract report, [`contract_report`]), `differences_file.rs` (every difference as
//!   Parquet, [`read_differences`]);
//! - the report page: [`html`] (the offline page), [`lateness`] (lateness distribution and advice) and
//!   [`svg`] (its charts).
//!
//! Every public type has one path: the modules above are private and their types are re-exported here,
//! except the report-page modules [`html`], [`lateness`] and [`svg`], which are public and re-export
//! nothing.
//!
//! This crate depends on tidemark-core and tidemark-store only, never on tidemark-stream or tidemark-batch.

mod contract;
mod corrections;
mod diff;
mod differences_file;
pub mod dirty;
mod error;
mod evidence;
mod explain;
pub mod html;
pub mod lateness;
mod run;
mod scan;
pub mod svg;

pub use contract::{
    ContractInput, ContractReport, ContractTally, LatencySummary, MetricContract, SpeedFiring, contract_report,
    tally_rows,
};
pub use corrections::{BlastRadius, CorrectionPlan, plan_corrections};
pub use diff::{AggregateDiff, Columns, Diff, KeyDiff, MetricDiffSummary, Verdict, diff, diff_columns};
pub use differences_file::{DifferenceRecord, read_differences};
pub use error::Error;
pub use evidence::{EvidenceReads, EvidenceSummary};
pub use explain::{Cause, Evidence, Explained, explain};
pub use run::{Applied, Reconcile, ReconcileOutcome};
