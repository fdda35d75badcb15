//! `tidemark backfill` end to end on local Delta tables: SIGKILLed mid-run and resumed, it ends in the same
//! state as an uninterrupted backfill; a further run does nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tidemark;
use tidemark_core::{
    AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, PipelineSpec, RowChange, RowKey, SourceCoordinates,
    ValidSpec, Window,
};
use tidemark_store::{ArchiveRow, BatchView, MetricFilter, RawArchive, SourceProgress};

const FROM: &str = "2026-11-24T00:00:00Z";
const TO: &str = "2026-11-24T06:00:00Z";
/// 2026-11-24T00:00:00Z
const T0: i64 = 1_795_478_400;

fn t(s: i64) -> EventTime {
    EventTime::from_secs(T0 + s).unwrap()
}

fn spec_text(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
version = 1
name = "clicks"
[source]
type = "file"
path = "events.jsonl"
[event]
id = "id"
time = {{ field = "ts", format = "epoch_s" }}
dimensions = ["page"]
values = {{ ms = "int" }}
[time]
watermark_delay = "5s"
allowed_lateness = "1m"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "ms", fn = "sum", field = "ms" }}]
[[metrics]]
name = "views_10m"
dimensions = ["page"]
window = {{ type = "hopping", size = "10m", slide = "5m" }}
aggregates = [{{ name = "n", fn = "count" }}]
[stores]
raw_archive = "file://{d}/raw"
serving = "file://{d}/serving"
dead_letter = "file://{d}/dead"
batch_view = "file://{d}/batch"
"#
    )
}

/// A spec, a raw archive of ~6h of events (one duplicate delivery) and a serving store holding a few
/// provisional rows: one right, one drifted, one phantom.
async fn prepare(dir: &Path) -> (String, ValidSpec) {
    let text = spec_text(dir);
    let path = dir.join("spec.toml");
    std::fs::write(&path, &text).unwrap();
    let spec = PipelineSpec::parse(&text, "spec.toml", Some(dir)).unwrap();

    let pages = ["/a", "/b", "/c"];
    let mut rows = Vec::new();
    for (offset, s) in (0..6 * 3600).step_by(37).enumerate() {
        let page = pages[offset % 3];
        let id = if offset == 50 { "e-49".to_owned() } else { format!("e-{offset}") };
        let ms = (offset % 17) as i64;
        rows.push(ArchiveRow {
            event_id: id.clone(),
            event_time: t(s),
            ingest_time: t(s + 2),
            coords: SourceCoordinates { source: "clicks".into(), partition: 0, offset: offset as i64 },
            payload: format!(r#"{{"id":"{id}","ts":{},"page":"{page}","ms":{ms}}}"#, T0 + s),
        });
    }
    let archive = RawArchive::open(spec.spec().stores.raw_archive.clone()).await.unwrap();
    archive.append(&rows).await.unwrap();

    let serving = tidemark_store::open(&spec.serving_store()).await.unwrap();
    serving.init().await.unwrap();
    let marker = serving.claim_writer("clicks").await.unwrap();
    let row = |minute: i64, page: &str, n: i64, ms: i64| {
        let window = Window::new(t(minute * 60), t(minute * 60 + 60)).unwrap();
        MetricRow {
            key: RowKey { metric: "views".into(), window, dims: Dimensions::new([("page".into(), page.into())]) },
            values: BTreeMap::from([("n".into(), AggValue::Int(n)), ("ms".into(), AggValue::Int(ms))]),
            events: n.unsigned_abs(),
            // the stream has run past the range: every window of it is final
            origin: Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: t(7 * 3600) },
            computed_at: t(minute * 60 + 66),
        }
    };
    // minute 0 holds events at 0s (/a, ms 0) and 37s (/b, ms 1)
    let changes = vec![
        RowChange::Upsert(row(0, "/a", 1, 0)),
        RowChange::Upsert(row(0, "/b", 5, 1)),
        RowChange::Upsert(row(90, "/ghost", 2, 2)),
    ];
    let progress = SourceProgress {
        pipeline: "clicks".into(),
        writer_epoch: marker.writer_epoch,
        sequence: marker.sequence + 1,
        offsets: BTreeMap::new(),
        checkpoint: None,
    };
    serving.write_provisional(&changes, &progress).await.unwrap();
    (path.to_str().unwrap().to_owned(), spec)
}

