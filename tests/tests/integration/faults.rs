//! A seeded fault-injecting serving store (issue 8) between the stream service and a real store: writes
//! fail before they apply, apply and then report an error (the outcome is unknown to the caller), run
//! slow, lose a spurious conflict, or hit a full disk for a while. The service retries, gives up, is
//! restarted — and ends with exactly the rows of a fault-free run, with no write applied twice. Correction
//! batches get the same treatment. `TIDEMARK_LONG=1` runs the long tier (≥ 1,000 ambiguous outcomes);
//! `TIDEMARK_FAULT_SEED` reproduces a run (every run prints its seed).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, Origin, PipelineSpec, RowChange, RowKey, ValidSpec};
use tidemark_store::{
    ApplyOutcome, AuditEntry, CommitMarker, Correction, CorrectionBatch, DeadLetterStore, Emission, MetricFilter,
    RawArchive, ServingStore, SourceProgress, StoredAuditEntry, WriteOutcome,
};
use tidemark_stream::metrics::Metrics;
use tidemark_stream::{FileSource, ManualClock, ReceivedAt, Service, ServiceConfig, Sinks, Stopped};

fn long_tier() -> bool {
    std::env::var("TIDEMARK_LONG").is_ok_and(|v| v == "1")
}

fn seed() -> u64 {
    std::env::var("TIDEMARK_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

/// splitmix64: small, seeded, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Probabilities of each fault per write (the rest pass through unharmed).
#[derive(Debug, Clone, Copy)]
struct FaultPlan {
    fail_before: f64,
    ambiguous: f64,
    conflict: f64,
    slow: f64,
}

#[derive(Debug, Default)]
struct FaultStats {
    writes: u64,
    fail_before: u64,
    ambiguous: u64,
    conflicts: u64,
    slow: u64,
    disk_full: u64,
    /// Times the inner store reported `Committed` per write identity: > 1 would be a double apply.
    committed: HashMap<String, u32>,
}

struct FaultyStore {
    inner: Arc<dyn ServingStore>,
    plan: FaultPlan,
    rng: Mutex<Rng>,
    /// While > 0, every write fails with "no space left on device" (and counts down).
    disk_full_for: AtomicU32,
    stats: Mutex<FaultStats>,
}

fn injected(what: &str) -> tidemark_store::Error {
    tidemark_store::Error::ObjectStore {
        url: "fault://injected".into(),
        source: object_store::Error::Generic { store: "FaultyStore", source: what.to_owned().into() },
    }
}

fn disk_full() -> tidemark_store::Error {
    tidemark_store::Error::ObjectStore {
        url: "fault://injected".into(),
        source: object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        },
    }
}

enum Fault {
    None,
    FailBefore,
    Ambiguous,
    Conflict,
    Slow,
    DiskFull,
}

impl FaultyStore {
    fn new(inner: Arc<dyn ServingStore>, plan: FaultPlan, seed: u64) -> Self {
        FaultyStore {
            inner,
            plan,
            rng: Mutex::new(Rng(seed)),
            disk_full_for: AtomicU32::new(0),
            stats: Mutex::default(),
        }
    }

    fn pick(&self) -> Fault {
        let mut stats = self.stats.lock().unwrap();
        stats.writes += 1;
        if self.disk_full_for.load(Ordering::SeqCst) > 0 {
            self.disk_full_for.fetch_sub(1, Ordering::SeqCst);
            stats.disk_full += 1;
            return Fault::DiskFull;
        }
        let r = self.rng.lock().unwrap().next_f64();
        let p = self.plan;
        if r < p.fail_before {
            stats.fail_before += 1;
            Fault::FailBefore
        } else if r < p.fail_before + p.ambiguous {
            stats.ambiguous += 1;
            Fault::Ambiguous
        } else if r < p.fail_before + p.ambiguous + p.conflict {
            stats.conflicts += 1;
            Fault::Conflict
        } else if r < p.fail_before + p.ambiguous + p.conflict + p.slow {
            stats.slow += 1;
            Fault::Slow
        } else {
            Fault::None
        }
    }

    fn committed(&self, identity: String) {
        *self.stats.lock().unwrap().committed.entry(identity).or_default() += 1;
    }

    /// Runs `apply` under the picked fault.
    async fn faulty<T, F>(&self, apply: F, committed: impl Fn(&T) -> Option<String>) -> tidemark_store::Result<T>
    where
        F: std::future::Future<Output = tidemark_store::Result<T>>,
    {
        match self.pick() {
            Fault::DiskFull => Err(disk_full()),
            Fault::FailBefore => Err(injected("failed before the write was applied")),
            Fault::Conflict => Err(tidemark_store::Error::Contention { attempts: 1, last: "injected conflict".into() }),
            Fault::Ambiguous => {
                let out = apply.await?;
                if let Some(id) = committed(&out) {
                    self.committed(id);
                }
                Err(injected("the write was applied, then the connection dropped"))
            }
            fault @ (Fault::Slow | Fault::None) => {
                if matches!(fault, Fault::Slow) {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                let out = apply.await?;
                if let Some(id) = committed(&out) {
                    self.committed(id);
                }
                Ok(out)
            }
        }
    }
}

#[async_trait]
impl ServingStore for FaultyStore {
    async fn init(&self) -> tidemark_store::Result<()> {
        self.inner.init().await
    }
    async fn claim_writer(&self, pipeline: &str) -> tidemark_store::Result<CommitMarker> {
        self.inner.claim_writer(pipeline).await
    }
    async fn write_provisional(
        &self,
        changes: &[RowChange],
        progress: &SourceProgress,
    ) -> tidemark_store::Result<WriteOutcome> {
        let identity = format!("write {} {}", progress.writer_epoch, progress.sequence);
        self.faulty(self.inner.write_provisional(changes, progress), |o| {
            matches!(o, WriteOutcome::Committed(_)).then(|| identity.clone())
        })
        .await
    }
    async fn load_progress(&self, pipeline: &str) -> tidemark_store::Result<Option<SourceProgress>> {
        self.inner.load_progress(pipeline).await
    }
    async fn committed_marker(&self, pipeline: &str) -> tidemark_store::Result<Option<CommitMarker>> {
        self.inner.committed_marker(pipeline).await
    }
    async fn read_range(
        &self,
        metrics: &MetricFilter,
        from: EventTime,
        to: EventTime,
    ) -> tidemark_store::Result<Vec<MetricRow>> {
        self.inner.read_range(metrics, from, to).await
    }
    async fn read_deltas(
        &self,
        metrics: &MetricFilter,
        from: EventTime,
        to: EventTime,
    ) -> tidemark_store::Result<Vec<MetricRow>> {
        self.inner.read_deltas(metrics, from, to).await
    }
    async fn read_emissions(
        &self,
        metrics: &MetricFilter,
        from: EventTime,
        to: EventTime,
    ) -> tidemark_store::Result<Vec<Emission>> {
        self.inner.read_emissions(metrics, from, to).await
    }
    async fn apply_corrections(&self, batch: &CorrectionBatch) -> tidemark_store::Result<ApplyOutcome> {
        let identity = format!("corrections {}", batch.id);
        self.faulty(self.inner.apply_corrections(batch), |o| {
            matches!(o, ApplyOutcome::Applied(_)).then(|| identity.clone())
        })
        .await
    }
    async fn corrections_applied(&self, id: &str) -> tidemark_store::Result<bool> {
        self.inner.corrections_applied(id).await
    }
    async fn audit_log(&self, id: Option<&str>) -> tidemark_store::Result<Vec<StoredAuditEntry>> {
        self.inner.audit_log(id).await
    }
}
const BASE_S: i64 = 1_795_400_000;

/// `n` events over event time with disorder up to 5 s, 1% beyond allowed lateness, 0.5% duplicates and a
/// malformed line every 700.
fn write_events(path: &Path, n: usize) -> usize {
    let mut lines = Vec::with_capacity(n + n / 100);
    for i in 0..n as i64 {
        let mut t = BASE_S + i / 4 - (i * 7919 % 5);
        if i % 100 == 50 {
            t -= 300;
        }
        let ts = EventTime::from_micros(t * 1_000_000).unwrap();
        lines.push(format!(r#"{{"id":"e{i}","ts":"{ts}","page":"/p{}","ms":{}}}"#, i % 7, i % 311));
        if i % 200 == 1 {
            lines.push(lines.last().unwrap().clone());
        }
        if i % 700 == 2 {
            lines.push(r#"{"id":"broken","ts":"#.to_owned());
        }
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    lines.len()
}

fn spec(dir: &Path) -> ValidSpec {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    let text = format!(
        r#"
version = 1
name = "faults"
[source]
type = "file"
path = "{events}"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page"]
values = {{ ms = "int" }}
[time]
watermark_delay = "10s"
allowed_lateness = "1m"
idle_timeout = "1h"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "ms", fn = "sum", field = "ms" }}]
[[metrics]]
name = "visits"
dimensions = ["page"]
window = {{ type = "session", gap = "2s" }}
aggregates = [{{ name = "n", fn = "count" }}]
[stores]
raw_archive = "{raw}"
serving = "{serving}"
dead_letter = "{dead}"
batch_view = "{batch}"
"#,
        events = dir.join("events.jsonl").display(),
        raw = url("raw"),
        serving = url("serving"),
        dead = url("dead"),
        batch = url("batch"),
    );
    PipelineSpec::parse(&text, "faults.toml", Some(dir)).unwrap()
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(EventTime::from_micros(1_800_000_000_000_000).unwrap()))
}

fn config() -> ServiceConfig {
    // the source pauses while ~1 KiB (about a dozen records) waits for the flush in flight: many writes,
    // so many faults
    ServiceConfig {
        flush_interval: Duration::from_millis(1),
        max_in_flight_bytes: 1 << 10,
        poll_max: 20,
        finish_at_end: true,
        flush_attempts: 3,
        ..ServiceConfig::default()
    }
}

#[derive(Debug, PartialEq)]
struct Outcome {
    rows: BTreeMap<String, String>,
    dead_letters: Vec<(i64, String)>,
    late: usize,
    archived: usize,
}

async fn outcome(dir: &Path, store: &dyn ServingStore) -> Outcome {
    let rows = store
        .read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let revision = match r.origin {
                Origin::Speed { revision, .. } => revision,
                Origin::Batch { .. } => panic!("no batch rows here"),
            };
            (
                format!("{} {} {}", r.key.metric, r.key.window, r.key.dims.encode()),
                format!("{:?} events={} revision={revision}", r.values, r.events),
            )
        })
        .collect();
    let dead = DeadLetterStore::open(&format!("file://{}", dir.join("dead").display())).unwrap();
    let mut dead_letters: Vec<(i64, String)> =
        dead.list().await.unwrap().into_iter().map(|d| (d.coordinates.offset, d.reason.as_str().to_owned())).collect();
    dead_letters.sort();
    let archive = RawArchive::open(format!("file://{}", dir.join("raw").display())).await.unwrap();
    let archived = archive.read_all().await.unwrap();
    let mut coords: Vec<i64> = archived.iter().map(|a| a.coords.offset).collect();
    coords.sort_unstable();
    coords.dedup();
    assert_eq!(coords.len(), archived.len(), "an archived record appears twice");
    Outcome { rows, dead_letters, late: dead.list_late().await.unwrap().len(), archived: archived.len() }
}

