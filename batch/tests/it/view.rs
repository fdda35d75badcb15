//! The batch view: a run replaces exactly its range in one commit; re-running a range gives the same view
//! and a new manifest.

use tidemark_batch::view::read_view;
use tidemark_batch::{BatchReport, BatchRun, InputSource};
use tidemark_core::{Duration, EventTime, MetricRow, Origin, ValidSpec};
use tidemark_store::batch_view::MANIFEST_DIR;

use crate::common::{Rng, T0, assert_rows_match, file_url, raw_rows, seed, spec, write_archive};
use crate::inputs::{expected_rows, three_metrics};

fn t(minutes: i64) -> EventTime {
    EventTime::from_micros(T0 + minutes * 60_000_000).expect("t")
}

async fn run(spec: &ValidSpec, dir: &std::path::Path, from: EventTime, to: EventTime) -> BatchReport {
    BatchRun::new(spec, from, to)
        .input(InputSource::delta(file_url(&dir.join("raw"))))
        .batch_view(file_url(&dir.join("view")))
        .session_lookaround(Duration::from_secs(120))
        .progress(false)
        .keep_rows(true)
        .run()
        .await
        .expect("run")
}

fn without_provenance(rows: &[MetricRow]) -> Vec<MetricRow> {
    rows.iter()
        .map(|r| MetricRow {
            origin: Origin::Batch { run_id: String::new(), epoch: 0 },
            computed_at: EventTime::UNIX_EPOCH,
            ..r.clone()
        })
        .collect()
}

fn run_id_of(r: &MetricRow) -> &str {
    match &r.origin {
        Origin::Batch { run_id, .. } => run_id,
        Origin::Speed { .. } => panic!("a speed row in the batch view"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_a_range_gives_the_same_view_and_a_new_manifest() {
    let mut rng = Rng::new(seed("rerunning_a_range_gives_the_same_view_and_a_new_manifest"));
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = raw_rows(&mut rng, 2000);
    write_archive(&dir.path().join("raw"), &rows, 2).await;
    let spec = spec(&three_metrics(), &dir.path().display().to_string());
    let view_url = file_url(&dir.path().join("view"));

    let first = run(&spec, dir.path(), t(20), t(50)).await;
    assert_eq!(first.view_version, Some(0), "the first run creates the table in one commit");
    let view1 = read_view(&view_url).await.expect("read");
    assert_eq!(view1.len() as u64, first.rows_written);
    assert_rows_match(&spec, &expected_rows(&spec, &rows, t(20), t(50)), &view1, "first run");
    // the view holds exactly what the run computed (values round-trip through the JSON column)
    assert_eq!(view1.len(), first.rows.len());
    for (a, b) in view1.iter().zip(&first.rows) {
        assert_eq!(a, b);
    }

    let second = run(&spec, dir.path(), t(20), t(50)).await;
    assert_eq!(second.view_version, Some(1), "one commit per run");
    assert_ne!(second.run_id, first.run_id);
    assert!(second.epoch > first.epoch);
    let view2 = read_view(&view_url).await.expect("read");
    assert_eq!(without_provenance(&view2), without_provenance(&view1), "idempotent");
    assert!(view2.iter().all(|r| run_id_of(r) == second.run_id), "every row replaced by the second run");

    for r in [&first, &second] {
        let path = dir.path().join("view").join(MANIFEST_DIR).join(format!("{}.json", r.run_id));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("json");
        assert_eq!(manifest["run_id"], r.run_id.as_str());
        assert_eq!(manifest["rows_read"], r.rows_read);
        assert_eq!(manifest["invalid"], r.invalid);
        assert_eq!(manifest["duplicates"], r.duplicates);
        assert_eq!(manifest["windows_written"], r.windows_written);
        assert_eq!(manifest["input_version"], 1);
        assert_eq!(manifest["view_version"], r.view_version.expect("written"));
        assert_eq!(manifest["files"].as_array().expect("files").len(), r.files.len());
        assert!(manifest["duration_ms"].is_u64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_replaces_exactly_its_range() {
    let mut rng = Rng::new(seed("a_run_replaces_exactly_its_range"));
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = raw_rows(&mut rng, 2000);
    write_archive(&dir.path().join("raw"), &rows, 1).await;
    let spec = spec(&three_metrics(), &dir.path().display().to_string());
    let view_url = file_url(&dir.path().join("view"));

    let early = run(&spec, dir.path(), t(10), t(40)).await;
    let late = run(&spec, dir.path(), t(60), t(90)).await;
    let view = read_view(&view_url).await.expect("read");
    assert_eq!(view.len() as u64, early.rows_written + late.rows_written, "disjoint ranges keep each other's rows");

    // a run over [30m, 70m) replaces the rows overlapping it and nothing else
    let middle = run(&spec, dir.path(), t(30), t(70)).await;
    let after = read_view(&view_url).await.expect("read");
    let range = tidemark_core::Window::new(t(30), t(70)).expect("range");
    for r in &after {
        let expected_run = if r.key.window.overlaps(&range) {
            &middle.run_id
        } else if r.key.window.start() < t(30) {
            &early.run_id
        } else {
            &late.run_id
        };
        assert_eq!(run_id_of(r), expected_run, "{:?}", r.key);
    }
    // and the view as a whole is what one run over [10m, 90m) computes
    assert_rows_match(&spec, &expected_rows(&spec, &rows, t(10), t(90)), &after, "stitched view");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_a_range_without_events_removes_the_ranges_rows() {
    let mut rng = Rng::new(seed("a_run_over_a_range_without_events_removes_the_ranges_rows"));
    let dir = tempfile::tempdir().expect("tempdir");
    write_archive(&dir.path().join("raw"), &raw_rows(&mut rng, 500), 1).await;
    std::fs::create_dir_all(dir.path().join("empty")).expect("mkdir");
    let spec = spec(&three_metrics(), &dir.path().display().to_string());
    let view_url = file_url(&dir.path().join("view"));
    let first = run(&spec, dir.path(), t(0), t(120)).await;
    assert!(first.rows_written > 0);
    let second = BatchRun::new(&spec, t(0), t(120))
        .input(InputSource::json_lines(file_url(&dir.path().join("empty"))))
        .batch_view(view_url.clone())
        .progress(false)
        .run()
        .await
        .expect("run");
    assert_eq!((second.rows_read, second.rows_written), (0, 0));
    assert_eq!(second.view_version, Some(1), "the removal is one commit");
    assert!(read_view(&view_url).await.expect("read").is_empty());
}
