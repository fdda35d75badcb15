//! Golden reconcile scenarios (`tests/scenarios/<name>/`, see its README): events in arrival order through
//! the stream service, the batch layer over the raw archive, then `Reconcile`. The first reconcile's
//! stable numbers must equal `expected.json`; afterwards the serving store equals the batch view exactly and
//! a second reconcile corrects nothing. `TIDEMARK_BLESS=1` rewrites the expectations (never automatic).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};
use tidemark_core::{EventTime, MetricRow, PipelineSpec, ValidSpec};
use tidemark_reconcile::{Applied, Reconcile, ReconcileOutcome};
use tidemark_store::{BatchView, DeadLetterStore, MetricFilter, RawArchive, ServingStore};
use tidemark_stream::metrics::Metrics;
use tidemark_stream::{FileSource, ManualClock, ReceivedAt, Service, ServiceConfig, Sinks, Stopped};

/// 2026-11-23T06:00:00Z: when every event is received (the manual clock of the stream service).
const RECEIVED_US: i64 = 1_795_413_600_000_000;
const DAY_US: i64 = 86_400_000_000;

fn scenario_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(name)
}

fn spec(name: &str, dir: &Path, serving: Option<&str>) -> ValidSpec {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    let events = dir.join("events.jsonl");
    std::fs::copy(scenario_dir(name).join("events.jsonl"), &events).unwrap();
    let text = std::fs::read_to_string(scenario_dir(name).join("spec.toml"))
        .unwrap()
        .replace("{events}", &events.display().to_string())
        .replace("{raw}", &url("raw"))
        .replace("{serving}", &serving.map_or_else(|| url("serving"), str::to_owned))
        .replace("{dead}", &url("dead"))
        .replace("{batch}", &url("batch"));
    PipelineSpec::parse(&text, "spec.toml", Some(dir)).unwrap()
}

/// Replays `events.jsonl` through the stream service. With a `restart_after` file (a line count), the
/// service first sees only that many lines and stops without draining (a crash or deploy mid-window); a
/// second instance then claims the pipeline, restores the checkpoint and finishes the whole file.
async fn stream(name: &str, spec: &ValidSpec, dir: &Path) {
    let events = dir.join("events.jsonl");
    let all = std::fs::read_to_string(&events).unwrap();
    let restart_after: Option<usize> = std::fs::read_to_string(scenario_dir(name).join("restart_after"))
        .ok()
        .map(|s| s.trim().parse().expect("restart_after holds a line count"));
    if let Some(n) = restart_after {
        let head: String = all.lines().take(n).map(|l| format!("{l}\n")).collect();
        std::fs::write(&events, head).unwrap();
        run_service(spec, dir, false).await;
        std::fs::write(&events, &all).unwrap();
    }
    run_service(spec, dir, true).await;
}

async fn run_service(spec: &ValidSpec, dir: &Path, finish_at_end: bool) {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    let store: Arc<dyn ServingStore> = Arc::from(tidemark_store::open(&spec.serving_store()).await.unwrap());
    store.init().await.unwrap();
    let sinks = Sinks {
        store,
        dead_letters: Arc::new(DeadLetterStore::open(&url("dead")).unwrap()),
        archive: Some(Arc::new(RawArchive::open(url("raw")).await.unwrap())),
    };
    let clock = Arc::new(ManualClock::new(EventTime::from_micros(RECEIVED_US).unwrap()));
    let config = ServiceConfig { finish_at_end, ..Default::default() };
    let source = FileSource::new(dir.join("events.jsonl"), ReceivedAt::Clock(clock.clone()));
    let service = Service::start(spec, source, sinks, clock, config, Arc::new(Metrics::new())).await.unwrap();
    let summary = service.run(Arc::new(AtomicBool::new(false))).await.unwrap();
    assert_eq!(summary.stopped, Stopped::EndOfInput);
}

/// The parts of an outcome that do not depend on wall-clock time, run ids or paths.
fn stable(o: &ReconcileOutcome) -> Value {
    let contract: Vec<Value> = o
        .contract
        .metrics
        .iter()
        .map(|m| {
            json!({
                "metric": m.metric,
                "windows_checked": m.windows_checked,
                "first_on_time_within": m.first_on_time_within,
                "after_late_within": m.after_late_within,
                "max_abs_drift": m.max_abs_drift,
                "mean_abs_drift": m.mean_abs_drift,
                "finalization_latency_p50": m.finalization_latency.p50.to_string(),
                "finalized_within_target": m.finalized_within_target,
                "corrected_windows": m.correction_latency.n,
                "late_event_share": m.late_event_share,
                "breached": m.breached,
            })
        })
        .collect();
    json!({
        "checked": o.checked,
        "differences": o.differences,
        "verdicts": o.verdicts,
        "causes": o.causes,
        "blast_radius": o.blast_radius,
        "skipped_not_final": o.skipped_not_final,
        "applied": o.applied,
        "corrections": o.corrections,
        "corrections_applied": o.corrections_applied,
        "evidence": {
            "late_events": o.evidence.late_events,
            "delta_events": o.evidence.delta_events,
            "duplicate_deliveries": o.evidence.duplicate_deliveries,
            "restarts": o.evidence.restarts.len(),
        },
        "contract": contract,
        "contract_breached": o.contract.breached,
    })
}

