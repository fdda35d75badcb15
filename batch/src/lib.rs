//! tidemark-batch: the batch layer. Recomputes every metric of a pipeline spec exactly from the raw events
//! in object storage with polars, and writes the batch view (a Delta table) the reconciler trusts.
//!
//! - [`BatchRun`], the entry point: `BatchRun::new(&spec, from, to).dry_run(false).run().await`, reporting
//!   a [`BatchReport`]; errors are [`Error`]s.
//! - Input ([`InputSource`]): the raw archive (Delta), JSON Lines or Parquet files at `file://` URLs, decoded
//!   with tidemark-core's decoder (same reason codes as the stream layer); undecodable rows become
//!   [`UndecodableRow`]s for the dead-letter store.
//! - [`frame`]: decoded events as a polars frame; [`plan`]: de-duplication, window assignment (one module
//!   per window kind) and aggregation, finished into core [`tidemark_core::MetricRow`]s.
//! - [`view`]: a computed frame as rows of the batch view ([`tidemark_store::BatchView`]); a run replaces
//!   its range in one commit.

mod error;
pub mod frame;
mod input;
pub mod plan;
mod run;
mod spill;
pub mod view;

pub use error::Error;
pub use input::{InputFile, InputFormat, InputSource, UndecodableRow};
pub use run::{BatchReport, BatchRun, DEFAULT_PART_EVENTS, DEFAULT_SESSION_LOOKAROUND, MetricSummary};
