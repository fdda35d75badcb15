//! `tidemark reconcile` end to end on local files: `tidemark stream --finish` over a file with an event
//! beyond the allowed lateness, `tidemark batch`, then a dry run, a correcting run with `--fail-on-breach`,
//! and a second run that finds nothing.

mod common;

use std::path::Path;

use common::tidemark;

const FROM: &str = "2026-11-23T00:00:00Z";
const TO: &str = "2026-11-24T00:00:00Z";

fn setup(dir: &Path) -> String {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios/too_late");
    std::fs::copy(scenario.join("events.jsonl"), dir.join("events.jsonl")).unwrap();
    let spec = std::fs::read_to_string(scenario.join("spec.toml"))
        .unwrap()
        .replace("{events}", "events.jsonl")
        .replace("{raw}", "raw")
        .replace("{serving}", "serving")
        .replace("{dead}", "dead")
        .replace("{batch}", "batch");
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec).unwrap();
    path.to_str().unwrap().to_owned()
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn reconcile_corrects_a_late_event_once_and_reports_the_breach() {
    let dir = tempfile::tempdir().unwrap();
    let spec = setup(dir.path());
    let (code, _, err) = tidemark(&["stream", "--spec", &spec, "--finish", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tidemark(&["batch", "--spec", &spec, "--from", FROM, "--to", TO]);
    assert_eq!(code, 0, "{err}");

    // a dry run plans one update and changes nothing
    let (code, out, err) = tidemark(&["reconcile", "--spec", &spec, "--from", FROM, "--to", TO, "--dry-run", "--json"]);
    assert_eq!(code, 0, "{err}");
    let dry = json(&out);
    assert_eq!(dry["applied"], "dry_run");
    assert_eq!(dry["differences"], 1);
    assert_eq!(dry["causes"]["late_events"], 1);
    assert_eq!(dry["blast_radius"]["views"], serde_json::json!({ "insert": 0, "update": 1, "delete": 0 }));

    // the real run applies it; the first on-time accuracy (4 of 5 windows) misses the 0.99 target
    let report = dir.path().join("report");
    let report_s = report.to_str().unwrap();
    let args = ["reconcile", "--spec", &spec, "--from", FROM, "--to", TO, "--report-dir", report_s];
    let (code, out, _) = tidemark(&[&args[..], &["--json", "--fail-on-breach"]].concat());
    assert_eq!(code, 5, "a breached contract with --fail-on-breach exits 5: {out}");
    let first = json(&out);
    assert_eq!(first["applied"], "now");
    assert_eq!(first["corrections_applied"], 1);
    assert_eq!(first["correction_batch"], dry["correction_batch"], "the dry run planned the same batch id");
    assert_eq!(first["contract"]["metrics"][0]["first_on_time_within"], 0.8);
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("<svg") && !html.contains("<script"), "a self-contained page with charts");
    let saved = json(&std::fs::read_to_string(report.join("report.json")).unwrap());
    assert_eq!(saved["explained"][0]["cause"], "late_events");

    // the second run finds nothing; the table names the outcome
    let (code, out, err) = tidemark(&["reconcile", "--spec", &spec, "--from", FROM, "--to", TO]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 differences") && out.contains("nothing to correct"), "{out}");
}

#[test]
fn reconcile_refuses_a_range_without_a_batch_run_and_documents_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = setup(dir.path());
    let (code, _, err) = tidemark(&["reconcile", "--spec", &spec, "--from", FROM, "--to", TO]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tidemark batch"), "{err}");
    let (code, out, _) = tidemark(&["reconcile", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--fail-on-breach") && out.contains("5 contract breached") && out.contains("Examples"));
}

/// Issue 19: a replay of recorded history with `[source] received_at` measures latency on the recorded
/// arrival clock (each line arrives 2 s after its event time), not as "now minus the event date", and the
/// drained watermark reads "end of input".
#[test]
fn issue_19_a_replay_measures_latency_on_the_recorded_arrival_clock() {
    let dir = tempfile::tempdir().unwrap();
    let spec = setup(dir.path());
    let events = dir.path().join("events.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let ts: tidemark_core::EventTime = v["ts"].as_str().unwrap().parse().unwrap();
            let rcv = ts.saturating_add(tidemark_core::Duration::from_secs(2));
            v["rcv"] = serde_json::Value::String(rcv.to_string());
            v.to_string()
        })
        .collect();
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("path = \"events.jsonl\"", "path = \"events.jsonl\"\nreceived_at = \"rcv\"");
    assert!(text.contains("received_at = \"rcv\""), "{text}");
    std::fs::write(&spec, text).unwrap();
    let (code, _, err) = tidemark(&["stream", "--spec", &spec, "--finish", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tidemark(&["batch", "--spec", &spec, "--from", FROM, "--to", TO]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = tidemark(&["reconcile", "--spec", &spec, "--from", FROM, "--to", TO, "--dry-run", "--json"]);
    assert_eq!(code, 0, "{err}");
    // report.json / --json: a drained watermark is not a time
    let evidence = &json(&out)["evidence"];
    assert_eq!(evidence["stream_drained"], true, "{evidence}");
    assert!(evidence["stream_watermark"].is_null(), "{evidence}");
    let latency = &json(&out)["contract"]["metrics"][0]["finalization_latency"];
    assert!(latency["n"].as_u64().unwrap() > 0, "{latency}");
    // a window fires when the watermark (newest arrival's event time - 1 s delay) passes its end: seconds
    // after it on the recorded clock, never days
    let max: tidemark_core::Duration = serde_json::from_value(latency["max"].clone()).unwrap();
    assert!(max < tidemark_core::Duration::from_secs(600), "{latency}");
    let (code, out, err) = tidemark(&["reconcile", "--spec", &spec, "--from", FROM, "--to", TO, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stream watermark end of input"), "{out}");
}
