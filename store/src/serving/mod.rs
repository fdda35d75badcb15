//! The serving store: the [`ServingStore`] contract (its guarantees in doc comments), its two drivers
//! (`delta`: Delta Lake at an object_store URL; `postgres`: tokio-postgres), and [`open`], which picks one
//! from a spec's store location. The drivers share only the crate's neutral modules (flat records, progress
//! codec, retry backoff, Delta plumbing); neither imports the other.

use async_trait::async_trait;
use tidemark_core::{EventTime, MetricRow, RowChange};

use crate::error::Result;
use crate::scan::{Chunks, EmissionChunk, RowChunk};

/// The slice the default scans read at a time.
pub(crate) const SCAN_SLICE: tidemark_core::Duration = tidemark_core::Duration::from_secs(15 * 60);
use crate::model::{
    ApplyOutcome, CommitMarker, CorrectionBatch, Emission, MetricFilter, SourceProgress, StoredAuditEntry, WriteOutcome,
};

pub(crate) mod delta;
pub(crate) mod postgres;

use delta::DeltaStoreConfig;
use postgres::PostgresStore;

/// The serving store: where provisional (speed) and authoritative (batch) metric rows meet.
///
/// Guarantees every implementation gives:
/// - **Atomic provisional writes**: [`write_provisional`](Self::write_provisional) makes the rows, the
///   source progress and the checkpoint blob visible together, or none of them.
/// - **Fencing**: a write whose writer epoch is older than the pipeline's current epoch is refused with
///   [`Error::Fenced`](crate::Error::Fenced); a write whose `(epoch, sequence)` the committed marker already covers is a replay
///   and changes nothing ([`WriteOutcome::AlreadyCommitted`]).
/// - **Precedence**, enforced by the store per key: a batch row is never replaced by a speed row; among
///   speed rows only a higher revision replaces; among batch rows a newer or equal epoch replaces. A
///   speed retraction of revision `r` removes a speed row of revision `<= r` (and keeps a tombstone so an
///   older replay cannot resurrect it); a batch deletion leaves a batch tombstone no speed write beats.
/// - **Idempotent corrections**: [`apply_corrections`](Self::apply_corrections) applies a batch id at
///   most once, atomically (rows, tombstones and the applied marker together).
/// - **Emission log**: every committed provisional write also records, in the same transaction (Postgres)
///   or the same commit (Delta), one [`Emission`] per speed `Upsert` / `Delta` change it carried, whether
///   or not precedence let the change replace the current row. Emissions are visible exactly when the
///   write is; a replayed or fenced write records none. One emission is kept per (key, revision, delta):
///   a restarted writer re-firing a revision already logged keeps the first (earliest) record.
/// - **Unknown outcomes are decidable**: after a retryable error, [`committed_marker`](Self::committed_marker)
///   tells whether the write landed.
#[async_trait]
pub trait ServingStore: Send + Sync {
    /// Creates or migrates the store's tables. Idempotent; safe to run concurrently.
    async fn init(&self) -> Result<()>;

    /// Registers a new writer for `pipeline` and returns its epoch (one more than any before). From then
    /// on, writes of older epochs are fenced. Returns the marker the new writer continues from.
    async fn claim_writer(&self, pipeline: &str) -> Result<CommitMarker>;

    /// Applies `changes` (subject to precedence) and commits `progress` atomically with them.
    async fn write_provisional(&self, changes: &[RowChange], progress: &SourceProgress) -> Result<WriteOutcome>;

    /// The progress committed by the last successful write of `pipeline`, exactly as written.
    async fn load_progress(&self, pipeline: &str) -> Result<Option<SourceProgress>>;

    /// The marker of the last committed write (or claim) of `pipeline`.
    async fn committed_marker(&self, pipeline: &str) -> Result<Option<CommitMarker>>;

