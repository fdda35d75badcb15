//! The comparison: a full outer join of batch rows and serving rows on [`RowKey`], each aggregate compared
//! within its tolerance from the spec.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use foldhash::fast::RandomState as FoldBuild;

use serde::Serialize;
use tidemark_core::spec::CompiledMetric;
use tidemark_core::{AggValue, MetricRow, Origin, RowKey, ValidSpec};

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

/// Totals for one metric.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricSummary {
    /// Keys compared (union of both sides).
    pub checked: u64,
    /// Keys per verdict.
    pub verdicts: BTreeMap<Verdict, u64>,
    /// Largest absolute drift of any aggregate among drifting keys.
    pub max_abs_drift: f64,
    /// Mean absolute drift over aggregates outside tolerance.
    pub mean_abs_drift: f64,
}

/// The result of a comparison.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diff {
    /// Every key whose verdict is not [`Verdict::Ok`], sorted by key.
    pub differences: Vec<KeyDiff>,
    /// Per metric.
    pub metrics: BTreeMap<String, MetricSummary>,
}

impl Diff {
    /// Keys compared in all metrics.
    pub fn checked(&self) -> u64 {
        self.metrics.values().map(|m| m.checked).sum()
    }

    /// Whether the serving store already equals the batch view within tolerance.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }
}

fn value_of(row: Option<&MetricRow>, name: &str) -> AggValue {
    row.and_then(|r| r.values.get(name)).copied().unwrap_or(AggValue::Null)
}

fn compare_key(
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

/// Per-metric counters while the join runs.
struct MetricAcc<'s> {
    name: &'s str,
    metric: Option<&'s CompiledMetric>,
    checked: u64,
    verdicts: [u64; 4],
}

fn verdict_slot(v: Verdict) -> usize {
    match v {
        Verdict::Ok => 0,
        Verdict::MissingInServing => 1,
        Verdict::UnexpectedInServing => 2,
        Verdict::ValueDrift => 3,
    }
}

/// Folds one key of the join into the totals. Keys whose aggregates are all within tolerance cost no
/// allocation; only differences are materialized.
struct Join<'a> {
    spec: &'a ValidSpec,
    metrics: Vec<MetricAcc<'a>>,
    last: usize,
    /// The smallest key whose metric the spec does not define, and whether the batch has it.
    unknown: Option<(&'a RowKey, bool)>,
    differences: Vec<KeyDiff>,
}

impl<'a> Join<'a> {
    fn new(spec: &'a ValidSpec) -> Self {
        Join { spec, metrics: Vec::new(), last: 0, unknown: None, differences: Vec::new() }
    }

    fn metric(&mut self, name: &'a str) -> usize {
        if self.metrics.get(self.last).is_some_and(|m| m.name == name) {
            return self.last;
        }
        let ix = match self.metrics.iter().position(|m| m.name == name) {
            Some(ix) => ix,
            None => {
                let metric = self.spec.metric(name);
                self.metrics.push(MetricAcc { name, metric, checked: 0, verdicts: [0; 4] });
                self.metrics.len() - 1
            }
        };
        self.last = ix;
        ix
    }

    fn key(&mut self, batch: Option<&'a MetricRow>, serving: Option<&'a MetricRow>) {
        let Some(row) = batch.or(serving) else { return };
        let ix = self.metric(&row.key.metric);
        let Some(metric) = self.metrics[ix].metric else {
            if self.unknown.is_none_or(|(k, _)| row.key < *k) {
                self.unknown = Some((&row.key, batch.is_some()));
            }
            return;
        };
        let verdict = match (batch, serving) {
            (Some(b), Some(s)) if b.values == s.values || all_within(metric, b, s) => Verdict::Ok,
            _ => {
                let (verdict, aggregates) = compare_key(metric, batch, serving);
                if verdict != Verdict::Ok {
                    self.differences.push(KeyDiff {
                        key: row.key.clone(),
                        verdict,
                        aggregates,
                        serving_origin: serving.map(|r| r.origin.clone()),
                        batch_events: batch.map(|r| r.events),
                        serving_events: serving.map(|r| r.events),
                    });
                }
                verdict
            }
        };
        let acc = &mut self.metrics[ix];
        acc.checked += 1;
        acc.verdicts[verdict_slot(verdict)] += 1;
    }

