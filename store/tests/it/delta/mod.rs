//! Against real Delta tables on the local filesystem (`file://`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tidemark_core::{ReasonCode, RowChange, SourceCoordinates};
use tidemark_store::{DeadLetter, DeadLetterStore, DeltaStore, DeltaStoreConfig, Payload, ServingStore, WriteOutcome};

use crate::common;

mod archive;
mod late_ledger;

async fn open(dir: &std::path::Path) -> DeltaStore {
    let url = format!("file://{}", dir.display());
    let store = DeltaStoreConfig::new(url).build().await.unwrap();
    store.init().await.unwrap();
    store
}

#[tokio::test]
async fn provisional_writes_are_atomic_and_replays_are_noops() {
    let dir = tempfile::tempdir().unwrap();
    common::provisional_writes_are_atomic_and_replays_are_noops(&open(dir.path()).await).await;
}

#[tokio::test]
async fn zombie_writers_are_fenced() {
    let dir = tempfile::tempdir().unwrap();
    common::zombie_writers_are_fenced(&open(dir.path()).await).await;
}

#[tokio::test]
async fn precedence_and_deletions() {
    let dir = tempfile::tempdir().unwrap();
    common::precedence_and_deletions(&open(dir.path()).await).await;
}

#[tokio::test]
async fn same_correction_batch_twice_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    common::same_correction_batch_twice_changes_nothing(&store).await;
    // the second application wrote no commit at all
    let before = std::fs::read_dir(dir.path().join("serving/_delta_log")).unwrap().count();
    let batch = tidemark_store::CorrectionBatch {
        id: "run-9:cb:7".into(),
        run_id: "run-9".into(),
        epoch: 9,
        changes: vec![],
        audit: vec![],
    };
    assert_eq!(store.apply_corrections(&batch).await.unwrap(), tidemark_store::ApplyOutcome::AlreadyApplied);
    assert_eq!(std::fs::read_dir(dir.path().join("serving/_delta_log")).unwrap().count(), before);
}

#[tokio::test]
async fn hostile_values_are_verbatim_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::hostile_values_are_verbatim_or_refused(&open(dir.path()).await).await;
}

/// A MERGE that changes nothing writes no commit; the progress marker must still be committed.
#[tokio::test]
async fn noop_merge_still_commits_progress() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let epoch = store.claim_writer("noop").await.unwrap().writer_epoch;
    let k = common::key("noop", 1, "/a");
    let rows = [RowChange::Upsert(common::speed_row(&k, 3, 3))];
    store.write_provisional(&rows, &common::progress("noop", epoch, 1, 1)).await.unwrap();
    let markers = store.stats().marker_commits.load(Ordering::Relaxed);
    // a change refused by precedence (a retraction of an older revision: no firing, so no emission
    // record either), new progress
    let refused = [RowChange::Retract { key: k.clone(), revision: 1 }];
    let out = store.write_provisional(&refused, &common::progress("noop", epoch, 2, 2)).await.unwrap();
    assert!(matches!(out, WriteOutcome::Committed(s) if s.applied == 0), "{out:?}");
    assert_eq!(store.stats().marker_commits.load(Ordering::Relaxed), markers + 1);
    assert_eq!(store.load_progress("noop").await.unwrap(), Some(common::progress("noop", epoch, 2, 2)));
    // and a fresh handle (another process) sees the same
    let other = open(dir.path()).await;
    assert_eq!(other.load_progress("noop").await.unwrap(), Some(common::progress("noop", epoch, 2, 2)));
    assert_eq!(other.committed_marker("noop").await.unwrap().map(|m| m.sequence), Some(2));
}

