//! Step 1–2 of a run at scale: both sides read and compared one unit (a metric, a quarter of a UTC day of
//! window starts) at a time, as columnar chunks, keeping only differences as rows.
//!
//! Per unit:
//! 1. the batch view's rows are streamed into an index: key (window, interned dimensions) -> hash of the
//!    stored values text, events, and what the emission log says about the key; one small table per window
//!    start ([`Index`]), as every side is read in about window-start order;
//! 2. the serving rows are streamed and probed: a row with the same values text and events is equal (both
//!    layers write values with one encoder); any other row, and every serving-only row, is decoded in full;
//! 3. the emission log is streamed for the contract (first on-time firing per key, latency), the stream's
//!    watermark and restarts;
//! 4. when anything differs, the batch view is streamed again and only the rows of differing keys are
//!    decoded; the exact comparison ([`crate::diff()`], tolerances from the spec) runs on those rows alone.
//!    A first on-time firing whose values text differs from the truth's is checked against the truth's row
//!    only when one of the metric's tolerances is not exact: under exact tolerances two texts of the one
//!    encoder differ exactly when their values do (the one exception, `-0.0` against `0.0`, counts as a
//!    difference).
//!
//! Memory: one unit's index (about 60 bytes per batch row) plus one chunk of each side, plus the
//! differences. Equal values are recognised by a 64-bit hash of their text: two different texts of the same
//! key with the same hash (chance 2^-64 per key) would be taken as equal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher as _;
use std::sync::Arc;

use foldhash::fast::FixedState;
use futures::TryStreamExt as _;
use tidemark_core::spec::CompiledMetric;
use tidemark_core::window::WindowSpec;
use tidemark_core::{Dimensions, Duration, EventTime, MetricRow, Pane, RowKey, Tolerance, ValidSpec, Window};
use tidemark_store::batch_view::parse_values;
use tidemark_store::{BatchView, EmissionChunk, ServingStore};

use crate::contract::{ContractTally, values_within};
use crate::diff::{Diff, KeyDiff, Verdict, diff};
use crate::error::Error;
use crate::evidence::{SessionIndex, StreamFacts};
use crate::html::ChartPoint;

/// What the scan of a range found.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    /// Differences of every unit (sorted by key) and per-metric totals.
    pub(crate) diff: Diff,
    /// The batch rows of `missing_in_serving` and `value_drift` keys (what corrections write).
    pub(crate) fix_rows: Vec<MetricRow>,
    /// Session windows of both sides (where evidence places events).
    pub(crate) sessions: SessionIndex,
    /// Keys of the batch view's session windows (superseded sessions).
    pub(crate) batch_session_keys: Vec<RowKey>,
    /// The highest watermark a serving speed row carries.
    pub(crate) serving_watermark: Option<EventTime>,
    /// Distinct (run id, epoch) of the batch rows.
    pub(crate) batch_origins: BTreeSet<(String, i64)>,
    /// Batch rows read.
    pub(crate) batch_rows: u64,
    /// Per metric, what the contract report is computed from.
    pub(crate) tallies: BTreeMap<String, ContractTally>,
    /// The first speed emission of each differing key (correction latency).
    pub(crate) first_emitted: HashMap<RowKey, EventTime>,
    /// The emission log's watermark and restarts.
    pub(crate) stream: StreamFacts,
    /// Per metric, per window start: the report's charts.
    pub(crate) chart: BTreeMap<String, BTreeMap<i64, ChartPoint>>,
    /// The latest window end of either side.
    pub(crate) max_window_end: Option<EventTime>,
}

/// A key within one unit: window start, interned window length and interned dimensions (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    start: i64,
    len: u32,
    dims: u32,
}

const SEEN: u8 = 1;
const SUSPECT: u8 = 2;
const FOT_MISMATCH: u8 = 4;

