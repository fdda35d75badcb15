//! Bounded memory (issue 8): the serving store slowed 100× while a large backlog waits. With the in-flight
//! budget the source pauses, the records held stay within the budget, peak RSS stays bounded, and after
//! the store recovers the backlog drains completely. The same run without a budget holds the backlog in
//! memory: the comparison shows the bound is the budget's doing. Each configuration runs in a child process
//! (this test binary re-run with `TIDEMARK_MEMORY_BUDGET`) so that its peak RSS (VmHWM) is its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tidemark_core::{EventTime, MetricRow, PipelineSpec, RowChange};
use tidemark_store::{
    ApplyOutcome, CommitMarker, CorrectionBatch, DeadLetterStore, Emission, MetricFilter, RawArchive, ServingStore,
    SourceProgress, StoredAuditEntry, WriteOutcome,
};
use tidemark_stream::metrics::Metrics;
use tidemark_stream::{FileSource, ManualClock, ReceivedAt, Service, ServiceConfig, Sinks, Stopped};

const EVENTS: usize = 150_000;

/// A store whose writes take `delay` longer while `slow` is set.
struct SlowStore {
    inner: Arc<dyn ServingStore>,
    slow: Arc<AtomicBool>,
    delay: Duration,
}

#[async_trait]
impl ServingStore for SlowStore {
    async fn init(&self) -> tidemark_store::Result<()> {
        self.inner.init().await
    }
    async fn claim_writer(&self, pipeline: &str) -> tidemark_store::Result<CommitMarker> {
        self.inner.claim_writer(pipeline).await
    }
    async fn write_provisional(&self, c: &[RowChange], p: &SourceProgress) -> tidemark_store::Result<WriteOutcome> {
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.write_provisional(c, p).await
    }
    async fn load_progress(&self, pipeline: &str) -> tidemark_store::Result<Option<SourceProgress>> {
        self.inner.load_progress(pipeline).await
    }
    async fn committed_marker(&self, pipeline: &str) -> tidemark_store::Result<Option<CommitMarker>> {
        self.inner.committed_marker(pipeline).await
    }
    async fn read_range(&self, m: &MetricFilter, f: EventTime, t: EventTime) -> tidemark_store::Result<Vec<MetricRow>> {
        self.inner.read_range(m, f, t).await
    }
    async fn read_deltas(
        &self,
        m: &MetricFilter,
        f: EventTime,
        t: EventTime,
    ) -> tidemark_store::Result<Vec<MetricRow>> {
        self.inner.read_deltas(m, f, t).await
    }
    async fn read_emissions(
        &self,
        m: &MetricFilter,
        f: EventTime,
        t: EventTime,
    ) -> tidemark_store::Result<Vec<Emission>> {
        self.inner.read_emissions(m, f, t).await
    }
    async fn apply_corrections(&self, b: &CorrectionBatch) -> tidemark_store::Result<ApplyOutcome> {
        self.inner.apply_corrections(b).await
    }
    async fn corrections_applied(&self, id: &str) -> tidemark_store::Result<bool> {
        self.inner.corrections_applied(id).await
    }
    async fn audit_log(&self, id: Option<&str>) -> tidemark_store::Result<Vec<StoredAuditEntry>> {
        self.inner.audit_log(id).await
    }
}

fn status_kib(field: &str) -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Run {
    max_in_flight: i64,
    paused_seen: bool,
    /// Peak RSS (VmHWM) of the process minus its RSS before the service started.
    rss_growth_mib: i64,
    consumed_all: bool,
}