#[tokio::test]
async fn compaction_and_vacuum_keep_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let epoch = store.claim_writer("compact").await.unwrap().writer_epoch;
    for seq in 1..=6u32 {
        let k = common::key("compact", 1, &format!("/p{seq}"));
        store
            .write_provisional(
                &[RowChange::Upsert(common::speed_row(&k, 0, i64::from(seq)))],
                &common::progress("compact", epoch, u64::from(seq), 1),
            )
            .await
            .unwrap();
    }
    let rows = common::read_all(&store).await;
    assert_eq!(rows.len(), 6);
    let files_before = store.file_count().await.unwrap();
    assert!(files_before >= 6, "{files_before}");
    // one file per partition: the rows and the emission log (kind is a partition column)
    let (removed, added) = store.optimize(None).await.unwrap();
    assert_eq!((removed as usize, added), (files_before, 2));
    assert_eq!(store.file_count().await.unwrap(), 2);
    let deleted = store.vacuum(std::time::Duration::ZERO).await.unwrap();
    assert_eq!(deleted.data_files, files_before);
    // 6 checkpoint blobs and 7 progress records (1 claim, 6 writes): all but the last write's
    assert_eq!(deleted.state_objects, 5 + 6);
    assert_eq!(common::read_all(&store).await, rows);
    assert_eq!(store.load_progress("compact").await.unwrap(), Some(common::progress("compact", epoch, 6, 1)));
}

#[tokio::test]
async fn memory_url_works_for_unit_tests() {
    let store = DeltaStoreConfig::new("memory:///tidemark-test").build().await.unwrap();
    store.init().await.unwrap();
    let epoch = store.claim_writer("mem").await.unwrap().writer_epoch;
    let k = common::key("mem", 1, "/a");
    store
        .write_provisional(&[RowChange::Upsert(common::speed_row(&k, 0, 1))], &common::progress("mem", epoch, 1, 1))
        .await
        .unwrap();
    assert_eq!(common::read_all(&store).await, vec![common::speed_row(&k, 0, 1)]);
    assert_eq!(store.load_progress("mem").await.unwrap(), Some(common::progress("mem", epoch, 1, 1)));
}

#[tokio::test]
async fn precedence_holds_under_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for _ in 0..4 {
        all.push(Arc::new(open(dir.path()).await));
    }
    let batch = all.split_off(2);
    let report = common::precedence_race(all.clone(), batch.clone(), 50, 4, 1, 0x5eed_0002).await;
    let conflicts: u64 = all.iter().chain(&batch).map(|s| s.stats().conflicts.load(Ordering::Relaxed)).sum();
    println!("delta race: {report:?}, commit conflicts re-planned {conflicts}");
    assert_eq!(report.violations, 0);
    assert!(report.rounds >= 50);
    assert!(conflicts > 0, "no commit ever conflicted: no contention was tested");
}

#[tokio::test]
async fn dead_letters_are_append_only_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = DeadLetterStore::open(&format!("file://{}", dir.path().display())).unwrap();
    let at = common::t(100);
    let coords = |offset| SourceCoordinates { source: "events'; --/ü".into(), partition: 3, offset };
    let a = DeadLetter::new(coords(7), ReasonCode::NotJson, "expected value at 1:1", b"{nope", 1024, at);
    let big = vec![b'x'; 2048];
    let b = DeadLetter::new(coords(8), ReasonCode::Oversize, "2048 bytes", &big, 1024, at);
    let c = DeadLetter::new(coords(9), ReasonCode::InvalidUtf8, "bad utf-8", &[0xff, 0xfe], 1024, at);
    assert_eq!(store.append(&[a.clone(), b.clone(), c.clone()]).await.unwrap(), 3);
    // the same coordinates again (a replay) keep the first record
    let later = DeadLetter::new(coords(7), ReasonCode::NotJson, "again", b"{nope", 1024, common::t(200));
    assert_eq!(store.append(&[later]).await.unwrap(), 0);
    assert_eq!(store.list().await.unwrap(), vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(a.payload, Payload::Text("{nope".into()));
    assert_eq!(c.payload, Payload::Hex("fffe".into()));
    let Payload::Hash { sha256, len } = &b.payload else { panic!("{:?}", b.payload) };
    assert_eq!(*len, 2048);
    assert_eq!(sha256.len(), 64);
}

