//! For the crash tests (`stream_crash`, `crash_failpoints`, `stream_kafka`): what a `tidemark stream` run left
//! in its stores, and the crash loops' shared input, spec and generator.
//! A run's stores live in one folder: `serving`, `dead` and `raw` (Delta / object store on local files); the
//! serving store may instead be a Postgres database (`outcome_in`, `committed_in`).
#![allow(dead_code)] // each crash test uses its part of these helpers

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tidemark_core::{EventTime, StoreLocation};
use tidemark_store::{DeadLetterStore, MetricFilter, RawArchive};

/// Everything a run left behind, in comparable form.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// Serving rows: `metric window dims` → `values events=n`.
    pub rows: BTreeMap<String, String>,
    /// Coordinates of the dead letters.
    pub dead_letters: BTreeSet<String>,
    /// Coordinates of the late-ledger records.
    pub late: BTreeSet<String>,
    /// Archived records, and how many distinct coordinates they have.
    pub archived: usize,
    pub archived_distinct: usize,
    /// Committed next offset per partition.
    pub offsets: BTreeMap<i32, i64>,
}

fn url(run: &Path, store: &str) -> String {
    format!("file://{}", run.join(store).display())
}

/// Reads the stores of the run in folder `run`.
pub async fn outcome(run: &Path, pipeline: &str) -> Outcome {
    outcome_in(run, &StoreLocation::Delta(url(run, "serving")), pipeline).await
}

/// Reads the stores of the run in folder `run` whose serving store is at `serving`.
pub async fn outcome_in(run: &Path, serving: &StoreLocation, pipeline: &str) -> Outcome {
    let store = tidemark_store::open(serving).await.unwrap();
    let rows = store
        .read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let key = format!("{} {} {}", r.key.metric, r.key.window, r.key.dims.encode());
            (key, format!("{:?} events={}", r.values, r.events))
        })
        .collect();
    let dl = DeadLetterStore::open(&url(run, "dead")).unwrap();
    let dead_letters = dl.list().await.unwrap().into_iter().map(|d| d.coordinates.to_string()).collect();
    let late = dl.list_late().await.unwrap().into_iter().map(|l| l.coordinates.to_string()).collect();
    let archive = RawArchive::open(url(run, "raw")).await.unwrap().read_all().await.unwrap();
    let distinct: BTreeSet<_> = archive.iter().map(|r| r.coords.clone()).collect();
    let offsets = committed_in(serving, pipeline).await.expect("the serving store opens");
    Outcome { rows, dead_letters, late, archived: archive.len(), archived_distinct: distinct.len(), offsets }
}

/// The committed next offset per partition; `None` while the serving store cannot be opened yet (the
/// service is still creating its tables).
pub async fn committed(run: &Path, pipeline: &str) -> Option<BTreeMap<i32, i64>> {
    committed_in(&StoreLocation::Delta(url(run, "serving")), pipeline).await
}

/// The committed next offset per partition in the serving store at `serving`; `None` while it cannot be
/// opened yet.
pub async fn committed_in(serving: &StoreLocation, pipeline: &str) -> Option<BTreeMap<i32, i64>> {
    let store = tidemark_store::open(serving).await.ok()?;
    let progress = store.load_progress(pipeline).await.ok()?;
    Some(progress.map_or_else(BTreeMap::new, |p| p.offsets.into_iter().map(|(tp, o)| (tp.partition, o)).collect()))
}

/// A small deterministic generator (SplitMix64) for the crash loops' inputs and kill schedules.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Events at 25 per second of event time with disorder up to 8 s, 1% arriving 2 to 3 minutes late
/// (beyond allowed lateness: late ledger), 1% within allowed lateness, duplicates and malformed lines.
pub fn write_events(path: &Path, events: u64, seed: u64) {
    let mut rng = Rng(seed);
    let base = 1_700_000_000_000_000i64; // µs
    let mut out = String::new();
    for i in 0..events {
        let mut t = base + i as i64 * 40_000 - rng.below(8_000_000) as i64;
        match rng.below(100) {
            0 => t -= 120_000_000 + rng.below(60_000_000) as i64,
            1 => t -= 20_000_000 + rng.below(20_000_000) as i64,
            _ => {}
        }
        let ts = EventTime::from_micros(t).unwrap();
        let line = format!(
            r#"{{"id":"e{i}","ts":"{ts}","page":"/p{}","country":"c{}","user":"u{}","ms":{}}}"#,
            rng.below(10),
            rng.below(4),
            rng.below(300),
            rng.below(900)
        );
        out.push_str(&line);
        out.push('\n');
        if i % 997 == 3 {
            out.push_str(&line); // duplicate
            out.push('\n');
        }
        if i % 1999 == 11 {
            out.push_str("{\"id\": \"broken\n"); // malformed
        }
    }
    std::fs::write(path, out).unwrap();
}

/// The crash loops' spec: pipeline `pipeline` over the JSON Lines file `events` (from [`write_events`]), with
/// a tumbling, a hopping and a session metric; raw archive, dead letters and batch view in folder `dir`, the
/// serving store at `serving` (a URL or Postgres conninfo).
pub fn crash_spec(pipeline: &str, events: &Path, dir: &Path, serving: &str) -> String {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    format!(
        r#"
version = 1
name = "{pipeline}"
[source]
type = "file"
path = "{events}"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page", "country", "user"]
values = {{ ms = "int" }}
[time]
watermark_delay = "10s"
allowed_lateness = "1m"
idle_timeout = "1h"
late_policy = "update"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "ms", fn = "sum", field = "ms" }}, {{ name = "hi", fn = "max", field = "ms" }}]
[[metrics]]
name = "by_country"
dimensions = ["country"]
window = {{ type = "hopping", size = "5m", slide = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "users", fn = "count_distinct", field = "user" }}]
[[metrics]]
name = "sessions"
dimensions = ["user"]
window = {{ type = "session", gap = "30s" }}
aggregates = [{{ name = "n", fn = "count" }}]
[stores]
raw_archive = "{raw}"
serving = "{serving}"
dead_letter = "{dead}"
batch_view = "{batch}"
"#,
        events = events.display(),
        raw = url("raw"),
        dead = url("dead"),
        batch = url("batch"),
    )
}

/// `tidemark stream` over a crash loop's spec: to the end of the file, small flushes, no HTTP listener.
pub fn stream_args(spec: &str) -> Vec<String> {
    ["stream", "--spec", spec, "--finish", "--listen", "off", "--flush-interval", "40ms", "--flush-rows", "2000"]
        .map(str::to_owned)
        .to_vec()
}