fn without_provenance(rows: Vec<MetricRow>) -> Vec<(String, String, String, String, u64)> {
    rows.into_iter()
        .map(|r| {
            (
                r.key.metric,
                r.key.window.to_string(),
                r.key.dims.encode(),
                serde_json::to_string(&r.values).unwrap(),
                r.events,
            )
        })
        .collect()
}

async fn run_scenario(name: &str, serving: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(name, dir.path(), serving);
    let from = EventTime::from_micros(RECEIVED_US - 6 * 3_600_000_000).unwrap();
    let to = EventTime::from_micros(RECEIVED_US - 6 * 3_600_000_000 + DAY_US).unwrap();
    stream(name, &spec, dir.path()).await;
    tidemark_batch::BatchRun::new(&spec, from, to).progress(false).run().await.unwrap();

    let report = dir.path().join("report");
    let first = Reconcile::new(&spec, from, to).report_dir(&report).run().await.unwrap();
    assert!(report.join("report.json").exists() && report.join("report.html").exists());
    let got = stable(&first);
    let expected_path = scenario_dir(name).join("expected.json");
    if std::env::var_os("TIDEMARK_BLESS").is_some_and(|v| v == "1") && serving.is_none() {
        std::fs::write(&expected_path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let text = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with TIDEMARK_BLESS=1 to create it)", expected_path.display()));
    let expected: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got, expected, "scenario {name}: the first reconcile differs from expected.json");

    // the serving store now equals the batch view exactly
    let store = tidemark_store::open(&spec.serving_store()).await.unwrap();
    let serving_rows = store.read_range(&MetricFilter::All, from, to).await.unwrap();
    let view = BatchView::open(&spec.spec().stores.batch_view).unwrap();
    let batch_rows = view.read_range(&MetricFilter::All, from, to).await.unwrap();
    assert_eq!(without_provenance(serving_rows), without_provenance(batch_rows), "scenario {name}");

    // a second reconcile finds nothing and changes nothing
    let second = Reconcile::new(&spec, from, to).run().await.unwrap();
    assert_eq!((second.differences, second.corrections), (0, 0), "scenario {name}: {second:#?}");
    assert_eq!(second.applied, Applied::NothingToDo);
    // a dry run of the first plan is a no-op too: the same batch id is refused by the store
    if let Some(id) = &first.correction_batch {
        assert!(store.corrections_applied(id).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_clean_range() {
    run_scenario("clean", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_too_late_events() {
    run_scenario("too_late", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_duplicate_deliveries() {
    run_scenario("duplicates", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_superseded_session() {
    run_scenario("superseded_session", None).await;
}

/// The stream service stops after 3 lines (one window fired, one open) and a second instance finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_restart_mid_window() {
    run_scenario("restart", None).await;
}

/// The same events under `late_policy = "dead_letter"`: the stream keeps its two sessions (phantoms of the
/// merged batch session) and routes the bridging event to the late ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_superseded_session_under_the_dead_letter_policy() {
    run_scenario("superseded_session_ledger", None).await;
}

/// A late event inside a session the stream already fired (`dead_letter` policy): the ledger names the
/// event's own session `[t, t + gap)`, the drifting row is the batch session containing it, and the
/// reconciler attributes the drift to the late event (it used to call it `unexplained`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_19_late_event_inside_a_fired_session_is_explained() {
    run_scenario("late_inside_session", None).await;
}

/// Every golden scenario's differences are explained: none expects an `unexplained` cause.
#[test]
fn no_golden_scenario_expects_an_unexplained_difference() {
    let root = scenario_dir("clean").parent().unwrap().to_path_buf();
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path().join("expected.json");
        if !path.exists() {
            continue;
        }
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(expected["causes"].is_object(), "{}: no causes", path.display());
        assert_eq!(expected["causes"].get("unexplained"), None, "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} scenarios found under {}", root.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_out_of_order_within_the_watermark_delay() {
    run_scenario("out_of_order", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_late_within_lateness_update_policy() {
    run_scenario("late_update", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_late_within_lateness_dead_letter_policy() {
    run_scenario("late_dead_letter", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_late_within_lateness_append_policy() {
    run_scenario("late_append", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_malformed_lines() {
    run_scenario("malformed", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_too_late_events_on_postgres() {
    let db = tidemark_store::testing::postgres().await.unwrap();
    run_scenario("too_late", Some(&db.conninfo)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_late_within_lateness_append_policy_on_postgres() {
    let db = tidemark_store::testing::postgres().await.unwrap();
    run_scenario("late_append", Some(&db.conninfo)).await;
}