    /// Current rows (never tombstones, never deltas) of the metrics in `metrics` whose window starts in
    /// `[from, to)`, sorted by metric, window start, window end and canonical dimension string (bytewise).
    async fn read_range(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<MetricRow>>;

    /// Late-policy delta rows (`RowChange::Delta`) whose window starts in `[from, to)`, in the order of
    /// [`read_range`](Self::read_range), then by revision. A key's deltas count only while its row is a speed
    /// row: once a batch row (or batch tombstone) holds the key, its deltas are superseded and not returned
    /// (the batch value already includes the late events), including deltas a lagging speed layer writes
    /// after the correction. So `row + deltas` from this API never counts a late event twice.
    async fn read_deltas(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<MetricRow>>;

    /// The emission log: every speed-layer firing whose window starts in `[from, to)`, sorted by key (as
    /// [`read_range`](Self::read_range)), then emission time, revision, rows before deltas.
    async fn read_emissions(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<Emission>>;

    /// The current rows of `metric` whose window starts in `[from, to)` (what [`read_range`](Self::read_range)
    /// returns), as a stream of columnar chunks in no particular order, so a reader holds one chunk at a
    /// time. The default reads the range in slices of 15 minutes with `read_range`.
    fn scan_rows<'a>(&'a self, metric: &str, from: EventTime, to: EventTime) -> Chunks<'a, RowChunk> {
        use futures::StreamExt as _;
        let only = MetricFilter::Only(vec![metric.to_owned()]);
        futures::stream::iter(crate::scan::slices(from, to, SCAN_SLICE))
            .then(move |(a, b)| {
                let only = only.clone();
                async move { RowChunk::from_rows(&self.read_range(&only, a, b).await?) }
            })
            .boxed()
    }

    /// The emission-log records of `metric` whose window starts in `[from, to)` (what
    /// [`read_emissions`](Self::read_emissions) returns, though a record may repeat and order is not kept),
    /// as a stream of columnar chunks. The default reads the range in slices of 15 minutes.
    fn scan_emissions<'a>(&'a self, metric: &str, from: EventTime, to: EventTime) -> Chunks<'a, EmissionChunk> {
        use futures::StreamExt as _;
        let only = MetricFilter::Only(vec![metric.to_owned()]);
        futures::stream::iter(crate::scan::slices(from, to, SCAN_SLICE))
            .then(move |(a, b)| {
                let only = only.clone();
                async move { EmissionChunk::from_emissions(&self.read_emissions(&only, a, b).await?) }
            })
            .boxed()
    }

    /// Applies a correction batch atomically, at most once per `batch.id`.
    async fn apply_corrections(&self, batch: &CorrectionBatch) -> Result<ApplyOutcome>;

    /// Whether the correction batch `id` has been applied (the committed marker of corrections).
    async fn corrections_applied(&self, id: &str) -> Result<bool>;

    /// When correction batch `id` was applied (the `applied_at` of its audit lines, one time per batch), or
    /// `None` when it has not been. The default reads the batch's audit log.
    async fn corrections_applied_at(&self, id: &str) -> Result<Option<EventTime>> {
        Ok(self.audit_log(Some(id)).await?.first().map(|l| l.applied_at))
    }

    /// The audit log of correction batch `id` (all batches when `None`).
    async fn audit_log(&self, id: Option<&str>) -> Result<Vec<StoredAuditEntry>>;
}

/// The Postgres schema [`open`] uses.
pub const DEFAULT_SCHEMA: &str = "tidemark";

/// Opens the serving store a spec names ([`tidemark_core::ValidSpec::serving_store`]): a [`DeltaStore`](crate::DeltaStore) at
/// the URL, or a [`PostgresStore`] (schema [`DEFAULT_SCHEMA`]). Call [`ServingStore::init`] to create or
/// migrate its tables (`tidemark store init`).
pub async fn open(location: &tidemark_core::StoreLocation) -> Result<Box<dyn ServingStore>> {
    Ok(match location {
        tidemark_core::StoreLocation::Delta(url) => Box::new(DeltaStoreConfig::new(url.clone()).build().await?),
        tidemark_core::StoreLocation::Postgres(dsn) => Box::new(PostgresStore::connect(dsn, DEFAULT_SCHEMA).await?),
    })
}
