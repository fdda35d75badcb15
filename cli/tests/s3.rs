//! The whole loop with every table on S3 (a real S3-compatible server, moto, on a loopback port; settings
//! through the standard AWS environment variables, as a user would give them): `tidemark stream --finish`
//! writes the serving store, raw archive and dead letters to `s3://`; `tidemark batch` reads the raw archive
//! from S3 and writes the batch view there; `tidemark reconcile` corrects the serving store once and a second
//! run finds nothing. Then `tidemark batch --input s3://.../landing/ --input-format jsonl` reads JSON Lines
//! files from S3 and computes the same view.

use std::path::Path;
use std::process::Command;

use tidemark_store::testing::{TestBucket, s3_bucket};

const FROM: &str = "2026-11-23T00:00:00Z";
const TO: &str = "2026-11-24T00:00:00Z";

fn tidemark(bucket: &TestBucket, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .envs(bucket.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn bucket() -> TestBucket {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(s3_bucket()).expect("an S3-compatible server (pip install \"moto[server]\"; scripts/setup.sh does)")
}

#[test]
fn the_loop_runs_with_every_table_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = bucket();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios/too_late");
    std::fs::copy(scenario.join("events.jsonl"), dir.path().join("events.jsonl")).unwrap();
    let at = |name: &str| format!("{}/tables/{name}", bucket.url);
    let spec_text = std::fs::read_to_string(scenario.join("spec.toml"))
        .unwrap()
        .replace("{events}", "events.jsonl")
        .replace("{raw}", &at("raw"))
        .replace("{serving}", &at("serving"))
        .replace("{dead}", &at("dead"))
        .replace("{batch}", &at("batch"));
    let spec_path = dir.path().join("spec.toml");
    std::fs::write(&spec_path, spec_text).unwrap();
    let spec = spec_path.to_str().unwrap();

    let (code, _, err) = tidemark(&bucket, &["stream", "--spec", spec, "--finish", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = tidemark(&bucket, &["batch", "--spec", spec, "--from", FROM, "--to", TO]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("input"), "{out}");

    let args = ["reconcile", "--spec", spec, "--from", FROM, "--to", TO, "--json"];
    let (code, out, err) = tidemark(&bucket, &args);
    assert_eq!(code, 0, "{err}");
    let first = json(&out);
    assert_eq!(first["applied"], "now");
    assert_eq!(first["corrections_applied"], 1, "{first}");
    assert_eq!(first["causes"]["late_events"], 1, "{first}");
    let (code, out, err) = tidemark(&bucket, &args);
    assert_eq!(code, 0, "{err}");
    let second = json(&out);
    assert_eq!(second["differences"], 0, "{second}");

    // JSON Lines files landed under an S3 prefix give the batch layer the same events
    let events = std::fs::read(dir.path().join("events.jsonl")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use object_store::ObjectStoreExt as _;
        let url = url::Url::parse(&format!("{}/landing/part-0.jsonl", bucket.url)).unwrap();
        let (store, path) = tidemark_store::objects::open(&url, &bucket.options).unwrap();
        store.put(&path, events.into()).await.unwrap();
    });
    let landing = format!("{}/landing/", bucket.url);
    let args = ["batch", "--spec", spec, "--from", FROM, "--to", TO, "--input", &landing, "--input-format", "jsonl"];
    let (code, out, err) = tidemark(&bucket, &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("input      1 files"), "{out}");
    // the batch view did not change, so the serving store still equals it
    let (code, out, err) = tidemark(&bucket, &["reconcile", "--spec", spec, "--from", FROM, "--to", TO, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["differences"], 0, "{out}");
}