/// `got` equals `expected` in the serving store, the batch view and the audit log (the Delta store writes a
/// batch's audit lines before its rows and hides them until the rows land, so a kill in between loses none).
fn assert_same_state(got: &State, expected: &State, context: &str) {
    for (name, g, e) in [("serving store", &got.0, &expected.0), ("batch view", &got.1, &expected.1)] {
        let extra: Vec<&String> = g.iter().filter(|x| !e.contains(x)).collect();
        let missing: Vec<&String> = e.iter().filter(|x| !g.contains(x)).collect();
        assert!(extra.is_empty() && missing.is_empty(), "{name} {context}: extra {extra:#?}, missing {missing:#?}");
        assert_eq!(g, e, "{name} {context}");
    }
    let extra: Vec<&String> = got.2.iter().filter(|x| !expected.2.contains(x)).collect();
    let missing: Vec<&String> = expected.2.iter().filter(|x| !got.2.contains(x)).collect();
    assert!(extra.is_empty() && missing.is_empty(), "audit log {context}: extra {extra:#?}, missing {missing:#?}");
    assert_eq!(got.2, expected.2, "audit log {context}: a line written twice");
}

type State = (Vec<String>, Vec<String>, Vec<String>);

/// Everything a backfill changes, without run ids, epochs and times (which differ between runs).
async fn state(spec: &ValidSpec) -> State {
    let (from, to) = (EventTime::parse_rfc3339(FROM).unwrap(), EventTime::parse_rfc3339(TO).unwrap());
    let rows = |rows: Vec<MetricRow>| {
        let mut v: Vec<String> = rows
            .into_iter()
            .map(|r| {
                format!(
                    "{} {} {} {:?} {} {:?}",
                    r.key.metric,
                    r.key.window,
                    r.key.dims,
                    r.values,
                    r.events,
                    r.origin.layer()
                )
            })
            .collect();
        v.sort();
        v
    };
    let serving = tidemark_store::open(&spec.serving_store()).await.unwrap();
    let served = rows(serving.read_range(&MetricFilter::All, from, to).await.unwrap());
    let view = BatchView::open(&spec.spec().stores.batch_view).unwrap();
    let batch = rows(view.read_range(&MetricFilter::All, from, to).await.unwrap());
    let mut audit: Vec<String> =
        serving.audit_log(None).await.unwrap().into_iter().map(|a| serde_json::to_string(&a.entry).unwrap()).collect();
    audit.sort();
    (served, batch, audit)
}

