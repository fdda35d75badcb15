//! The contract report: per metric, did the speed layer meet the spec's `[contract]`?
//!
//! - **accuracy**: the share of windows whose *first on-time emission* was within tolerance of the batch
//!   value must reach `accuracy_target`;
//! - **finalization latency**: a window's on-time result should be visible within `finalization_latency`
//!   after the window ends (measured as emission time − window end; the share within target is reported).
//!
//! Also reported: the share within tolerance after late firings (the serving rows as found, before
//! corrections), drift size, correction latency (first speed emission → correction) and the late-event
//! share.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tidemark_core::spec::CompiledMetric;
use tidemark_core::{AggValue, Duration, EventTime, MetricRow, Pane, RowKey, ValidSpec};

use crate::diff::{Diff, Verdict};
use crate::lateness::quantile;

/// One speed-layer firing of a window, as the contract report sees it: the part of an entry of the serving
/// store's emission log ([`tidemark_store::Emission`]) it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedFiring {
    /// The row.
    pub key: RowKey,
    /// Values emitted.
    pub values: BTreeMap<String, AggValue>,
    /// Which firing.
    pub pane: Pane,
    /// Revision of the row.
    pub revision: u32,
    /// Processing time of the emission.
    pub emitted_at: EventTime,
}

/// Per metric, what the report is computed from: gathered in one pass over the batch windows and the
/// emission log ([`tally_rows`] does it from rows in memory; a reconcile run does it partition by partition).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContractTally {
    /// Batch windows (keys of the batch view).
    pub windows: u64,
    /// Of those, windows whose first on-time emission was within tolerance.
    pub first_on_time_within: u64,
    /// Of those, windows whose serving row, as found, differed (missing or outside tolerance).
    pub differing: u64,
    /// On-time emission time − window end, per window with an on-time emission.
    pub finalization: Vec<Duration>,
    /// Of those, latencies within the contract's target.
    pub finalized_within: u64,
    /// Events of the batch windows.
    pub events: u64,
}

/// Everything the report is computed from.
#[derive(Debug, Clone, Copy)]
pub struct ContractInput<'a> {
    /// The spec (contract targets and tolerances).
    pub spec: &'a ValidSpec,
    /// Per metric, the tallies of the range.
    pub tallies: &'a BTreeMap<String, ContractTally>,
    /// Serving store vs batch, before corrections.
    pub diff: &'a Diff,
    /// The first speed emission of (at least) every corrected key.
    pub first_emitted: &'a HashMap<RowKey, EventTime>,
    /// When each corrected key was corrected.
    pub corrections: &'a [(RowKey, EventTime)],
    /// Late-ledger events per key.
    pub late_events: &'a HashMap<RowKey, u64>,
}

/// Latency quantiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Sample size.
    pub n: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl LatencySummary {
    fn of(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        LatencySummary {
            n: v.len() as u64,
            p50: quantile(&v, 0.5),
            p99: quantile(&v, 0.99),
            max: v.last().copied().unwrap_or(Duration::ZERO),
        }
    }
}

/// The contract of one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricContract {
    /// Metric name.
    pub metric: String,
    /// Windows (keys) in the batch view.
    pub windows_checked: u64,
    /// Share of batch windows whose first on-time emission was within tolerance (a window with no on-time
    /// emission counts as outside).
    pub first_on_time_within: f64,
    /// Share of batch windows whose serving row, as found, was within tolerance.
    pub after_late_within: f64,
    /// The spec's target for `first_on_time_within`.
    pub accuracy_target: f64,
    /// Largest absolute drift found.
    pub max_abs_drift: f64,
    /// Mean absolute drift of aggregates outside tolerance.
    pub mean_abs_drift: f64,
    /// On-time emission time − window end.
    pub finalization_latency: LatencySummary,
    /// Share of windows finalized within `contract.finalization_latency`.
    pub finalized_within_target: f64,
    /// The spec's finalization-latency target.
    pub finalization_target: Duration,
    /// First speed emission → correction, for corrected windows, on the speed layer's clock: a correction
    /// counts as made at its wall-clock time or at the stream's clock ([`EvidenceSummary::stream_clock`],
    /// its last archived arrival), whichever is earlier. Live, the two agree within a flush; when history
    /// is replayed (emission times on the recorded arrival clock) the latency is how far the stream had got
    /// past the first emission, not wall-clock now minus the recorded year; for a stream stopped before
    /// the reconcile it counts while the stream ran.
    ///
    /// [`EvidenceSummary::stream_clock`]: crate::EvidenceSummary::stream_clock
    pub correction_latency: LatencySummary,
    /// Late-ledger events / batch events.
    pub late_event_share: f64,
    /// Whether the accuracy target was missed.
    pub breached: bool,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContractReport {
    /// Per metric, in spec order.
    pub metrics: Vec<MetricContract>,
    /// Whether any metric breached its contract.
    pub breached: bool,
}

