//! Issue 8, crash loop with named fail points, against both serving stores (Delta Lake and Postgres):
//! `tidemark stream` (built with the `failpoints` feature) is killed with SIGKILL at least 25 times per store
//! (200 in the long tier), restarted each time, then run to the end; it must leave exactly what an
//! uninterrupted run leaves: the same serving rows, dead letters, late ledger and raw archive; committed
//! offsets never go back. Then the batch result is the oracle: per (key, window) of the tumbling and hopping
//! metrics, the serving row counts the batch row's events less those the late ledger holds.
//!
//! Every fail point writes a marker line to stderr when reached (`TIDEMARK_FAILPOINT_MARKS=1`). Of every five
//! kills, two are *aimed inside the commit critical section* (the process holds at the N-th hit of the store's
//! pre-commit fail point, `postgres.before_commit` or `delta.after_data_files_before_log_commit`, and is
//! killed there), one is *aimed between the store commit and the source ack* (`stream.after_commit_before_ack`)
//! and two come *at a random time*; N and the times are drawn from the seed. A kill landed inside the critical
//! section when the last marker its process wrote is the pre-commit one (entered, not left); the share is
//! printed per store with the seed. Set TIDEMARK_CRASH_SEED to replay a schedule (random kills depend on
//! timing too).

mod common;
mod stream_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tidemark;
use stream_common::{Outcome, Rng, committed_in, crash_spec, outcome_in, stream_args, write_events};
use tidemark_core::{EventTime, StoreLocation};

const PIPELINE: &str = "fpcrash";
const ACK: &str = "stream.after_commit_before_ack";

fn long_tier() -> bool {
    std::env::var("TIDEMARK_LONG").is_ok_and(|v| v == "1")
}

/// Events in the input and kills per store: (100k, 25) in CI, (600k, 200) in the long tier. A life between
/// two kills commits a few small flushes (about 2k events), so the kills spread over the first half of the
/// input or so.
fn size() -> (u64, usize) {
    if long_tier() { (600_000, 200) } else { (100_000, 25) }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Store {
    Delta,
    Postgres,
}

impl Store {
    /// The fail point inside the commit critical section: the write is in the store (data files / rows and
    /// progress in the open transaction) but not committed.
    fn critical(self) -> &'static str {
        match self {
            Store::Delta => "delta.after_data_files_before_log_commit",
            Store::Postgres => "postgres.before_commit",
        }
    }
}

