//! `tidemark batch` end to end on local files: JSON Lines in, a Delta batch view and dead letters out.

mod common;

use std::path::Path;

use common::tidemark;

fn write_spec(dir: &Path) -> String {
    let spec = r#"
version = 1
name = "clicks"
[source]
type = "file"
path = "events.jsonl"
[event]
id = "id"
time = { field = "ts", format = "rfc3339" }
dimensions = ["page"]
values = { ms = "int" }
[[metrics]]
name = "views"
dimensions = ["page"]
window = { type = "tumbling", size = "1m" }
aggregates = [{ name = "n", fn = "count" }, { name = "ms_sum", fn = "sum", field = "ms" }]
[stores]
raw_archive = "raw"
serving = "serving"
dead_letter = "dead"
batch_view = "batch"
"#;
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn batch_over_json_lines_writes_the_view_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path());
    let input = dir.path().join("landing");
    std::fs::create_dir(&input).unwrap();
    let lines = [
        r#"{"id":"a","ts":"2026-11-24T10:00:05Z","page":"/","ms":10}"#,
        r#"{"id":"b","ts":"2026-11-24T10:00:50Z","page":"/","ms":20}"#,
        r#"{"id":"b","ts":"2026-11-24T10:00:50Z","page":"/","ms":20}"#,
        r#"{"id":"c","ts":"2026-11-24T10:01:10Z","page":"/x","ms":5}"#,
        r#"{"id":"d","ts":"2026-11-24T10:01:20Z","page":"/x","ms":"oops"}"#,
    ];
    std::fs::write(input.join("part-0.jsonl"), lines.join("\n") + "\n").unwrap();
    let url = format!("file://{}/", input.display());
    let base = ["batch", "--spec", &spec, "--from", "2026-11-24T10:00:00Z", "--to", "2026-11-24T10:02:00Z"];
    let with_input = |extra: &[&str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend(["--input-format", "jsonl", "--input", &url]);
        v.extend(extra);
        tidemark(&v)
    };

    let (code, out, err) = with_input(&["--format", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    let r = &v["report"];
    assert_eq!(r["rows_read"], 5);
    assert_eq!(r["aggregated"], 3);
    assert_eq!(r["duplicates"], 1);
    assert_eq!(r["invalid"], 1);
    assert_eq!(r["invalid_by_reason"]["wrong_type"], 1);
    assert_eq!(r["windows_written"], 2, "[10:00, 10:01) for / and [10:01, 10:02) for /x");
    assert_eq!(v["dead_letters_stored"], 1);
    let dead = dir.path().join("dead");
    assert!(dead.exists(), "the dead-letter store is created under the spec's folder");

    // a re-run replaces the same windows and stores no dead letter twice
    let (code, out, err) = with_input(&["--format", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["report"]["windows_written"], 2);
    assert_eq!(v["dead_letters_stored"], 0);

    // the table format and the dry run
    let (code, out, err) = with_input(&["--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("batch plan (dry run)"), "{out}");
    assert!(out.contains("views"), "{out}");
}

#[test]
fn bad_ranges_and_specs_are_user_errors() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path());
    let (code, _, err) =
        tidemark(&["batch", "--spec", &spec, "--from", "2026-11-24T10:00:00Z", "--to", "2026-11-24T09:00:00Z"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("must be before --to"), "{err}");
    let (code, _, err) = tidemark(&["batch", "--spec", &spec, "--from", "yesterday", "--to", "2026-11-24T09:00:00Z"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
    std::fs::write(&spec, "version = 2").unwrap();
    let (code, _, err) =
        tidemark(&["batch", "--spec", &spec, "--from", "2026-11-24T08:00:00Z", "--to", "2026-11-24T09:00:00Z"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing field"), "{err}");
}