/// Replays the backlog with the store slowed (200 ms more per write) for the first 8 s, then recovered.
async fn run(budget: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let mut text = String::with_capacity(EVENTS * 120);
    for i in 0..EVENTS {
        let ts = EventTime::from_micros(1_700_000_000_000_000 + i as i64 * 10_000).unwrap();
        text.push_str(&format!(
            r#"{{"id":"e{i}","ts":"{ts}","page":"/p{}","user":"u{}","pad":"{}"}}"#,
            i % 10,
            i % 1000,
            "x".repeat(200)
        ));
        text.push('\n');
    }
    std::fs::write(&events, text).unwrap();
    let url = |s: &str| format!("file://{}", dir.path().join(s).display());
    let spec = PipelineSpec::parse(
        &format!(
            r#"
version = 1
name = "memory"
[source]
type = "file"
path = "{events}"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page"]
[time]
watermark_delay = "1s"
allowed_lateness = "10s"
idle_timeout = "1h"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "10s" }}
aggregates = [{{ name = "n", fn = "count" }}]
[stores]
raw_archive = "{raw}"
serving = "{serving}"
dead_letter = "{dead}"
batch_view = "{batch}"
"#,
            events = events.display(),
            raw = url("raw"),
            serving = url("serving"),
            dead = url("dead"),
            batch = url("batch"),
        ),
        "memory.toml",
        Some(dir.path()),
    )
    .unwrap();
    let inner: Arc<dyn ServingStore> = Arc::from(tidemark_store::open(&spec.serving_store()).await.unwrap());
    inner.init().await.unwrap();
    let slow = Arc::new(AtomicBool::new(true));
    let store = Arc::new(SlowStore { inner, slow: slow.clone(), delay: Duration::from_millis(200) });
    let sinks = Sinks {
        store,
        dead_letters: Arc::new(DeadLetterStore::open(&url("dead")).unwrap()),
        archive: Some(Arc::new(RawArchive::open(url("raw")).await.unwrap())),
    };
    let clock = Arc::new(ManualClock::new(EventTime::from_micros(1_800_000_000_000_000).unwrap()));
    let config = ServiceConfig {
        max_in_flight_bytes: budget,
        poll_max: 500,
        flush_interval: Duration::from_millis(50),
        finish_at_end: true,
        ..ServiceConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let source = FileSource::new(&events, ReceivedAt::Clock(clock.clone()));
    let rss_before = status_kib("VmRSS:");
    let service = Service::start(&spec, source, sinks, clock, config, metrics.clone()).await.unwrap();

    // sample the gauges and RSS while it runs
    let (max_in_flight, paused_seen) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicBool::new(false)));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (m, mx, p, done, slow) =
            (metrics.clone(), max_in_flight.clone(), paused_seen.clone(), done.clone(), slow.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            while !done.load(Ordering::SeqCst) {
                mx.fetch_max(m.in_flight_bytes.get(), Ordering::SeqCst);
                if m.paused.get() == 1 {
                    p.store(true, Ordering::SeqCst);
                }
                if started.elapsed() > Duration::from_secs(8) {
                    slow.store(false, Ordering::SeqCst); // the store recovers
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let summary = service.run(Arc::new(AtomicBool::new(false))).await.unwrap();
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    assert_eq!(summary.stopped, Stopped::EndOfInput);
    let consumed: u64 = summary.accounts.values().map(|a| a.consumed).sum();
    Run {
        max_in_flight: max_in_flight.load(Ordering::SeqCst),
        paused_seen: paused_seen.load(Ordering::SeqCst),
        rss_growth_mib: (status_kib("VmHWM:") - rss_before) / 1024,
        consumed_all: consumed == EVENTS as u64 && summary.offsets.values().all(|o| *o == EVENTS as i64),
    }
}

const TEST: &str = "a_slow_store_with_a_large_backlog_keeps_memory_within_the_in_flight_budget";

/// Runs one configuration in a child process; returns what it measured.
fn child(budget: usize) -> Run {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env("TIDEMARK_MEMORY_BUDGET", budget.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child with budget {budget} failed:\n{text}");
    let line = text
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result:\n{text}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_slow_store_with_a_large_backlog_keeps_memory_within_the_in_flight_budget() {
    if let Some(budget) = std::env::var("TIDEMARK_MEMORY_BUDGET").ok().and_then(|b| b.parse().ok()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let run = rt.block_on(run(budget));
        println!("RESULT {}", serde_json::to_string(&run).unwrap());
        return;
    }
    let budget = 2 << 20;
    let bounded = child(budget);
    let unbounded = child(usize::MAX);
    eprintln!("with a 2 MiB budget: {bounded:?}\nwithout a budget: {unbounded:?}");
    assert!(bounded.paused_seen, "the source never paused");
    assert!(bounded.consumed_all && unbounded.consumed_all, "the backlog drained after the store recovered");
    // the budget is checked after each poll: at most one poll (500 records of ~300 bytes) beyond it
    assert!(bounded.max_in_flight <= (budget + 500 * 320) as i64, "{bounded:?}");
    assert!(unbounded.max_in_flight > 8 * budget as i64, "without a budget the backlog piles up: {unbounded:?}");
    assert!(
        bounded.rss_growth_mib + 16 < unbounded.rss_growth_mib,
        "peak memory follows the budget: {bounded:?} vs {unbounded:?}"
    );
}