    fn finish(mut self) -> Result<Diff, Error> {
        if let Some((key, in_batch)) = self.unknown {
            return Err(Error::UnknownMetric {
                metric: key.metric.clone(),
                side: if in_batch { "batch view" } else { "serving store" },
            });
        }
        self.differences.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let mut out = Diff::default();
        for acc in &self.metrics {
            let summary = out.metrics.entry(acc.name.to_owned()).or_default();
            summary.checked = acc.checked;
            for v in [Verdict::Ok, Verdict::MissingInServing, Verdict::UnexpectedInServing, Verdict::ValueDrift] {
                let n = acc.verdicts[verdict_slot(v)];
                if n > 0 {
                    summary.verdicts.insert(v, n);
                }
            }
        }
        // Drift totals in key order, so the floating-point sums do not depend on the input order.
        let mut drift_sums: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
        for d in self.differences.iter().filter(|d| d.verdict == Verdict::ValueDrift) {
            let summary = out.metrics.get_mut(&d.key.metric).expect("every difference's metric is counted");
            let sums = drift_sums.entry(&d.key.metric).or_default();
            for a in d.aggregates.iter().filter(|a| !a.within) {
                let abs = a.abs.unwrap_or(0.0);
                summary.max_abs_drift = summary.max_abs_drift.max(abs);
                sums.0 += abs;
                sums.1 += 1;
            }
        }
        for (metric, (sum, n)) in drift_sums {
            if let Some(m) = out.metrics.get_mut(metric) {
                m.mean_abs_drift = if n == 0 { 0.0 } else { sum / n as f64 };
            }
        }
        out.differences = self.differences;
        Ok(out)
    }
}

/// Whether every aggregate of `metric` is within tolerance, without allocating.
fn all_within(metric: &CompiledMetric, batch: &MetricRow, serving: &MetricRow) -> bool {
    metric
        .aggregates
        .iter()
        .all(|agg| agg.tolerance.within(value_of(Some(batch), &agg.name), value_of(Some(serving), &agg.name)))
}

fn duplicate(key: &RowKey, side: &'static str) -> Error {
    Error::DuplicateKey { key: format!("{} {} {}", key.metric, key.window, key.dims), side }
}

/// Whether `rows` are strictly increasing by key (sorted, and so without duplicates).
fn strictly_sorted(rows: &[MetricRow]) -> bool {
    rows.windows(2).all(|w| w[0].key < w[1].key)
}

/// Compares the batch rows (truth) with the serving rows of the same range. Both sides must hold at most
/// one row per key, and only metrics the spec defines.
///
/// Cost: when both sides are sorted by key (as a store reading `ORDER BY` key returns them) a linear merge;
/// otherwise a hash join (the batch side is indexed, the serving side probes it). Keys within tolerance are
/// counted without allocating; only differences are built and sorted.
pub fn diff(spec: &ValidSpec, batch: &[MetricRow], serving: &[MetricRow]) -> Result<Diff, Error> {
    if strictly_sorted(batch) && strictly_sorted(serving) {
        return merge_join(spec, batch, serving);
    }
    hash_join(spec, batch, serving)
}

fn merge_join(spec: &ValidSpec, batch: &[MetricRow], serving: &[MetricRow]) -> Result<Diff, Error> {
    let mut join = Join::new(spec);
    let (mut b, mut s) = (batch.iter().peekable(), serving.iter().peekable());
    loop {
        match (b.peek(), s.peek()) {
            (None, None) => break,
            (Some(_), None) => join.key(b.next(), None),
            (None, Some(_)) => join.key(None, s.next()),
            (Some(x), Some(y)) => match x.key.cmp(&y.key) {
                Ordering::Less => join.key(b.next(), None),
                Ordering::Greater => join.key(None, s.next()),
                Ordering::Equal => join.key(b.next(), s.next()),
            },
        }
    }
    join.finish()
}

