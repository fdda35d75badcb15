//! tidemark-store: the serving store both layers write to, with Delta Lake and Postgres drivers.
//!
//! Every write is assumed to happen twice, so nothing here is a blind insert: rows are merged under the
//! precedence of [`tidemark_core::Origin::supersedes`] (batch beats speed; a higher speed revision wins;
//! a newer or equal batch epoch wins), provisional writes commit their source progress in the same
//! transaction, and correction batches are applied at most once per id. Deletions are tombstones that
//! carry their origin, so a stale speed write cannot bring back a row the reconciler deleted.
//!
//! - [`ServingStore`]: the contract, with its guarantees in doc comments; [`open`] picks a driver.
//! - [`PostgresStore`]: tokio-postgres (Postgres ≥ 15), COPY into a temp table, then `MERGE` under precedence.
//! - [`DeltaStore`]: deltalake MERGE at an object_store URL, progress as Delta app transactions.
//! - [`DeadLetterStore`]: append-only, idempotent dead letters under an object_store URL.
//! - [`RawArchive`]: the raw event archive (Delta), appended exactly once per Kafka partition, read by
//!   event-time range ([`RawArchive::read_range`]).
//! - [`BatchView`]: the batch layer's output table; its definition is [`batch_view`].
//! - [`objects`]: object stores by URL (`file://`, `s3://` with the AWS environment, shared `memory://`).
//! - `testing` (feature `testing`): a throwaway Postgres per test binary, a fresh database per test, and a
//!   throwaway S3 server.
//!
//! Inside: `serving/` (the contract and one folder per driver), `tables/` (the raw archive, batch view
//! and dead letters), and the modules both drivers share: `model` (the API types), `flat` (the record
//! both drivers persist), `progress` (checks and the offsets codec), `retry` (backoff), `delta_io`
//! (Delta plumbing). No driver imports another; the tables import no driver.

mod delta_io;
mod error;
mod flat;
mod model;
pub mod objects;
mod progress;
mod retry;
mod scan;
mod serving;
mod tables;
#[cfg(feature = "testing")]
pub mod testing;

use tidemark_core::EventTime;

pub use error::{Error, Result};
pub use model::{
    ApplyOutcome, AuditEntry, CommitMarker, Correction, CorrectionBatch, Emission, MetricFilter, SourceProgress,
    StoredAuditEntry, TopicPartition, WriteOutcome, WriteStats,
};
pub use scan::{Chunks, EmissionChunk, RowChunk};
pub use serving::delta::{DeltaStats, DeltaStore, DeltaStoreConfig, VacuumStats};
pub use serving::postgres::{PgStats, PostgresStore, check_schema};
pub use serving::{DEFAULT_SCHEMA, ServingStore, open};
pub use tables::archive::{
    APP_ID_PREFIX, AppendOutcome, ArchiveRow, ArchiveStats, ArchivedArrival, ArrivalsSince, RangeEvidence, RangeRead,
    RangeReadStats, RawArchive, RawArchiveConfig, archive_app_id,
};
pub use tables::batch_view::schema as batch_view;
pub use tables::batch_view::{BatchView, RunManifest, ViewCommit};
pub use tables::dead_letter::{DeadLetter, DeadLetterStats, DeadLetterStore, LateRecord, Payload};

/// The current time as an [`EventTime`].
pub(crate) fn now() -> EventTime {
    let us = chrono::Utc::now().timestamp_micros();
    EventTime::from_micros(us).unwrap_or(EventTime::UNIX_EPOCH)
}
