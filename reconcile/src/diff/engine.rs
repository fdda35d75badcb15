//! The diff engine: the columnar join. It works on a flat, pointer-free form of each side's rows, so the
//! join touches each row's heap parts (metric name, dimension strings, value map) once, while converting,
//! and never again.
//!
//! Per metric, every distinct window and every distinct [`Dimensions`] is interned to a `u32` (first seen,
//! first numbered); a row becomes `(window id, dims id, row index)` plus one [`AggValue`] per spec aggregate
//! (in spec order, null where the row has no value), stored contiguously. [`diff_columns`] maps the serving
//! side's ids onto the batch side's dictionaries (one lookup per distinct window or dimension combination,
//! not per row), sorts each side's `u64` keys `window id << 32 | dims id` and merges them. Keys whose
//! aggregates are all within tolerance are counted without allocating; only differences go back to the
//! original rows (for their [`RowKey`] and [`crate::AggregateDiff`] details) and are sorted by key at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};

use foldhash::fast::RandomState as FoldBuild;
use tidemark_core::spec::CompiledMetric;
use tidemark_core::{AggValue, Dimensions, MetricRow, Tolerance, ValidSpec};

use super::compare::{Diff, KeyDiff, Verdict, compare_key, duplicate, value_of};
use crate::error::Error;

/// Below this many rows per side the two sides are converted and sorted on one thread.
const PARALLEL_MIN_ROWS: usize = 50_000;

/// Rows per side: ids of both sides' windows and dimensions together must fit `u32`.
const MAX_ROWS: usize = 1 << 31;

/// A window as `(start, end)` in microseconds since the epoch.
type WindowBounds = (i64, i64);

/// A row's dimensions as a dictionary key: hashed by the values alone (the rows of one metric name the same
/// dimensions, so hashing the names would cost without telling keys apart), compared in full.
#[derive(Debug, Clone, Copy)]
struct DimsKey<'a>(&'a Dimensions);

impl Hash for DimsKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut lengths = 0u64;
        for (_, value) in self.0.pairs() {
            state.write(value.as_bytes());
            lengths = lengths.wrapping_mul(0x100_0193).wrapping_add(value.len() as u64);
        }
        state.write_u64(lengths);
    }
}

impl PartialEq for DimsKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.pairs(), other.0.pairs());
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.1 == y.1) && a.iter().zip(b).all(|(x, y)| x.0 == y.0)
    }
}

impl Eq for DimsKey<'_> {}

/// The rows of one metric on one side.
#[derive(Debug)]
struct Part<'a> {
    name: &'a str,
    /// The spec's definition; `None` for a metric the spec does not define (an error once the sides are
    /// checked for duplicates).
    metric: Option<&'a CompiledMetric>,
    /// Aggregates per row: the spec's, in spec order (0 for an undefined metric).
    width: usize,
    /// Aggregate names sorted by name, with their position in spec order.
    by_name: Vec<(&'a str, usize)>,
    /// Window id -> window.
    windows: Vec<WindowBounds>,
    window_ids: HashMap<WindowBounds, u32, FoldBuild>,
    last_window: Option<(WindowBounds, u32)>,
    /// Dimensions id -> dimensions (borrowed from the rows).
    dims: Vec<&'a Dimensions>,
    dims_ids: HashMap<DimsKey<'a>, u32, FoldBuild>,
    /// Per row of the part: window id, dims id, index into the side's rows.
    win: Vec<u32>,
    dim: Vec<u32>,
    row: Vec<u32>,
    /// `width` values per row of the part.
    cells: Vec<AggValue>,
}