fn hash_join(spec: &ValidSpec, batch: &[MetricRow], serving: &[MetricRow]) -> Result<Diff, Error> {
    // batch key -> (index into batch, matched by a serving row)
    let mut batch_ix: HashMap<&RowKey, (usize, bool), FoldBuild> =
        HashMap::with_capacity_and_hasher(batch.len(), FoldBuild::default());
    for (i, r) in batch.iter().enumerate() {
        if batch_ix.insert(&r.key, (i, false)).is_some() {
            return Err(duplicate(&r.key, "batch view"));
        }
    }
    let mut phantoms: HashSet<&RowKey, FoldBuild> = HashSet::default();
    let mut pairs: Vec<(Option<usize>, &MetricRow)> = Vec::with_capacity(serving.len());
    for s in serving {
        match batch_ix.get_mut(&s.key) {
            Some((i, matched)) => {
                if std::mem::replace(matched, true) {
                    return Err(duplicate(&s.key, "serving store"));
                }
                pairs.push((Some(*i), s));
            }
            None => {
                if !phantoms.insert(&s.key) {
                    return Err(duplicate(&s.key, "serving store"));
                }
                pairs.push((None, s));
            }
        }
    }
    let mut join = Join::new(spec);
    for (i, s) in pairs {
        join.key(i.map(|i| &batch[i]), Some(s));
    }
    for (i, matched) in batch_ix.into_values() {
        if !matched {
            join.key(Some(&batch[i]), None);
        }
    }
    join.finish()
}

#[cfg(test)]
mod tests {
    //! The joins against a simple reference: the straightforward hash-and-sort implementation this module
    //! started with.

    use proptest::prelude::*;
    use tidemark_core::{Dimensions, EventTime, Origin, Pane, PipelineSpec, Window};

    use super::*;

