//! `tidemark store init` and `tidemark store compact` against a real (throwaway) Postgres and local Delta
//! tables.

mod common;

use common::tidemark;

fn spec_with_serving(dir: &std::path::Path, serving: &str) -> String {
    let text = format!(
        r#"
version = 1
name = "clicks"
[source]
type = "file"
path = "events.jsonl"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
[[metrics]]
name = "n"
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}]
[stores]
raw_archive = "raw"
serving = '{serving}'
dead_letter = "dead"
batch_view = "batch"
"#
    );
    let path = dir.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn init_migrates_postgres_idempotently_and_prints_roles() {
    let db = tidemark_store::testing::postgres().await.expect("throwaway postgres");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_with_serving(dir.path(), &db.conninfo);
    for _ in 0..2 {
        let (code, out, err) = tokio::task::spawn_blocking({
            let spec = spec.clone();
            move || tidemark(&["store", "init", "--spec", &spec])
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{out}{err}");
        assert!(err.contains("serving store ready: Postgres"), "{err}");
        assert!(err.contains("migrations [1"), "{err}");
    }
    let pg = tidemark_store::PostgresStore::connect(&db.conninfo, tidemark_store::DEFAULT_SCHEMA).await.unwrap();
    assert!(!pg.migrations().await.unwrap().is_empty());
    let (code, out, err) =
        tokio::task::spawn_blocking(move || tidemark(&["store", "init", "--spec", &spec, "--print-roles"]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CREATE ROLE tidemark_stream"), "{out}");
}

#[test]
fn init_creates_the_delta_tables_and_refuses_print_roles() {
    let dir = tempfile::tempdir().unwrap();
    let serving = format!("file://{}/serving", dir.path().display());
    let spec = spec_with_serving(dir.path(), &serving);
    let (code, _, err) = tidemark(&["store", "init", "--spec", &spec]);
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("serving").join("serving").join("_delta_log").is_dir(), "{err}");
    let (code, _, err) = tidemark(&["store", "init", "--spec", &spec, "--print-roles"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Postgres serving store only"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compact_rewrites_small_files_and_vacuums_what_progress_no_longer_names() {
    use std::collections::BTreeMap;
    use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, RowChange, RowKey, Window};
    use tidemark_store::{DeltaStoreConfig, ServingStore, SourceProgress, TopicPartition};
    let dir = tempfile::tempdir().unwrap();
    let serving = format!("file://{}/serving", dir.path().display());
    let spec = spec_with_serving(dir.path(), &serving);
    let store = DeltaStoreConfig::new(serving.clone()).build().await.unwrap();
    store.init().await.unwrap();
    let epoch = store.claim_writer("clicks").await.unwrap().writer_epoch;
    let progress = |seq: u64| SourceProgress {
        pipeline: "clicks".into(),
        writer_epoch: epoch,
        sequence: seq,
        offsets: BTreeMap::from([(TopicPartition::new("events", 0), seq as i64 * 100)]),
        checkpoint: Some(vec![seq as u8; 64]),
    };
    for seq in 1..=4u64 {
        let start = EventTime::from_secs(seq as i64 * 60).unwrap();
        let end = EventTime::from_secs(seq as i64 * 60 + 60).unwrap();
        let row = MetricRow {
            key: RowKey { metric: "n".into(), window: Window::new(start, end).unwrap(), dims: Dimensions::default() },
            values: BTreeMap::from([("n".into(), AggValue::Int(seq as i64))]),
            events: seq,
            origin: Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: end },
            computed_at: end,
        };
        store.write_provisional(&[RowChange::Upsert(row)], &progress(seq)).await.unwrap();
    }
    let files = store.file_count().await.unwrap();
    assert!(files >= 4, "{files}");
    let rows = store.read_range(&tidemark_store::MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap();
    let (code, out, err) = tokio::task::spawn_blocking({
        let spec = spec.clone();
        move || tidemark(&["store", "compact", "--spec", &spec, "--retention", "0s"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    // one file per partition: the rows and the emission log (all four windows start in one hour)
    assert!(out.contains(&format!("{files} files rewritten into 2")), "{out}");
    // the 4 replaced data files; 3 of 4 checkpoint blobs and 4 of 5 progress records (claim + 4 writes)
    assert!(out.contains(&format!("vacuumed: {files} data files and 7 checkpoint blobs")), "{out}");
    let store = DeltaStoreConfig::new(serving.clone()).build().await.unwrap();
    assert_eq!(store.file_count().await.unwrap(), 2);
    assert_eq!(
        store.read_range(&tidemark_store::MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap(),
        rows
    );
    assert_eq!(store.load_progress("clicks").await.unwrap(), Some(progress(4)));
    assert_eq!(std::fs::read_dir(dir.path().join("serving").join("checkpoints").join("clicks")).unwrap().count(), 1);

    // Postgres: nothing to compact, said before connecting
    let pg = spec_with_serving(dir.path(), "postgres://tidemark@127.0.0.1:1/tidemark");
    let (code, _, err) = tidemark(&["store", "compact", "--spec", &pg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("autovacuum"), "{err}");
}