async fn sinks(dir: &Path, store: Arc<dyn ServingStore>) -> Sinks {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    Sinks {
        store,
        dead_letters: Arc::new(DeadLetterStore::open(&url("dead")).unwrap()),
        archive: Some(Arc::new(RawArchive::open(url("raw")).await.unwrap())),
    }
}

/// Runs the service until it reaches the end of the file, restarting it (as a supervisor would) each
/// time it gives up; returns the errors it gave up with.
async fn run_supervised(spec: &ValidSpec, dir: &Path, store: Arc<dyn ServingStore>) -> Vec<String> {
    let mut gave_up = Vec::new();
    loop {
        let source = FileSource::new(dir.join("events.jsonl"), ReceivedAt::Clock(clock()));
        let metrics = Arc::new(Metrics::new());
        let service =
            match Service::start(spec, source, sinks(dir, store.clone()).await, clock(), config(), metrics).await {
                Ok(s) => s,
                Err(e) => {
                    gave_up.push(format!("start: {e}"));
                    assert!(gave_up.len() < 500, "the service keeps failing: {gave_up:?}");
                    continue;
                }
            };
        match service.run(Arc::new(AtomicBool::new(false))).await {
            Ok(summary) => {
                assert_eq!(summary.stopped, Stopped::EndOfInput);
                return gave_up;
            }
            Err(e) => {
                assert!(
                    e.to_string().contains("injected")
                        || e.to_string().contains("conflict")
                        || e.to_string().contains("no storage space"),
                    "unexpected error: {e}"
                );
                gave_up.push(e.to_string());
                assert!(gave_up.len() < 500, "the service keeps giving up: {gave_up:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_service_survives_injected_store_faults_with_nothing_lost_or_applied_twice() {
    let seed = seed();
    let (events, min_ambiguous) = if long_tier() { (60_000, 1_000) } else { (1_200, 8) };
    eprintln!("seed {seed} (TIDEMARK_FAULT_SEED={seed} reproduces the fault sequence), {events} events");

    // the truth: the same events without faults
    let clean = tempfile::tempdir().unwrap();
    write_events(&clean.path().join("events.jsonl"), events);
    let clean_spec = spec(clean.path());
    let clean_store: Arc<dyn ServingStore> =
        Arc::from(tidemark_store::open(&clean_spec.serving_store()).await.unwrap());
    clean_store.init().await.unwrap();
    assert!(run_supervised(&clean_spec, clean.path(), clean_store.clone()).await.is_empty());
    let expected = outcome(clean.path(), &*clean_store).await;

    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"), events);
    let spec = spec(dir.path());
    let inner: Arc<dyn ServingStore> = Arc::from(tidemark_store::open(&spec.serving_store()).await.unwrap());
    inner.init().await.unwrap();
    let plan = FaultPlan { fail_before: 0.1, ambiguous: 0.25, conflict: 0.05, slow: 0.05 };
    let faulty = Arc::new(FaultyStore::new(inner.clone(), plan, seed));
    // the disk fills up after the 20th write for longer than one flush's attempts
    let disk = {
        let faulty = faulty.clone();
        tokio::spawn(async move {
            while faulty.stats.lock().unwrap().writes < 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            faulty.disk_full_for.store(config().flush_attempts + 1, Ordering::SeqCst);
        })
    };
    let gave_up = run_supervised(&spec, dir.path(), faulty.clone()).await;
    assert!(disk.is_finished(), "the run ended before its 20th write");
    let got = outcome(dir.path(), &*inner).await;

    let stats = faulty.stats.lock().unwrap();
    let double: Vec<(&String, &u32)> = stats.committed.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "writes {} | fail before {} | ambiguous {} | conflicts {} | slow {} | disk full {} | service gave up {} times \
         | writes committed {} | applied twice {}",
        stats.writes,
        stats.fail_before,
        stats.ambiguous,
        stats.conflicts,
        stats.slow,
        stats.disk_full,
        gave_up.len(),
        stats.committed.len(),
        double.len()
    );
    assert!(double.is_empty(), "writes applied twice: {double:?}");
    assert!(stats.ambiguous >= min_ambiguous, "only {} ambiguous outcomes", stats.ambiguous);
    assert!(stats.disk_full > u64::from(config().flush_attempts), "the disk-full phase ran");
    assert!(
        gave_up.iter().any(|e| e.contains("no storage space")),
        "a full disk stops the service with a clear error: {gave_up:?}"
    );
    assert_eq!(got.rows.len(), expected.rows.len());
    assert_eq!(got, expected);
}

fn correction_batch(i: usize) -> CorrectionBatch {
    let t = |s: i64| EventTime::from_secs(s).unwrap();
    let key = RowKey {
        metric: "views".into(),
        window: tidemark_core::Window::new(t(i as i64 * 60), t(i as i64 * 60 + 60)).unwrap(),
        dims: Dimensions::new([("page".to_owned(), format!("/p{}", i % 5))]),
    };
    let row = MetricRow {
        key: key.clone(),
        values: BTreeMap::from([("n".to_owned(), AggValue::Int(i as i64))]),
        events: i as u64,
        origin: Origin::Batch { run_id: format!("run-{i}"), epoch: i as i64 },
        computed_at: t(1),
    };
    CorrectionBatch {
        id: format!("batch-{i}"),
        run_id: format!("run-{i}"),
        epoch: i as i64,
        changes: vec![Correction::Upsert(row)],
        audit: vec![AuditEntry {
            key,
            aggregate: "n".into(),
            old: None,
            new: Some(AggValue::Int(i as i64)),
            cause: "missing_in_serving".into(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correction_batches_apply_once_under_ambiguous_outcomes_on_postgres() {
    let seed = seed();
    let batches = if long_tier() { 2_000 } else { 200 };
    eprintln!("seed {seed} (TIDEMARK_FAULT_SEED={seed} reproduces the fault sequence), {batches} batches");
    let db = tidemark_store::testing::postgres().await.unwrap();
    let inner: Arc<dyn ServingStore> =
        Arc::new(tidemark_store::PostgresStore::connect(&db.conninfo, "tidemark").await.unwrap());
    inner.init().await.unwrap();
    let plan = FaultPlan { fail_before: 0.1, ambiguous: 0.5, conflict: 0.05, slow: 0.0 };
    let faulty = FaultyStore::new(inner.clone(), plan, seed);
    let mut outcomes = [0u32; 2];
    for i in 0..batches {
        let batch = correction_batch(i);
        // the reconciler's retry loop: call again until the store gives an answer
        loop {
            match faulty.apply_corrections(&batch).await {
                Ok(ApplyOutcome::Applied(_)) => outcomes[0] += 1,
                Ok(ApplyOutcome::AlreadyApplied) => outcomes[1] += 1,
                Err(e) if e.retryable() => continue,
                Err(e) => panic!("{e}"),
            }
            break;
        }
    }
    let (ambiguous, committed) = {
        let stats = faulty.stats.lock().unwrap();
        eprintln!(
            "applies {} | ambiguous {} | fail before {} | conflicts {} | Applied {} | AlreadyApplied {}",
            stats.writes, stats.ambiguous, stats.fail_before, stats.conflicts, outcomes[0], outcomes[1]
        );
        (stats.ambiguous, stats.committed.clone())
    };
    assert!(committed.values().all(|n| *n == 1), "a batch applied twice");
    assert_eq!(committed.len(), batches, "every batch applied exactly once");
    // every ambiguous apply is answered AlreadyApplied when retried
    assert_eq!(outcomes[0] as usize + outcomes[1] as usize, batches);
    assert!(outcomes[1] > 0 && u64::from(outcomes[1]) <= ambiguous, "{outcomes:?}");
    let audit = inner.audit_log(None).await.unwrap();
    assert_eq!(audit.len(), batches, "one audit line per batch, none doubled");
    let rows = inner.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap();
    assert_eq!(rows.len(), batches);
}