#[tokio::test]
async fn sigkill_mid_commit_leaves_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let report = common::sigkill_atomicity("delta", &url, &Default::default(), 20, 1500, 0x0c0ffee).await;
    println!("delta SIGKILL: {report:?}");
    assert_eq!(report.kills, 20);
    assert!(report.final_offset > 0);
    assert!(report.mid_commit > 0, "no kill landed inside a write");
}

#[tokio::test]
async fn open_by_spec_location_and_init() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = tidemark_store::open(&tidemark_core::StoreLocation::Delta(url)).await.unwrap();
    store.init().await.unwrap();
    store.init().await.unwrap();
    assert_eq!(store.claim_writer("spec").await.unwrap().writer_epoch, 1);
    assert!(dir.path().join("serving/_delta_log").is_dir());
    assert!(dir.path().join("corrections_audit/_delta_log").is_dir());
}

#[tokio::test]
async fn extreme_watermarks_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    common::extreme_watermarks_round_trip(&open(dir.path()).await).await;
}

#[tokio::test]
async fn emissions_are_logged_with_the_write() {
    let dir = tempfile::tempdir().unwrap();
    common::emissions_are_logged_with_the_write(&open(dir.path()).await).await;
}

/// The batch view: one commit replaces a run's range; reads prune by metric and range and sort by key;
/// run manifests beside the table are listed by epoch.
#[tokio::test]
async fn batch_view_replaces_ranges_and_reads_them_back() {
    use tidemark_core::{EventTime, Origin};
    use tidemark_store::{BatchView, MetricFilter, batch_view};

    let dir = tempfile::tempdir().unwrap();
    let view = BatchView::open(&format!("file://{}", dir.path().join("view").display())).unwrap();
    // nothing written yet: no rows, no runs
    assert!(view.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap().is_empty());
    assert!(view.runs().await.unwrap().is_empty());
    let rows = |epoch: i64, n: i64| {
        let mut out: Vec<_> = [("views", 1, "/b"), ("views", 1, "/a"), ("views", 3, "/a"), ("clicks", 2, "/a")]
            .iter()
            .map(|(m, minute, page)| common::batch_row(&common::key(m, *minute, page), epoch, n))
            .collect();
        out.iter_mut().for_each(|r| r.origin = Origin::Batch { run_id: format!("run-{epoch}"), epoch });
        out
    };
    let metrics = vec!["views".to_owned(), "clicks".to_owned()];
    let first = rows(1, 10);
    let batch = batch_view::to_record_batch(&first).unwrap();
    let c1 = view.replace_range(&metrics, common::t(0), common::t(600), vec![batch], vec![]).await.unwrap();
    let all = view.read_range(&MetricFilter::All, common::t(0), common::t(600)).await.unwrap();
    let order: Vec<(String, i64, String)> = all
        .iter()
        .map(|r| (r.key.metric.clone(), r.key.window.start().as_micros() / 60_000_000, r.key.dims.encode()))
        .collect();
    let (a, b) = (common::key("views", 1, "/a").dims.encode(), common::key("views", 1, "/b").dims.encode());
    assert_eq!(
        order,
        vec![
            ("clicks".into(), 2, a.clone()),
            ("views".into(), 1, a.clone()),
            ("views".into(), 1, b),
            ("views".into(), 3, a)
        ]
    );
    assert!(all.iter().all(|r| first.contains(r)), "rows read back equal");
    // metric and window-start filters
    let views = view.read_range(&MetricFilter::one("views"), common::t(60), common::t(120)).await.unwrap();
    assert_eq!(views.len(), 2);
    let pinned = view.pinned().await.unwrap();
    // a second run over [0, 150) replaces only the windows overlapping it, in one new commit
    let second: Vec<_> = rows(2, 20).into_iter().filter(|r| r.key.window.start() < common::t(150)).collect();
    let batch = batch_view::to_record_batch(&second).unwrap();
    let c2 = view.replace_range(&metrics, common::t(0), common::t(150), vec![batch], vec![]).await.unwrap();
    assert_eq!(c2.version, c1.version + 1);
    let after = view.read_range(&MetricFilter::All, common::t(0), common::t(600)).await.unwrap();
    let epochs: Vec<i64> = after
        .iter()
        .map(|r| match r.origin {
            Origin::Batch { epoch, .. } => epoch,
            Origin::Speed { .. } => panic!("speed row"),
        })
        .collect();
    assert_eq!(epochs, vec![2, 2, 2, 1], "only views@3m (outside [0, 150)) is kept from run 1");
    // a view pinned before the second run still reads the first run's rows, by both read paths
    let old = pinned.read_range(&MetricFilter::All, common::t(0), common::t(600)).await.unwrap();
    assert_eq!(old, all, "the pinned view reads the version it was pinned at");
    let mut scanned_epochs = Vec::new();
    let mut chunks = pinned.scan_rows("views", common::t(0), common::t(600));
    while let Some(c) = futures::StreamExt::next(&mut chunks).await {
        let c = c.unwrap();
        scanned_epochs.extend((0..c.len()).map(|i| c.batch_run(i).unwrap().1));
    }
    assert_eq!(scanned_epochs, vec![1, 1, 1], "the pinned scan reads run 1's views rows only");
    // manifests
    let manifest = |id: &str, epoch: i64| {
        serde_json::to_vec(&serde_json::json!({
            "run_id": id, "epoch": epoch, "dry_run": false, "from": common::t(0), "to": common::t(150),
            "view_version": 1, "other": "fields are ignored"
        }))
        .unwrap()
    };
    view.put_beside("_tidemark_runs/run-2.json", manifest("run-2", 2)).await.unwrap();
    view.put_beside("_tidemark_runs/run-1.json", manifest("run-1", 1)).await.unwrap();
    let runs = view.runs().await.unwrap();
    assert_eq!(runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), vec!["run-1", "run-2"]);
    assert_eq!((runs[1].from, runs[1].to, runs[1].view_version), (common::t(0), common::t(150), Some(1)));
}

