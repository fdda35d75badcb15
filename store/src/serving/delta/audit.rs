//! The corrections audit table of the Delta serving store: its columns, and writing a batch's audit
//! lines (idempotent per batch id, before the batch's data commit).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use deltalake::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{DataType, StructField, Transaction};
use tidemark_core::AggValue;

use super::DeltaStore;
use crate::delta_io::{is_conflict, recorded_txn_version, ts_type};
use crate::error::{Error, Result};
use crate::model::CorrectionBatch;
use crate::retry::backoff;

pub(super) fn audit_columns() -> Vec<StructField> {
    let s = |n: &str| StructField::new(n, DataType::STRING, true);
    let t = |n: &str| StructField::new(n, DataType::TIMESTAMP, true);
    vec![
        s("batch_id"),
        StructField::new("seq", DataType::LONG, true),
        s("run_id"),
        s("metric"),
        t("window_start"),
        t("window_end"),
        s("dims"),
        s("aggregate"),
        s("old_value"),
        s("new_value"),
        s("cause"),
        t("applied_at"),
    ]
}

impl DeltaStore {
    /// Writes the audit lines of `batch` unless already written (idempotent per batch id).
    pub(super) async fn write_audit(&self, batch: &CorrectionBatch, applied_at: i64) -> Result<()> {
        if batch.audit.is_empty() {
            return Ok(());
        }
        let url = self.audit_url.as_str();
        let app = format!("tidemark.audit.{}", batch.id);
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let table = self.latest(true).await?;
            let recorded = recorded_txn_version(&table, url, &app).await?;
            if recorded.is_some() {
                return Ok(());
            }
            let rb = audit_batch(batch, applied_at)?;
            let props = CommitProperties::default().with_application_transaction(Transaction::new(&app, 1));
            match table.write(vec![rb]).with_commit_properties(props).await {
                Ok(t) => {
                    self.keep(t, true).await;
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => return Err(Error::delta(url, "writing the audit log")(e)),
            }
        }
        Err(Error::Contention { attempts: self.max_attempts, last: "audit log commit".into() })
    }
}

fn audit_batch(batch: &CorrectionBatch, applied_at: i64) -> Result<RecordBatch> {
    let a = &batch.audit;
    let agg = |v: &Option<AggValue>| v.map(|v| serde_json::to_string(&v).unwrap_or_else(|_| "null".into()));
    let ts = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
    let dims: Vec<String> = a.iter().map(|e| e.key.dims.encode()).collect();
    let olds: Vec<Option<String>> = a.iter().map(|e| agg(&e.old)).collect();
    let news: Vec<Option<String>> = a.iter().map(|e| agg(&e.new)).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("batch_id", ArrowType::Utf8, true),
        Field::new("seq", ArrowType::Int64, true),
        Field::new("run_id", ArrowType::Utf8, true),
        Field::new("metric", ArrowType::Utf8, true),
        Field::new("window_start", ts_type(), true),
        Field::new("window_end", ts_type(), true),
        Field::new("dims", ArrowType::Utf8, true),
        Field::new("aggregate", ArrowType::Utf8, true),
        Field::new("old_value", ArrowType::Utf8, true),
        Field::new("new_value", ArrowType::Utf8, true),
        Field::new("cause", ArrowType::Utf8, true),
        Field::new("applied_at", ts_type(), true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![batch.id.as_str(); a.len()])),
        Arc::new(Int64Array::from((0..a.len() as i64).collect::<Vec<_>>())),
        Arc::new(StringArray::from(vec![batch.run_id.as_str(); a.len()])),
        Arc::new(StringArray::from(a.iter().map(|e| e.key.metric.as_str()).collect::<Vec<_>>())),
        ts(a.iter().map(|e| e.key.window.start().as_micros()).collect()),
        ts(a.iter().map(|e| e.key.window.end().as_micros()).collect()),
        Arc::new(StringArray::from(dims.iter().map(String::as_str).collect::<Vec<_>>())),
        Arc::new(StringArray::from(a.iter().map(|e| e.aggregate.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(olds.iter().map(Option::as_deref).collect::<Vec<_>>())),
        Arc::new(StringArray::from(news.iter().map(Option::as_deref).collect::<Vec<_>>())),
        Arc::new(StringArray::from(a.iter().map(|e| e.cause.as_str()).collect::<Vec<_>>())),
        ts(vec![applied_at; a.len()]),
    ];
    RecordBatch::try_new(schema, cols).map_err(|e| Error::Corrupt(format!("building the audit batch: {e}")))
}

#[cfg(test)]
mod tests {
    use tidemark_core::{EventTime, RowKey, Window};

    use super::*;
    use crate::DeltaStoreConfig;
    use crate::model::{ApplyOutcome, AuditEntry};

    /// A crash after the audit commit and before the data commit (found by the backfill kill test): the
    /// audit lines stay hidden, and the retried batch applies once with its lines shown once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_lines_of_an_unapplied_batch_are_hidden_until_it_applies() {
        use crate::model::Correction;
        use tidemark_core::{Dimensions, MetricRow, Origin};
        let dir = tempfile::tempdir().unwrap();
        let store = DeltaStoreConfig::new(format!("file://{}", dir.path().display())).build().await.unwrap();
        crate::ServingStore::init(&store).await.unwrap();
        let t = |s: i64| EventTime::from_secs(s).unwrap();
        let key = RowKey {
            metric: "views".into(),
            window: Window::new(t(0), t(60)).unwrap(),
            dims: Dimensions::new([("page".to_owned(), "/a".to_owned())]),
        };
        let row = MetricRow {
            key: key.clone(),
            values: std::collections::BTreeMap::from([("n".to_owned(), AggValue::Int(3))]),
            events: 3,
            origin: Origin::Batch { run_id: "run-1".into(), epoch: 1 },
            computed_at: t(1),
        };
        let batch = CorrectionBatch {
            id: "batch-1".into(),
            run_id: "run-1".into(),
            epoch: 1,
            changes: vec![Correction::Upsert(row)],
            audit: vec![AuditEntry {
                key,
                aggregate: "n".into(),
                old: None,
                new: Some(AggValue::Int(3)),
                cause: "late_events".into(),
            }],
        };
        // the crash: only the audit commit landed
        store.write_audit(&batch, t(2).as_micros()).await.unwrap();
        assert!(crate::ServingStore::audit_log(&store, None).await.unwrap().is_empty());
        assert!(!crate::ServingStore::corrections_applied(&store, "batch-1").await.unwrap());
        // the retry
        let out = crate::ServingStore::apply_corrections(&store, &batch).await.unwrap();
        assert!(matches!(out, ApplyOutcome::Applied(_)), "{out:?}");
        let audit = crate::ServingStore::audit_log(&store, None).await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].entry.cause, "late_events");
        assert_eq!(crate::ServingStore::apply_corrections(&store, &batch).await.unwrap(), ApplyOutcome::AlreadyApplied);
        assert_eq!(crate::ServingStore::audit_log(&store, Some("batch-1")).await.unwrap().len(), 1);
    }
}
