//! The columnar join against two references: the straightforward hash-and-sort implementation this
//! module started with (`reference`), and the row-based merge/hash joins that replaced it
//! (`row_joins`), on randomized inputs.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use proptest::sample::Index;
use tidemark_core::{
    AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, PipelineSpec, RowKey, ValidSpec, Window,
};

use super::compare::{compare_key, duplicate};
use super::engine::aligned_clean;
use super::*;
use crate::error::Error;

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

/// The row-based joins `diff` used before the columnar form: a merge join when both sides are strictly
/// sorted by key, a hash join otherwise.
mod row_joins {
    use std::cmp::Ordering;
    use std::collections::{BTreeMap, HashMap, HashSet};

    use foldhash::fast::RandomState as FoldBuild;
    use tidemark_core::spec::CompiledMetric;
    use tidemark_core::{MetricRow, RowKey, ValidSpec};

    use crate::diff::compare::{Diff, KeyDiff, Verdict, compare_key, duplicate, value_of};
    use crate::error::Error;

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

    /// Whether `rows` are strictly increasing by key (sorted, and so without duplicates).
    pub(in super::super) fn strictly_sorted(rows: &[MetricRow]) -> bool {
        rows.windows(2).all(|w| w[0].key < w[1].key)
    }

    pub(in super::super) fn diff(spec: &ValidSpec, batch: &[MetricRow], serving: &[MetricRow]) -> Result<Diff, Error> {
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
}

/// A spec with every aggregate function and every kind of tolerance: int and float sums, mins and maxes,
/// a mean, count_distinct; exact, abs and rel.
const EVERY_KIND: &str = r#"
version = 1
name = "kinds"
[source]
type = "file"
path = "events.jsonl"
[event]
id = "id"
time = { field = "ts", format = "epoch_ms" }
dimensions = ["page", "country", "user"]
values = { latency_ms = "int", bytes = "float" }
[[metrics]]
name = "every_kind"
dimensions = ["page", "country"]
window = { type = "tumbling", size = "1m" }
aggregates = [
  { name = "views", fn = "count" },
  { name = "latency_sum", fn = "sum", field = "latency_ms" },
  { name = "latency_min", fn = "min", field = "latency_ms" },
  { name = "latency_max", fn = "max", field = "latency_ms" },
  { name = "latency_mean", fn = "mean", field = "latency_ms", tolerance = "rel(1e-9)" },
  { name = "bytes", fn = "sum", field = "bytes", tolerance = "abs(0.5)" },
  { name = "bytes_min", fn = "min", field = "bytes" },
  { name = "bytes_max", fn = "max", field = "bytes", tolerance = "rel(1e-6)" },
  { name = "users", fn = "count_distinct", field = "user" },
]
[[metrics]]
name = "sessions"
dimensions = ["user"]
window = { type = "session", gap = "30s" }
aggregates = [
  { name = "views", fn = "count" },
  { name = "pages", fn = "count_distinct", field = "page" },
]
[stores]
raw_archive = "raw"
serving = "serving"
dead_letter = "dead"
batch_view = "batch"
"#;

fn every_kind_spec() -> ValidSpec {
    PipelineSpec::parse(EVERY_KIND, "kinds.toml", Some(std::path::Path::new("/x"))).expect("test spec is valid")
}

fn spec() -> ValidSpec {
    let text = include_str!("../../../examples/pageviews.toml");
    PipelineSpec::parse(text, "pageviews.toml", Some(std::path::Path::new("/x"))).expect("example spec is valid")
}

/// Equal results, errors by message. Compared as `Debug` text, so NaN equals NaN and -0.0 differs
/// from 0.0.
fn same(a: &Result<Diff, Error>, b: &Result<Diff, Error>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => format!("{x:?}") == format!("{y:?}"),
        (Err(x), Err(y)) => x.to_string() == y.to_string(),
        _ => false,
    }
}

/// Metric names of [`EVERY_KIND`] rows, plus two the spec does not define (one sorting before, one after).
const KIND_METRICS: [&str; 4] = ["every_kind", "sessions", "aa_removed", "zz_renamed"];