/// A streamed replace writes batches as they come and commits once at the end; a stream that fails
/// part-way (after some of its batches were written) commits nothing: the view keeps its version and rows.
#[tokio::test]
async fn a_streamed_replace_commits_all_of_its_rows_or_nothing() {
    use futures::StreamExt;
    use tidemark_core::{EventTime, Origin};
    use tidemark_store::{BatchView, MetricFilter, batch_view};

    let dir = tempfile::tempdir().unwrap();
    let view = BatchView::open(&format!("file://{}", dir.path().join("view").display())).unwrap();
    let rows = |epoch: i64, pages: &[&str]| {
        let mut out: Vec<_> = pages.iter().map(|p| common::batch_row(&common::key("views", 1, p), epoch, 7)).collect();
        out.iter_mut().for_each(|r| r.origin = Origin::Batch { run_id: format!("run-{epoch}"), epoch });
        out
    };
    let metrics = vec!["views".to_owned()];
    let first = rows(1, &["/a", "/b"]);
    let c1 = view
        .replace_range(
            &metrics,
            common::t(0),
            common::t(600),
            vec![batch_view::to_record_batch(&first).unwrap()],
            vec![],
        )
        .await
        .unwrap();
    // two batches, then a failure: nothing of it becomes visible
    let (x, y) = (rows(2, &["/a"]), rows(2, &["/c"]));
    let items: Vec<Result<_, batch_view::RowsError>> = vec![
        Ok(batch_view::to_record_batch(&x).unwrap()),
        Ok(batch_view::to_record_batch(&y).unwrap()),
        Err("the producer failed".into()),
    ];
    let err = view
        .replace_range_stream(&metrics, common::t(0), common::t(600), futures::stream::iter(items).boxed(), vec![])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the producer failed"), "{err}");
    let table = deltalake::open_table(url::Url::from_directory_path(dir.path().join("view")).unwrap()).await.unwrap();
    assert_eq!(table.version(), Some(c1.version as u64), "no commit");
    let mut read = view.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap();
    read.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(read, first);
    // the same stream without the failure replaces the range in one commit
    let items: Vec<Result<_, batch_view::RowsError>> =
        vec![Ok(batch_view::to_record_batch(&x).unwrap()), Ok(batch_view::to_record_batch(&y).unwrap())];
    let c2 = view
        .replace_range_stream(&metrics, common::t(0), common::t(600), futures::stream::iter(items).boxed(), vec![])
        .await
        .unwrap();
    assert_eq!(c2.version, c1.version + 1);
    let mut read = view.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap();
    read.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(read, [x, y].concat());
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Expired-log cleanup removes the commits whose metadata once carried the progress; the progress records
/// keep `load_progress` working, and vacuum keeps exactly what the recorded progress names.
#[tokio::test]
async fn progress_survives_expired_log_cleanup_and_vacuum_keeps_what_progress_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let epoch = store.claim_writer("pipe").await.unwrap().writer_epoch;
    for seq in 1..=5u32 {
        let k = common::key("views", i64::from(seq), "/a");
        let p = common::progress("pipe", epoch, u64::from(seq), i64::from(seq) * 10);
        store.write_provisional(&[RowChange::Upsert(common::speed_row(&k, 0, 1))], &p).await.unwrap();
    }
    // a new writer's claim repeats the last progress (and names its checkpoint) under a new version
    let next = store.claim_writer("pipe").await.unwrap().writer_epoch;
    assert_eq!(next, epoch + 1);
    let expected = Some(common::progress("pipe", epoch, 5, 50));
    assert_eq!(store.load_progress("pipe").await.unwrap(), expected);
    // a correction commits after the claim: the claim's commit is no longer the latest
    let fix = tidemark_store::CorrectionBatch {
        id: "fix-1".into(),
        run_id: "run-1".into(),
        epoch: 1,
        changes: vec![tidemark_store::Correction::Upsert(common::batch_row(&common::key("views", 1, "/a"), 1, 7))],
        audit: vec![],
    };
    store.apply_corrections(&fix).await.unwrap();

    // checkpoint the serving table and delete every commit before it, as expired-log cleanup does
    let serving = url::Url::parse(&format!("file://{}/serving/", dir.path().display())).unwrap();
    let table = deltalake::open_table(serving).await.unwrap();
    deltalake::checkpoints::create_checkpoint(&table, None).await.unwrap();
    let last = table.version().unwrap();
    let log = dir.path().join("serving").join("_delta_log");
    let mut removed = 0;
    for name in files_under(&log) {
        let version = name.strip_suffix(".json").and_then(|v| v.parse::<u64>().ok());
        if version.is_some_and(|v| v < last) {
            std::fs::remove_file(log.join(&name)).unwrap();
            removed += 1;
        }
    }
    assert!(removed >= 8, "{removed} commits removed, the claims' among them");
    let fresh = open(dir.path()).await;
    assert_eq!(fresh.load_progress("pipe").await.unwrap(), expected, "read from the progress record");
    assert_eq!(fresh.committed_marker("pipe").await.unwrap().map(|m| m.writer_epoch), Some(next));

    // vacuum: 5 blobs and 7 records (2 claims, 5 writes) before; the blob of write 5 and the second
    // claim's record stay
    let stats = fresh.vacuum(std::time::Duration::ZERO).await.unwrap();
    assert_eq!(stats.state_objects, 4 + 6);
    assert_eq!(files_under(&dir.path().join("checkpoints").join("pipe")).len(), 1);
    assert_eq!(files_under(&dir.path().join("progress").join("pipe")).len(), 1);
    assert_eq!(fresh.load_progress("pipe").await.unwrap(), expected);
    // with a retention longer than the objects' age, nothing more goes
    let k = common::key("views", 9, "/a");
    let p = common::progress("pipe", next, 1, 90);
    fresh.write_provisional(&[RowChange::Upsert(common::speed_row(&k, 0, 1))], &p).await.unwrap();
    let stats = fresh.vacuum(std::time::Duration::from_secs(3600)).await.unwrap();
    assert_eq!(stats.state_objects, 0);
    assert_eq!(fresh.load_progress("pipe").await.unwrap(), Some(p));
}