impl<'a> Part<'a> {
    fn new(name: &'a str, metric: Option<&'a CompiledMetric>, capacity: usize) -> Self {
        let mut by_name: Vec<(&'a str, usize)> = metric
            .map(|m| m.aggregates.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect())
            .unwrap_or_default();
        by_name.sort_unstable();
        Part {
            name,
            metric,
            width: by_name.len(),
            windows: Vec::new(),
            window_ids: HashMap::default(),
            last_window: None,
            dims: Vec::new(),
            dims_ids: HashMap::default(),
            win: Vec::with_capacity(capacity),
            dim: Vec::with_capacity(capacity),
            row: Vec::with_capacity(capacity),
            cells: Vec::with_capacity(capacity * by_name.len()),
            by_name,
        }
    }

    fn len(&self) -> usize {
        self.row.len()
    }

    /// Appends row `index` of the side. Ids fit `u32` because a side holds at most [`MAX_ROWS`] rows.
    fn push(&mut self, index: u32, row: &'a MetricRow) {
        let w = (row.key.window.start().as_micros(), row.key.window.end().as_micros());
        let window = match self.last_window {
            Some((last, id)) if last == w => id,
            _ => {
                let next = self.windows.len() as u32;
                let windows = &mut self.windows;
                let id = *self.window_ids.entry(w).or_insert_with(|| {
                    windows.push(w);
                    next
                });
                self.last_window = Some((w, id));
                id
            }
        };
        let next = self.dims.len() as u32;
        let dims = &mut self.dims;
        let dim = *self.dims_ids.entry(DimsKey(&row.key.dims)).or_insert_with(|| {
            dims.push(&row.key.dims);
            next
        });
        self.win.push(window);
        self.dim.push(dim);
        self.row.push(index);
        if self.width == 0 {
            return;
        }
        let base = self.cells.len();
        self.cells.resize(base + self.width, AggValue::Null);
        let cells = &mut self.cells[base..];
        // both in name order (names are unique on both sides): one pass, no map lookups
        let mut names = self.by_name.iter().peekable();
        for (name, value) in &row.values {
            while let Some(&&(want, slot)) = names.peek() {
                if want == name {
                    cells[slot] = *value;
                    names.next();
                    break;
                }
                if want > name.as_str() {
                    // a value the spec does not define: not compared
                    break;
                }
                // an aggregate the row has no value for: stays null
                names.next();
            }
            if names.peek().is_none() {
                break;
            }
        }
    }

    fn cells(&self, pos: usize) -> &[AggValue] {
        &self.cells[pos * self.width..(pos + 1) * self.width]
    }
}

/// One side of a comparison (the batch view or the serving store) in the diff's flat form. Borrows the
/// rows it was built from: differences are reported from them.
#[derive(Debug)]
pub struct Columns<'a> {
    spec: &'a ValidSpec,
    rows: &'a [MetricRow],
    parts: Vec<Part<'a>>,
}

impl<'a> Columns<'a> {
    /// Converts `rows`, in one pass over them. Fails only if there are more than 2^31 rows.
    pub fn new(spec: &'a ValidSpec, rows: &'a [MetricRow]) -> Result<Self, Error> {
        if rows.len() > MAX_ROWS {
            return Err(Error::Internal(format!(
                "{} rows on one side of a diff; at most {MAX_ROWS} are supported",
                rows.len()
            )));
        }
        let mut parts: Vec<Part<'a>> = Vec::new();
        let mut part_of: HashMap<&'a str, usize, FoldBuild> = HashMap::default();
        let mut last = 0;
        // room for an even share of the rows per metric of the spec (none for a metric it does not define)
        let share = rows.len() / spec.metrics().len().max(1);
        for (index, row) in rows.iter().enumerate() {
            let name = row.key.metric.as_str();
            if parts.get(last).is_none_or(|p| p.name != name) {
                last = *part_of.entry(name).or_insert_with(|| {
                    let metric = spec.metric(name);
                    parts.push(Part::new(name, metric, if metric.is_some() { share } else { 0 }));
                    parts.len() - 1
                });
            }
            parts[last].push(index as u32, row);
        }
        Ok(Columns { spec, rows, parts })
    }

    /// Rows converted.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn part(&self, name: &str) -> Option<&Part<'a>> {
        self.parts.iter().find(|p| p.name == name)
    }
}

/// Converts both sides, on two threads when they are large.
pub(crate) fn columns_pair<'a>(
    spec: &'a ValidSpec,
    batch: &'a [MetricRow],
    serving: &'a [MetricRow],
) -> Result<(Columns<'a>, Columns<'a>), Error> {
    if batch.len().max(serving.len()) < PARALLEL_MIN_ROWS {
        return Ok((Columns::new(spec, batch)?, Columns::new(spec, serving)?));
    }
    let (b, s) = both(|| Columns::new(spec, batch), || Columns::new(spec, serving));
    Ok((b?, s?))
}

/// Runs `a` on a scoped thread and `b` on this one.
fn both<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    std::thread::scope(|scope| {
        let handle = scope.spawn(a);
        let b = b();
        let a = handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (a, b)
    })
}

/// One side's join keys for one metric: `(window id << 32 | dims id, position in the part)`, sorted.
type Keys = Vec<(u64, u32)>;