fn arb_value() -> impl Strategy<Value = Option<AggValue>> {
    prop_oneof![
        4 => (0..4i64).prop_map(|i| Some(AggValue::Int(i))),
        4 => prop::sample::select(vec![0.0, -0.0, 1.0, 1.0 + 1e-12, 1.3, 2.5, 1e300, f64::NAN, f64::INFINITY])
            .prop_map(|f| Some(AggValue::Float(f))),
        1 => Just(Some(AggValue::Null)),
        1 => Just(None),
    ]
}

/// A row of [`EVERY_KIND`] (or of an undefined metric, rarely) from small domains, so keys collide.
fn arb_kind_row() -> impl Strategy<Value = MetricRow> {
    (
        prop_oneof![10 => 0..2usize, 1 => 2..4usize],
        0..3i64,
        prop::sample::select(vec![60i64, 90]),
        (0..3u8, prop::sample::select(vec!["DE", "a&b=c", "%"]), 0..3u8),
        proptest::collection::vec(arb_value(), 9),
        (0..5u64, any::<bool>()),
    )
        .prop_map(|(m, minute, len, (page, country, user), values, (events, speed))| {
            let metric = KIND_METRICS[m];
            let spec = every_kind_spec();
            let names: Vec<String> = match spec.metric(metric) {
                Some(cm) => cm.aggregates.iter().map(|a| a.name.clone()).collect(),
                None => vec!["views".to_owned()],
            };
            let mut values: BTreeMap<String, AggValue> =
                names.into_iter().zip(values).filter_map(|(n, v)| v.map(|v| (n, v))).collect();
            // values of aggregates the spec does not define (an older spec's), sorting first and amid
            if events % 2 == 0 {
                values.insert("a_dropped".into(), AggValue::Int(7));
                values.insert("latency_p99".into(), AggValue::Float(1.5));
            }
            let dims = if metric == "sessions" {
                Dimensions::new([("user".to_owned(), format!("u{user}"))])
            } else {
                // rarely another dimension name with the same values (rows of an older spec)
                let page_name = if user == 2 && events == 4 { "path" } else { "page" };
                Dimensions::new([
                    (page_name.to_owned(), format!("/{page}")),
                    ("country".to_owned(), country.to_owned()),
                ])
            };
            let start = minute * 60;
            MetricRow {
                key: RowKey {
                    metric: metric.to_owned(),
                    window: Window::new(
                        EventTime::from_secs(start).unwrap(),
                        EventTime::from_secs(start + len).unwrap(),
                    )
                    .unwrap(),
                    dims,
                },
                values,
                events,
                origin: if speed {
                    Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: EventTime::UNIX_EPOCH }
                } else {
                    Origin::Batch { run_id: "r".into(), epoch: 1 }
                },
                computed_at: EventTime::UNIX_EPOCH,
            }
        })
}

/// What the serving side does with one batch row.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Served as computed.
    Same,
    /// Not served: missing in serving.
    Drop,
    /// One aggregate changed by `delta` (drift, or within tolerance when small).
    Shift(usize, f64),
    /// Every float multiplied by `1 + 1e-12`: within a relative tolerance, drift under an exact one.
    Noise,
    /// One aggregate removed (null in serving).
    Remove(usize),
    /// Other events count and origin: still ok, the values decide.
    Provenance,
}

fn arb_fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Same),
        1 => Just(Fate::Drop),
        1 => (0..9usize, prop::sample::select(vec![1.0, 0.25, 1e-12, -3.0])).prop_map(|(a, d)| Fate::Shift(a, d)),
        1 => Just(Fate::Noise),
        1 => (0..9usize).prop_map(Fate::Remove),
        1 => Just(Fate::Provenance),
    ]
}