#[tokio::test]
async fn issue_19_scans_equal_the_reads() {
    let dir = tempfile::tempdir().unwrap();
    common::scans_equal_the_reads(&open(dir.path()).await).await;
}

/// A serving table created before the hour and kind partitions (partitioned by metric and date only, no
/// `window_hour` column).
async fn open_partitioned_by_date(dir: &std::path::Path) -> DeltaStore {
    use deltalake::DeltaTable;
    // the columns of the current layout, from a table the store creates
    let current = tempfile::tempdir().unwrap();
    open(current.path()).await;
    let url = |d: &std::path::Path| url::Url::parse(&format!("file://{}/serving/", d.display())).unwrap();
    let made = deltalake::open_table(url(current.path())).await.unwrap();
    let columns: Vec<_> =
        made.snapshot().unwrap().schema().fields().filter(|f| f.name() != "window_hour").cloned().collect();
    assert_eq!(
        made.snapshot().unwrap().metadata().partition_columns(),
        &["metric", "window_date", "window_hour", "kind"]
    );
    std::fs::create_dir_all(dir.join("serving")).unwrap();
    let legacy = DeltaTable::try_from_url(url(dir)).await.unwrap();
    legacy.create().with_columns(columns).with_partition_columns(["metric", "window_date"]).await.unwrap();
    let store = open(dir).await;
    let table = deltalake::open_table(url(dir)).await.unwrap();
    assert_eq!(table.snapshot().unwrap().metadata().partition_columns(), &["metric", "window_date"]);
    store
}

