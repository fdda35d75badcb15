//! Turning explained differences into one idempotent correction batch for the serving store.
//!
//! - `missing_in_serving` and `value_drift`: write the batch row (origin batch, the run's epoch);
//! - `unexpected_in_serving`: delete the key (the store keeps a batch tombstone, so no stale speed write
//!   can bring it back);
//! - keys whose window is not final in the speed layer yet (`not_yet_final`) are **not** corrected: a batch
//!   row beats every later speed row, so writing one for a window that may still receive events would
//!   freeze an incomplete value. They are listed as skipped and corrected by a later run.
//!
//! The batch id is a SHA-256 over the pipeline, the range, the batch run and the planned changes: retrying
//! the same plan after an unknown outcome is a no-op (`AlreadyApplied`), while a later run that finds new
//! differences gets a new id.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tidemark_core::{AggValue, EventTime, MetricRow, Origin, RowKey, ValidSpec};
use tidemark_store::{AuditEntry, Correction, CorrectionBatch};

use crate::diff::Verdict;
use crate::explain::{Cause, Explained};

/// The correction plan of a reconcile run.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrectionPlan {
    /// The batch to apply (possibly empty).
    pub batch: CorrectionBatch,
    /// Keys left alone because their window is not final in the speed layer.
    pub skipped_not_final: Vec<RowKey>,
    /// Per metric: rows to insert, update, delete (the blast radius).
    pub blast_radius: HashMap<String, BlastRadius>,
}

/// How many rows a plan touches for one metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlastRadius {
    /// Rows the serving store does not have.
    pub insert: u64,
    /// Rows whose values change.
    pub update: u64,
    /// Rows removed.
    pub delete: u64,
}

fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::NotYetFinal => "not_yet_final",
        Cause::SupersededSession => "superseded_session",
        Cause::LateEvents => "late_events",
        Cause::DuplicateDelivery => "duplicate_delivery",
        Cause::Restart => "restart",
        Cause::Unexplained => "unexplained",
    }
}

/// Plans the corrections for `explained` differences. `batch_rows` must hold the batch row of every
/// difference that is missing or drifting (taken: the batch moves them, rows not needed are dropped);
/// `run_id` / `epoch` identify the batch run they come from.
pub fn plan_corrections(
    spec: &ValidSpec,
    range: (EventTime, EventTime),
    explained: &[Explained],
    batch_rows: Vec<MetricRow>,
    run_id: &str,
    epoch: i64,
) -> CorrectionPlan {
    let mut by_key: HashMap<RowKey, MetricRow> = batch_rows.into_iter().map(|r| (r.key.clone(), r)).collect();
    let mut changes = Vec::new();
    let mut audit = Vec::new();
    let mut skipped = Vec::new();
    let mut radius: HashMap<String, BlastRadius> = HashMap::new();
    for e in explained {
        let d = &e.diff;
        if e.cause == Cause::NotYetFinal {
            skipped.push(d.key.clone());
            continue;
        }
        let r = radius.entry(d.key.metric.clone()).or_default();
        let cause = cause_name(e.cause).to_owned();
        match d.verdict {
            Verdict::Ok => continue,
            Verdict::MissingInServing | Verdict::ValueDrift => {
                let Some(mut row) = by_key.remove(&d.key) else { continue };
                row.origin = Origin::Batch { run_id: run_id.to_owned(), epoch };
                if d.verdict == Verdict::MissingInServing {
                    r.insert += 1;
                } else {
                    r.update += 1;
                }
                for a in d.aggregates.iter().filter(|a| !a.within || d.verdict == Verdict::MissingInServing) {
                    audit.push(AuditEntry {
                        key: d.key.clone(),
                        aggregate: a.name.clone(),
                        old: (d.verdict == Verdict::ValueDrift).then_some(a.serving),
                        new: Some(a.batch),
                        cause: cause.clone(),
                    });
                }
                changes.push(Correction::Upsert(row));
            }
            Verdict::UnexpectedInServing => {
                r.delete += 1;
                for a in &d.aggregates {
                    let old = (a.serving != AggValue::Null).then_some(a.serving);
                    audit.push(AuditEntry {
                        key: d.key.clone(),
                        aggregate: a.name.clone(),
                        old,
                        new: None,
                        cause: cause.clone(),
                    });
                }
                changes.push(Correction::Delete(d.key.clone()));
            }
        }
    }
    drop(by_key);
    let mut h = Sha256::new();
    h.update(spec.spec().name.as_bytes());
    h.update(format!("|{}|{}|{run_id}|{epoch}|", range.0, range.1).as_bytes());
    // the changes' JSON streamed into the hash: the same bytes as `serde_json::to_vec`, never held whole
    // (rows serialize without error: string-keyed maps, numbers and strings only)
    let written = serde_json::to_writer(std::io::BufWriter::with_capacity(1 << 16, HashWriter(&mut h)), &changes);
    debug_assert!(written.is_ok(), "correction rows always serialize: {written:?}");
    let digest = h.finalize();
    let id = format!("{}-{}", spec.spec().name, digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>());
    CorrectionPlan {
        batch: CorrectionBatch { id, run_id: run_id.to_owned(), epoch, changes, audit },
        skipped_not_final: skipped,
        blast_radius: radius,
    }
}

/// Feeds what is written into a SHA-256.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch ids must not change across versions (a retry after an upgrade is still `AlreadyApplied`): the
    /// streamed hash equals the hash of the whole JSON, across the writer's buffer boundaries.
    #[test]
    fn streamed_changes_hash_like_their_whole_json() {
        let changes: Vec<Correction> = (0..5_000)
            .map(|i| {
                let start = EventTime::from_secs(60 * i).unwrap_or(EventTime::MIN);
                let end = EventTime::from_secs(60 * i + 60).unwrap_or(EventTime::MAX);
                let window = tidemark_core::Window::new(start, end).expect("non-empty");
                let dims = tidemark_core::Dimensions::new([("user".to_owned(), format!("u{i}"))]);
                Correction::Delete(RowKey { metric: "m".into(), window, dims })
            })
            .collect();
        let whole = serde_json::to_vec(&changes).expect("serializes");
        assert!(whole.len() > 3 << 16, "spans several buffers: {}", whole.len());
        let mut h = Sha256::new();
        serde_json::to_writer(std::io::BufWriter::with_capacity(1 << 16, HashWriter(&mut h)), &changes)
            .expect("serializes");
        assert_eq!(h.finalize(), Sha256::digest(&whole));
    }
}