fn sorted_keys(part: &Part<'_>, window_map: Option<&[u32]>, dims_map: Option<&[u32]>) -> Keys {
    let mut keys: Keys = (0..part.len())
        .map(|p| {
            let (w, d) = (part.win[p], part.dim[p]);
            let w = window_map.map_or(w, |m| m[w as usize]);
            let d = dims_map.map_or(d, |m| m[d as usize]);
            ((u64::from(w) << 32) | u64::from(d), p as u32)
        })
        .collect();
    if !keys.is_sorted() {
        keys.sort_unstable();
    }
    keys
}

fn has_duplicates(keys: &Keys) -> bool {
    keys.windows(2).any(|w| w[0].0 == w[1].0)
}

/// Serving ids -> batch ids: a serving window or dimension combination the batch side lacks gets a fresh id
/// past the batch side's.
fn id_maps(batch: Option<&Part<'_>>, serving: &Part<'_>) -> (Vec<u32>, Vec<u32>) {
    let Some(b) = batch else {
        return ((0..serving.windows.len() as u32).collect(), (0..serving.dims.len() as u32).collect());
    };
    let mut fresh = b.windows.len() as u32;
    let windows = serving
        .windows
        .iter()
        .map(|w| {
            b.window_ids.get(w).copied().unwrap_or_else(|| {
                fresh += 1;
                fresh - 1
            })
        })
        .collect();
    let mut fresh = b.dims.len() as u32;
    let dims = serving
        .dims
        .iter()
        .map(|d| {
            b.dims_ids.get(&DimsKey(d)).copied().unwrap_or_else(|| {
                fresh += 1;
                fresh - 1
            })
        })
        .collect();
    (windows, dims)
}

fn first_duplicate(rows: &[MetricRow], side: &'static str) -> Error {
    let mut seen = HashSet::with_capacity_and_hasher(rows.len(), FoldBuild::default());
    rows.iter()
        .find(|r| !seen.insert(&r.key))
        .map(|r| duplicate(&r.key, side))
        .unwrap_or_else(|| Error::Internal(format!("a duplicate key in the {side} was detected but not found")))
}

/// The smallest key of a metric the spec does not define, on either side, and the side holding it.
fn unknown_metric(batch: &Columns<'_>, serving: &Columns<'_>) -> Option<Error> {
    let rows_of = |side: &Columns<'_>| -> Vec<usize> {
        side.parts.iter().filter(|p| p.metric.is_none()).flat_map(|p| p.row.iter().map(|&i| i as usize)).collect()
    };
    let (b, s) = (rows_of(batch), rows_of(serving));
    let smallest = b.iter().map(|&i| &batch.rows[i].key).chain(s.iter().map(|&i| &serving.rows[i].key)).min()?;
    let in_batch = b.iter().any(|&i| batch.rows[i].key == *smallest);
    Some(Error::UnknownMetric {
        metric: smallest.metric.clone(),
        side: if in_batch { "batch view" } else { "serving store" },
    })
}

/// Per-metric counts while merging.
#[derive(Debug, Default)]
struct Tally {
    checked: u64,
    verdicts: [u64; 4],
}

fn slot(v: Verdict) -> usize {
    match v {
        Verdict::Ok => 0,
        Verdict::MissingInServing => 1,
        Verdict::UnexpectedInServing => 2,
        Verdict::ValueDrift => 3,
    }
}