    fn reference(spec: &ValidSpec, batch: &[MetricRow], serving: &[MetricRow]) -> Result<Diff, Error> {
        fn index<'a>(rows: &'a [MetricRow], side: &'static str) -> Result<HashMap<&'a RowKey, &'a MetricRow>, Error> {
            let mut map = HashMap::with_capacity(rows.len());
            for r in rows {
                if map.insert(&r.key, r).is_some() {
                    return Err(duplicate(&r.key, side));
                }
            }
            Ok(map)
        }
        let batch_ix = index(batch, "batch view")?;
        let serving_ix = index(serving, "serving store")?;
        let mut keys: Vec<&RowKey> =
            batch_ix.keys().chain(serving_ix.keys().filter(|k| !batch_ix.contains_key(*k))).copied().collect();
        keys.sort_unstable();
        let mut out = Diff::default();
        let mut drift_sums: BTreeMap<String, (f64, u64)> = BTreeMap::new();
        for key in keys {
            let (b, s) = (batch_ix.get(key).copied(), serving_ix.get(key).copied());
            let metric = spec.metric(&key.metric).ok_or_else(|| Error::UnknownMetric {
                metric: key.metric.clone(),
                side: if b.is_some() { "batch view" } else { "serving store" },
            })?;
            let (verdict, aggregates) = compare_key(metric, b, s);
            let summary = out.metrics.entry(key.metric.clone()).or_default();
            summary.checked += 1;
            *summary.verdicts.entry(verdict).or_default() += 1;
            if verdict == Verdict::ValueDrift {
                let sums = drift_sums.entry(key.metric.clone()).or_default();
                for a in aggregates.iter().filter(|a| !a.within) {
                    let abs = a.abs.unwrap_or(0.0);
                    summary.max_abs_drift = summary.max_abs_drift.max(abs);
                    sums.0 += abs;
                    sums.1 += 1;
                }
            }
            if verdict != Verdict::Ok {
                out.differences.push(KeyDiff {
                    key: key.clone(),
                    verdict,
                    aggregates,
                    serving_origin: s.map(|r| r.origin.clone()),
                    batch_events: b.map(|r| r.events),
                    serving_events: s.map(|r| r.events),
                });
            }
        }
        for (metric, (sum, n)) in drift_sums {
            if let Some(m) = out.metrics.get_mut(&metric) {
                m.mean_abs_drift = if n == 0 { 0.0 } else { sum / n as f64 };
            }
        }
        Ok(out)
    }

    fn spec() -> ValidSpec {
        let text = include_str!("../../examples/pageviews.toml");
        PipelineSpec::parse(text, "pageviews.toml", Some(std::path::Path::new("/x"))).expect("example spec is valid")
    }

    const METRICS: [&str; 4] = ["views_per_page", "views_per_country_5m", "user_sessions", "renamed_metric"];

    /// (metric, minute, page, views, mean, users-present) from small domains so keys collide often.
    fn arb_row() -> impl Strategy<Value = MetricRow> {
        (0..4usize, 0..3i64, 0..3u8, 0..4i64, prop_oneof![Just(1.0), Just(1.0 + 1e-12), Just(2.5)], any::<bool>())
            .prop_map(|(m, minute, page, views, mean, users)| {
                let mut values = BTreeMap::from([
                    ("views".to_owned(), AggValue::Int(views)),
                    ("latency_mean".to_owned(), AggValue::Float(mean)),
                    ("bytes".to_owned(), AggValue::Float(views as f64 * 0.1)),
                ]);
                if users {
                    values.insert("users".to_owned(), AggValue::Int(2));
                }
                MetricRow {
                    key: RowKey {
                        metric: METRICS[m].to_owned(),
                        window: Window::new(
                            EventTime::from_secs(minute * 60).unwrap(),
                            EventTime::from_secs(minute * 60 + 60).unwrap(),
                        )
                        .unwrap(),
                        dims: Dimensions::new([("page".to_owned(), format!("/{page}"))]),
                    },
                    values,
                    events: views.unsigned_abs(),
                    origin: Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: EventTime::UNIX_EPOCH },
                    computed_at: EventTime::UNIX_EPOCH,
                }
            })
    }

    fn same(a: &Result<Diff, Error>, b: &Result<Diff, Error>) -> bool {
        match (a, b) {
            (Ok(x), Ok(y)) => x == y,
            (Err(x), Err(y)) => x.to_string() == y.to_string(),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn joins_equal_the_reference(
            batch in proptest::collection::vec(arb_row(), 0..40),
            serving in proptest::collection::vec(arb_row(), 0..40),
            sort in any::<bool>(),
            dedup in any::<bool>(),
        ) {
            let (mut batch, mut serving) = (batch, serving);
            if dedup {
                for side in [&mut batch, &mut serving] {
                    side.sort_by(|a, b| a.key.cmp(&b.key));
                    side.dedup_by(|a, b| a.key == b.key);
                }
            }
            if sort {
                batch.sort_by(|a, b| a.key.cmp(&b.key));
                serving.sort_by(|a, b| a.key.cmp(&b.key));
            }
            let spec = spec();
            let want = reference(&spec, &batch, &serving);
            let got = diff(&spec, &batch, &serving);
            prop_assert!(same(&got, &want), "got {got:?}\nwant {want:?}");
            // Both join strategies, whatever the input order.
            if want.is_ok() {
                prop_assert!(same(&hash_join(&spec, &batch, &serving), &want));
            }
        }
    }

    #[test]
    fn sorted_and_shuffled_inputs_take_both_paths_with_equal_results() {
        let spec = spec();
        let rows: Vec<MetricRow> = (0..50i64)
            .map(|i| {
                let mut values = BTreeMap::new();
                values.insert("views".to_owned(), AggValue::Int(i));
                MetricRow {
                    key: RowKey {
                        metric: "views_per_page".into(),
                        window: Window::new(
                            EventTime::from_secs(i * 60).unwrap(),
                            EventTime::from_secs(i * 60 + 60).unwrap(),
                        )
                        .unwrap(),
                        dims: Dimensions::none(),
                    },
                    values,
                    events: 1,
                    origin: Origin::Batch { run_id: "r".into(), epoch: 1 },
                    computed_at: EventTime::UNIX_EPOCH,
                }
            })
            .collect();
        let mut serving: Vec<MetricRow> = rows.iter().filter(|r| r.events % 7 != 3).cloned().collect();
        serving[10].values.insert("views".into(), AggValue::Int(-1));
        assert!(strictly_sorted(&rows) && strictly_sorted(&serving));
        let merged = diff(&spec, &rows, &serving).unwrap();
        serving.reverse();
        let hashed = diff(&spec, &rows, &serving).unwrap();
        assert_eq!(merged, hashed);
        assert_eq!(merged.metrics["views_per_page"].verdicts[&Verdict::ValueDrift], 1);
        assert_eq!(merged.metrics["views_per_page"].checked, 50);
        assert_eq!(merged, reference(&spec, &rows, &serving).unwrap());
    }
}