fn apply(row: &MetricRow, fate: Fate) -> Option<MetricRow> {
    let mut s = row.clone();
    let nth = |s: &mut MetricRow, a: usize| {
        let n = s.values.len();
        (n > 0).then(|| s.values.keys().nth(a % n).cloned()).flatten()
    };
    match fate {
        Fate::Same => {}
        Fate::Drop => return None,
        Fate::Shift(a, d) => {
            if let Some(name) = nth(&mut s, a) {
                let v = s.values.get_mut(&name).expect("present");
                *v = match *v {
                    AggValue::Int(i) if d.fract() == 0.0 => AggValue::Int(i + d as i64),
                    AggValue::Int(i) => AggValue::Float(i as f64 + d),
                    AggValue::Float(f) => AggValue::Float(f + d),
                    AggValue::Null => AggValue::Int(0),
                };
            }
        }
        Fate::Noise => {
            for v in s.values.values_mut() {
                if let AggValue::Float(f) = v {
                    *f *= 1.0 + 1e-12;
                }
            }
        }
        Fate::Remove(a) => {
            if let Some(name) = nth(&mut s, a) {
                s.values.remove(&name);
            }
        }
        Fate::Provenance => {
            s.events += 7;
            s.origin = Origin::Speed { revision: 3, pane: Pane::Late, watermark: EventTime::UNIX_EPOCH };
        }
    }
    Some(s)
}

/// A batch side and a serving side derived from it (missing, drifting, noisy rows, phantoms), with
/// occasional duplicate keys on either side, in any order.
fn arb_sides() -> impl Strategy<Value = (Vec<MetricRow>, Vec<MetricRow>)> {
    (
        proptest::collection::vec(arb_kind_row(), 0..60),
        // sometimes a clean serving side (with duplicates and phantoms still possible)
        prop_oneof![5 => proptest::collection::vec(arb_fate(), 60), 1 => Just(vec![Fate::Same; 60])],
        proptest::collection::vec(arb_kind_row(), 0..6),
        prop_oneof![8 => Just(false), 1 => Just(true)],
        prop_oneof![6 => Just(Vec::new()), 1 => proptest::collection::vec((any::<bool>(), any::<Index>(), any::<Index>()), 1..3)],
        (0..4u8, any::<u64>(), prop_oneof![6 => Just(false), 1 => Just(true)]),
    )
        .prop_map(|(batch, fates, phantoms, keep_batch_duplicates, dups, (order, seed, undefined))| {
            let mut batch = batch;
            if !undefined {
                batch.retain(|r| KIND_METRICS[..2].contains(&r.key.metric.as_str()));
            }
            if !keep_batch_duplicates {
                let mut seen = std::collections::HashSet::new();
                batch.retain(|r| seen.insert(r.key.clone()));
            }
            // a clean serving side: no phantoms, finite values (NaN and infinity are never within
            // tolerance), and usually in key order like the batch side
            let clean = fates.iter().all(|f| matches!(f, Fate::Same));
            let (phantoms, order) = if clean {
                for v in batch.iter_mut().flat_map(|r| r.values.values_mut()) {
                    if matches!(v, AggValue::Float(f) if !f.is_finite()) {
                        *v = AggValue::Float(2.5);
                    }
                }
                (Vec::new(), if seed % 4 == 0 { order } else { 0 })
            } else {
                (phantoms, order)
            };
            let mut serving: Vec<MetricRow> = batch.iter().zip(&fates).filter_map(|(r, f)| apply(r, *f)).collect();
            // phantoms: rows the batch may not have (not colliding with a served key: duplicates come next)
            for p in phantoms {
                if !serving.iter().any(|r| r.key == p.key)
                    && (undefined || KIND_METRICS[..2].contains(&p.key.metric.as_str()))
                {
                    serving.push(p);
                }
            }
            for (on_batch, which, at) in dups {
                let side = if on_batch { &mut batch } else { &mut serving };
                if !side.is_empty() {
                    let copy = side[which.index(side.len())].clone();
                    let at = at.index(side.len() + 1);
                    side.insert(at, copy);
                }
            }
            match order {
                0 => {
                    batch.sort_by(|a, b| a.key.cmp(&b.key));
                    serving.sort_by(|a, b| a.key.cmp(&b.key));
                }
                1 => serving.reverse(),
                2 => {
                    // a store's own order: a seeded permutation of both sides
                    let mut n = seed;
                    let mut next = move || {
                        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                        n >> 33
                    };
                    for side in [&mut batch, &mut serving] {
                        for i in (1..side.len()).rev() {
                            side.swap(i, (next() % (i as u64 + 1)) as usize);
                        }
                    }
                }
                _ => {}
            }
            (batch, serving)
        })
}

