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

/// Everything the report is computed from.
#[derive(Debug, Clone, Copy)]
pub struct ContractInput<'a> {
    /// The spec (contract targets and tolerances).
    pub spec: &'a ValidSpec,
    /// Batch rows of the range (truth).
    pub batch: &'a [MetricRow],
    /// Serving store vs batch, before corrections.
    pub diff: &'a Diff,
    /// Speed-layer emissions of the range, any order.
    pub emissions: &'a [SpeedFiring],
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
    /// First speed emission → correction, for corrected windows.
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
    let Some(m) = spec.metric(&key.metric) else { return false };
    m.aggregates.iter().all(|a| {
        let got = emitted.get(&a.name).copied().unwrap_or(AggValue::Null);
        let want = truth.values.get(&a.name).copied().unwrap_or(AggValue::Null);
        a.tolerance.within(want, got)
    })
}

/// Computes the report.
pub fn contract_report(input: ContractInput<'_>) -> ContractReport {
    let spec = input.spec;
    let target = spec.spec().contract.accuracy_target;
    let fin_target = spec.spec().contract.finalization_latency;

    let mut first_on_time: HashMap<&RowKey, &SpeedFiring> = HashMap::new();
    let mut first_any: HashMap<&RowKey, EventTime> = HashMap::new();
    for e in input.emissions {
        let t = first_any.entry(&e.key).or_insert(e.emitted_at);
        *t = (*t).min(e.emitted_at);
        if e.pane == Pane::OnTime {
            let slot = first_on_time.entry(&e.key).or_insert(e);
            if (e.emitted_at, e.revision) < (slot.emitted_at, slot.revision) {
                *slot = e;
            }
        }
    }
    let drifting: HashMap<&RowKey, Verdict> = input.diff.differences.iter().map(|d| (&d.key, d.verdict)).collect();

    let mut metrics = Vec::new();
    for m in spec.metrics() {
        let rows: Vec<&MetricRow> = input.batch.iter().filter(|r| r.key.metric == m.name).collect();
        let n = rows.len() as u64;
        let share = |count: usize| if n == 0 { 1.0 } else { count as f64 / n as f64 };
        let mut first_ok = 0;
        let mut after_ok = 0;
        let mut fin = Vec::new();
        let mut fin_ok = 0;
        let mut events = 0u64;
        let mut late = 0u64;
        for r in &rows {
            events += r.events;
            late += input.late_events.get(&r.key).copied().unwrap_or(0);
            if let Some(e) = first_on_time.get(&r.key) {
                if within(spec, &r.key, &e.values, r) {
                    first_ok += 1;
                }
                let lat = e.emitted_at.since(r.key.window.end()).unwrap_or(Duration::ZERO);
                if lat <= fin_target {
                    fin_ok += 1;
                }
                fin.push(lat);
            }
            if !drifting.contains_key(&r.key) {
                after_ok += 1;
            }
        }
        let corr: Vec<Duration> = input
            .corrections
            .iter()
            .filter(|(k, _)| k.metric == m.name)
            .filter_map(|(k, at)| first_any.get(k).and_then(|first| at.since(*first)))
            .collect();
        let summary = input.diff.metrics.get(&m.name);
        let first_on_time_within = share(first_ok);
        metrics.push(MetricContract {
            metric: m.name.clone(),
            windows_checked: n,
            first_on_time_within,
            after_late_within: share(after_ok),
            accuracy_target: target,
            max_abs_drift: summary.map_or(0.0, |s| s.max_abs_drift),
            mean_abs_drift: summary.map_or(0.0, |s| s.mean_abs_drift),
            finalization_latency: LatencySummary::of(fin),
            finalized_within_target: share(fin_ok),
            finalization_target: fin_target,
            correction_latency: LatencySummary::of(corr),
            late_event_share: if events == 0 { 0.0 } else { late as f64 / events as f64 },
            breached: first_on_time_within < target,
        });
    }
    let breached = metrics.iter().any(|m| m.breached);
    ContractReport { metrics, breached }
}
