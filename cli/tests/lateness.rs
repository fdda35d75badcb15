//! `tidemark lateness` over a raw archive (a real Delta table on local files) of known lateness.

mod common;

use std::path::Path;

use common::tidemark;
use tidemark_core::{EventTime, SourceCoordinates};
use tidemark_store::{ArchiveRow, RawArchive};

/// 2026-11-24T10:00:00Z plus `s` seconds.
fn t(s: i64) -> EventTime {
    EventTime::from_secs(1_795_514_400 + s).unwrap()
}

fn row(partition: i32, offset: i64, event_s: i64, ingest_s: i64) -> ArchiveRow {
    ArchiveRow {
        event_id: format!("e-{partition}-{offset}"),
        event_time: t(event_s),
        ingest_time: t(ingest_s),
        coords: SourceCoordinates { source: "clicks".into(), partition, offset },
        payload: "{}".into(),
    }
}

fn write_spec(dir: &Path) -> String {
    let spec = format!(
        r#"
version = 1
name = "clicks"
[source]
type = "file"
path = "events.jsonl"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page"]
[time]
watermark_delay = "3s"
allowed_lateness = "10s"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}]
[stores]
raw_archive = "file://{}/raw"
serving = "serving"
dead_letter = "dead"
batch_view = "batch"
"#,
        dir.display()
    );
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Partition 0, event times in offset order 10, 20, 15, 30, 40, 38, 50, 60, 45, 70 (disorder 5s, 2s, 15s),
/// ingested at 80 + offset; then one event an hour before the range. Partition 1: 0, 3, 1, 2, 100
/// (disorder 2s, 1s), ingested at 100 + offset; then one event after the range.
async fn fill_archive(url: String) {
    let archive = RawArchive::open(url).await.unwrap();
    let p0 = [10, 20, 15, 30, 40, 38, 50, 60, 45, 70];
    let p1 = [0, 3, 1, 2, 100];
    let first: Vec<ArchiveRow> = (0..5).map(|o| row(0, o, p0[o as usize], 80 + o)).collect();
    archive.append(&first).await.unwrap();
    let mut rest: Vec<ArchiveRow> = (5..10).map(|o| row(0, o, p0[o as usize], 80 + o)).collect();
    rest.push(row(0, 10, -3600, 90));
    rest.extend((0..5).map(|o| row(1, o, p1[o as usize], 100 + o)));
    rest.push(row(1, 5, 1200, 105));
    archive.append(&rest).await.unwrap();
    assert_eq!(archive.read_all().await.unwrap().len(), 17);
}

#[test]
fn lateness_reports_exact_quantiles_and_advice() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path());
    let url = format!("file://{}/raw", dir.path().display());
    tokio::runtime::Runtime::new().unwrap().block_on(fill_archive(url));
    let chart = dir.path().join("lateness.svg");
    let range = ["--from", "2026-11-24T10:00:00Z", "--to", "2026-11-24T10:10:00Z"];
    let mut args = vec!["lateness", "--spec", &spec];
    args.extend(range);
    let chart_arg = chart.to_str().unwrap();
    args.extend(["--target", "0.9,0.99", "--json", "--chart", chart_arg]);

    let (code, out, err) = tidemark(&args);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let expected = serde_json::json!({
        "pipeline": "clicks",
        "from": "2026-11-24T10:00:00Z",
        "to": "2026-11-24T10:10:00Z",
        "sources": [{
            "source": "clicks",
            "events": 15,
            "partitions": [
                {
                    "partition": 0,
                    "disorder": { "n": 10, "p50": "0s", "p90": "5s", "p99": "15s", "p999": "15s", "p9999": "15s", "max": "15s" },
                    "ingest_lag": { "n": 10, "p50": "44s", "p90": "1m 7s", "p99": "1m 10s", "p999": "1m 10s", "p9999": "1m 10s", "max": "1m 10s" }
                },
                {
                    "partition": 1,
                    "disorder": { "n": 5, "p50": "0s", "p90": "2s", "p99": "2s", "p999": "2s", "p9999": "2s", "max": "2s" },
                    "ingest_lag": { "n": 5, "p50": "1m 40s", "p90": "1m 41s", "p99": "1m 41s", "p999": "1m 41s", "p9999": "1m 41s", "max": "1m 41s" }
                }
            ],
            "overall_disorder": { "n": 15, "p50": "0s", "p90": "5s", "p99": "15s", "p999": "15s", "p9999": "15s", "max": "15s" },
            "histogram": [["0s", 10], ["≤ 100ms", 0], ["≤ 1s", 1], ["≤ 10s", 3], ["≤ 1m", 1], ["≤ 10m", 0], ["> 10m", 0]],
            "current": {
                "watermark_delay": "3s",
                "allowed_lateness": "10s",
                "behind_watermark": 2,
                "beyond_allowed_lateness": 1
            },
            "recommendations": [
                { "target": 0.9, "watermark_delay": "5s", "late_events": 1, "allowed_lateness_for_all": "10s" },
                { "target": 0.99, "watermark_delay": "15s", "late_events": 0, "allowed_lateness_for_all": "0s" }
            ]
        }]
    });
    assert_eq!(v, expected, "{out}");

    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    assert_eq!(svg.matches("<rect").count(), 1 + 7, "frame + one bar per histogram bucket");
    assert!(svg.contains("<title>≤ 10s: 3</title>"), "{svg}");

    // the table form prints the same numbers
    let mut args = vec!["lateness", "--spec", &spec];
    args.extend(range);
    let (code, out, err) = tidemark(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("source clicks: 15 events"), "{out}");
    assert!(out.contains("2 events behind the watermark"), "{out}");
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0.999", "15s", "0", "(0.0000%)", "0s"]),
        "{out}"
    );
}

#[test]
fn lateness_refuses_bad_targets_and_reports_an_empty_range() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path());
    let base = ["lateness", "--spec", &spec, "--from", "2026-11-24T10:00:00Z", "--to", "2026-11-24T10:10:00Z"];
    let mut bad = base.to_vec();
    bad.extend(["--target", "1.5"]);
    let (code, _, err) = tidemark(&bad);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--target 1.5"), "{err}");

    let mut json = base.to_vec();
    json.push("--json");
    let (code, out, err) = tidemark(&json);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sources"], serde_json::json!([]));
}