/// What the index holds per batch key.
#[derive(Debug, Clone, Copy)]
struct Entry {
    values_hash: u64,
    events: i64,
    /// First on-time emission: (emitted at, revision); `i64::MAX` when none.
    fot_at: i64,
    fot_rev: u32,
    flags: u8,
    /// The first aggregate's value (the report's chart), 0 when the metric has none.
    first: f64,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The batch keys of a unit and their entries, grouped by window start: one small table per start.
/// Every side is read in roughly window-start order (the stream writes windows as they close, the batch
/// layer per time bucket), so consecutive lookups stay in one start's table, which fits in the CPU caches;
/// one table of all keys (hundreds of MB at 10M events) cost a cache miss per lookup, most of a pass.
#[derive(Debug, Default)]
struct Index {
    slot_of: FastMap<i64, u32>,
    /// Per slot: its window start and its keys.
    slots: Vec<(i64, Slot)>,
}

/// The keys of one window start: (interned length, interned dimensions) -> entry.
type Slot = FastMap<(u32, u32), Entry>;

impl Index {
    /// Adds `key`; returns the entry it had if it was there already (and keeps the new one).
    fn insert(&mut self, key: Key, entry: Entry) -> Option<Entry> {
        let next = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        let slot = *self.slot_of.entry(key.start).or_insert(next);
        if slot == next {
            self.slots.push((key.start, Slot::default()));
        }
        self.slots[slot as usize].1.insert((key.len, key.dims), entry)
    }

    fn get(&self, key: &Key) -> Option<&Entry> {
        let slot = *self.slot_of.get(&key.start)?;
        self.slots[slot as usize].1.get(&(key.len, key.dims))
    }

    fn get_mut(&mut self, key: &Key) -> Option<&mut Entry> {
        let slot = *self.slot_of.get(&key.start)?;
        self.slots[slot as usize].1.get_mut(&(key.len, key.dims))
    }

    fn contains_key(&self, key: &Key) -> bool {
        self.get(key).is_some()
    }

    /// Every key and its entry, in no particular order.
    fn iter(&self) -> impl Iterator<Item = (Key, &Entry)> {
        self.slots
            .iter()
            .flat_map(|(start, keys)| keys.iter().map(|(&(len, dims), e)| (Key { start: *start, len, dims }, e)))
    }
}

/// Dimension texts and window lengths of one unit interned to integers.
#[derive(Debug, Default)]
struct Interner {
    dims: FastMap<Box<str>, u32>,
    lens: FastMap<i64, u32>,
    len_of: Vec<i64>,
}

impl Interner {
    /// The key of a window and dimension text, interning both.
    fn key(&mut self, start: i64, end: i64, dims: &str) -> Key {
        let next = u32::try_from(self.dims.len()).unwrap_or(u32::MAX);
        let d = match self.dims.get(dims) {
            Some(id) => *id,
            None => *self.dims.entry(dims.into()).or_insert(next),
        };
        let next = u32::try_from(self.len_of.len()).unwrap_or(u32::MAX);
        let len = *self.lens.entry(end - start).or_insert(next);
        if len == next {
            self.len_of.push(end - start);
        }
        Key { start, len, dims: d }
    }

    /// The key of a window and dimension text if both were interned.
    fn find(&self, start: i64, end: i64, dims: &str) -> Option<Key> {
        Some(Key { start, len: *self.lens.get(&(end - start))?, dims: *self.dims.get(dims)? })
    }

