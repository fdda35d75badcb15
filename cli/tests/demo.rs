//! Acceptance test of issue 7: `tidemark demo` in a temp dir. From its JSON output and from the stores it
//! leaves behind (read here, not taken from the demo's word): after reconciling, the serving store equals
//! the batch view exactly; the speed layer's counts add up; the first reconcile corrected something (the
//! disorder really produced differences) and the second corrected nothing.

use std::collections::BTreeMap;
use std::path::Path;

use tidemark_core::{EventTime, MetricRow, StoreLocation};
use tidemark_store::MetricFilter;

fn u(v: &serde_json::Value, path: &str) -> u64 {
    let mut at = v;
    for part in path.split('.') {
        at = &at[part];
    }
    at.as_u64().unwrap_or_else(|| panic!("{path} is not a count in the summary: {at}"))
}

fn by_key(rows: &[MetricRow]) -> BTreeMap<String, String> {
    rows.iter()
        .map(|r| {
            (
                format!("{} {} {}", r.key.metric, r.key.window, r.key.dims.encode()),
                format!("{:?} events={}", r.values, r.events),
            )
        })
        .collect()
}

fn url(dir: &Path, table: &str) -> String {
    format!("file://{}", dir.join(table).display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_demo_reconciles_the_serving_store_to_the_batch_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["demo", "--events", "50000", "--seed", "5", "--json", "--out"])
        .arg(&dir)
        .output()
        .await
        .expect("the demo runs");
    assert!(out.status.success(), "demo failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints one JSON document");

    // Counts add up, and the disorder asked for is there.
    let consumed = u(&s, "stream.consumed");
    assert_eq!(consumed, u(&s, "generated.lines"), "every line was consumed");
    assert_eq!(
        consumed,
        u(&s, "stream.aggregated") + u(&s, "stream.late") + u(&s, "stream.dead_lettered") + u(&s, "stream.duplicates")
    );
    assert_eq!(u(&s, "stream.dead_lettered"), u(&s, "generated.malformed"), "exactly the malformed lines");
    assert!(u(&s, "stream.late") > 0 && u(&s, "stream.duplicates") > 0, "{}", s["stream"]);
    assert_eq!(u(&s, "batch.duplicates"), u(&s, "generated.duplicates"), "the batch layer sees every re-delivery");

    // Reconcile: differences were found and corrected; a second pass finds nothing to correct.
    assert!(u(&s, "corrections") > 0, "the disorder produced differences: {}", s["differences"]);
    assert_eq!(u(&s, "second_corrections"), 0, "{}", s["second_reconcile"]);
    let causes = s["differences"]["by_cause"].as_object().expect("differences by cause");
    assert!(!causes.is_empty());

    // The stores themselves: serving == batch view, row for row, values exactly.
    let serving = tidemark_store::open(&StoreLocation::Delta(url(&dir, "serving"))).await.unwrap();
    let serving = by_key(&serving.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap());
    let batch = by_key(&tidemark_batch::view::read_view(&url(&dir, "batch")).await.unwrap());
    assert!(batch.len() > 1000, "the batch view has the demo's rows: {}", batch.len());
    let differing: Vec<_> = batch.iter().filter(|(k, v)| serving.get(*k) != Some(v)).take(3).collect();
    assert!(differing.is_empty(), "serving differs from batch, e.g. {differing:?}");
    let extra: Vec<_> = serving.keys().filter(|k| !batch.contains_key(*k)).take(3).collect();
    assert!(extra.is_empty(), "serving has rows the batch view does not: {extra:?}");
    assert_eq!(s["serving_vs_batch"]["equal"], serde_json::Value::Bool(true));

    // The spec copy lets users rerun single commands.
    assert!(dir.join("demo.toml").exists() && dir.join("events.jsonl").exists());
}