fn within(spec: &ValidSpec, key: &RowKey, emitted: &BTreeMap<String, AggValue>, truth: &MetricRow) -> bool {
    spec.metric(&key.metric).is_some_and(|m| values_within(m, emitted, &truth.values))
}

/// Whether every aggregate of `metric` in `emitted` equals the one in `truth` within its tolerance.
pub(crate) fn values_within(
    metric: &CompiledMetric,
    emitted: &BTreeMap<String, AggValue>,
    truth: &BTreeMap<String, AggValue>,
) -> bool {
    metric.aggregates.iter().all(|a| {
        let got = emitted.get(&a.name).copied().unwrap_or(AggValue::Null);
        let want = truth.get(&a.name).copied().unwrap_or(AggValue::Null);
        a.tolerance.within(want, got)
    })
}

/// Per key, its first on-time firing (earliest emission, then lowest revision).
pub(crate) fn first_on_time(emissions: &[SpeedFiring]) -> HashMap<&RowKey, &SpeedFiring> {
    let mut first: HashMap<&RowKey, &SpeedFiring> = HashMap::new();
    for e in emissions.iter().filter(|e| e.pane == Pane::OnTime) {
        let slot = first.entry(&e.key).or_insert(e);
        if (e.emitted_at, e.revision) < (slot.emitted_at, slot.revision) {
            *slot = e;
        }
    }
    first
}

/// The tallies of rows held in memory (the batch rows of the range, its speed firings in any order, and
/// their diff), and the first emission of every key that fired.
pub fn tally_rows(
    spec: &ValidSpec,
    batch: &[MetricRow],
    emissions: &[SpeedFiring],
    diff: &Diff,
) -> (BTreeMap<String, ContractTally>, HashMap<RowKey, EventTime>) {
    let fin_target = spec.spec().contract.finalization_latency;
    let first_on_time = first_on_time(emissions);
    let mut first_any: HashMap<RowKey, EventTime> = HashMap::new();
    for e in emissions {
        let t = first_any.entry(e.key.clone()).or_insert(e.emitted_at);
        *t = (*t).min(e.emitted_at);
    }
    let differing: HashMap<&RowKey, Verdict> = diff.differences.iter().map(|d| (&d.key, d.verdict)).collect();
    let mut tallies: BTreeMap<String, ContractTally> = BTreeMap::new();
    for r in batch {
        let t = tallies.entry(r.key.metric.clone()).or_default();
        t.windows += 1;
        t.events += r.events;
        if let Some(e) = first_on_time.get(&r.key) {
            if within(spec, &r.key, &e.values, r) {
                t.first_on_time_within += 1;
            }
            let lat = e.emitted_at.since(r.key.window.end()).unwrap_or(Duration::ZERO);
            if lat <= fin_target {
                t.finalized_within += 1;
            }
            t.finalization.push(lat);
        }
        if differing.contains_key(&r.key) {
            t.differing += 1;
        }
    }
    (tallies, first_any)
}

/// Computes the report. The late-event share of a metric counts the late-ledger events of its keys.
pub fn contract_report(input: ContractInput<'_>) -> ContractReport {
    let spec = input.spec;
    let target = spec.spec().contract.accuracy_target;
    let fin_target = spec.spec().contract.finalization_latency;
    let empty = ContractTally::default();
    let mut metrics = Vec::new();
    for m in spec.metrics() {
        let t = input.tallies.get(&m.name).unwrap_or(&empty);
        let n = t.windows;
        let share = |count: u64| if n == 0 { 1.0 } else { count as f64 / n as f64 };
        let late: u64 = input.late_events.iter().filter(|(k, _)| k.metric == m.name).map(|(_, n)| n).sum();
        let corr: Vec<Duration> = input
            .corrections
            .iter()
            .filter(|(k, _)| k.metric == m.name)
            .filter_map(|(k, at)| input.first_emitted.get(k).and_then(|first| at.since(*first)))
            .collect();
        let summary = input.diff.metrics.get(&m.name);
        let first_on_time_within = share(t.first_on_time_within);
        metrics.push(MetricContract {
            metric: m.name.clone(),
            windows_checked: n,
            first_on_time_within,
            after_late_within: share(n.saturating_sub(t.differing)),
            accuracy_target: target,
            max_abs_drift: summary.map_or(0.0, |s| s.max_abs_drift),
            mean_abs_drift: summary.map_or(0.0, |s| s.mean_abs_drift),
            finalization_latency: LatencySummary::of(t.finalization.clone()),
            finalized_within_target: share(t.finalized_within),
            finalization_target: fin_target,
            correction_latency: LatencySummary::of(corr),
            late_event_share: if t.events == 0 { 0.0 } else { late as f64 / t.events as f64 },
            breached: first_on_time_within < target,
        });
    }
    let breached = metrics.iter().any(|m| m.breached);
    ContractReport { metrics, breached }
}