    /// The window end of `key`.
    fn end(&self, key: &Key) -> i64 {
        key.start + self.len_of.get(key.len as usize).copied().unwrap_or(0)
    }
}

fn values_hash(text: &str) -> u64 {
    FixedState::with_seed(0x7469_6465_6d61_726b).hash_one(text.as_bytes())
}

fn time(us: i64) -> Result<EventTime, Error> {
    EventTime::from_micros(us).ok_or_else(|| Error::Internal(format!("a stored time out of range: {us} us")))
}

fn row_key(metric: &str, start: i64, end: i64, dims: &str) -> Result<RowKey, Error> {
    let window = Window::new(time(start)?, time(end)?)
        .ok_or_else(|| Error::Internal(format!("a stored window [{start}, {end}) of {metric} is empty")))?;
    let dims = Dimensions::decode(dims).map_err(|e| Error::Internal(format!("stored dimensions of {metric}: {e}")))?;
    Ok(RowKey { metric: metric.to_owned(), window, dims })
}

/// The value of aggregate `name` in a stored values text (a flat JSON object of identifiers to numbers or
/// null, see [`parse_values`]), as a number; 0 when absent or null. Reads the text in place.
fn first_value(text: &str, name: &str) -> f64 {
    let mut rest = text;
    while let Some(at) = rest.find('"') {
        rest = &rest[at + 1..];
        let Some(end) = rest.find('"') else { break };
        let (field, after) = (&rest[..end], &rest[end + 1..]);
        let after = after.trim_start();
        let Some(value) = after.strip_prefix(':') else {
            rest = after;
            continue;
        };
        let value = value.trim_start();
        let len = value.find([',', '}']).unwrap_or(value.len());
        if field == name {
            return value[..len].trim().parse::<f64>().unwrap_or(0.0);
        }
        rest = &value[len..];
    }
    0.0
}

/// How much window-start time one scan unit covers: a quarter of a UTC day, so a day's units of the
/// metrics keep both cores busy to the end (the units of a hopping metric are several times those of a
/// tumbling one) and memory holds a quarter of a day's index per unit in flight.
const SCAN_BLOCK_US: i64 = 6 * 3_600_000_000;

/// `[from, to)` cut at the multiples of `every` microseconds (since the epoch, UTC), each piece cut to the range.
fn cuts(from: EventTime, to: EventTime, every: i64) -> Vec<(EventTime, EventTime)> {
    let mut out = Vec::new();
    let mut a = from.as_micros();
    let end = to.as_micros();
    while a < end {
        let b = (a.div_euclid(every) + 1).saturating_mul(every).min(end);
        if let (Some(x), Some(y)) = (EventTime::from_micros(a), EventTime::from_micros(b)) {
            out.push((x, y));
        }
        a = b;
    }
    out
}

/// Reads and compares `[from, to)` in units of one metric and a quarter of a UTC day of window starts, as
/// many at once as there are cores (each unit's own loops run on one core), merged in unit order: the result
/// is the same as one unit after another, and memory holds the units in flight.
pub(crate) async fn scan(
    spec: &ValidSpec,
    serving: Arc<dyn ServingStore>,
    view: &BatchView,
    from: EventTime,
    to: EventTime,
) -> Result<Scanned, Error> {
    let spec = Arc::new(spec.clone());
    let lanes = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let permits = Arc::new(tokio::sync::Semaphore::new(lanes));
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0usize;
    for m in 0..spec.metrics().len() {
        for (a, b) in cuts(from, to, SCAN_BLOCK_US) {
            let (spec, serving, view, permits) = (spec.clone(), serving.clone(), view.clone(), permits.clone());
            let i = n;
            n += 1;
            tasks.spawn(async move {
                // the semaphore is fair: units start in order
                let _permit =
                    permits.acquire_owned().await.map_err(|e| Error::Internal(format!("scan permits: {e}")))?;
                let mut part = Scanned::default();
                let metric = &spec.metrics()[m];
                part.diff.differences = scan_unit(&spec, metric, &*serving, &view, a, b, &mut part).await?;
                Ok::<_, Error>((i, part))
            });
        }
    }
    let mut parts: Vec<Option<Scanned>> = std::iter::repeat_with(|| None).take(n).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, part) = joined.map_err(|e| Error::Internal(format!("a unit scan failed: {e}")))??;
        parts[i] = Some(part);
    }
    let mut out = Scanned::default();
    let mut differences: Vec<KeyDiff> = Vec::new();
    for mut part in parts.into_iter().flatten() {
        differences.append(&mut part.diff.differences);
        out.absorb(part);
    }
    differences.sort_by(|x, y| x.key.cmp(&y.key));
    out.diff.differences = differences;
    out.diff.recompute_drift();
    Ok(out)
}

