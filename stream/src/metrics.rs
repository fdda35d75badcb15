//! The service's Prometheus metrics and health, shared between the service loop and the HTTP endpoint.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tidemark_core::EventTime;

use crate::engine::PartitionAccounts;
use crate::watermark::Watermark;

/// Label set of per-partition series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// Kafka partition (0 for a file).
    pub partition: i32,
}

/// Label set of the flush-step series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// The step: one of [`FlushStep::name`].
    pub step: &'static str,
}

/// The steps of one flush, timed separately (`tidemark_flush_step_seconds{step=...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlushStep {
    /// Serializing the engine checkpoint (on the service loop, while consuming is stopped).
    Checkpoint,
    /// Building the flush (offsets, dead letters, late ledger) on the service loop, checkpoint excluded.
    Prepare,
    /// Waiting from the flush's start until its commit task runs its first step.
    Spawn,
    /// The raw archive append.
    Archive,
    /// Dead letters and late-ledger entries.
    DeadLetters,
    /// The atomic `write_provisional` of rows, offsets and checkpoint.
    Rows,
}

impl FlushStep {
    /// Every step, in the order a flush runs them.
    pub const ALL: [FlushStep; 6] = [
        FlushStep::Checkpoint,
        FlushStep::Prepare,
        FlushStep::Spawn,
        FlushStep::Archive,
        FlushStep::DeadLetters,
        FlushStep::Rows,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            FlushStep::Checkpoint => "checkpoint",
            FlushStep::Prepare => "prepare",
            FlushStep::Spawn => "spawn",
            FlushStep::Archive => "archive",
            FlushStep::DeadLetters => "dead_letters",
            FlushStep::Rows => "rows",
        }
    }
}

/// Totals of one flush step since the metrics were created.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTotals {
    /// Times the step ran.
    pub count: u64,
    /// Seconds spent in it, summed.
    pub seconds: f64,
    /// The longest single run, seconds.
    pub max_seconds: f64,
}

/// Where the service is in its life, as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Claiming the writer, restoring state.
    Starting,
    /// Consuming and committing.
    Running,
    /// A flush failed and is being retried; the text says why.
    Degraded(String),
    /// Shutting down (flushing the last results).
    Stopping,
    /// Stopped on an error; the text says why.
    Failed(String),
}

