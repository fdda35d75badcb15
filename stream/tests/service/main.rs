//! The stream service end to end on real stores: a file source, the engine, and the serving store
//! (Delta on the local filesystem, and Postgres), the raw archive, dead letters and the late ledger.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidemark_core::{EventTime, MetricRow, PipelineSpec, RowChange, ValidSpec};
use tidemark_store::{
    ApplyOutcome, CommitMarker, CorrectionBatch, DeadLetterStore, MetricFilter, RawArchive, ServingStore,
    SourceProgress, StoredAuditEntry, WriteOutcome,
};
use tidemark_stream::metrics::Metrics;
use tidemark_stream::{
    Engine, FileReplay, FileSource, ManualClock, Offsets, Output, Polled, ReceivedAt, Record, Service, ServiceConfig,
    Sinks, Source, Stopped,
};

const EVENTS: usize = 3_000;

/// 3,000 events over 50 minutes of event time with disorder up to 5 s, 30 of them 3 minutes late
/// (beyond allowed lateness), 10 duplicates and 5 malformed lines.
fn write_events(path: &Path) -> usize {
    let base = 1_700_000_000i64;
    let mut lines = Vec::new();
    for i in 0..EVENTS as i64 {
        let mut t = base + i - (i * 7919 % 5);
        if i % 100 == 50 {
            t -= 180;
        }
        let ts = EventTime::from_micros(t * 1_000_000).unwrap();
        lines.push(format!(r#"{{"id":"e{i}","ts":"{ts}","page":"/p{}","ms":{}}}"#, i % 7, i % 311));
        if i % 300 == 1 {
            lines.push(lines.last().unwrap().clone());
        }
        if i % 600 == 2 {
            lines.push("[1, 2".to_owned());
        }
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    lines.len()
}

fn spec(dir: &Path, serving: &str) -> ValidSpec {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    let text = format!(
        r#"
version = 1
name = "svc"
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
        dead = url("dead"),
        batch = url("batch"),
    );
    PipelineSpec::parse(&text, "svc.toml", Some(dir)).expect("valid spec")
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(EventTime::from_micros(1_800_000_000_000_000).unwrap()))
}

async fn sinks(dir: &Path, store: Arc<dyn ServingStore>) -> Sinks {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    Sinks {
        store,
        dead_letters: Arc::new(DeadLetterStore::open(&url("dead")).unwrap()),
        archive: Some(Arc::new(RawArchive::open(url("raw")).await.unwrap())),
    }
}

/// The final rows the engine alone computes for the file (drained at the end), keyed for comparison.
fn reference(spec: &ValidSpec, path: &Path) -> BTreeMap<String, String> {
    let clock = clock();
    let mut engine = Engine::new(spec);
    let mut replay = FileReplay::open(path, ReceivedAt::Clock(clock.clone())).unwrap();
    let mut out = Output::default();
    let mut rows = BTreeMap::new();
    let mut apply = |out: &mut Output| {
        for c in out.changes.drain(..) {
            match c {
                RowChange::Upsert(r) => {
                    rows.insert(key(&r), value(&r));
                }
                RowChange::Retract { key: k, .. } => {
                    rows.remove(&format!("{} {} {}", k.metric, k.window, k.dims.encode()));
                }
                RowChange::Delta(_) => panic!("no deltas under late_policy = update"),
            }
        }
    };
    while let Some(r) = replay.next_record().unwrap() {
        engine.process(&r, EventTime::from_micros(1_800_000_000_000_000).unwrap(), &mut out);
        apply(&mut out);
    }
    engine.drain(EventTime::from_micros(1_800_000_000_000_000).unwrap(), &mut out);
    apply(&mut out);
    rows
}

fn key(r: &MetricRow) -> String {
    format!("{} {} {}", r.key.metric, r.key.window, r.key.dims.encode())
}

fn value(r: &MetricRow) -> String {
    format!("{:?} events={}", r.values, r.events)
}

async fn stored(store: &dyn ServingStore) -> BTreeMap<String, String> {
    store
        .read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX)
        .await
        .unwrap()
        .iter()
        .map(|r| (key(r), value(r)))
        .collect()
}

fn config() -> ServiceConfig {
    ServiceConfig { flush_interval: Duration::from_millis(5), poll_max: 500, finish_at_end: true, ..Default::default() }
}

/// Runs the service over the file to its end; returns the metrics and how many flushes it committed.
async fn run_to_end(spec: &ValidSpec, dir: &Path, store: Arc<dyn ServingStore>) -> (Arc<Metrics>, u64) {
    let source = FileSource::new(dir.join("events.jsonl"), ReceivedAt::Clock(clock()));
    let metrics = Arc::new(Metrics::new());
    let service =
        Service::start(spec, source, sinks(dir, store).await, clock(), config(), metrics.clone()).await.unwrap();
    let summary = service.run(Arc::new(AtomicBool::new(false))).await.unwrap();
    assert_eq!(summary.stopped, Stopped::EndOfInput);
    (metrics, summary.flushes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_to_delta_store_matches_the_engine_and_accounts_balance() {
    let dir = tempfile::tempdir().unwrap();
    let lines = write_events(&dir.path().join("events.jsonl"));
    let serving = format!("file://{}", dir.path().join("serving").display());
    let spec = spec(dir.path(), &serving);
    let store: Arc<dyn ServingStore> = Arc::from(tidemark_store::open(&spec.serving_store()).await.unwrap());
    store.init().await.unwrap();
    let (metrics, flushes) = run_to_end(&spec, dir.path(), store.clone()).await;
    assert!(flushes >= 1, "flushes: {flushes}");

    let expected = reference(&spec, &dir.path().join("events.jsonl"));
    assert_eq!(stored(&*store).await, expected);

    let progress = store.load_progress("svc").await.unwrap().unwrap();
    assert_eq!(progress.offsets.values().copied().collect::<Vec<_>>(), vec![lines as i64]);

    let text = metrics.encode();
    let series = |name: &str| -> u64 {
        let prefix = format!("{name}{{partition=\"0\"}} ");
        let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line[prefix.len()..].parse().unwrap()
    };
    let consumed = series("tidemark_consumed_total");
    assert_eq!(consumed, lines as u64);
    assert_eq!(series("tidemark_dead_lettered_total"), 5);
    assert_eq!(series("tidemark_duplicates_total"), 10);
    assert_eq!(series("tidemark_late_routed_total"), 30);
    assert_eq!(consumed, series("tidemark_aggregated_total") + 30 + 5 + 10);
    // one writer, so no write lost a race
    assert!(text.lines().any(|l| l == "tidemark_store_retries_total 0"), "{text}");

    let dead = DeadLetterStore::open(&format!("file://{}", dir.path().join("dead").display())).unwrap();
    assert_eq!(dead.list().await.unwrap().len(), 5);
    assert_eq!(dead.list_late().await.unwrap().len(), 30);
    let archive = RawArchive::open(format!("file://{}", dir.path().join("raw").display())).await.unwrap();
    // every record that decodes is archived once: duplicates too (they are distinct records)
    assert_eq!(archive.read_all().await.unwrap().len(), lines - 5);

    // A second run over the same input changes nothing: the offsets say it is all consumed.
    let before = stored(&*store).await;
    let (metrics, _) = run_to_end(&spec, dir.path(), store.clone()).await;
    assert_eq!(stored(&*store).await, before);
    assert_eq!(archive.read_all().await.unwrap().len(), lines - 5);
    assert!(metrics.encode().contains("tidemark_flushes_total 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_to_postgres_matches_the_engine() {
    let db = tidemark_store::testing::postgres().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    let spec = spec(dir.path(), &db.conninfo);
    let store: Arc<dyn ServingStore> =
        Arc::new(tidemark_store::PostgresStore::connect(&db.conninfo, tidemark_store::DEFAULT_SCHEMA).await.unwrap());
    store.init().await.unwrap();
    let (_, flushes) = run_to_end(&spec, dir.path(), store.clone()).await;
    assert!(flushes >= 1, "flushes: {flushes}");
    assert_eq!(stored(&*store).await, reference(&spec, &dir.path().join("events.jsonl")));
}

/// A source that counts pause/resume calls around a file source.
struct Counting {
    inner: FileSource,
    pauses: Arc<AtomicUsize>,
}

impl Source for Counting {
    fn seek(&mut self, offsets: &Offsets) -> Result<(), tidemark_stream::Error> {
        self.inner.seek(offsets)
    }
    async fn poll(
        &mut self,
        out: &mut Vec<Record>,
        max: usize,
        wait: Duration,
    ) -> Result<Polled, tidemark_stream::Error> {
        self.inner.poll(out, max, wait).await
    }
    fn pause(&mut self) -> Result<(), tidemark_stream::Error> {
        self.pauses.fetch_add(1, Ordering::Relaxed);
        self.inner.pause()
    }
    fn resume(&mut self) -> Result<(), tidemark_stream::Error> {
        self.inner.resume()
    }
    fn committed(&mut self, offsets: &Offsets) -> Result<(), tidemark_stream::Error> {
        self.inner.committed(offsets)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_pauses_the_source_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    write_events(&dir.path().join("events.jsonl"));
    let serving = format!("file://{}", dir.path().join("serving").display());
    let spec = spec(dir.path(), &serving);
    let store: Arc<dyn ServingStore> = Arc::from(tidemark_store::open(&spec.serving_store()).await.unwrap());
    store.init().await.unwrap();
    let pauses = Arc::new(AtomicUsize::new(0));
    let source = Counting {
        inner: FileSource::new(dir.path().join("events.jsonl"), ReceivedAt::Clock(clock())),
        pauses: pauses.clone(),
    };
    // Budget: 20 KB of records (about 300 events) while each Delta commit takes tens of ms.
    let config = ServiceConfig { max_in_flight_bytes: 20_000, poll_max: 100, ..config() };
    let metrics = Arc::new(Metrics::new());
    let service =
        Service::start(&spec, source, sinks(dir.path(), store.clone()).await, clock(), config, metrics.clone())
            .await
            .unwrap();
    service.run(Arc::new(AtomicBool::new(false))).await.unwrap();
    assert!(pauses.load(Ordering::Relaxed) > 0, "the source was never paused");
    assert_eq!(stored(&*store).await, reference(&spec, &dir.path().join("events.jsonl")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoint_serves_metrics_and_health() {
    let metrics = Arc::new(Metrics::new());
    metrics.observe_accounts(&BTreeMap::from([(
        3,
        tidemark_stream::PartitionAccounts { consumed: 7, aggregated: 6, dead_lettered: 1, ..Default::default() },
    )]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tidemark_stream::http::serve(listener, metrics.clone(), async move {
        let _ = rx.await;
    }));
    let get = move |path: &'static str| {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            body
        })
    };
    let m = get("/metrics").await.unwrap();
    assert!(m.starts_with("HTTP/1.0 200"), "{m}");
    assert!(m.contains("tidemark_consumed_total{partition=\"3\"} 7"), "{m}");
    assert!(m.contains("tidemark_dead_lettered_total{partition=\"3\"} 1"), "{m}");
    let h = get("/healthz").await.unwrap();
    assert!(h.starts_with("HTTP/1.0 200") && h.ends_with("starting\n"), "{h}");
    metrics.set_health(tidemark_stream::metrics::Health::Failed("fenced".into()));
    let h = get("/healthz").await.unwrap();
    assert!(h.starts_with("HTTP/1.0 503") && h.contains("failed: fenced"), "{h}");
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A serving store that refuses (not retryable) its `fail_at`-th `write_provisional` call and logs the
/// sequence of every call.
struct FailingWrite {
    inner: Arc<dyn ServingStore>,
    fail_at: usize,
    calls: Mutex<Vec<(u64, bool)>>,
}

#[async_trait::async_trait]
impl ServingStore for FailingWrite {
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
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let refused = calls.len() + 1 == self.fail_at;
            calls.push((progress.sequence, refused));
            calls.len()
        };
        if n == self.fail_at {
            return Err(tidemark_store::Error::InvalidInput { what: "test", reason: "refused on purpose".into() });
        }
        // Slow enough that the next flush archives while this one writes.
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.inner.write_provisional(changes, progress).await
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
    ) -> tidemark_store::Result<Vec<tidemark_store::Emission>> {
        self.inner.read_emissions(metrics, from, to).await
    }
    async fn apply_corrections(&self, batch: &CorrectionBatch) -> tidemark_store::Result<ApplyOutcome> {
        self.inner.apply_corrections(batch).await
    }
    async fn corrections_applied(&self, id: &str) -> tidemark_store::Result<bool> {
        self.inner.corrections_applied(id).await
    }
    async fn audit_log(&self, id: Option<&str>) -> tidemark_store::Result<Vec<StoredAuditEntry>> {
        self.inner.audit_log(id).await
    }
}

/// Pipelined flushes: when a flush fails, no flush after it writes rows (offsets commit in order), the
/// store keeps the progress of the last good flush, and a restart completes the run exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_stops_later_flushes_and_a_restart_completes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let lines = write_events(&dir.path().join("events.jsonl"));
    let serving = format!("file://{}", dir.path().join("serving").display());
    let spec = spec(dir.path(), &serving);
    let inner: Arc<dyn ServingStore> = Arc::from(tidemark_store::open(&spec.serving_store()).await.unwrap());
    inner.init().await.unwrap();
    let failing = Arc::new(FailingWrite { inner: inner.clone(), fail_at: 3, calls: Mutex::new(Vec::new()) });
    let source = FileSource::new(dir.path().join("events.jsonl"), ReceivedAt::Clock(clock()));
    let config = ServiceConfig { poll_max: 10, max_flushes_in_flight: 2, ..config() };
    let service = Service::start(&spec, source, sinks(dir.path(), failing.clone()).await, clock(), config, {
        Arc::new(Metrics::new())
    })
    .await
    .unwrap();
    let err = service.run(Arc::new(AtomicBool::new(false))).await.unwrap_err();
    assert!(err.to_string().contains("refused on purpose"), "{err}");
    // Give a flush that was waiting behind the failed one time to (wrongly) write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = failing.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "no write after the failed one: {calls:?}");
    assert!(calls[2].1, "{calls:?}");
    assert!(calls.windows(2).all(|w| w[1].0 == w[0].0 + 1), "sequences in order: {calls:?}");
    let progress = inner.load_progress("svc").await.unwrap().unwrap();
    assert_eq!(progress.sequence, calls[1].0, "the last good flush is what the store holds");
    assert!(progress.offsets.values().all(|&o| o < lines as i64), "{progress:?}");

    // A restart on the healthy store resumes from there and ends equal to the engine's own result.
    let (_, flushes) = run_to_end(&spec, dir.path(), inner.clone()).await;
    assert!(flushes >= 1);
    assert_eq!(stored(&*inner).await, reference(&spec, &dir.path().join("events.jsonl")));
    let progress = inner.load_progress("svc").await.unwrap().unwrap();
    assert_eq!(progress.offsets.values().copied().collect::<Vec<_>>(), vec![lines as i64]);
    let archive = RawArchive::open(format!("file://{}", dir.path().join("raw").display())).await.unwrap();
    assert_eq!(archive.read_all().await.unwrap().len(), lines - 5);
}