/// Merges one metric's sorted keys. `metric` is the spec's definition (both parts belong to it).
fn merge_metric<'r>(
    metric: &CompiledMetric,
    tolerances: &[Tolerance],
    (batch, batch_rows, bk): (Option<&Part<'_>>, &'r [MetricRow], &Keys),
    (serving, serving_rows, sk): (Option<&Part<'_>>, &'r [MetricRow], &Keys),
    differences: &mut Vec<KeyDiff>,
) -> Tally {
    let mut tally = Tally::default();
    let mut report = |b: Option<&'r MetricRow>, s: Option<&'r MetricRow>, tally: &mut Tally| {
        let (verdict, aggregates) = compare_key(metric, b, s);
        tally.verdicts[slot(verdict)] += 1;
        if verdict != Verdict::Ok {
            let row = b.or(s).expect("a key has a row on at least one side");
            differences.push(KeyDiff {
                key: row.key.clone(),
                verdict,
                aggregates,
                serving_origin: s.map(|r| r.origin.clone()),
                batch_events: b.map(|r| r.events),
                serving_events: s.map(|r| r.events),
            });
        }
    };
    let batch_row = |p: u32| batch.map(|part| &batch_rows[part.row[p as usize] as usize]);
    let serving_row = |p: u32| serving.map(|part| &serving_rows[part.row[p as usize] as usize]);
    let (mut i, mut j) = (0, 0);
    while i < bk.len() || j < sk.len() {
        tally.checked += 1;
        let order = match (bk.get(i), sk.get(j)) {
            (Some(b), Some(s)) => b.0.cmp(&s.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                report(batch_row(bk[i].1), None, &mut tally);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                report(None, serving_row(sk[j].1), &mut tally);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (bp, sp) = (bk[i].1, sk[j].1);
                let (bc, sc) = match (batch, serving) {
                    (Some(b), Some(s)) => (b.cells(bp as usize), s.cells(sp as usize)),
                    _ => unreachable!("equal keys come from both sides"),
                };
                let within = tolerances.iter().zip(bc.iter().zip(sc)).all(|(t, (x, y))| t.within(*x, *y));
                if within {
                    tally.verdicts[slot(Verdict::Ok)] += 1;
                } else {
                    report(batch_row(bp), serving_row(sp), &mut tally);
                }
                i += 1;
                j += 1;
            }
        }
    }
    tally
}

/// Compares two sides built from the same spec: the batch view (truth) and the serving store. The result
/// equals [`crate::diff()`]'s on the same rows (that function converts its rows and calls this).
pub fn diff_columns(batch: &Columns<'_>, serving: &Columns<'_>) -> Result<Diff, Error> {
    if !std::ptr::eq(batch.spec, serving.spec) && batch.spec != serving.spec {
        return Err(Error::Internal("the two sides of a diff were converted with different specs".into()));
    }
    let spec = batch.spec;
    let parallel = batch.len().max(serving.len()) >= PARALLEL_MIN_ROWS;
    let batch_keys = || batch.parts.iter().map(|p| sorted_keys(p, None, None)).collect::<Vec<Keys>>();
    let serving_keys = || {
        serving
            .parts
            .iter()
            .map(|p| {
                let (windows, dims) = id_maps(batch.part(p.name), p);
                sorted_keys(p, Some(&windows), Some(&dims))
            })
            .collect::<Vec<Keys>>()
    };
    let (bkeys, skeys) = if parallel { both(batch_keys, serving_keys) } else { (batch_keys(), serving_keys()) };
    if bkeys.iter().any(has_duplicates) {
        return Err(first_duplicate(batch.rows, "batch view"));
    }
    if skeys.iter().any(has_duplicates) {
        return Err(first_duplicate(serving.rows, "serving store"));
    }
    if let Some(e) = unknown_metric(batch, serving) {
        return Err(e);
    }

    let mut names: Vec<&str> = batch.parts.iter().chain(&serving.parts).map(|p| p.name).collect();
    names.sort_unstable();
    names.dedup();
    let empty = Keys::new();
    let mut differences = Vec::new();
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for name in names {
        let metric =
            spec.metric(name).ok_or_else(|| Error::Internal(format!("metric {name:?} lost its definition")))?;
        let tolerances: Vec<Tolerance> = metric.aggregates.iter().map(|a| a.tolerance).collect();
        let bi = batch.parts.iter().position(|p| p.name == name);
        let si = serving.parts.iter().position(|p| p.name == name);
        let tally = merge_metric(
            metric,
            &tolerances,
            (bi.map(|i| &batch.parts[i]), batch.rows, bi.map_or(&empty, |i| &bkeys[i])),
            (si.map(|i| &serving.parts[i]), serving.rows, si.map_or(&empty, |i| &skeys[i])),
            &mut differences,
        );
        tallies.insert(name, tally);
    }
    Ok(summarize(tallies, differences))
}

/// The totals, and the differences sorted by key.
fn summarize(tallies: BTreeMap<&str, Tally>, mut differences: Vec<KeyDiff>) -> Diff {
    differences.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let mut out = Diff::default();
    for (name, tally) in tallies {
        let summary = out.metrics.entry(name.to_owned()).or_default();
        summary.checked = tally.checked;
        for v in [Verdict::Ok, Verdict::MissingInServing, Verdict::UnexpectedInServing, Verdict::ValueDrift] {
            let n = tally.verdicts[slot(v)];
            if n > 0 {
                summary.verdicts.insert(v, n);
            }
        }
    }
    out.differences = differences;
    out.recompute_drift();
    out
}