impl Scanned {
    /// Adds what a later unit found (its differences are taken separately).
    fn absorb(&mut self, part: Scanned) {
        let Scanned {
            diff,
            fix_rows,
            sessions,
            batch_session_keys,
            serving_watermark,
            batch_origins,
            batch_rows,
            tallies,
            first_emitted,
            stream,
            chart,
            max_window_end,
        } = part;
        for (metric, summary) in diff.metrics {
            self.diff.metrics.entry(metric).or_default().add_counts(&summary);
        }
        self.fix_rows.extend(fix_rows);
        self.sessions.absorb(sessions);
        self.batch_session_keys.extend(batch_session_keys);
        self.serving_watermark = self.serving_watermark.max(serving_watermark);
        self.batch_origins.extend(batch_origins);
        self.batch_rows += batch_rows;
        for (metric, t) in tallies {
            let total = self.tallies.entry(metric).or_default();
            total.windows += t.windows;
            total.first_on_time_within += t.first_on_time_within;
            total.differing += t.differing;
            total.finalization.extend(t.finalization);
            total.finalized_within += t.finalized_within;
            total.events += t.events;
        }
        self.first_emitted.extend(first_emitted);
        self.stream.absorb(stream);
        for (metric, points) in chart {
            let total = self.chart.entry(metric).or_default();
            for (start, p) in points {
                let q = total.entry(start).or_default();
                q.windows += p.windows;
                q.differing += p.differing;
                q.batch += p.batch;
                q.provisional += p.provisional;
            }
        }
        self.max_window_end = self.max_window_end.max(max_window_end);
    }
}

