//! Issue 5, exactly-once effect: `tidemark stream` killed with SIGKILL at random moments (at least 25
//! times), restarted each time, then run to the end, leaves exactly what an uninterrupted run leaves:
//! the same serving rows, dead letters, late ledger and raw archive; committed offsets never go back.
//!
//! The seed is printed; set TIDEMARK_CRASH_SEED to replay a failing schedule. `TIDEMARK_LONG=1` (the long
//! tier, scripts/soak.sh) kills 200 times over an input eight times larger.

mod common;
mod stream_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tidemark;
use stream_common::{Rng, committed, crash_spec, outcome, stream_args, write_events};

fn long_tier() -> bool {
    std::env::var("TIDEMARK_LONG").is_ok_and(|v| v == "1")
}

/// Events in the input and kills of the crash loop: (200k, 25) in CI, (1.6M, 200) in the long tier.
fn size() -> (u64, usize) {
    if long_tier() { (1_600_000, 200) } else { (200_000, 25) }
}

fn write_spec(dir: &Path, events: &Path, name: &str) -> String {
    let d = dir.join(name);
    let spec = crash_spec("crashy", events, &d, &format!("file://{}", d.join("serving").display()));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, spec).unwrap();
    path.to_str().unwrap().to_owned()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn committed_offset(dir: &Path, name: &str) -> i64 {
    let offsets = block_on(committed(&dir.join(name), "crashy")).expect("the serving store opens");
    offsets.values().copied().max().unwrap_or(0)
}

#[test]
fn sigkill_loop_loses_and_duplicates_nothing_issue_5() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    write_events(&events, size().0, 42);
    let lines = std::fs::read_to_string(&events).unwrap().lines().count() as i64;

    // The reference: one uninterrupted run.
    let reference_spec = write_spec(dir.path(), &events, "reference");
    let args = stream_args(&reference_spec);
    let started = Instant::now();
    let (code, _, err) = tidemark(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "reference run failed: {err}");
    let reference_secs = started.elapsed().as_secs_f64();
    let reference = block_on(outcome(&dir.path().join("reference"), "crashy"));
    assert_eq!(reference.offsets, BTreeMap::from([(0, lines)]), "the reference run consumed the whole file");
    assert!(reference.rows.len() > 1000, "rows: {}", reference.rows.len());
    assert!(!reference.dead_letters.is_empty() && !reference.late.is_empty());

    // The crash loop: kill at random moments spread over the reference run's duration.
    let seed = std::env::var("TIDEMARK_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_124u64);
    eprintln!("crash loop seed {seed} (TIDEMARK_CRASH_SEED), reference run {reference_secs:.1}s");
    let mut rng = Rng(seed);
    let crash_spec = write_spec(dir.path(), &events, "crashed");
    let args = stream_args(&crash_spec);
    let log = dir.path().join("crashed.log");
    // Mean delay ~ reference/12 + startup: 25 kills cover about two thirds of the input (the long tier's
    // 200 kills over an 8x input the same share).
    let (_, kills_wanted) = size();
    let max_ms = ((reference_secs * 1000.0) as u64 / 6 / (kills_wanted as u64 / 25)).clamp(200, 3000);
    let (mut kills, mut finished_early, mut previous, mut after_commit) = (0, 0, 0i64, 0);
    let mut offsets = Vec::new();
    while kills < kills_wanted {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Every other life is killed a short random time after it committed past the last kill's offset (so
        // such a life adds about one flush), so that the kills move through the input even when restarts take
        // longer than `max_ms` (restoring a large checkpoint); the others at a random time from the start
        // (during restore and replay too).
        let delay = if kills % 2 == 1 {
            let started = Instant::now();
            while committed_offset(dir.path(), "crashed") <= previous
                && child.try_wait().unwrap().is_none()
                && started.elapsed() < Duration::from_secs(120)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            after_commit += 1;
            rng.below(max_ms / 4)
        } else {
            100 + rng.below(max_ms)
        };
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            finished_early += 1;
            assert!(finished_early < 3, "the run keeps finishing before the kill; make the input larger");
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let offset = committed_offset(dir.path(), "crashed");
        assert!(offset >= previous, "committed offsets went back: {previous} -> {offset}");
        offsets.push(offset);
        previous = offset;
    }
    eprintln!(
        "killed {kills} times ({after_commit} of them after a new commit of their life); committed offsets after each \
         kill: {offsets:?}"
    );
    assert!(kills >= kills_wanted, "only {kills} kills happened before the input ran out; make the input larger");
    assert!(offsets.iter().any(|&o| o > 0 && o < lines), "some kills landed mid-run: {offsets:?}");

    let (code, _, err) = tidemark(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "final run failed: {err}");
    let crashed = block_on(outcome(&dir.path().join("crashed"), "crashy"));

    let lost: Vec<_> = reference.rows.keys().filter(|k| !crashed.rows.contains_key(*k)).collect();
    let extra: Vec<_> = crashed.rows.keys().filter(|k| !reference.rows.contains_key(*k)).collect();
    let mismatched: Vec<_> =
        reference.rows.iter().filter(|(k, v)| crashed.rows.get(*k).is_some_and(|c| c != *v)).collect();
    eprintln!(
        "windows lost {}, extra {}, mismatched {} (of {}); archive {} records, {} distinct; seed {seed}",
        lost.len(),
        extra.len(),
        mismatched.len(),
        reference.rows.len(),
        crashed.archived,
        crashed.archived_distinct
    );
    assert!(
        lost.is_empty() && extra.is_empty() && mismatched.is_empty(),
        "lost {} (e.g. {:?}), extra {} (e.g. {:?}), mismatched {} (e.g. {:?})",
        lost.len(),
        lost.first(),
        extra.len(),
        extra.first(),
        mismatched.len(),
        mismatched.first()
    );
    assert_eq!(crashed.archived, crashed.archived_distinct, "the archive holds an event twice");
    assert_eq!(crashed, reference);
}