/// One run's stores: a folder (raw archive, dead letters, batch view; the serving table too for Delta) and
/// the serving store's location.
struct Run {
    dir: PathBuf,
    serving: StoreLocation,
    spec: String,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn new_run(root: &Path, events: &Path, name: &str, store: Store) -> Run {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let serving = match store {
        Store::Delta => StoreLocation::Delta(format!("file://{}", dir.join("serving").display())),
        Store::Postgres => {
            StoreLocation::Postgres(block_on(tidemark_store::testing::postgres()).expect("throwaway postgres").conninfo)
        }
    };
    let serving_str = match &serving {
        StoreLocation::Delta(u) | StoreLocation::Postgres(u) => u.clone(),
    };
    let spec = crash_spec(PIPELINE, events, &dir, &serving_str);
    let path = root.join(format!("{name}.toml"));
    std::fs::write(&path, spec).unwrap();
    Run { dir, serving, spec: path.to_str().unwrap().to_owned() }
}

fn committed_offset(run: &Run) -> i64 {
    let offsets = block_on(committed_in(&run.serving, PIPELINE)).unwrap_or_default();
    offsets.values().copied().max().unwrap_or(0)
}

/// The fail-point markers (`tidemark failpoint NAME HIT`) in a process's stderr, in order.
fn markers(log: &str) -> Vec<(&str, u64)> {
    log.lines()
        .filter_map(|l| {
            let mut parts = l.strip_prefix("tidemark failpoint ")?.split(' ');
            Some((parts.next()?, parts.next()?.parse().ok()?))
        })
        .collect()
}

/// How a kill is aimed.
#[derive(Debug, Clone, Copy)]
enum Aim {
    /// Hold at this hit of the fail point and kill there.
    At(&'static str, u64),
    /// Kill after this many milliseconds.
    After(u64),
}

/// What the crash loop counted.
#[derive(Debug, Default)]
struct Tally {
    kills: usize,
    /// Kills whose process had entered the critical section and not left it.
    inside: usize,
    aimed_critical: usize,
    aimed_ack: usize,
    random: usize,
    random_inside: usize,
    /// Kills before the process reached its first commit.
    before_first_commit: usize,
}

/// Runs `tidemark stream` once with the markers on and kills it as `aim` says; returns its stderr, or
/// `None` when the run finished before the kill.
fn run_and_kill(args: &[String], log: &Path, aim: Aim) -> Option<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    cmd.args(args)
        .env("TIDEMARK_FAILPOINT_MARKS", "1")
        .env_remove("FAILPOINTS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Aim::At(name, hit) = aim {
        cmd.env("TIDEMARK_FAILPOINT_HOLD", format!("{name}@{hit}"));
    }
    let mut child = cmd.spawn().unwrap();
    match aim {
        Aim::After(ms) => std::thread::sleep(Duration::from_millis(ms)),
        Aim::At(name, hit) => {
            let started = Instant::now();
            loop {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                if markers(&text).contains(&(name, hit)) {
                    break;
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(120), "no marker {name} {hit} within 120 s:\n{text}");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    if let Some(status) = child.try_wait().unwrap() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(status.success(), "the service failed instead of being killed: {status}\n{text}");
        return None;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    Some(std::fs::read_to_string(log).unwrap())
}

/// Rows keyed `metric window dims` → `values events=n`: the number of events a row counts.
fn events_of(row: &str) -> i64 {
    row.rsplit_once("events=").and_then(|(_, n)| n.parse().ok()).unwrap_or(-1)
}

/// Lost, duplicated (counting more events than the reference, or absent from it) and otherwise mismatched
/// windows of `crashed` against `reference`.
fn compare(reference: &Outcome, crashed: &Outcome) -> (Vec<String>, Vec<String>, Vec<String>) {
    let lost: Vec<String> = reference.rows.keys().filter(|k| !crashed.rows.contains_key(*k)).cloned().collect();
    let mut duplicated: Vec<String> =
        crashed.rows.keys().filter(|k| !reference.rows.contains_key(*k)).cloned().collect();
    let mut mismatched = Vec::new();
    for (k, v) in &reference.rows {
        let Some(c) = crashed.rows.get(k) else { continue };
        if c == v {
            continue;
        }
        if events_of(c) > events_of(v) {
            duplicated.push(format!("{k}: {c} (reference {v})"));
        } else {
            mismatched.push(format!("{k}: {c} (reference {v})"));
        }
    }
    (lost, duplicated, mismatched)
}

fn crash_loop(store: Store) {
    let (n_events, kills_wanted) = size();
    let root = tempfile::tempdir().unwrap();
    let events = root.path().join("events.jsonl");
    write_events(&events, n_events, 7);
    let lines = std::fs::read_to_string(&events).unwrap().lines().count() as i64;

    // The reference: one uninterrupted run (markers on, to count its commits).
    let reference_run = new_run(root.path(), &events, "reference", store);
    let log = root.path().join("reference.log");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(stream_args(&reference_run.spec))
        .env("TIDEMARK_FAILPOINT_MARKS", "1")
        .env_remove("FAILPOINTS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let reference_ms = started.elapsed().as_millis() as u64;
    let reference_log = std::fs::read_to_string(&log).unwrap();
    assert!(out.success(), "reference run failed: {reference_log}");
    let commits = markers(&reference_log).iter().filter(|(n, _)| *n == store.critical()).count() as u64;
    let acks = markers(&reference_log).iter().filter(|(n, _)| *n == ACK).count() as u64;
    assert!(
        commits >= 2 && acks == commits,
        "{commits} commits, {acks} acks in the reference run (none: was target/debug/tidemark built without \
         `--features failpoints` meanwhile?)"
    );
    let reference = block_on(outcome_in(&reference_run.dir, &reference_run.serving, PIPELINE));
    assert_eq!(reference.offsets, BTreeMap::from([(0, lines)]), "the reference run consumed the whole file");
    assert!(reference.rows.len() > 500, "rows: {}", reference.rows.len());
    assert!(!reference.dead_letters.is_empty() && !reference.late.is_empty());

    let seed = std::env::var("TIDEMARK_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_124u64);
    eprintln!(
        "{store:?}: crash loop seed {seed} (TIDEMARK_CRASH_SEED); reference run {:.1}s, {commits} commits",
        reference_ms as f64 / 1000.0
    );
    let mut rng = Rng(seed ^ store as u64);
    // Aimed kills hold at a commit drawn from [1, max_hit], random ones wait up to max_ms: both scaled so
    // that the kills would spread over 2/3 of the reference run (at least the 2nd commit, at least 200 ms).
    // Lives after a restart commit smaller flushes than the reference, so in practice they cover less.
    let per_life = commits as f64 * 2.0 / 3.0 / kills_wanted as f64;
    let max_hit = ((2.0 * per_life) as u64).max(2);
    let max_ms = ((reference_ms as f64 * 4.0 / 3.0 / kills_wanted as f64) as u64).clamp(200, 3000);

    let crashed = new_run(root.path(), &events, "crashed", store);
    let args = stream_args(&crashed.spec);
    let log = root.path().join("crashed.log");
    let mut tally = Tally::default();
    let mut previous = 0i64;
    let mut offsets = Vec::new();
    while tally.kills < kills_wanted {
        // of every 5 kills: 2 aimed inside, 1 between commit and ack, 2 at random times
        let aim = match tally.kills % 5 {
            0 | 3 => Aim::At(store.critical(), 1 + rng.below(max_hit)),
            1 => Aim::At(ACK, 1 + rng.below(max_hit)),
            _ => Aim::After(100 + rng.below(max_ms)),
        };
        let Some(text) = run_and_kill(&args, &log, aim) else {
            eprintln!("{store:?}: the run finished before kill {} ({aim:?})", tally.kills + 1);
            break;
        };
        tally.kills += 1;
        let last = markers(&text).into_iter().rev().find(|(n, _)| *n == store.critical() || *n == ACK);
        let inside = last.is_some_and(|(n, _)| n == store.critical());
        tally.inside += usize::from(inside);
        tally.before_first_commit += usize::from(last.is_none());
        match aim {
            Aim::At(n, _) if n == ACK => {
                assert!(!inside, "held between commit and ack, yet inside: {text}");
                tally.aimed_ack += 1;
            }
            Aim::At(..) => {
                assert!(inside, "held inside the critical section, yet the markers say otherwise: {text}");
                tally.aimed_critical += 1;
            }
            Aim::After(_) => {
                tally.random += 1;
                tally.random_inside += usize::from(inside);
            }
        }
        let offset = committed_offset(&crashed);
        assert!(offset >= previous, "committed offsets went back: {previous} -> {offset}");
        offsets.push(offset);
        previous = offset;
    }
    let share = tally.inside as f64 * 100.0 / tally.kills as f64;
    eprintln!(
        "{store:?}: killed {} times, {} inside the commit critical section ({share:.0}%): aimed inside {}, aimed \
         between commit and ack {}, random {} ({} of them inside), {} before the first commit; seed {seed}",
        tally.kills,
        tally.inside,
        tally.aimed_critical,
        tally.aimed_ack,
        tally.random,
        tally.random_inside,
        tally.before_first_commit
    );
    eprintln!("{store:?}: committed offsets after each kill: {offsets:?}");

    let (code, _, err) = tidemark(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "final run failed: {err}");
    let outcome = block_on(outcome_in(&crashed.dir, &crashed.serving, PIPELINE));
    let (lost, duplicated, mismatched) = compare(&reference, &outcome);
    eprintln!(
        "{store:?}: windows lost {}, duplicated {}, mismatched {} (of {}); archive {} records, {} distinct; seed {seed}",
        lost.len(),
        duplicated.len(),
        mismatched.len(),
        reference.rows.len(),
        outcome.archived,
        outcome.archived_distinct
    );
    assert!(
        lost.is_empty() && duplicated.is_empty() && mismatched.is_empty(),
        "seed {seed}: lost {:?}, duplicated {:?}, mismatched {:?}",
        lost.first(),
        duplicated.first(),
        mismatched.first()
    );
    assert_eq!(outcome.archived, outcome.archived_distinct, "the archive holds an event twice");
    assert_eq!(outcome, reference);
    let vs_batch = against_batch(&crashed, &outcome);
    eprintln!("{store:?}: against the batch result: {vs_batch}; seed {seed}");
    assert!(vs_batch.is_exact(), "seed {seed}: the crashed run against the batch result: {vs_batch}");
    // the loop itself did what it should (checked after the outcome, so that a wrong outcome is told first)
    assert!(tally.kills >= kills_wanted, "only {} kills before the input ran out; make it larger", tally.kills);
    assert!(share >= 30.0, "only {share:.0}% of the kills landed inside the critical section");
    assert!(offsets.iter().any(|&o| o > 0 && o < lines), "some kills landed mid-run: {offsets:?}");
}

/// The crashed run's serving rows against the batch result (`tidemark batch` over its raw archive) per
/// (key, window), for the tumbling and hopping metrics: a serving row must count the batch row's events less
/// exactly the events the late ledger holds for its key (events that came after the window closed, which
/// only the batch layer counts). Sessions are left out: an event beyond the lateness bridges or splits sessions, so their
/// keys differ between the layers by design (the reference comparison covers them).
#[derive(Debug, Default)]
struct VsBatch {
    windows: usize,
    ledgered_events: usize,
    lost: Vec<String>,
    duplicated: Vec<String>,
}

impl VsBatch {
    fn is_exact(&self) -> bool {
        self.windows > 500 && self.lost.is_empty() && self.duplicated.is_empty()
    }
}

impl std::fmt::Display for VsBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tumbling/hopping windows, {} ledgered events accounted, lost {}, duplicated {} (first: {:?} {:?})",
            self.windows,
            self.ledgered_events,
            self.lost.len(),
            self.duplicated.len(),
            self.lost.first(),
            self.duplicated.first()
        )
    }
}

fn against_batch(run: &Run, outcome: &Outcome) -> VsBatch {
    let (code, _, err) =
        tidemark(&["batch", "--spec", &run.spec, "--from", "2023-11-14T00:00:00Z", "--to", "2023-11-16T00:00:00Z"]);
    assert_eq!(code, 0, "batch failed: {err}");
    let batch_url = format!("file://{}", run.dir.join("batch").display());
    let (batch, late) = block_on(async {
        let view = tidemark_store::BatchView::open(&batch_url).unwrap();
        let rows = view.read_range(&tidemark_store::MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap();
        let dl = tidemark_store::DeadLetterStore::open(&format!("file://{}", run.dir.join("dead").display())).unwrap();
        (rows, dl.list_late().await.unwrap())
    });
    // Ledgered events per key, each event once (by id). A record lists the windows its event missed (a
    // hopping window may still have been open while another of the event's windows was closed); each of
    // them must hold the event's time and carry its dimension value.
    let mut ledgered: BTreeMap<String, i64> = BTreeMap::new();
    let mut ids = std::collections::BTreeSet::new();
    for record in &late {
        let payload = record.body["payload"].as_str().expect("a ledger record keeps its payload");
        let event: serde_json::Value = serde_json::from_str(payload).unwrap();
        if !ids.insert(event["id"].as_str().unwrap().to_owned()) {
            continue;
        }
        let t = event["ts"].as_str().unwrap().parse::<EventTime>().unwrap();
        for m in record.body["missed"].as_array().expect("a ledger record lists the windows it missed") {
            let field = |k: &str| m[k].as_str().unwrap();
            let metric = field("metric");
            let window = tidemark_core::Window::new(
                field("window_start").parse().unwrap(),
                field("window_end").parse().unwrap(),
            )
            .unwrap();
            let dims = tidemark_core::Dimensions::decode(field("dimensions")).unwrap();
            let dim = match metric {
                "views" => "page",
                "by_country" => "country",
                _ => continue,
            };
            assert!(window.contains(t), "{metric} {window} does not hold the ledgered event at {t}: {record:?}");
            assert_eq!(dims.pairs(), [(dim.to_owned(), event[dim].as_str().unwrap().to_owned())], "{record:?}");
            *ledgered.entry(format!("{metric} {window} {}", dims.encode())).or_default() += 1;
        }
    }
    let mut out = VsBatch { ledgered_events: ids.len(), ..VsBatch::default() };
    let mut batch_keys = std::collections::BTreeSet::new();
    for row in batch.iter().filter(|r| r.key.metric != "sessions") {
        let k = format!("{} {} {}", row.key.metric, row.key.window, row.key.dims.encode());
        let served = outcome.rows.get(&k).map_or(0, |v| events_of(v));
        let want = row.events as i64 - ledgered.get(&k).copied().unwrap_or(0);
        out.windows += 1;
        if served < want {
            out.lost.push(format!(
                "{k}: serving {served}, batch {} less {} ledgered",
                row.events,
                row.events as i64 - want
            ));
        } else if served > want {
            out.duplicated.push(format!(
                "{k}: serving {served}, batch {} less {} ledgered",
                row.events,
                row.events as i64 - want
            ));
        }
        batch_keys.insert(k);
    }
    for k in outcome.rows.keys().filter(|k| !k.starts_with("sessions ") && !batch_keys.contains(*k)) {
        out.duplicated.push(format!("{k}: served, not in the batch result"));
    }
    out
}

#[test]
fn sigkill_loop_with_fail_points_against_delta_issue_8() {
    crash_loop(Store::Delta);
}

#[test]
fn sigkill_loop_with_fail_points_against_postgres_issue_8() {
    crash_loop(Store::Postgres);
}

/// Runs `tidemark args` with `FAILPOINTS=failpoints` (empty: none); returns (exit code, stdout, stderr).
fn tidemark_with(failpoints: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    cmd.args(args).env_remove("TIDEMARK_FAILPOINT_MARKS");
    if failpoints.is_empty() {
        cmd.env_remove("FAILPOINTS");
    } else {
        cmd.env("FAILPOINTS", failpoints);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The serving rows and the visible audit lines of a run.
fn served(run: &Run) -> (BTreeMap<String, String>, usize) {
    let rows = block_on(outcome_in(&run.dir, &run.serving, PIPELINE)).rows;
    let audit =
        block_on(async { tidemark_store::open(&run.serving).await.unwrap().audit_log(None).await.unwrap().len() });
    (rows, audit)
}

/// The fail points of the correction path (`backfill.mid_chunk`, `reconcile.after_read_before_merge` and the
/// store's pre-commit one, set to `return` an error) stop a backfill or a reconcile before anything it would
/// write shows: serving rows, audit log and backfill manifests are unchanged; the same command without the
/// fail point then applies the corrections once.
fn correction_path_fail_points(store: Store) {
    let root = tempfile::tempdir().unwrap();
    let events = root.path().join("events.jsonl");
    write_events(&events, 20_000, 7); // 2023-11-14 22:10 to 22:27, 1% beyond the allowed lateness
    let run = new_run(root.path(), &events, "run", store);
    let (code, _, err) = tidemark_with("", &stream_args(&run.spec).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let before = served(&run);
    assert!(before.0.len() > 500 && before.1 == 0, "{} rows, {} audit lines", before.0.len(), before.1);
    let range = ["--from", "2023-11-14T22:00:00Z", "--to", "2023-11-14T23:00:00Z"];
    let spec = run.spec.as_str();
    let backfill = [&["backfill", "--spec", spec, "--chunk", "15m", "--json"][..], &range[..]].concat();
    let reconcile = [&["reconcile", "--spec", spec, "--json"][..], &range[..]].concat();
    let manifests = || {
        std::fs::read_dir(run.dir.join("batch/_backfill"))
            .map(|ids| ids.flatten().flat_map(|id| std::fs::read_dir(id.path()).unwrap().flatten()).count())
            .unwrap_or(0)
    };

    let (code, out, err) = tidemark_with("backfill.mid_chunk=return", &backfill);
    assert!(code != 0 && err.contains("fail point backfill.mid_chunk"), "exit {code}: {out}{err}");
    assert_eq!(served(&run), before, "a backfill stopped mid-chunk changed the serving store");
    assert_eq!(manifests(), 0, "a chunk stopped before its reconcile has no manifest");

    let (code, _, err) = tidemark_with("", &[&["batch", "--spec", spec][..], &range[..]].concat());
    assert_eq!(code, 0, "{err}");
    for fp in ["reconcile.after_read_before_merge", store.critical()] {
        let (code, out, err) = tidemark_with(&format!("{fp}=return"), &reconcile);
        assert!(code != 0 && err.contains(&format!("fail point {fp}")), "exit {code}: {out}{err}");
        assert_eq!(served(&run), before, "a reconcile stopped at {fp} changed the serving store");
    }

    let summary: serde_json::Value = {
        let (code, out, err) = tidemark_with("", &backfill);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let corrections = summary["corrections"].as_u64().unwrap();
    let after = served(&run);
    assert!(corrections > 0 && after.0 != before.0, "the backfill corrected nothing: {summary}");
    assert_eq!(manifests(), 4, "{summary}");
    eprintln!("{store:?}: backfill after the fail points: {corrections} corrections, {} audit lines", after.1);
    assert!(after.1 > 0, "the corrections have audit lines");
    let (code, out, err) = tidemark_with("", &reconcile);
    assert_eq!(code, 0, "{out}{err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(served(&run), after, "a second reconcile changed the serving store: {again}");
}

#[test]
fn correction_path_fail_points_stop_before_anything_shows_delta_issue_8() {
    correction_path_fail_points(Store::Delta);
}

#[test]
fn correction_path_fail_points_stop_before_anything_shows_postgres_issue_8() {
    correction_path_fail_points(Store::Postgres);
}