/// One unit: `metric`'s windows starting in `[from, to)` (within one UTC day). Returns its differences.
#[allow(clippy::too_many_lines)]
async fn scan_unit(
    spec: &ValidSpec,
    metric: &CompiledMetric,
    serving: &dyn ServingStore,
    view: &BatchView,
    from: EventTime,
    to: EventTime,
    out: &mut Scanned,
) -> Result<Vec<KeyDiff>, Error> {
    let name = metric.name.as_str();
    let is_session = matches!(metric.window, WindowSpec::Session(_));
    let first_agg = metric.aggregates.first().map(|a| a.name.clone());
    let mut dims = Interner::default();
    let mut index = Index::default();
    let chart = out.chart.entry(name.to_owned()).or_default();
    let clock = crate::run::Clock::start();

    // 1. the batch side into the index
    let mut last_origin: Option<(String, i64)> = None;
    let mut chunks = view.scan_rows(name, from, to);
    while let Some(c) = chunks.try_next().await? {
        for i in 0..c.len() {
            let (start, end) = (c.window_start(i), c.window_end(i));
            let key = dims.key(start, end, c.dims(i));
            let values = c.values_json(i);
            let first = first_agg.as_ref().map_or(0.0, |agg| first_value(values, agg));
            let entry = Entry {
                values_hash: values_hash(values),
                events: c.events(i),
                fot_at: i64::MAX,
                fot_rev: 0,
                flags: 0,
                first,
            };
            if index.insert(key, entry).is_some() {
                let k = row_key(name, start, end, c.dims(i))?;
                return Err(Error::DuplicateKey {
                    key: format!("{} {} {}", k.metric, k.window, k.dims),
                    side: "batch",
                });
            }
            let point = chart.entry(start).or_default();
            point.windows += 1;
            point.batch += first;
            point.provisional += first;
            if is_session {
                let k = row_key(name, start, end, c.dims(i))?;
                out.sessions.add(spec, &k);
                out.batch_session_keys.push(k);
            }
        }
        for i in 0..c.len() {
            if let Some((run, epoch)) = c.batch_run(i)
                && last_origin.as_ref().is_none_or(|(r, e)| r != run || *e != epoch)
            {
                last_origin = Some((run.to_owned(), epoch));
                out.batch_origins.insert((run.to_owned(), epoch));
            }
        }
        out.batch_rows += c.len() as u64;
    }
    drop(chunks);
    clock.lap("unit: index the batch view");

    // 2. the serving side, probed
    let mut max_end = i64::MIN;
    let mut serving_rows: Vec<MetricRow> = Vec::new();
    let mut picked: Vec<usize> = Vec::new();
    let mut clean = 0u64;
    let mut chunks = serving.scan_rows(name, from, to);
    while let Some(c) = chunks.try_next().await? {
        for i in 0..c.len() {
            if let Some(w) = c.speed_watermark(i).and_then(EventTime::from_micros) {
                out.serving_watermark = Some(out.serving_watermark.map_or(w, |x| x.max(w)));
            }
            let (start, end) = (c.window_start(i), c.window_end(i));
            max_end = max_end.max(end);
            if is_session {
                out.sessions.add(spec, &row_key(name, start, end, c.dims(i))?);
            }
            let entry = dims.find(start, end, c.dims(i)).and_then(|k| index.get_mut(&k));
            match entry {
                Some(e) => {
                    if e.flags & SEEN != 0 {
                        let k = row_key(name, start, end, c.dims(i))?;
                        return Err(Error::DuplicateKey {
                            key: format!("{} {} {}", k.metric, k.window, k.dims),
                            side: "serving",
                        });
                    }
                    e.flags |= SEEN;
                    if e.values_hash == values_hash(c.values_json(i)) && e.events == c.events(i) {
                        clean += 1;
                    } else {
                        e.flags |= SUSPECT;
                        picked.push(i);
                    }
                }
                None => picked.push(i),
            }
        }
        serving_rows.extend(c.rows(&picked)?);
        picked.clear();
    }
    drop(chunks);
    clock.lap("unit: probe the serving rows");
    if let Some(end) = index
        .iter()
        .map(|(k, _)| dims.end(&k))
        .max()
        .map(|e| e.max(max_end))
        .or((max_end > i64::MIN).then_some(max_end))
        .and_then(EventTime::from_micros)
    {
        out.max_window_end = Some(out.max_window_end.map_or(end, |x| x.max(end)));
    }
    // serving-only keys, for the first emission of what corrections delete
    let mut serving_only: FastMap<(i64, i64, String), i64> = FastMap::default();
    for r in &serving_rows {
        let (s, e) = (r.key.window.start().as_micros(), r.key.window.end().as_micros());
        let known = dims.find(s, e, &r.key.dims.encode()).is_some_and(|k| index.contains_key(&k));
        if !known {
            serving_only.insert((s, e, r.key.dims.encode()), i64::MAX);
        }
    }
    // batch keys that may differ, for their first emission (any pane)
    let mut first_any: FastMap<Key, i64> = index
        .iter()
        .filter(|(_, e)| e.flags & SUSPECT != 0 || e.flags & SEEN == 0)
        .map(|(k, _)| (k, i64::MAX))
        .collect();

    // 3. the emission log
    let mut mismatched: FastMap<Key, String> = FastMap::default();
    let mut chunks = serving.scan_emissions(name, from, to);
    while let Some(c) = chunks.try_next().await? {
        let firsts = Firsts { batch: &mut first_any, serving_only: &mut serving_only };
        scan_emissions(&c, &dims, &mut index, firsts, &mut mismatched, &mut out.stream);
    }
    drop(chunks);
    clock.lap("unit: scan the emission log");

    // 4. the contract's tallies and the chart's provisional values; differing keys, and first on-time
    // firings whose text differs from the truth under a tolerance that is not exact, decoded from a
    // second pass over the batch side
    let exact = metric.aggregates.iter().all(|a| matches!(a.tolerance, Tolerance::Exact));
    let tally = out.tallies.entry(name.to_owned()).or_default();
    let mut needed = 0usize;
    for (k, e) in index.iter() {
        tally.windows += 1;
        tally.events += u64::try_from(e.events).unwrap_or(0);
        if e.fot_at == i64::MAX {
            chart.entry(k.start).or_default().provisional -= e.first;
        } else {
            let lat = Duration::from_micros(e.fot_at.saturating_sub(dims.end(&k)).max(0)).unwrap_or(Duration::ZERO);
            tally.finalization.push(lat);
            if lat <= spec.spec().contract.finalization_latency {
                tally.finalized_within += 1;
            }
            if e.flags & FOT_MISMATCH == 0 {
                tally.first_on_time_within += 1;
            } else if let (Some(agg), Some(text)) = (&first_agg, mismatched.get(&k)) {
                chart.entry(k.start).or_default().provisional += first_value(text, agg) - e.first;
            }
        }
        let fot_check = e.flags & FOT_MISMATCH != 0 && !exact;
        if e.flags & SUSPECT != 0 || e.flags & SEEN == 0 || fot_check {
            needed += 1;
        }
    }
    let mut batch_rows: Vec<MetricRow> = Vec::new();
    if needed > 0 {
        let mut chunks = view.scan_rows(name, from, to);
        while let Some(c) = chunks.try_next().await? {
            for i in 0..c.len() {
                let (start, end) = (c.window_start(i), c.window_end(i));
                let Some(key) = dims.find(start, end, c.dims(i)) else { continue };
                let Some(e) = index.get(&key) else { continue };
                let differs = e.flags & SUSPECT != 0 || e.flags & SEEN == 0;
                if differs || (e.flags & FOT_MISMATCH != 0 && !exact) {
                    picked.push(i);
                }
            }
            for row in c.rows(&picked)? {
                let (start, end) = (row.key.window.start().as_micros(), row.key.window.end().as_micros());
                let Some(key) = dims.find(start, end, &row.key.dims.encode()) else { continue };
                let Some(e) = index.get(&key) else { continue };
                if e.flags & FOT_MISMATCH != 0
                    && !exact
                    && let Some(emitted) = mismatched.get(&key).and_then(|t| parse_values(t))
                    && values_within(metric, &emitted, &row.values)
                {
                    // equal within tolerance though not in text
                    tally.first_on_time_within += 1;
                }
                if e.flags & SUSPECT != 0 || e.flags & SEEN == 0 {
                    batch_rows.push(row);
                }
            }
            picked.clear();
        }
    }

    clock.lap("unit: decode the batch rows that may differ");
    // 5. the exact comparison of the rows that may differ
    let mut part = diff(spec, &batch_rows, &serving_rows)?;
    let summary = part.metrics.entry(name.to_owned()).or_default();
    summary.checked += clean;
    // no `ok: 0` entry when every key differs: the counts must equal the whole diff's, which has none
    if clean > 0 {
        *summary.verdicts.entry(Verdict::Ok).or_default() += clean;
    }
    out.diff.metrics.entry(name.to_owned()).or_default().add_counts(summary);
    let differing: std::collections::HashSet<&RowKey> = part.differences.iter().map(|d| &d.key).collect();
    for d in &part.differences {
        let (s, e) = (d.key.window.start().as_micros(), d.key.window.end().as_micros());
        let first = match dims.find(s, e, &d.key.dims.encode()).filter(|k| index.contains_key(k)) {
            Some(key) => {
                tally.differing += 1;
                chart.entry(s).or_default().differing += 1;
                first_any.get(&key).copied().unwrap_or(i64::MAX)
            }
            None => serving_only.get(&(s, e, d.key.dims.encode())).copied().unwrap_or(i64::MAX),
        };
        if let Some(t) = (first != i64::MAX).then(|| EventTime::from_micros(first)).flatten() {
            out.first_emitted.insert(d.key.clone(), t);
        }
    }
    out.fix_rows.extend(batch_rows.into_iter().filter(|r| differing.contains(&r.key)));
    clock.lap("unit: compare");
    Ok(std::mem::take(&mut part.differences))
}

