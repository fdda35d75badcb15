//! Against a real Postgres 15 server started by `tidemark_store::testing` (one per test binary).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tidemark_core::RowChange;
use tidemark_store::PgStats;
use tidemark_store::testing;
use tidemark_store::{Correction, CorrectionBatch, Error, PostgresStore, ServingStore};

use crate::common;

async fn store() -> PostgresStore {
    let db = testing::postgres().await.expect("test postgres");
    let store = PostgresStore::connect(&db.conninfo, "serving").await.unwrap();
    store.init().await.unwrap();
    store
}

#[tokio::test]
async fn migrations_are_versioned_and_idempotent() {
    let db = testing::postgres().await.unwrap();
    let a = PostgresStore::connect(&db.conninfo, "tm").await.unwrap();
    let b = PostgresStore::connect(&db.conninfo, "tm").await.unwrap();
    // concurrent init of two processes: the advisory lock serializes them
    let (ra, rb) = tokio::join!(a.init(), b.init());
    ra.unwrap();
    rb.unwrap();
    a.init().await.unwrap();
    assert_eq!(a.migrations().await.unwrap(), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn provisional_writes_are_atomic_and_replays_are_noops() {
    common::provisional_writes_are_atomic_and_replays_are_noops(&store().await).await;
}

#[tokio::test]
async fn zombie_writers_are_fenced() {
    common::zombie_writers_are_fenced(&store().await).await;
}

#[tokio::test]
async fn precedence_and_deletions() {
    common::precedence_and_deletions(&store().await).await;
}

#[tokio::test]
async fn same_correction_batch_twice_changes_nothing() {
    common::same_correction_batch_twice_changes_nothing(&store().await).await;
}

#[tokio::test]
async fn hostile_values_are_verbatim_or_refused() {
    let s = store().await;
    common::hostile_values_are_verbatim_or_refused(&s).await;
    let db = testing::postgres().await.unwrap();
    for bad in ["serving\"; DROP SCHEMA public; --", "Serving", "a-b", "", "ü"] {
        let err = PostgresStore::connect(&db.conninfo, bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{bad:?}: {err}");
    }
}

#[tokio::test]
async fn least_privilege_roles_keep_the_stream_role_off_batch_rows() {
    let db = testing::postgres().await.unwrap();
    let owner = PostgresStore::connect(&db.conninfo, "serving").await.unwrap();
    owner.init().await.unwrap();
    let a = common::key("guarded", 1, "/a");
    let batch = CorrectionBatch {
        id: "seed".into(),
        run_id: "run-1".into(),
        epoch: 1,
        changes: vec![Correction::Upsert(common::batch_row(&a, 1, 10))],
        audit: vec![],
    };
    owner.apply_corrections(&batch).await.unwrap();
    let (admin, conn) = tokio_postgres::connect(&db.conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    admin.batch_execute(&owner.role_setup_sql()).await.unwrap();
    admin.batch_execute(&owner.role_setup_sql()).await.expect("role setup is idempotent");
    admin
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'stream_login') THEN
                 CREATE ROLE stream_login LOGIN; END IF; END $$;
             GRANT tidemark_stream TO stream_login;",
        )
        .await
        .unwrap();
    let stream_conninfo = db.conninfo.replace("user=postgres", "user=stream_login");
    // the stream service works through the store as usual ...
    let stream = PostgresStore::connect(&stream_conninfo, "serving").await.unwrap();
    let epoch = stream.claim_writer("guarded").await.unwrap().writer_epoch;
    let b = common::key("guarded", 1, "/b");
    stream
        .write_provisional(
            &[RowChange::Upsert(common::speed_row(&a, 9, 90)), RowChange::Upsert(common::speed_row(&b, 0, 1))],
            &common::progress("guarded", epoch, 1, 1),
        )
        .await
        .unwrap();
    assert_eq!(common::read_all(&owner).await, vec![common::batch_row(&a, 1, 10), common::speed_row(&b, 0, 1)]);
    // ... but hand-written SQL as the stream role cannot touch batch rows or delete anything
    let (raw, conn) = tokio_postgres::connect(&stream_conninfo, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let update = raw.execute("UPDATE serving.serving_rows SET events = 0 WHERE layer = 'batch'", &[]).await;
    assert_eq!(update.unwrap_err().code().map(|c| c.code().to_owned()).as_deref(), Some("42501"));
    let delete = raw.execute("DELETE FROM serving.serving_rows", &[]).await;
    assert_eq!(delete.unwrap_err().code().map(|c| c.code().to_owned()).as_deref(), Some("42501"));
    let insert = raw
        .execute(
            "INSERT INTO serving.serving_rows (metric, window_start, window_end, dims, agg_values, events, layer,
                 batch_run_id, batch_epoch, computed_at) VALUES ('x', now(), now(), '', '{}', 0, 'batch', 'r', 9, now())",
            &[],
        )
        .await;
    assert_eq!(insert.unwrap_err().code().map(|c| c.code().to_owned()).as_deref(), Some("42501"));
    assert_eq!(common::read_all(&owner).await.len(), 2);
}

#[tokio::test]
async fn precedence_holds_under_concurrent_writers() {
    let db = testing::postgres().await.unwrap();
    let mut all = Vec::new();
    for _ in 0..4 {
        let s = PostgresStore::connect(&db.conninfo, "serving").await.unwrap();
        s.init().await.unwrap();
        all.push(Arc::new(s));
    }
    let batch = all.split_off(2);
    let report = common::precedence_race(all.clone(), batch.clone(), 60, 6, 3, 0x5eed_0001).await;
    let sum =
        |f: fn(&PgStats) -> &AtomicU64| all.iter().chain(&batch).map(move |s| f(s.stats()).load(Ordering::Relaxed));
    let retries: u64 = sum(|s| &s.retries).sum();
    let merge_retries: u64 = sum(|s| &s.merge_retries).sum();
    println!(
        "postgres race: {report:?}, transactions retried (deadlock, serialization) {retries}, merges re-run \
         after a concurrent insert of the same key {merge_retries}"
    );
    assert_eq!(report.violations, 0);
    // every round starts on new keys that all writers insert at once: the path where a merge finds its
    // key inserted by another writer since its snapshot must have run (and kept precedence)
    assert!(merge_retries > 0, "no concurrent insert of the same key happened");
    // the writes report them too (those of attempts a deadlock then rolled back are not theirs to report)
    assert!(report.retries > 0 && report.retries <= retries + merge_retries, "{report:?}");
    assert!(report.rounds >= 50);
    assert!(report.overlapping_pairs > 0, "the writers never overlapped: no contention was tested");
    assert!(report.refused > 0, "no stale write was ever refused: no contention on keys");
}

#[tokio::test]
async fn sigkill_mid_commit_leaves_all_or_nothing() {
    let db = testing::postgres().await.unwrap();
    let report = common::sigkill_atomicity("postgres", &db.conninfo, &Default::default(), 25, 40, 0x0c0ffee).await;
    println!("postgres SIGKILL: {report:?}");
    assert_eq!(report.kills, 25);
    assert!(report.final_offset > 0);
    assert!(report.mid_commit > 0, "no kill landed inside a write");
}

#[tokio::test]
async fn open_by_spec_location_and_init() {
    let db = testing::postgres().await.unwrap();
    let store = tidemark_store::open(&tidemark_core::StoreLocation::Postgres(db.conninfo.clone())).await.unwrap();
    store.init().await.unwrap();
    let marker = store.claim_writer("spec").await.unwrap();
    assert_eq!(marker.writer_epoch, 1);
    let direct = PostgresStore::connect(&db.conninfo, tidemark_store::DEFAULT_SCHEMA).await.unwrap();
    assert_eq!(direct.migrations().await.unwrap(), vec![1, 2, 3, 4, 5]);
    assert_eq!(direct.committed_marker("spec").await.unwrap(), Some(marker));
}

#[tokio::test]
async fn extreme_watermarks_round_trip() {
    common::extreme_watermarks_round_trip(&store().await).await;
}

#[tokio::test]
async fn emissions_are_logged_with_the_write() {
    common::emissions_are_logged_with_the_write(&store().await).await;
}

#[tokio::test]
async fn issue_19_scans_equal_the_reads() {
    common::scans_equal_the_reads(&store().await).await;
}
