//! Issue 8: where the Delta store's fail point `delta.after_data_files_before_log_commit` sits. Set to
//! `return`, a provisional write fails with a retryable conflict after the MERGE wrote its Parquet files and
//! before its log entry: the files are on disk, yet no row, progress or checkpoint is visible; without the fail
//! point the same write then lands once. Its own test binary (own process), because fail points are
//! process-global. Needs the `failpoints` feature (the README's test command enables it).

use std::collections::BTreeMap;

use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, RowChange, RowKey, Window};
use tidemark_store::{
    DeltaStoreConfig, Error, MetricFilter, ServingStore, SourceProgress, TopicPartition, WriteOutcome,
};

fn t(secs: i64) -> EventTime {
    EventTime::from_secs(secs).unwrap()
}

fn row(minute: i64, n: i64) -> RowChange {
    RowChange::Upsert(MetricRow {
        key: RowKey {
            metric: "views".into(),
            window: Window::new(t(minute * 60), t(minute * 60 + 60)).unwrap(),
            dims: Dimensions::new([("page".into(), format!("/{minute}"))]),
        },
        values: BTreeMap::from([("n".into(), AggValue::Int(n))]),
        events: n.unsigned_abs(),
        origin: Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: t(minute * 60 + 60) },
        computed_at: t(1_000),
    })
}

fn parquet_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            n += parquet_files(&path);
        } else if path.extension().is_some_and(|e| e == "parquet") && !path.to_string_lossy().contains("_delta_log") {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn the_delta_fail_point_sits_between_the_merge_files_and_the_log_entry_issue_8() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeltaStoreConfig::new(format!("file://{}", dir.path().display())).build().await.unwrap();
    store.init().await.unwrap();
    let epoch = store.claim_writer("p").await.unwrap().writer_epoch;
    let progress = |seq: u64, offset: i64| SourceProgress {
        pipeline: "p".into(),
        writer_epoch: epoch,
        sequence: seq,
        offsets: BTreeMap::from([(TopicPartition::new("events", 0), offset)]),
        checkpoint: Some(vec![7; 16]),
    };
    let rows: Vec<RowChange> = (0..50).map(|m| row(m, m + 1)).collect();
    let serving = dir.path().join("serving");
    let files_before = parquet_files(&serving);

    fail::cfg("delta.after_data_files_before_log_commit", "return").unwrap();
    let err = store.write_provisional(&rows, &progress(1, 50)).await.unwrap_err();
    fail::remove("delta.after_data_files_before_log_commit");
    assert!(matches!(&err, Error::Contention { .. }), "{err}");
    assert!(err.to_string().contains("fail point delta.after_data_files_before_log_commit"), "{err}");
    let orphans = parquet_files(&serving) - files_before;
    assert!(orphans > 0, "the MERGE had not written its data files when the fail point was hit");
    assert_eq!(store.read_range(&MetricFilter::All, t(0), t(1_000_000)).await.unwrap(), vec![]);
    assert_eq!(store.load_progress("p").await.unwrap(), None);

    // the fail point is armed only around the store's own write and correction commits
    let out = store.write_provisional(&rows, &progress(1, 50)).await.unwrap();
    assert!(matches!(out, WriteOutcome::Committed(s) if s.applied == 50), "{out:?}");
    assert_eq!(store.read_range(&MetricFilter::All, t(0), t(1_000_000)).await.unwrap().len(), 50);
    assert_eq!(store.load_progress("p").await.unwrap(), Some(progress(1, 50)));
}