/// First emissions (any pane) of the keys that may differ.
struct Firsts<'a> {
    batch: &'a mut FastMap<Key, i64>,
    serving_only: &'a mut FastMap<(i64, i64, String), i64>,
}

/// One chunk of the emission log: watermarks, restarts, and per batch key its first firings.
fn scan_emissions(
    c: &EmissionChunk,
    dims: &Interner,
    index: &mut Index,
    firsts: Firsts<'_>,
    mismatched: &mut FastMap<Key, String>,
    stream: &mut StreamFacts,
) {
    for i in 0..c.len() {
        stream.observe(c.writer_epoch(i), c.watermark(i));
        if c.delta(i) {
            continue;
        }
        let (start, end, at) = (c.window_start(i), c.window_end(i), c.emitted_at(i));
        let Some((key, e)) = dims.find(start, end, c.dims(i)).and_then(|k| index.get_mut(&k).map(|e| (k, e))) else {
            if let Some(first) = firsts.serving_only.get_mut(&(start, end, c.dims(i).to_owned())) {
                *first = (*first).min(at);
            }
            continue;
        };
        if let Some(first) = firsts.batch.get_mut(&key) {
            *first = (*first).min(at);
        }
        if c.pane(i) == Some(Pane::OnTime) && (at, c.revision(i)) < (e.fot_at, e.fot_rev) {
            e.fot_at = at;
            e.fot_rev = c.revision(i);
            if values_hash(c.values_json(i)) == e.values_hash {
                e.flags &= !FOT_MISMATCH;
                mismatched.remove(&key);
            } else {
                e.flags |= FOT_MISMATCH;
                mismatched.insert(key, c.values_json(i).to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tidemark_core::AggValue;

    use super::*;

    #[test]
    fn cuts_fall_on_multiples_of_the_block() {
        let t = |s: &str| s.parse::<EventTime>().unwrap();
        const DAY: i64 = 86_400_000_000;
        assert_eq!(
            cuts(t("2026-01-01T22:00:00Z"), t("2026-01-03T01:00:00Z"), DAY),
            vec![
                (t("2026-01-01T22:00:00Z"), t("2026-01-02T00:00:00Z")),
                (t("2026-01-02T00:00:00Z"), t("2026-01-03T00:00:00Z")),
                (t("2026-01-03T00:00:00Z"), t("2026-01-03T01:00:00Z")),
            ]
        );
        assert!(cuts(t("2026-01-01T00:00:00Z"), t("2026-01-01T00:00:00Z"), DAY).is_empty());
        assert_eq!(
            cuts(t("2026-01-01T05:00:00Z"), t("2026-01-01T13:30:00Z"), SCAN_BLOCK_US),
            vec![
                (t("2026-01-01T05:00:00Z"), t("2026-01-01T06:00:00Z")),
                (t("2026-01-01T06:00:00Z"), t("2026-01-01T12:00:00Z")),
                (t("2026-01-01T12:00:00Z"), t("2026-01-01T13:30:00Z")),
            ]
        );
    }

    #[test]
    fn first_value_reads_one_aggregate_in_place() {
        let text = r#"{"bytes":1.5e3,"n":42,"nn":null,"x":-0.25}"#;
        assert_eq!(first_value(text, "n"), 42.0);
        assert_eq!(first_value(text, "bytes"), 1500.0);
        assert_eq!(first_value(text, "x"), -0.25);
        assert_eq!(first_value(text, "nn"), 0.0, "null");
        assert_eq!(first_value(text, "missing"), 0.0);
        assert_eq!(first_value("{}", "n"), 0.0);
        // agrees with the full parser on what the encoder writes
        let values = std::collections::BTreeMap::from([
            ("a".to_owned(), AggValue::Float(0.1 + 0.2)),
            ("b".to_owned(), AggValue::Int(-7)),
        ]);
        let text = serde_json::to_string(&values).unwrap();
        assert_eq!(first_value(&text, "a"), 0.1 + 0.2);
        assert_eq!(first_value(&text, "b"), -7.0);
    }
}
