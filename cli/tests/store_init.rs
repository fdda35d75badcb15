//! `tidemark store init` against a real (throwaway) Postgres and a local Delta directory.

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