/// New serving tables are partitioned by the hour of the window start and by kind too (a write rewrites the
/// files of the hours and kinds it touches, not of the day); tables of the earlier layout keep working.
#[tokio::test]
async fn issue_19_tables_partitioned_by_date_only_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    common::precedence_and_deletions(&open_partitioned_by_date(dir.path()).await).await;
    let dir = tempfile::tempdir().unwrap();
    common::emissions_are_logged_with_the_write(&open_partitioned_by_date(dir.path()).await).await;
    let dir = tempfile::tempdir().unwrap();
    common::scans_equal_the_reads(&open_partitioned_by_date(dir.path()).await).await;
}

/// Issue 19: a write rewrites the files of the hours it touches only (the `window_hour` partition).
#[tokio::test]
async fn issue_19_a_write_rewrites_only_the_hours_it_touches() {
    use std::collections::BTreeSet;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let epoch = store.claim_writer("hours").await.unwrap().writer_epoch;
    // windows of minute 10 (hour 00) and minute 310 (hour 05)
    let (a, b) = (common::key("hours", 10, "/a"), common::key("hours", 310, "/a"));
    let first = [RowChange::Upsert(common::speed_row(&a, 0, 1)), RowChange::Upsert(common::speed_row(&b, 0, 1))];
    store.write_provisional(&first, &common::progress("hours", epoch, 1, 1)).await.unwrap();
    let url = url::Url::parse(&format!("file://{}/serving/", dir.path().display())).unwrap();
    let files = |hour: &'static str| {
        let url = url.clone();
        async move {
            let table = deltalake::open_table(url).await.unwrap();
            let all: BTreeSet<String> = table.get_file_uris().unwrap().collect();
            all.into_iter().filter(|f| f.contains(&format!("window_hour={hour}/kind=row/"))).collect::<Vec<_>>()
        }
    };
    let (h0, h5) = (files("1970-01-01T00").await, files("1970-01-01T05").await);
    assert_eq!((h0.len(), h5.len()), (1, 1), "{h0:?} {h5:?}");
    // a later revision of the hour-05 key
    store
        .write_provisional(&[RowChange::Upsert(common::speed_row(&b, 1, 2))], &common::progress("hours", epoch, 2, 2))
        .await
        .unwrap();
    assert_eq!(files("1970-01-01T00").await, h0, "the hour-00 file is not rewritten");
    assert_ne!(files("1970-01-01T05").await, h5, "the hour-05 file is");
    let rows = common::read_all(&store).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().any(|r| r.key == b && r.events == 2), "{rows:?}");
}