/// Every series the service exports, plus its health.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    consumed: Family<PartitionLabel, Counter>,
    aggregated: Family<PartitionLabel, Counter>,
    late_routed: Family<PartitionLabel, Counter>,
    dead_lettered: Family<PartitionLabel, Counter>,
    duplicates: Family<PartitionLabel, Counter>,
    late_ledger_entries: Family<PartitionLabel, Counter>,
    partition_watermark: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
    partition_idle: Family<PartitionLabel, Gauge>,
    partition_lag: Family<PartitionLabel, Gauge>,
    suspects: Family<PartitionLabel, Counter>,
    suspects_pending: Family<PartitionLabel, Gauge>,
    watermark_lead: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
    watermark: Gauge<f64, AtomicU64>,
    /// Seconds from the start of a flush to its commit.
    pub flush_seconds: Histogram,
    /// Flushes committed.
    pub flushes: Counter,
    flush_steps: Family<StepLabel, Histogram>,
    step_totals: Mutex<BTreeMap<FlushStep, StepTotals>>,
    /// Row changes written to the serving store.
    pub rows_written: Counter,
    /// Times a serving-store write lost a race with a concurrent writer and was redone inside the store
    /// ([`tidemark_store::WriteStats::retries`]).
    pub store_retries: Counter,
    /// Events appended to the raw archive (not counting replays the archive skipped).
    pub archived: Counter,
    /// Bytes of consumed records not yet covered by a committed flush.
    pub in_flight_bytes: Gauge,
    /// 1 while the source is paused for backpressure.
    pub paused: Gauge,
    /// Size of the last state checkpoint.
    pub checkpoint_bytes: Gauge,
    /// Rows of live window state.
    pub live_rows: Gauge,
    /// Event ids remembered for de-duplication.
    pub remembered_events: Gauge,
    last: Mutex<BTreeMap<i32, PartitionAccounts>>,
    /// Suspects seen per partition as last exported (the counter follows the engine's cumulative count).
    last_suspects: Mutex<BTreeMap<i32, u64>>,
    health: Mutex<Health>,
    last_commit_us: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every series registered under the `tidemark_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tidemark");
        let m = Metrics {
            consumed: Family::default(),
            aggregated: Family::default(),
            late_routed: Family::default(),
            dead_lettered: Family::default(),
            duplicates: Family::default(),
            late_ledger_entries: Family::default(),
            partition_watermark: Family::default(),
            partition_idle: Family::default(),
            partition_lag: Family::default(),
            suspects: Family::default(),
            suspects_pending: Family::default(),
            watermark_lead: Family::default(),
            watermark: Gauge::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            flushes: Counter::default(),
            flush_steps: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            step_totals: Mutex::new(BTreeMap::new()),
            rows_written: Counter::default(),
            store_retries: Counter::default(),
            archived: Counter::default(),
            in_flight_bytes: Gauge::default(),
            paused: Gauge::default(),
            checkpoint_bytes: Gauge::default(),
            live_rows: Gauge::default(),
            remembered_events: Gauge::default(),
            last: Mutex::new(BTreeMap::new()),
            last_suspects: Mutex::new(BTreeMap::new()),
            health: Mutex::new(Health::Starting),
            last_commit_us: AtomicI64::new(0),
            registry: Registry::default(),
        };
        registry.register("consumed", "Records consumed, per partition", m.consumed.clone());
        registry.register("aggregated", "Events added to at least one window", m.aggregated.clone());
        registry.register("late_routed", "Events added to no window (late ledger)", m.late_routed.clone());
        registry.register("dead_lettered", "Records that did not decode", m.dead_lettered.clone());
        registry.register("duplicates", "Events suppressed as duplicates by id", m.duplicates.clone());
        registry.register(
            "late_ledger_entries",
            "Late-ledger entries (one per event and missed window)",
            m.late_ledger_entries.clone(),
        );
        registry.register(
            "partition_watermark_seconds",
            "Per-partition watermark, Unix seconds",
            m.partition_watermark.clone(),
        );
        registry.register("partition_idle", "1 when the partition is idle", m.partition_idle.clone());
        registry.register("partition_lag", "Records behind the partition's end", m.partition_lag.clone());
        registry.register(
            "watermark_suspects",
            "Events far ahead of their partition's event-time frontier, held back from the watermark",
            m.suspects.clone(),
        );
        registry.register(
            "watermark_suspects_pending",
            "Suspects waiting for confirmation, per partition",
            m.suspects_pending.clone(),
        );
        registry.register(
            "partition_max_event_lead_seconds",
            "Largest event time delivered (suspects included) minus the partition's watermark",
            m.watermark_lead.clone(),
        );
        registry.register("watermark_seconds", "Operator watermark, Unix seconds", m.watermark.clone());
        registry.register("flush_seconds", "Flush latency: start to commit", m.flush_seconds.clone());
        registry.register("flushes", "Flushes committed", m.flushes.clone());
        registry.register("flush_step_seconds", "Time spent in each step of a flush", m.flush_steps.clone());
        registry.register("rows_written", "Row changes written to the serving store", m.rows_written.clone());
        registry.register(
            "store_retries",
            "Serving-store writes redone after a race with a concurrent writer",
            m.store_retries.clone(),
        );
        registry.register("archived", "Events appended to the raw archive", m.archived.clone());
        registry.register("in_flight_bytes", "Consumed bytes not yet committed", m.in_flight_bytes.clone());
        registry.register("paused", "1 while the source is paused (backpressure)", m.paused.clone());
        registry.register("checkpoint_bytes", "Size of the last state checkpoint", m.checkpoint_bytes.clone());
        registry.register("live_rows", "Rows of live window state", m.live_rows.clone());
        registry.register("remembered_events", "Event ids held for de-duplication", m.remembered_events.clone());
        Metrics { registry, ..m }
    }

    /// Brings the per-partition counters up to the engine's accounts (which are cumulative since the
    /// pipeline's first start, restored from checkpoints).
    pub fn observe_accounts(&self, accounts: &BTreeMap<i32, PartitionAccounts>) {
        let mut last = self.last.lock().expect("metrics lock");
        for (&p, a) in accounts {
            let l = last.entry(p).or_default();
            let label = PartitionLabel { partition: p };
            let bump = |f: &Family<PartitionLabel, Counter>, now: u64, before: u64| {
                if now > before {
                    f.get_or_create(&label).inc_by(now - before);
                }
            };
            bump(&self.consumed, a.consumed, l.consumed);
            bump(&self.aggregated, a.aggregated, l.aggregated);
            bump(&self.late_routed, a.late_routed, l.late_routed);
            bump(&self.dead_lettered, a.dead_lettered, l.dead_lettered);
            bump(&self.duplicates, a.duplicates_suppressed, l.duplicates_suppressed);
            bump(&self.late_ledger_entries, a.late_ledger_entries, l.late_ledger_entries);
            *l = *a;
        }
    }

    /// Sets the watermark gauges.
    pub fn observe_watermarks(&self, operator: Option<EventTime>, partitions: &[(i32, Watermark)]) {
        if let Some(w) = operator {
            self.watermark.set(seconds(w));
        }
        for (p, w) in partitions {
            let label = PartitionLabel { partition: *p };
            match w {
                Watermark::EventTime(t) => {
                    self.partition_watermark.get_or_create(&label).set(seconds(*t));
                    self.partition_idle.get_or_create(&label).set(0);
                }
                Watermark::Idle => {
                    self.partition_idle.get_or_create(&label).set(1);
                }
            }
        }
    }

    /// Sets the suspect series from the engine's per-partition view.
    pub fn observe_suspects(&self, partitions: &[(i32, crate::PartitionSuspicion)]) {
        let mut last = self.last_suspects.lock().expect("metrics lock");
        for (p, s) in partitions {
            let label = PartitionLabel { partition: *p };
            let before = last.insert(*p, s.seen).unwrap_or(0);
            if s.seen > before {
                self.suspects.get_or_create(&label).inc_by(s.seen - before);
            }
            self.suspects_pending.get_or_create(&label).set(i64::try_from(s.pending).unwrap_or(i64::MAX));
            if let (Some(max), Some(trusted)) = (s.max_seen, s.trusted) {
                let lead = max.as_micros().saturating_sub(trusted.as_micros()) as f64 / 1e6;
                self.watermark_lead.get_or_create(&label).set(lead);
            }
        }
    }

    /// Sets a partition's lag in records.
    pub fn observe_lag(&self, partition: i32, lag: i64) {
        self.partition_lag.get_or_create(&PartitionLabel { partition }).set(lag.max(0));
    }

    /// Records a committed flush at processing time `at`.
    pub fn committed(&self, at: EventTime) {
        self.last_commit_us.store(at.as_micros(), Ordering::Relaxed);
    }

    /// Processing time of the last committed flush, if any.
    pub fn last_commit(&self) -> Option<EventTime> {
        match self.last_commit_us.load(Ordering::Relaxed) {
            0 => None,
            us => EventTime::from_micros(us),
        }
    }

    /// Records one run of a flush step.
    pub fn observe_step(&self, step: FlushStep, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        self.flush_steps.get_or_create(&StepLabel { step: step.name() }).observe(secs);
        let mut totals = self.step_totals.lock().expect("metrics lock");
        let t = totals.entry(step).or_default();
        t.count += 1;
        t.seconds += secs;
        t.max_seconds = t.max_seconds.max(secs);
    }

    /// Totals per flush step (steps that never ran are left out).
    pub fn step_totals(&self) -> BTreeMap<FlushStep, StepTotals> {
        self.step_totals.lock().expect("metrics lock").clone()
    }

    /// Sets the health.
    pub fn set_health(&self, h: Health) {
        *self.health.lock().expect("health lock") = h;
    }

    /// The health.
    pub fn health(&self) -> Health {
        self.health.lock().expect("health lock").clone()
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn seconds(t: EventTime) -> f64 {
    t.as_micros() as f64 / 1e6
}