/// The fast path for a clean range read in key order: both sides hold the same keys in the same strictly
/// increasing [`tidemark_core::RowKey`] order (as both stores return them, unless a dimension value holds a
/// character that sorts differently in the stores' canonical text) and every pair of rows is within
/// tolerance. Then every key is [`Verdict::Ok`] and nothing needs converting. Returns `None` at the first row
/// that breaks this (the caller then runs the full join, which also reports duplicates and undefined
/// metrics), so it costs at most one pass over the rows, on two threads when they are many.
pub(crate) fn aligned_clean(spec: &ValidSpec, batch: &[MetricRow], serving: &[MetricRow]) -> Option<Diff> {
    if batch.len() != serving.len() || batch.is_empty() {
        return None;
    }
    let stop = AtomicBool::new(false);
    let counts = if batch.len() < PARALLEL_MIN_ROWS {
        aligned_counts(spec, batch, serving, 0..batch.len(), &stop)?
    } else {
        let mid = batch.len() / 2;
        let (a, b) = both(
            || aligned_counts(spec, batch, serving, 0..mid, &stop),
            || aligned_counts(spec, batch, serving, mid..batch.len(), &stop),
        );
        let mut counts = a?;
        for (name, n) in b? {
            *counts.entry(name).or_default() += n;
        }
        counts
    };
    let tallies = counts.into_iter().map(|(name, n)| (name, Tally { checked: n, verdicts: [n, 0, 0, 0] })).collect();
    Some(summarize(tallies, Vec::new()))
}

/// Rows per metric in `range` if that part of both sides is aligned and within tolerance (the row before
/// `range.start` is included in the order check, so adjacent ranges check their seam). Gives up when `stop`
/// is set, and sets it when it gives up itself.
fn aligned_counts<'a>(
    spec: &ValidSpec,
    batch: &'a [MetricRow],
    serving: &'a [MetricRow],
    range: std::ops::Range<usize>,
    stop: &AtomicBool,
) -> Option<BTreeMap<&'a str, u64>> {
    let give_up = || {
        stop.store(true, Ordering::Relaxed);
        None
    };
    let mut counts: BTreeMap<&'a str, u64> = BTreeMap::new();
    // the current metric's name and rows so far, and its aggregates' (name, tolerance) sorted by name
    let mut current: Option<(&'a str, u64)> = None;
    let mut aggregates: Vec<(&str, Tolerance)> = Vec::new();
    for i in range {
        if i % 4096 == 0 && stop.load(Ordering::Relaxed) {
            return None;
        }
        let (b, s) = (&batch[i], &serving[i]);
        if b.key != s.key || (i > 0 && batch[i - 1].key >= b.key) {
            return give_up();
        }
        let name = b.key.metric.as_str();
        if current.as_ref().is_none_or(|c| c.0 != name) {
            if let Some((done, n)) = current.take() {
                *counts.entry(done).or_default() += n;
            }
            let Some(metric) = spec.metric(name) else { return give_up() };
            aggregates.clear();
            aggregates.extend(metric.aggregates.iter().map(|a| (a.name.as_str(), a.tolerance)));
            aggregates.sort_unstable_by(|x, y| x.0.cmp(y.0));
            current = Some((name, 0));
        }
        let Some((_, n)) = current.as_mut() else { unreachable!("set above") };
        if !all_within(&aggregates, b, s) {
            return give_up();
        }
        *n += 1;
    }
    if let Some((done, n)) = current {
        *counts.entry(done).or_default() += n;
    }
    Some(counts)
}

/// Whether every aggregate (`(name, tolerance)` sorted by name) is within tolerance in the two rows.
fn all_within(aggregates: &[(&str, Tolerance)], b: &MetricRow, s: &MetricRow) -> bool {
    // The usual rows hold exactly the spec's aggregates: walk the three name-ordered lists together.
    if b.values.len() == aggregates.len() && s.values.len() == aggregates.len() {
        let mut same_names = true;
        for (&(name, tolerance), ((bn, bv), (sn, sv))) in aggregates.iter().zip(b.values.iter().zip(&s.values)) {
            if bn != name || sn != name {
                same_names = false;
                break;
            }
            if !tolerance.within(*bv, *sv) {
                return false;
            }
        }
        if same_names {
            return true;
        }
    }
    aggregates.iter().all(|&(name, tolerance)| tolerance.within(value_of(Some(b), name), value_of(Some(s), name)))
}
