//! What a comparison says ([`Verdict`], [`KeyDiff`], [`MetricDiffSummary`], [`Diff`]) and how one key is
//! compared: each aggregate within its tolerance from the spec.

use std::collections::BTreeMap;

use serde::Serialize;
use tidemark_core::spec::CompiledMetric;
use tidemark_core::{AggValue, MetricRow, Origin, RowKey};

use crate::error::Error;

/// The verdict for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every aggregate is within tolerance.
    Ok,
    /// The batch has the row; the serving store does not.
    MissingInServing,
    /// The serving store has a row the batch does not (a phantom: superseded session, duplicate, ...).
    UnexpectedInServing,
    /// Both have the row and at least one aggregate is outside its tolerance.
    ValueDrift,
}

/// One aggregate of one key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggregateDiff {
    /// Aggregate name.
    pub name: String,
    /// The batch value (truth); null when the batch has no row.
    pub batch: AggValue,
    /// The serving value; null when the serving store has no row.
    pub serving: AggValue,
    /// `|serving - batch|`, when both are numbers.
    pub abs: Option<f64>,
    /// `abs / |batch|` (infinite when batch is 0 and serving is not), when both are numbers.
    pub rel: Option<f64>,
    /// Whether the two are equal within the aggregate's tolerance.
    pub within: bool,
}

/// The comparison of one key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyDiff {
    /// The key.
    pub key: RowKey,
    /// The verdict.
    pub verdict: Verdict,
    /// Per aggregate, in spec order.
    pub aggregates: Vec<AggregateDiff>,
    /// Where the serving row came from, if there is one.
    pub serving_origin: Option<Origin>,
    /// Events in the batch row.
    pub batch_events: Option<u64>,
    /// Events in the serving row.
    pub serving_events: Option<u64>,
}

/// Totals of the comparison of one metric.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricDiffSummary {
    /// Keys compared (union of both sides).
    pub checked: u64,
    /// Keys per verdict.
    pub verdicts: BTreeMap<Verdict, u64>,
    /// Largest absolute drift of any aggregate among drifting keys.
    pub max_abs_drift: f64,
    /// Mean absolute drift over aggregates outside tolerance.
    pub mean_abs_drift: f64,
}

impl MetricDiffSummary {
    /// Adds the key counts of `other` (the drift totals are recomputed from the differences,
    /// [`Diff::recompute_drift`]).
    pub(crate) fn add_counts(&mut self, other: &MetricDiffSummary) {
        self.checked += other.checked;
        for (v, n) in &other.verdicts {
            *self.verdicts.entry(*v).or_default() += n;
        }
    }
}

/// The result of a comparison.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diff {
    /// Every key whose verdict is not [`Verdict::Ok`], sorted by key.
    pub differences: Vec<KeyDiff>,
    /// Per metric.
    pub metrics: BTreeMap<String, MetricDiffSummary>,
}

impl Diff {
    /// Keys compared in all metrics.
    pub fn checked(&self) -> u64 {
        self.metrics.values().map(|m| m.checked).sum()
    }

    /// Sets each metric's drift totals from the differences (in their order, so the floating-point sums
    /// do not depend on how the differences were found).
    pub(crate) fn recompute_drift(&mut self) {
        for m in self.metrics.values_mut() {
            m.max_abs_drift = 0.0;
            m.mean_abs_drift = 0.0;
        }
        let mut sums: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
        for d in self.differences.iter().filter(|d| d.verdict == Verdict::ValueDrift) {
            let Some(summary) = self.metrics.get_mut(&d.key.metric) else { continue };
            let s = sums.entry(&d.key.metric).or_default();
            for a in d.aggregates.iter().filter(|a| !a.within) {
                let abs = a.abs.unwrap_or(0.0);
                summary.max_abs_drift = summary.max_abs_drift.max(abs);
                s.0 += abs;
                s.1 += 1;
            }
        }
        for (metric, (sum, n)) in sums {
            if let Some(m) = self.metrics.get_mut(metric) {
                m.mean_abs_drift = if n == 0 { 0.0 } else { sum / n as f64 };
            }
        }
    }

    /// Whether the serving store already equals the batch view within tolerance.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }
}

pub(crate) fn value_of(row: Option<&MetricRow>, name: &str) -> AggValue {
    row.and_then(|r| r.values.get(name)).copied().unwrap_or(AggValue::Null)
}

pub(crate) fn compare_key(
    metric: &CompiledMetric,
    batch: Option<&MetricRow>,
    serving: Option<&MetricRow>,
) -> (Verdict, Vec<AggregateDiff>) {
    let mut aggregates = Vec::with_capacity(metric.aggregates.len());
    let mut all_within = true;
    for agg in &metric.aggregates {
        let (b, s) = (value_of(batch, &agg.name), value_of(serving, &agg.name));
        let within = agg.tolerance.within(b, s);
        all_within &= within;
        let (abs, rel) = match (b.as_f64(), s.as_f64()) {
            (Some(x), Some(y)) => {
                let abs = (y - x).abs();
                let rel = if x == 0.0 { if abs == 0.0 { 0.0 } else { f64::INFINITY } } else { abs / x.abs() };
                (Some(abs), Some(rel))
            }
            _ => (None, None),
        };
        aggregates.push(AggregateDiff { name: agg.name.clone(), batch: b, serving: s, abs, rel, within });
    }
    let verdict = match (batch, serving) {
        (Some(_), None) => Verdict::MissingInServing,
        (None, Some(_)) => Verdict::UnexpectedInServing,
        _ if all_within => Verdict::Ok,
        _ => Verdict::ValueDrift,
    };
    (verdict, aggregates)
}

pub(crate) fn duplicate(key: &RowKey, side: &'static str) -> Error {
    Error::DuplicateKey { key: format!("{} {} {}", key.metric, key.window, key.dims), side }
}