/// (metric, minute, page, views, mean, users-present) from small domains so keys collide often.
fn arb_row() -> impl Strategy<Value = MetricRow> {
    (0..4usize, 0..3i64, 0..3u8, 0..4i64, prop_oneof![Just(1.0), Just(1.0 + 1e-12), Just(2.5)], any::<bool>()).prop_map(
        |(m, minute, page, views, mean, users)| {
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
                    metric: PAGEVIEW_METRICS[m].to_owned(),
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
        },
    )
}

const PAGEVIEW_METRICS: [&str; 4] = ["views_per_page", "views_per_country_5m", "user_sessions", "renamed_metric"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Derived sides over a spec with every aggregate kind: the columnar diff equals both references,
    /// errors included (duplicates on either side, undefined metrics).
    #[test]
    fn columnar_diff_equals_the_references((batch, serving) in arb_sides()) {
        let spec = every_kind_spec();
        let want = reference(&spec, &batch, &serving);
        let got = diff(&spec, &batch, &serving);
        prop_assert!(same(&got, &want), "got {got:?}\nwant {want:?}");
        // The row joins took equal value maps as within tolerance, where `Tolerance::within` (and so the
        // reference) finds inf vs inf under an abs/rel tolerance not within (the difference is NaN).
        let infinite = batch.iter().chain(&serving).any(|r| r.values.values().any(|v| v.as_f64().is_some_and(f64::is_infinite)));
        if !infinite {
            let rows = row_joins::diff(&spec, &batch, &serving);
            prop_assert!(same(&rows, &want), "row joins {rows:?}\nwant {want:?}");
        }
        // the same comparison through explicitly built columns
        let (b, s) = (Columns::new(&spec, &batch).unwrap(), Columns::new(&spec, &serving).unwrap());
        prop_assert!(same(&diff_columns(&b, &s), &want));
        // the aligned fast path, when it answers, answers the same
        if let Some(fast) = aligned_clean(&spec, &batch, &serving) {
            prop_assert!(same(&Ok(fast), &want));
        }
    }

    /// Independent random sides (many key collisions, duplicates) over the example spec.
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
        prop_assert!(same(&row_joins::diff(&spec, &batch, &serving), &want));
    }
}

/// The generator of `columnar_diff_equals_the_references` reaches every outcome, so that test compares
/// more than empty diffs and errors.
#[test]
fn derived_sides_cover_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let spec = every_kind_spec();
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..400 {
        let (batch, serving) = arb_sides().new_tree(&mut runner).unwrap().current();
        let outcome = match reference(&spec, &batch, &serving) {
            Ok(d) => {
                for m in d.metrics.values() {
                    for v in m.verdicts.keys() {
                        *seen.entry(format!("{v:?}")).or_default() += 1;
                    }
                }
                let noisy_ok = serving.iter().any(|s| {
                    batch.iter().any(|b| {
                        let metric = spec.metric(&b.key.metric);
                        b.key == s.key
                            && b.values != s.values
                            && metric.is_some_and(|m| compare_key(m, Some(b), Some(s)).0 == Verdict::Ok)
                    })
                });
                if noisy_ok {
                    *seen.entry("ok with values not equal".into()).or_default() += 1;
                }
                "ok".to_owned()
            }
            Err(Error::DuplicateKey { side, .. }) => format!("duplicate in {side}"),
            Err(Error::UnknownMetric { .. }) => "undefined metric".to_owned(),
            Err(e) => panic!("unexpected error {e}"),
        };
        *seen.entry(outcome).or_default() += 1;
        if aligned_clean(&spec, &batch, &serving).is_some_and(|d| d.checked() > 0) {
            *seen.entry("aligned fast path".into()).or_default() += 1;
        }
    }
    for want in [
        "ok",
        "Ok",
        "MissingInServing",
        "UnexpectedInServing",
        "ValueDrift",
        "ok with values not equal",
        "duplicate in batch view",
        "duplicate in serving store",
        "undefined metric",
        "aligned fast path",
    ] {
        assert!(seen.get(want).is_some_and(|n| *n >= 5), "{want} seen {:?} times: {seen:?}", seen.get(want));
    }
}

