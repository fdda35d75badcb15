//! Against a real S3-compatible server (moto's `moto_server`, started once per test binary on a loopback
//! port by `tidemark_store::testing::s3_bucket`; a fresh bucket per test). The same contract tests as on the
//! local filesystem, with `s3://` URLs and explicit storage options (the CLI takes the AWS environment
//! variables instead: cli/tests/s3.rs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tidemark_core::{EventTime, ReasonCode, RowChange, SourceCoordinates};
use tidemark_store::testing::{TestBucket, s3_bucket};
use tidemark_store::{
    AppendOutcome, ArchiveRow, DeadLetter, DeadLetterStore, DeltaStore, DeltaStoreConfig, RawArchiveConfig,
    ServingStore,
};

use crate::common;

async fn open(bucket: &TestBucket, prefix: &str) -> DeltaStore {
    let mut config = DeltaStoreConfig::new(format!("{}/{prefix}", bucket.url));
    config.storage_options = bucket.options.clone();
    let store = config.build().await.unwrap();
    store.init().await.unwrap();
    store
}

#[tokio::test]
async fn provisional_writes_are_atomic_and_replays_are_noops() {
    let bucket = s3_bucket().await.unwrap();
    common::provisional_writes_are_atomic_and_replays_are_noops(&open(&bucket, "serving").await).await;
}

#[tokio::test]
async fn same_correction_batch_twice_changes_nothing() {
    let bucket = s3_bucket().await.unwrap();
    common::same_correction_batch_twice_changes_nothing(&open(&bucket, "serving").await).await;
}

#[tokio::test]
async fn precedence_and_deletions() {
    let bucket = s3_bucket().await.unwrap();
    common::precedence_and_deletions(&open(&bucket, "serving").await).await;
}

#[tokio::test]
async fn another_handle_sees_the_committed_rows_and_progress() {
    let bucket = s3_bucket().await.unwrap();
    let store = open(&bucket, "a/b").await;
    let epoch = store.claim_writer("s3").await.unwrap().writer_epoch;
    let k = common::key("s3", 1, "/p q/ü");
    let p = common::progress("s3", epoch, 1, 41);
    store.write_provisional(&[RowChange::Upsert(common::speed_row(&k, 0, 3))], &p).await.unwrap();
    let other = open(&bucket, "a/b").await;
    assert_eq!(common::read_all(&other).await, vec![common::speed_row(&k, 0, 3)]);
    assert_eq!(other.load_progress("s3").await.unwrap(), Some(p));
    // a different prefix of the same bucket is a different store
    let elsewhere = open(&bucket, "a/c").await;
    assert_eq!(common::read_all(&elsewhere).await, vec![]);
}

/// Concurrent writers commit through conditional writes (`If-None-Match`) to the Delta log: a lost race
/// is a conflict the writer re-plans, never an overwritten commit.
#[tokio::test]
async fn precedence_holds_under_concurrent_writers() {
    let bucket = s3_bucket().await.unwrap();
    let mut all = Vec::new();
    for _ in 0..4 {
        all.push(Arc::new(open(&bucket, "race").await));
    }
    let batch = all.split_off(2);
    let report = common::precedence_race(all.clone(), batch.clone(), 12, 4, 1, 0x5eed_0053).await;
    let conflicts: u64 = all.iter().chain(&batch).map(|s| s.stats().conflicts.load(Ordering::Relaxed)).sum();
    println!("s3 race: {report:?}, commit conflicts re-planned {conflicts}");
    assert_eq!(report.violations, 0);
    assert_eq!(report.rounds, 12);
    assert!(conflicts > 0, "no commit ever conflicted: no contention was tested");
}

#[tokio::test]
async fn sigkill_mid_commit_leaves_all_or_nothing() {
    let bucket = s3_bucket().await.unwrap();
    let url = format!("{}/crash", bucket.url);
    let report = common::sigkill_atomicity("delta", &url, &bucket.options, 10, 1500, 0x0c0ffee).await;
    println!("s3 SIGKILL: {report:?}");
    assert_eq!(report.kills, 10);
    assert!(report.final_offset > 0);
    assert!(report.mid_commit > 0, "no kill landed inside a write");
}

fn archive_row(partition: i32, offset: i64) -> ArchiveRow {
    let t = 1_795_478_340_000_000 + offset * 1_000_000;
    let id = format!("e-{partition}-{offset}");
    ArchiveRow {
        payload: serde_json::json!({ "id": id, "ts": t / 1000, "page": "/a" }).to_string(),
        event_id: id,
        event_time: EventTime::from_micros(t - 1_000).unwrap(),
        ingest_time: EventTime::from_micros(t).unwrap(),
        coords: SourceCoordinates { source: "clicks".to_owned(), partition, offset },
    }
}

#[tokio::test]
async fn raw_archive_appends_exactly_once() {
    let bucket = s3_bucket().await.unwrap();
    let mut config = RawArchiveConfig::new(format!("{}/raw", bucket.url));
    config.storage_options = bucket.options.clone();
    let archive = config.clone().build().await.unwrap();
    let first: Vec<ArchiveRow> = (0..5).map(|o| archive_row(0, o)).chain((0..3).map(|o| archive_row(1, o))).collect();
    assert_eq!(archive.append(&first).await.unwrap(), AppendOutcome { written: 8, skipped: 0 });
    // a replay overlapping what landed writes only the new offsets, also through another handle
    let again = config.build().await.unwrap();
    let replay: Vec<ArchiveRow> = (3..7).map(|o| archive_row(0, o)).collect();
    assert_eq!(again.append(&replay).await.unwrap(), AppendOutcome { written: 2, skipped: 2 });
    assert_eq!(again.read_all().await.unwrap().len(), 10);
    let offsets = BTreeMap::from([(("clicks".to_owned(), 0), 6), (("clicks".to_owned(), 1), 2)]);
    assert_eq!(archive.recorded_offsets().await.unwrap(), offsets);
}

#[tokio::test]
async fn dead_letters_are_append_only_and_idempotent() {
    let bucket = s3_bucket().await.unwrap();
    let store = DeadLetterStore::open_with_options(&format!("{}/dl", bucket.url), &bucket.options).unwrap();
    let coords = |offset| SourceCoordinates { source: "events".into(), partition: 2, offset };
    let a = DeadLetter::new(coords(7), ReasonCode::NotJson, "expected value", b"{nope", 1024, common::t(100));
    let b = DeadLetter::new(coords(8), ReasonCode::InvalidUtf8, "bad utf-8", &[0xff], 1024, common::t(100));
    assert_eq!(store.append(&[a.clone(), b.clone()]).await.unwrap(), 2);
    // the same coordinates again (a replay) keep the first record: a conditional create on S3
    let later = DeadLetter::new(coords(7), ReasonCode::NotJson, "again", b"{nope", 1024, common::t(200));
    assert_eq!(store.append(&[later]).await.unwrap(), 0);
    assert_eq!(store.list().await.unwrap(), vec![a, b]);
}

#[tokio::test]
async fn a_missing_bucket_is_a_clear_error() {
    let bucket = s3_bucket().await.unwrap();
    let mut config = DeltaStoreConfig::new("s3://tidemark-no-such-bucket/serving");
    config.storage_options = bucket.options.clone();
    config.max_attempts = 1;
    let err = match config.build().await {
        Ok(store) => store.init().await.expect_err("a bucket that does not exist"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(text.contains("tidemark-no-such-bucket"), "{text}");
    assert_eq!(err.actor(), tidemark_core::Actor::External, "{text}");
}
