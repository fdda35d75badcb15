//! What a `tidemark stream` run left in its stores, for the crash tests (`stream_crash`, `stream_kafka`).
//! A run's stores live in one folder: `serving`, `dead` and `raw` (Delta / object store on local files); the
//! serving store may instead be a Postgres database (`outcome_in`, `committed_in`).

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
#[allow(dead_code)] // stream_kafka kills on its own schedule
pub struct Rng(pub u64);

#[allow(dead_code)]
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