fn minute_row(metric: &str, i: i64, views: AggValue) -> MetricRow {
    MetricRow {
        key: RowKey {
            metric: metric.into(),
            window: Window::new(EventTime::from_secs(i * 60).unwrap(), EventTime::from_secs(i * 60 + 60).unwrap())
                .unwrap(),
            dims: Dimensions::none(),
        },
        values: BTreeMap::from([("views".to_owned(), views)]),
        events: i.unsigned_abs(),
        origin: Origin::Batch { run_id: "r".into(), epoch: 1 },
        computed_at: EventTime::UNIX_EPOCH,
    }
}

#[test]
fn sorted_and_shuffled_inputs_give_equal_results() {
    let spec = spec();
    let rows: Vec<MetricRow> = (0..50i64).map(|i| minute_row("views_per_page", i, AggValue::Int(i))).collect();
    let mut serving: Vec<MetricRow> = rows.iter().filter(|r| r.events % 7 != 3).cloned().collect();
    serving[10].values.insert("views".into(), AggValue::Int(-1));
    assert!(row_joins::strictly_sorted(&rows) && row_joins::strictly_sorted(&serving));
    let sorted = diff(&spec, &rows, &serving).unwrap();
    serving.reverse();
    let shuffled = diff(&spec, &rows, &serving).unwrap();
    assert_eq!(sorted, shuffled);
    let m = &sorted.metrics["views_per_page"];
    assert_eq!(m.checked, 50);
    // minutes 3, 10, 17, ... (7 of 50) are not served; minute 12 is served as -1
    assert_eq!(m.verdicts[&Verdict::MissingInServing], 7);
    assert_eq!(m.verdicts[&Verdict::ValueDrift], 1);
    assert_eq!(m.verdicts[&Verdict::Ok], 42);
    assert_eq!((m.max_abs_drift, m.mean_abs_drift), (13.0, 13.0));
    let missing: Vec<i64> = sorted
        .differences
        .iter()
        .filter(|d| d.verdict == Verdict::MissingInServing)
        .map(|d| d.key.window.start().as_micros() / 60_000_000)
        .collect();
    assert_eq!(missing, [3, 10, 17, 24, 31, 38, 45]);
    let drift = sorted.differences.iter().find(|d| d.verdict == Verdict::ValueDrift).unwrap();
    assert_eq!(drift.key.window.start().as_micros(), 12 * 60_000_000);
    assert_eq!((drift.aggregates[0].batch, drift.aggregates[0].serving), (AggValue::Int(12), AggValue::Int(-1)));
    assert_eq!(sorted, reference(&spec, &rows, &serving).unwrap());
}

