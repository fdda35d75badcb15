//! The types the serving store takes and returns (its public API), and the checks of ids and text they carry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidemark_core::{AggValue, EventTime, MetricRow, Pane, RowKey};

use crate::error::{Error, Result};

/// Source progress committed atomically with the rows of a provisional write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// The pipeline (one writer at a time per pipeline). `[A-Za-z0-9_.-]`, 1 to 128 characters.
    pub pipeline: String,
    /// The writer's epoch, from [`crate::ServingStore::claim_writer`]. Writes of an older epoch are fenced.
    pub writer_epoch: u64,
    /// The writer's commit number within its epoch, strictly increasing per write. A write whose
    /// `(writer_epoch, sequence)` is not newer than the committed marker is a replay and changes nothing.
    pub sequence: u64,
    /// Next offset to consume per (topic, partition).
    pub offsets: BTreeMap<TopicPartition, i64>,
    /// Opaque operator-state checkpoint, published with the rows.
    pub checkpoint: Option<Vec<u8>>,
}

/// A Kafka topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// A topic partition.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

/// Which write of which writer last committed for a pipeline: read it after an error whose outcome is
/// unknown to learn whether the write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommitMarker {
    /// Epoch of the writer that committed last (or claimed the pipeline last).
    pub writer_epoch: u64,
    /// That writer's last committed sequence number (0 before its first write).
    pub sequence: u64,
}

impl CommitMarker {
    /// Whether the write identified by `progress` is already reflected by this marker.
    pub fn covers(&self, progress: &SourceProgress) -> bool {
        (progress.writer_epoch, progress.sequence) <= (self.writer_epoch, self.sequence)
    }
}

/// What a provisional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The rows and progress were committed.
    Committed(WriteStats),
    /// The committed marker already covers this write (a replay): nothing was changed.
    AlreadyCommitted,
}

/// Counts of one committed write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Changes offered after de-duplication within the write.
    pub offered: u64,
    /// Changes that took effect (inserted or replaced a row, or recorded a delta).
    pub applied: u64,
    /// Times the write lost a race with a concurrent writer and was redone: commits re-planned (Delta);
    /// transactions retried after a deadlock or serialization failure, and `MERGE`s re-run after a
    /// concurrent insert of one of their keys (Postgres).
    pub retries: u32,
}

/// What `apply_corrections` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The batch was applied now.
    Applied(WriteStats),
    /// A batch with this id was applied before; nothing was changed.
    AlreadyApplied,
}

/// One correction of the reconciler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Correction {
    /// Write the batch truth for a key. The row's origin must be [`Origin::Batch`](tidemark_core::Origin::Batch).
    Upsert(MetricRow),
    /// Delete the key (a phantom row the batch layer does not have). Stored as a batch tombstone with the
    /// batch's epoch, so no speed-layer write can bring the row back.
    Delete(RowKey),
}

/// One line of the corrections audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The corrected key.
    pub key: RowKey,
    /// The aggregate whose value changed.
    pub aggregate: String,
    /// Value before the correction (`None`: the row did not exist).
    pub old: Option<AggValue>,
    /// Value after (`None`: deleted).
    pub new: Option<AggValue>,
    /// Why (e.g. "late_event", "phantom_row", "duplicate").
    pub cause: String,
}

/// An audit line as stored, with the run and time of application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAuditEntry {
    /// The correction batch.
    pub batch_id: String,
    /// The batch run the corrections came from.
    pub run_id: String,
    /// The entry.
    pub entry: AuditEntry,
    /// When the batch was applied.
    pub applied_at: EventTime,
}

/// A set of corrections applied atomically and at most once (per `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectionBatch {
    /// Idempotency key: a batch with an id already applied is not applied again.
    pub id: String,
    /// The batch run the corrections came from.
    pub run_id: String,
    /// The batch run's epoch (orders batch runs; tombstones get it).
    pub epoch: i64,
    /// The corrections.
    pub changes: Vec<Correction>,
    /// Audit lines written with the batch.
    pub audit: Vec<AuditEntry>,
}

/// One speed-layer firing as recorded by the serving store's emission log
/// ([`crate::ServingStore::read_emissions`]): what the speed layer published for a key, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emission {
    /// The row's key.
    pub key: RowKey,
    /// The values emitted (for a late-policy delta: the increments).
    pub values: BTreeMap<String, AggValue>,
    /// Events in the emitted row (or delta).
    pub events: u64,
    /// Which firing (early, on time, late).
    pub pane: Pane,
    /// The row's revision.
    pub revision: u32,
    /// Whether this was a late-policy delta (`RowChange::Delta`) rather than a full row.
    pub delta: bool,
    /// The operator watermark when the row fired.
    pub watermark: EventTime,
    /// The epoch of the writer that committed it (a new epoch = a restarted or replaced stream service).
    pub writer_epoch: u64,
    /// When the speed layer computed the row (the row's `computed_at`).
    pub emitted_at: EventTime,
}

/// Which metrics a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricFilter {
    /// All metrics.
    All,
    /// Only these.
    Only(Vec<String>),
}

impl MetricFilter {
    /// One metric.
    pub fn one(metric: impl Into<String>) -> Self {
        MetricFilter::Only(vec![metric.into()])
    }

    pub(crate) fn matches(&self, metric: &str) -> bool {
        match self {
            MetricFilter::All => true,
            MetricFilter::Only(m) => m.iter().any(|x| x == metric),
        }
    }
}

/// Checks a pipeline id or correction-batch id: `[A-Za-z0-9_.:-]`, 1 to 128 characters.
pub(crate) fn check_id(what: &'static str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(what, format!("{id:?} must be 1-128 characters of A-Z a-z 0-9 _ . : -")))
    }
}

/// Checks text that becomes a stored value: any Unicode except NUL (which Postgres text cannot hold;
/// refused in both stores so that they accept the same inputs).
pub(crate) fn check_text(what: &'static str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::invalid(what, format!("{s:?} contains a NUL character")));
    }
    Ok(())
}