fn manifests(dir: &Path) -> Vec<PathBuf> {
    let Ok(ids) = std::fs::read_dir(dir.join("batch/_backfill")) else { return Vec::new() };
    ids.flatten()
        .flat_map(|id| std::fs::read_dir(id.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect()
}

fn backfill(spec: &str, extra: &[&str]) -> serde_json::Value {
    backfill_chunked(spec, "45m", extra)
}

fn backfill_chunked(spec: &str, chunk: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["backfill", "--spec", spec, "--from", FROM, "--to", TO, "--chunk", chunk, "--json"];
    args.extend(extra);
    let (code, out, err) = tidemark(&args);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Delta commits of every table under `dir` (a store may be several tables).
fn delta_commits(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && p.file_name().is_some_and(|f| f == "_delta_log") {
            n += std::fs::read_dir(&p)
                .unwrap()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count();
        } else if p.is_dir() {
            n += delta_commits(&p);
        }
    }
    n
}

#[test]
fn a_killed_backfill_resumes_to_the_state_of_an_uninterrupted_one() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (spec_a, valid_a) = rt.block_on(prepare(a.path()));
    let (spec_b, valid_b) = rt.block_on(prepare(b.path()));

    // the plan, without changing anything
    let (code, out, err) =
        tidemark(&["backfill", "--spec", &spec_a, "--from", FROM, "--to", TO, "--chunk", "45m", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("8 chunks (0 already done)"), "{out}");
    assert!(manifests(a.path()).is_empty(), "a dry run writes no manifest");

    // uninterrupted, in A
    let full = backfill(&spec_a, &[]);
    assert_eq!(
        (full["chunks"].as_u64(), full["ran"].as_u64(), full["already_done"].as_u64()),
        (Some(8), Some(8), Some(0))
    );
    assert_eq!(manifests(a.path()).len(), 8);
    let expected = rt.block_on(state(&valid_a));
    assert!(
        expected.0.iter().any(|r| r.contains("page=/a") && r.contains("Batch")),
        "corrections reached the serving store"
    );
    assert!(!expected.0.iter().any(|r| r.contains("/ghost")), "the phantom row is deleted");
    assert!(expected.2.iter().any(|e| e.contains("/ghost")), "the deletion is audited");
    assert_eq!(expected.0.len(), expected.1.len(), "serving == batch view, key for key");

    // SIGKILLed in B as soon as a chunk has finished, then resumed
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["backfill", "--spec", &spec_b, "--from", FROM, "--to", TO, "--chunk", "45m", "--parallel", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while manifests(b.path()).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(300), "no chunk finished in 5 minutes");
        assert!(child.try_wait().unwrap().is_none(), "the backfill ended before it could be killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    let finished_before_kill = manifests(b.path()).len();
    assert!(!status.success(), "killed, not finished");
    assert!((1..8).contains(&finished_before_kill), "{finished_before_kill} chunks finished before the kill");

    let resumed = backfill(&spec_b, &["--parallel", "2"]);
    assert_eq!(resumed["already_done"].as_u64(), Some(finished_before_kill as u64));
    assert_eq!(resumed["ran"].as_u64(), Some(8 - finished_before_kill as u64));
    let after_resume = rt.block_on(state(&valid_b));
    assert_same_state(&after_resume, &expected, "after one kill and a resume");

    // a third run finds every chunk done and changes nothing
    let commits = delta_commits(&b.path().join("batch"));
    let serving_commits = delta_commits(&b.path().join("serving"));
    let again = backfill(&spec_b, &[]);
    assert_eq!((again["ran"].as_u64(), again["already_done"].as_u64()), (Some(0), Some(8)));
    assert_eq!(delta_commits(&b.path().join("batch")), commits);
    assert_eq!(delta_commits(&b.path().join("serving")), serving_commits);
    assert!(commits > 0 && serving_commits > 0);
    assert_eq!(rt.block_on(state(&valid_b)), after_resume, "a third run changes nothing");
}

#[test]
fn ten_kills_at_pseudo_random_points_then_a_resume_end_like_an_uninterrupted_backfill() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (spec_a, valid_a) = rt.block_on(prepare(a.path()));
    let (spec_b, valid_b) = rt.block_on(prepare(b.path()));
    let full = backfill_chunked(&spec_a, "15m", &[]);
    assert_eq!(full["ran"].as_u64(), Some(24));
    let expected = rt.block_on(state(&valid_a));

    // kill points from a fixed LCG: 80..1200 ms after start (startup, batch runs, reconciles, manifests)
    let mut seed: u64 = 0x007E_1DE3_A24B;
    let (mut kills, mut progress) = (0, Vec::new());
    while kills < 10 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis(80 + (seed >> 33) % 1120);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["backfill", "--spec", &spec_b, "--from", FROM, "--to", TO, "--chunk", "15m", "--parallel", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_some() {
            panic!("the backfill finished after {kills} kills; the kill points are too late for this machine");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        progress.push(manifests(b.path()).len());
    }
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "finished chunks never disappear: {progress:?}");
    assert!(progress.last() < Some(&24), "{progress:?}");
    let resumed = backfill_chunked(&spec_b, "15m", &[]);
    assert_eq!(resumed["already_done"].as_u64(), progress.last().map(|n| *n as u64), "{progress:?}");
    assert_same_state(&rt.block_on(state(&valid_b)), &expected, &format!("after kills at {progress:?} chunks done"));
}
