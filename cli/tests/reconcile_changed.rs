//! Issue 19: `tidemark reconcile --changed` redoes only the hours new arrivals (late events, replayed
//! duplicates) can touch, and leaves the serving store equal to a full batch of the day. For a few seeds:
//! stream a first part of a generated day, batch it, run `--changed` (the first run covers the whole
//! archive); stream the rest plus a replay of earlier lines; run `--changed` again; then a full batch and a
//! full reconcile of the day must find 0 differences.

mod common;

use std::path::Path;

use common::tidemark;

const FROM: &str = "2026-01-01T00:00:00Z";
const TO: &str = "2026-01-02T00:00:00Z";

const SPEC: &str = r#"version = 1
name = "changed"
[source]
type = "file"
path = "events.jsonl"
received_at = "received_at"
[event]
id = "event_id"
time = { field = "ts", format = "rfc3339" }
dimensions = ["user", "page", "country"]
values = { latency_ms = "int", bytes = "float" }
[time]
watermark_delay = "5s"
allowed_lateness = "1m"
idle_timeout = "30s"
late_policy = "update"
max_future_skew = "5m"
[[metrics]]
name = "views_per_page"
dimensions = ["page"]
window = { type = "tumbling", size = "1m" }
aggregates = [{ name = "views", fn = "count" }, { name = "latency_sum", fn = "sum", field = "latency_ms" }]
[[metrics]]
name = "user_sessions"
dimensions = ["user"]
window = { type = "session", gap = "30s" }
aggregates = [{ name = "views", fn = "count" }]
[stores]
raw_archive = "raw"
serving = "serving"
dead_letter = "dead"
batch_view = "batch"
"#;

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = tidemark(args);
    assert_eq!(code, 0, "tidemark {args:?}: {err}\n{out}");
    out
}

fn case(dir: &Path, seed: u64) {
    let all = dir.join("all.jsonl");
    let all_s = all.to_str().unwrap();
    let seed_s = seed.to_string();
    // 6000 views over ~11 hours of event time, 5% late by 2-20 minutes, no malformed lines
    ok(&[
        "gen",
        "--to",
        "file",
        "--out",
        all_s,
        "--events",
        "6000",
        "--seed",
        &seed_s,
        "--rate",
        "0.5",
        "--start",
        FROM,
        "--late-share",
        "0.05",
        "--late-min",
        "2m",
        "--late-max",
        "20m",
        "--malformed-share",
        "0",
        "--users",
        "300",
        "--pages",
        "20",
    ]);
    let lines: Vec<String> = std::fs::read_to_string(&all).unwrap().lines().map(str::to_owned).collect();
    let cut = lines.len() * 9 / 10;
    let events = dir.join("events.jsonl");
    std::fs::write(&events, lines[..cut].join("\n") + "\n").unwrap();
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let spec = spec.to_str().unwrap();
    ok(&["stream", "--spec", spec, "--finish", "--listen", "off"]);
    ok(&["batch", "--spec", spec, "--from", FROM, "--to", TO]);
    let first = json(&ok(&["reconcile", "--spec", spec, "--changed", "--json"]));
    assert_eq!(first["first_run"], true);
    assert_eq!(first["new_arrivals"].as_u64().unwrap(), cut as u64, "every archived line is new at first");
    let clean = json(&ok(&["reconcile", "--spec", spec, "--from", FROM, "--to", TO, "--dry-run", "--json"]));
    assert_eq!(clean["differences"], 0, "{clean}");

    // the rest of the day arrives, plus a replay of 50 earlier lines (duplicate deliveries)
    let mut more: Vec<String> = lines[cut..].to_vec();
    more.extend(lines[cut - 400..cut - 350].iter().cloned());
    let mut text = std::fs::read_to_string(&events).unwrap();
    text.push_str(&(more.join("\n") + "\n"));
    std::fs::write(&events, text).unwrap();
    ok(&["stream", "--spec", spec, "--finish", "--listen", "off"]);
    let second = json(&ok(&["reconcile", "--spec", spec, "--changed", "--json"]));
    assert_eq!(second["first_run"], false);
    assert_eq!(second["new_arrivals"].as_u64().unwrap(), more.len() as u64, "only what arrived since");
    let spans = second["spans"].as_array().unwrap();
    assert!(!spans.is_empty());
    let hours: i64 = spans
        .iter()
        .map(|s| {
            let t = |k: &str| s[k].as_str().unwrap().parse::<tidemark_core::EventTime>().unwrap().as_micros();
            (t("to") - t("from")) / 3_600_000_000
        })
        .sum();
    // the new lines are the last ~70 minutes of arrivals and a replay from before them: with the session
    // lookaround (1 h) and hour alignment that is at most 5 of the 11 hours
    assert!(hours <= 5, "a few hours of the day, not all of it: {spans:?}");
    // a third run finds nothing new
    let third = json(&ok(&["reconcile", "--spec", spec, "--changed", "--json"]));
    assert_eq!(third["new_arrivals"], 0, "{third}");
    assert!(third["spans"].as_array().unwrap().is_empty(), "{third}");

    // equal to a full batch + reconcile of the day: a full batch now, then nothing differs
    ok(&["batch", "--spec", spec, "--from", FROM, "--to", TO]);
    let full = json(&ok(&["reconcile", "--spec", spec, "--from", FROM, "--to", TO, "--dry-run", "--json"]));
    assert_eq!(full["differences"], 0, "seed {seed}: the incremental run left differences: {full}");
}

#[test]
fn issue_19_reconcile_changed_equals_a_full_batch_and_reconcile() {
    for seed in [3, 11, 29] {
        let dir = tempfile::tempdir().unwrap();
        case(dir.path(), seed);
    }
}