/// The fast path answers only for equal keys in the same strictly increasing order, all within
/// tolerance; anything else goes to the full join (which then reports it).
#[test]
fn the_aligned_fast_path_answers_only_clean_aligned_sides() {
    let spec = spec();
    let rows: Vec<MetricRow> = (0..70_000i64)
        .map(|i| minute_row(if i < 30_000 { "user_sessions" } else { "views_per_page" }, i, AggValue::Int(i)))
        .collect();
    let mut sorted = rows.clone();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    // large enough for two threads
    let fast = aligned_clean(&spec, &sorted, &sorted).expect("clean and aligned");
    assert_eq!(fast.checked(), 70_000);
    assert_eq!(fast.metrics["user_sessions"].verdicts[&Verdict::Ok], 30_000);
    assert_eq!(fast.metrics["views_per_page"].verdicts[&Verdict::Ok], 40_000);
    assert_eq!(Ok(fast), reference(&spec, &sorted, &sorted).map_err(|e| e.to_string()));
    // one drifting value near the end of each half, a swapped pair, a duplicate, an extra row
    for at in [34_999, 69_999] {
        let mut serving = sorted.clone();
        serving[at].values.insert("views".into(), AggValue::Int(-5));
        assert!(aligned_clean(&spec, &sorted, &serving).is_none(), "drift at {at}");
        assert_eq!(diff(&spec, &sorted, &serving).unwrap().differences.len(), 1);
    }
    // a serving key the batch does not have in place of one it has, values equal
    let mut moved = sorted.clone();
    moved[60_000].key.dims = Dimensions::new([("page".to_owned(), "/moved".to_owned())]);
    assert!(aligned_clean(&spec, &sorted, &moved).is_none());
    let d = diff(&spec, &sorted, &moved).unwrap();
    let verdicts: Vec<Verdict> = d.differences.iter().map(|k| k.verdict).collect();
    assert_eq!(verdicts, [Verdict::MissingInServing, Verdict::UnexpectedInServing]);
    let mut swapped = sorted.clone();
    swapped.swap(40_000, 40_001);
    assert!(aligned_clean(&spec, &swapped, &swapped).is_none());
    assert!(diff(&spec, &swapped, &swapped).unwrap().is_clean());
    let mut doubled = sorted.clone();
    doubled[50_001] = doubled[50_000].clone();
    assert!(aligned_clean(&spec, &doubled, &doubled).is_none());
    assert!(diff(&spec, &doubled, &doubled).unwrap_err().to_string().contains("appears twice"));
    assert!(aligned_clean(&spec, &sorted, &sorted[1..]).is_none());
    // equal infinite floats are not within a relative tolerance; a value the spec does not define is
    // not compared
    let tail = &sorted[69_997..];
    assert!(tail.iter().all(|r| r.key.metric == "views_per_page"));
    let mut inf = tail.to_vec();
    inf[1].values.insert("latency_mean".into(), AggValue::Float(f64::INFINITY));
    assert!(aligned_clean(&spec, &inf, &inf).is_none());
    assert_eq!(diff(&spec, &inf, &inf).unwrap().differences.len(), 1);
    let mut extra = tail.to_vec();
    extra[1].values.insert("not_in_spec".into(), AggValue::Int(1));
    assert_eq!(aligned_clean(&spec, tail, &extra).map(|d| d.checked()), Some(3));
}

#[test]
fn errors_name_the_first_duplicate_and_the_smallest_undefined_key() {
    let spec = spec();
    let rows: Vec<MetricRow> = (0..5i64).map(|i| minute_row("views_per_page", i, AggValue::Int(i))).collect();
    let mut batch = rows.clone();
    batch.push(rows[3].clone());
    batch.push(rows[1].clone());
    let err = diff(&spec, &batch, &rows).unwrap_err().to_string();
    assert!(err.contains("appears twice in the batch view"), "{err}");
    assert!(err.contains(&rows[3].key.window.to_string()), "{err}");
    // batch duplicates are reported before serving duplicates and undefined metrics
    let mut serving = rows.clone();
    serving.push(rows[0].clone());
    serving.push(minute_row("gone", 0, AggValue::Int(0)));
    assert!(diff(&spec, &batch, &serving).unwrap_err().to_string().contains("batch view"));
    let err = diff(&spec, &rows, &serving).unwrap_err().to_string();
    assert!(err.contains("appears twice in the serving store"), "{err}");
    serving.remove(5);
    let err = diff(&spec, &rows, &serving).unwrap_err();
    assert!(matches!(&err, Error::UnknownMetric { metric, side: "serving store" } if metric == "gone"), "{err}");
    let mut batch = rows.clone();
    batch.push(minute_row("gone", 3, AggValue::Int(0)));
    batch.push(minute_row("also_gone", 4, AggValue::Int(0)));
    let err = diff(&spec, &batch, &serving).unwrap_err();
    assert!(matches!(&err, Error::UnknownMetric { metric, side: "batch view" } if metric == "also_gone"), "{err}");
}
