//! The flat record both serving-store drivers persist (one per row key, plus delta and emission-log
//! records): encoding of changes and corrections, precedence (`Flat::wins_over`), de-duplication within a
//! write, and decoding back to rows and emissions. Internal to the crate.

use std::collections::BTreeMap;

use tidemark_core::{AggValue, Dimensions, EventTime, Layer, MetricRow, Origin, Pane, RowChange, RowKey, Window};

use crate::error::{Error, Result};
use crate::model::{Correction, CorrectionBatch, Emission, check_id, check_text};

/// What kind of record a flat row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// The current row of the key.
    Row,
    /// A late-policy delta of a key, stored beside the row, identified by its revision.
    Delta(u32),
    /// A speed-layer firing recorded in the emission log: an upsert (`delta == false`) or a late-policy
    /// delta of `revision`. Never a current row; never replaces anything.
    Emission {
        /// The firing's revision.
        revision: u32,
        /// Whether the firing was a late-policy delta.
        delta: bool,
    },
}

/// The persisted form of one change: one record per key (plus delta records).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Flat {
    pub metric: String,
    pub window_start: i64,
    pub window_end: i64,
    pub dims: String,
    pub kind: Kind,
    pub values_json: String,
    pub events: i64,
    pub layer: Layer,
    pub revision: Option<i64>,
    pub pane: Option<&'static str>,
    pub watermark: Option<i64>,
    pub batch_run_id: Option<String>,
    pub batch_epoch: Option<i64>,
    pub computed_at: i64,
    pub deleted: bool,
}

impl Flat {
    pub fn delta_revision(&self) -> i64 {
        match self.kind {
            Kind::Row => -1,
            Kind::Delta(r) | Kind::Emission { revision: r, .. } => i64::from(r),
        }
    }

    /// UTC date of the window start (`YYYY-MM-DD`), the Delta partition value.
    pub fn window_date(&self) -> String {
        date_of(self.window_start)
    }

    /// The UTC hour of the window start, `YYYY-MM-DDTHH` (the `window_hour` partition value).
    pub fn window_hour(&self) -> String {
        hour_of(self.window_start)
    }

    /// Whether this record replaces `stored` (the same predicate both stores evaluate in SQL).
    pub fn wins_over(&self, stored: &Flat) -> bool {
        self.wins_over_stored(stored.layer, stored.batch_epoch, stored.revision)
    }

    /// [`Flat::wins_over`] a stored record of this layer, batch epoch and revision (a record of the same key
    /// read from a store's columns).
    pub(crate) fn wins_over_stored(&self, layer: Layer, batch_epoch: Option<i64>, revision: Option<i64>) -> bool {
        match self.kind {
            Kind::Delta(_) | Kind::Emission { .. } => false,
            Kind::Row => match (self.layer, layer) {
                (Layer::Batch, Layer::Speed) => true,
                (Layer::Batch, Layer::Batch) => self.batch_epoch >= batch_epoch,
                (Layer::Speed, Layer::Batch) => false,
                (Layer::Speed, Layer::Speed) => self.revision > revision || (self.deleted && self.revision >= revision),
            },
        }
    }

    pub(crate) fn from_row(row: &MetricRow, kind: Kind, deleted: bool) -> Result<Self> {
        check_row_key(&row.key)?;
        for name in row.values.keys() {
            check_text("aggregate name", name)?;
        }
        let values_json =
            serde_json::to_string(&row.values).map_err(|e| Error::invalid("aggregate values", e.to_string()))?;
        let events = i64::try_from(row.events).map_err(|_| Error::invalid("events", "above i64::MAX"))?;
        let (revision, pane, watermark, batch_run_id, batch_epoch) = match &row.origin {
            Origin::Speed { revision, pane, watermark } => {
                (Some(i64::from(*revision)), Some(pane_str(*pane)), Some(watermark.as_micros()), None, None)
            }
            Origin::Batch { run_id, epoch } => {
                check_text("batch run id", run_id)?;
                (None, None, None, Some(run_id.clone()), Some(*epoch))
            }
        };
        Ok(Flat {
            metric: row.key.metric.clone(),
            window_start: row.key.window.start().as_micros(),
            window_end: row.key.window.end().as_micros(),
            dims: row.key.dims.encode(),
            kind,
            values_json,
            events,
            layer: row.origin.layer(),
            revision,
            pane,
            watermark,
            batch_run_id,
            batch_epoch,
            computed_at: row.computed_at.as_micros(),
            deleted,
        })
    }

    fn tombstone(key: &RowKey, origin: Origin, computed_at: EventTime) -> Result<Self> {
        let row = MetricRow { key: key.clone(), values: BTreeMap::new(), events: 0, origin, computed_at };
        Flat::from_row(&row, Kind::Row, true)
    }

    /// Back to a row (for reads). Tombstones are never returned by reads.
    pub fn into_row(self) -> Result<MetricRow> {
        let bad = |what: &str| Error::Corrupt(format!("{what} of a stored row of metric {:?}", self.metric));
        let start = EventTime::from_micros(self.window_start).ok_or_else(|| bad("window_start"))?;
        let end = EventTime::from_micros(self.window_end).ok_or_else(|| bad("window_end"))?;
        let window = Window::new(start, end).ok_or_else(|| bad("window"))?;
        let dims = Dimensions::decode(&self.dims).map_err(|e| Error::Corrupt(e.to_string()))?;
        let values: BTreeMap<String, AggValue> =
            serde_json::from_str(&self.values_json).map_err(|e| Error::Corrupt(format!("values: {e}")))?;
        let origin = match self.layer {
            Layer::Speed => Origin::Speed {
                revision: self.revision.and_then(|r| u32::try_from(r).ok()).ok_or_else(|| bad("revision"))?,
                pane: self.pane.and_then(parse_pane).ok_or_else(|| bad("pane"))?,
                watermark: self.watermark.and_then(EventTime::from_micros).ok_or_else(|| bad("watermark"))?,
            },
            Layer::Batch => Origin::Batch {
                run_id: self.batch_run_id.clone().ok_or_else(|| bad("batch_run_id"))?,
                epoch: self.batch_epoch.ok_or_else(|| bad("batch_epoch"))?,
            },
        };
        let origin = match (self.kind, origin) {
            (Kind::Delta(r), Origin::Speed { pane, watermark, .. }) => Origin::Speed { revision: r, pane, watermark },
            (_, o) => o,
        };
        Ok(MetricRow {
            key: RowKey { metric: self.metric.clone(), window, dims },
            values,
            events: u64::try_from(self.events).map_err(|_| bad("events"))?,
            origin,
            computed_at: EventTime::from_micros(self.computed_at).ok_or_else(|| bad("computed_at"))?,
        })
    }
}

fn check_row_key(key: &RowKey) -> Result<()> {
    if key.metric.is_empty() || key.metric.len() > 255 {
        return Err(Error::invalid("metric name", format!("{:?} must be 1-255 bytes", key.metric)));
    }
    check_text("metric name", &key.metric)?;
    check_text("dimensions", &key.dims.encode())
}

pub(crate) fn pane_str(p: Pane) -> &'static str {
    match p {
        Pane::Early => "early",
        Pane::OnTime => "on_time",
        Pane::Late => "late",
    }
}

pub(crate) fn parse_pane(s: &str) -> Option<Pane> {
    match s {
        "early" => Some(Pane::Early),
        "on_time" => Some(Pane::OnTime),
        "late" => Some(Pane::Late),
        _ => None,
    }
}

pub(crate) fn layer_str(l: Layer) -> &'static str {
    match l {
        Layer::Speed => "speed",
        Layer::Batch => "batch",
    }
}

pub(crate) fn parse_layer(s: &str) -> Option<Layer> {
    match s {
        "speed" => Some(Layer::Speed),
        "batch" => Some(Layer::Batch),
        _ => None,
    }
}

/// UTC date (`YYYY-MM-DD`) of a µs timestamp.
pub(crate) fn date_of(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "out-of-range".to_owned())
}

/// UTC hour `YYYY-MM-DDTHH` of a time (the serving table's `window_hour` partition value).
pub(crate) fn hour_of(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.format("%Y-%m-%dT%H").to_string())
        .unwrap_or_else(|| "out-of-range".to_owned())
}

/// Converts speed-layer changes to flat records, keeping per key only the change that wins (a statement
/// may not carry one key twice). Order of the input matters only between equal-precedence changes:
/// the later one is dropped, as the store would refuse it.
pub(crate) fn flatten_changes(changes: &[RowChange], now: EventTime) -> Result<Vec<Flat>> {
    let flats = changes.iter().map(|c| flat_of(c, now).map(|(flat, _)| flat)).collect::<Result<Vec<_>>>()?;
    Ok(dedup(flats))
}

/// One speed-layer change as a flat record, and whether it is a firing (a speed upsert or delta: an
/// emission-log record; retractions are not firings).
fn flat_of(change: &RowChange, now: EventTime) -> Result<(Flat, bool)> {
    Ok(match change {
        RowChange::Upsert(row) => (Flat::from_row(row, Kind::Row, false)?, matches!(row.origin, Origin::Speed { .. })),
        RowChange::Delta(row) => {
            let Origin::Speed { revision, .. } = row.origin else {
                return Err(Error::invalid("delta row", "a late-policy delta must come from the speed layer"));
            };
            (Flat::from_row(row, Kind::Delta(revision), false)?, true)
        }
        RowChange::Retract { key, revision } => (
            Flat::tombstone(
                key,
                Origin::Speed { revision: *revision, pane: Pane::Late, watermark: EventTime::UNIX_EPOCH },
                now,
            )?,
            false,
        ),
    })
}

/// A change of a provisional write, marked for a store that sends each change once: `apply` when it is
/// its key's winner (exactly the records [`flatten_changes`] keeps), `emit` when it is an emission-log
/// record (exactly those of [`emission_flats`]: speed upserts and deltas, the first of a repeated (key,
/// revision, delta)).
#[derive(Debug, Clone)]
pub(crate) struct Marked {
    pub flat: Flat,
    pub apply: bool,
    pub emit: bool,
}

/// Below this many changes per thread, [`mark_changes`] encodes on the calling thread only.
const PARALLEL_MIN: usize = 20_000;

/// Runs the encoding `f` of `n` changes from async code. On a multi-thread tokio runtime a large input
/// (1M changes: 0.6–2 s) runs in `block_in_place`, so that the worker's other tasks move to another worker
/// meanwhile; a small input, or any input on a current-thread runtime (where `block_in_place` is not
/// allowed), runs inline.
pub(crate) fn encode<T>(n: usize, f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread && n >= PARALLEL_MIN { tokio::task::block_in_place(f) } else { f() }
}

/// [`flatten_changes`] and [`emission_flats`] in one pass, without a second record per firing: every
/// change once, sorted by key (input order among equal keys), marked.
pub(crate) fn mark_changes(changes: &[RowChange], now: EventTime) -> Result<Vec<Marked>> {
    // `emit` holds "is a firing" until the runs below decide
    let mark = |c: &[RowChange]| -> Result<Vec<Marked>> {
        c.iter().map(|change| flat_of(change, now).map(|(flat, emit)| Marked { flat, apply: false, emit })).collect()
    };
    // encoding is most of the client's work on a large write and the server waits for it: use the cores
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(changes.len() / PARALLEL_MIN);
    let out = if threads > 1 {
        let parts: Vec<Result<Vec<Marked>>> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                changes.chunks(changes.len().div_ceil(threads)).map(|c| scope.spawn(move || mark(c))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let mut out = Vec::with_capacity(changes.len());
        for part in parts {
            out.append(&mut part?);
        }
        out
    } else {
        mark(changes)?
    };
    let mut out = sorted_by_key(out);
    let mut start = 0;
    while start < out.len() {
        let mut end = start + 1;
        while end < out.len() && cmp_keys(&out[start].flat, &out[end].flat).is_eq() {
            end += 1;
        }
        // the winner folds as `dedup` does; a firing emits unless an earlier one of the run has its revision
        let mut winner = start;
        let mut fired: Vec<Option<i64>> = Vec::new();
        for i in start..end {
            if i > start && out[i].flat.wins_over(&out[winner].flat) {
                winner = i;
            }
            if out[i].emit {
                if fired.contains(&out[i].flat.revision) {
                    out[i].emit = false;
                } else {
                    fired.push(out[i].flat.revision);
                }
            }
        }
        out[winner].apply = true;
        start = end;
    }
    Ok(out)
}

/// `marked` in key order (ties in input order). A flush is often in key order already. Otherwise metric
/// names and dimension keys are ranked (hashed, and only the distinct ones sorted), the records' keys
/// sorted as integers, and the records moved once: sorting the ~200-byte records by their strings took
/// 0.4–0.9 s for 1M changes, mostly cache misses and moves.
fn sorted_by_key(marked: Vec<Marked>) -> Vec<Marked> {
    if marked.is_sorted_by(|a, b| cmp_keys(&a.flat, &b.flat).is_le()) {
        return marked;
    }
    let metrics = Ranks::of(marked.iter().map(|m| m.flat.metric.as_str()));
    let dims = Ranks::of(marked.iter().map(|m| m.flat.dims.as_str()));
    let mut keys: Vec<(u32, i64, i64, u32, Kind, usize)> = marked
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let f = &m.flat;
            (metrics.rank(&f.metric), f.window_start, f.window_end, dims.rank(&f.dims), f.kind, i)
        })
        .collect();
    keys.sort_unstable();
    let mut slots: Vec<Option<Marked>> = marked.into_iter().map(Some).collect();
    keys.into_iter().filter_map(|k| slots[k.5].take()).collect()
}

/// The rank of each distinct string of a set in byte order.
struct Ranks<'a>(std::collections::HashMap<&'a str, u32>);

impl<'a> Ranks<'a> {
    fn of(items: impl Iterator<Item = &'a str>) -> Self {
        let mut distinct: Vec<&str> = items.collect::<std::collections::HashSet<_>>().into_iter().collect();
        distinct.sort_unstable();
        Ranks(distinct.into_iter().zip(0u32..).collect())
    }

    fn rank(&self, s: &str) -> u32 {
        self.0.get(s).copied().unwrap_or(u32::MAX)
    }
}

/// The emission-log records of a provisional write: one per speed `Upsert` / `Delta` change (retractions
/// are not firings), in input order, keeping the first of a repeated (key, revision, delta). The writer
/// epoch is kept in `batch_epoch` (unused by speed records).
pub(crate) fn emission_flats(changes: &[RowChange], writer_epoch: u64) -> Result<Vec<Flat>> {
    let epoch = i64::try_from(writer_epoch).map_err(|_| Error::invalid("writer epoch", "above i64::MAX"))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for change in changes {
        let (row, delta) = match change {
            RowChange::Upsert(row) => (row, false),
            RowChange::Delta(row) => (row, true),
            RowChange::Retract { .. } => continue,
        };
        let Origin::Speed { revision, .. } = row.origin else { continue };
        let mut flat = Flat::from_row(row, Kind::Emission { revision, delta }, false)?;
        flat.batch_epoch = Some(epoch);
        if seen.insert((flat.metric.clone(), flat.window_start, flat.window_end, flat.dims.clone(), flat.kind)) {
            out.push(flat);
        }
    }
    Ok(out)
}

impl Flat {
    /// The emission-log record of `e` (what [`emission_flats`] writes for the change it came from).
    pub(crate) fn from_emission(e: &Emission) -> Result<Self> {
        let row = MetricRow {
            key: e.key.clone(),
            values: e.values.clone(),
            events: e.events,
            origin: Origin::Speed { revision: e.revision, pane: e.pane, watermark: e.watermark },
            computed_at: e.emitted_at,
        };
        let mut flat = Flat::from_row(&row, Kind::Emission { revision: e.revision, delta: e.delta }, false)?;
        flat.batch_epoch =
            Some(i64::try_from(e.writer_epoch).map_err(|_| Error::invalid("writer epoch", "above i64::MAX"))?);
        Ok(flat)
    }

    /// An emission-log record back to an [`Emission`].
    pub fn into_emission(self) -> Result<Emission> {
        let Kind::Emission { revision, delta } = self.kind else {
            return Err(Error::Corrupt("a serving record read as an emission".into()));
        };
        let writer_epoch = self.batch_epoch.and_then(|e| u64::try_from(e).ok());
        let flat = Flat { kind: Kind::Row, batch_epoch: None, ..self };
        let row = flat.into_row()?;
        let Origin::Speed { pane, watermark, .. } = row.origin else {
            return Err(Error::Corrupt("an emission without a speed origin".into()));
        };
        Ok(Emission {
            key: row.key,
            values: row.values,
            events: row.events,
            pane,
            revision,
            delta,
            watermark,
            writer_epoch: writer_epoch.ok_or_else(|| Error::Corrupt("emission writer epoch".into()))?,
            emitted_at: row.computed_at,
        })
    }
}

/// Keeps the first (earliest) record per (key, revision, delta) and sorts like
/// [`crate::ServingStore::read_emissions`] promises: by key, then emission time, revision, rows before deltas.
pub(crate) fn first_emissions(all: impl Iterator<Item = Emission>) -> Vec<Emission> {
    let mut v: Vec<Emission> = all.collect();
    v.sort_by(|a, b| {
        a.key
            .metric
            .cmp(&b.key.metric)
            .then(a.key.window.start().cmp(&b.key.window.start()))
            .then(a.key.window.end().cmp(&b.key.window.end()))
            .then_with(|| a.key.dims.encode().cmp(&b.key.dims.encode()))
            .then(a.emitted_at.cmp(&b.emitted_at))
            .then(a.revision.cmp(&b.revision))
            .then(a.delta.cmp(&b.delta))
    });
    let mut seen = std::collections::HashSet::new();
    v.retain(|e| seen.insert((e.key.clone(), e.revision, e.delta)));
    v
}

/// Converts a correction batch to flat records (batch origin), de-duplicated by key.
pub(crate) fn flatten_corrections(batch: &CorrectionBatch, now: EventTime) -> Result<Vec<Flat>> {
    check_id("correction batch id", &batch.id)?;
    check_text("batch run id", &batch.run_id)?;
    let mut out = Vec::with_capacity(batch.changes.len());
    for c in &batch.changes {
        out.push(match c {
            Correction::Upsert(row) => {
                if row.origin.layer() != Layer::Batch {
                    return Err(Error::invalid(
                        "correction",
                        format!("row {:?} must have a batch origin", row.key.metric),
                    ));
                }
                Flat::from_row(row, Kind::Row, false)?
            }
            Correction::Delete(key) => {
                Flat::tombstone(key, Origin::Batch { run_id: batch.run_id.clone(), epoch: batch.epoch }, now)?
            }
        });
    }
    for a in &batch.audit {
        check_row_key(&a.key)?;
        check_text("audit aggregate", &a.aggregate)?;
        check_text("audit cause", &a.cause)?;
    }
    Ok(dedup(out))
}

fn dedup(mut flats: Vec<Flat>) -> Vec<Flat> {
    // a stable sort by key keeps the input order among equal keys (and gives concurrent Postgres writers
    // one lock order, so they cannot deadlock); then each run of equal keys folds to its winner
    flats.sort_by(cmp_keys);
    let mut out: Vec<Flat> = Vec::with_capacity(flats.len());
    for f in flats {
        match out.last_mut() {
            Some(last) if cmp_keys(last, &f).is_eq() => {
                if f.wins_over(last) {
                    *last = f;
                }
            }
            _ => out.push(f),
        }
    }
    out
}

/// Orders flat records by key without allocating.
pub(crate) fn cmp_keys(a: &Flat, b: &Flat) -> std::cmp::Ordering {
    a.metric
        .cmp(&b.metric)
        .then(a.window_start.cmp(&b.window_start))
        .then(a.window_end.cmp(&b.window_end))
        .then_with(|| a.dims.cmp(&b.dims))
        .then(a.kind.cmp(&b.kind))
}

impl PartialOrd for Kind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let rank = |k: &Kind| match k {
            Kind::Row => (0, -1),
            Kind::Delta(r) => (1, i64::from(*r)),
            Kind::Emission { revision, delta } => (2 + i64::from(*delta), i64::from(*revision)),
        };
        rank(self).cmp(&rank(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RowKey {
        RowKey {
            metric: "views".into(),
            window: Window::new(EventTime::from_secs(0).unwrap(), EventTime::from_secs(60).unwrap()).unwrap(),
            dims: Dimensions::new([("page".into(), "/a".into())]),
        }
    }

    fn speed(rev: u32, n: i64) -> RowChange {
        RowChange::Upsert(MetricRow {
            key: key(),
            values: BTreeMap::from([("n".into(), AggValue::Int(n))]),
            events: 1,
            origin: Origin::Speed { revision: rev, pane: Pane::OnTime, watermark: EventTime::UNIX_EPOCH },
            computed_at: EventTime::from_secs(61).unwrap(),
        })
    }

    #[test]
    fn dedup_keeps_the_winning_change_per_key() {
        let now = EventTime::from_secs(100).unwrap();
        let flats = flatten_changes(&[speed(1, 10), speed(3, 30), speed(2, 20)], now).unwrap();
        assert_eq!(flats.len(), 1);
        assert_eq!(flats[0].revision, Some(3));
        assert_eq!(flats[0].values_json, r#"{"n":30}"#);
        // a retraction at the same revision wins over the upsert it retracts
        let flats = flatten_changes(&[speed(3, 30), RowChange::Retract { key: key(), revision: 3 }], now).unwrap();
        assert!(flats[0].deleted);
    }

    #[test]
    fn flat_round_trips_to_the_row() {
        let RowChange::Upsert(row) = speed(7, 70) else { unreachable!() };
        let flat = Flat::from_row(&row, Kind::Row, false).unwrap();
        assert_eq!(flat.window_date(), "1970-01-01");
        assert_eq!(flat.into_row().unwrap(), row);
    }

    fn change(k: usize, what: u8, level: u32) -> RowChange {
        let mut key = key();
        key.dims = Dimensions::new([("page".into(), format!("/{k}"))]);
        let row = |origin| MetricRow {
            key: key.clone(),
            values: BTreeMap::from([("n".into(), AggValue::Int(i64::from(level)))]),
            events: 1,
            origin,
            computed_at: EventTime::UNIX_EPOCH,
        };
        match what % 3 {
            0 => RowChange::Upsert(row(Origin::Speed {
                revision: level,
                pane: Pane::OnTime,
                watermark: EventTime::UNIX_EPOCH,
            })),
            1 => RowChange::Retract { key, revision: level },
            _ => RowChange::Upsert(row(Origin::Batch { run_id: format!("r{level}"), epoch: i64::from(level) })),
        }
    }

    proptest::proptest! {
        /// With distinct revisions/epochs per key, precedence is a total order: applying the same changes in
        /// any order (replays, reorderings) converges to the same rows, and equals the de-duplicated write.
        #[test]
        fn precedence_converges_in_any_order(
            raw in proptest::collection::vec((0usize..3, 0u8..3, 0u32..1000), 1..40),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut seen = std::collections::HashSet::new();
            // distinct (key, level) pairs; a retraction and an upsert may share a speed revision
            let changes: Vec<RowChange> = raw
                .into_iter()
                .filter(|(k, what, level)| seen.insert((*k, *what == 2, *level)))
                .map(|(k, what, level)| change(k, what, level))
                .collect();
            let fold = |order: &[RowChange]| {
                let mut state: BTreeMap<String, Flat> = BTreeMap::new();
                for f in flatten_changes(order, EventTime::UNIX_EPOCH).unwrap() {
                    match state.get(&f.dims) {
                        Some(cur) if !f.wins_over(cur) => {}
                        _ => { state.insert(f.dims.clone(), f); }
                    }
                }
                state
            };
            // one at a time, in input order
            let mut sequential: BTreeMap<String, Flat> = BTreeMap::new();
            for c in &changes {
                let f = flatten_changes(std::slice::from_ref(c), EventTime::UNIX_EPOCH).unwrap().remove(0);
                match sequential.get(&f.dims) {
                    Some(cur) if !f.wins_over(cur) => {}
                    _ => { sequential.insert(f.dims.clone(), f); }
                }
            }
            // shuffled
            let mut shuffled = changes.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            proptest::prop_assert_eq!(fold(&changes), sequential.clone());
            proptest::prop_assert_eq!(fold(&shuffled), sequential);
        }
    }

    proptest::proptest! {
        /// The fast key sort orders exactly as a stable sort by `cmp_keys` does (ties in input order), for
        /// keys that differ in metric, window, dimensions (multi-byte, shared prefixes) and kind.
        #[test]
        fn sorted_by_key_is_a_stable_sort_by_key(
            raw in proptest::collection::vec((0usize..3, 0i64..3, 0usize..5, 0u32..3), 0..60),
        ) {
            const METRICS: [&str; 3] = ["views", "view", "vïews"];
            const DIMS: [&str; 5] = ["", "page=/a", "page=/a&x=1", "page=/é", "page=/b"];
            let marked: Vec<Marked> = raw
                .iter()
                .enumerate()
                .map(|(i, &(m, w, d, k))| {
                    let RowChange::Upsert(mut row) = speed(1, 0) else { unreachable!() };
                    row.key.metric = METRICS[m].into();
                    row.key.window =
                        Window::new(EventTime::from_secs(w * 60).unwrap(), EventTime::from_secs(w * 60 + 60).unwrap())
                            .unwrap();
                    let kind = if k == 0 { Kind::Row } else { Kind::Delta(k) };
                    let mut flat = Flat::from_row(&row, kind, false).unwrap();
                    flat.dims = DIMS[d].into();
                    flat.events = i as i64;
                    Marked { flat, apply: false, emit: false }
                })
                .collect();
            let mut expected: Vec<i64> = (0..marked.len() as i64).collect();
            expected.sort_by(|&a, &b| cmp_keys(&marked[a as usize].flat, &marked[b as usize].flat));
            let got: Vec<i64> = sorted_by_key(marked).iter().map(|m| m.flat.events).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    /// While a large encoding runs, the tasks queued on its worker still run (`block_in_place` hands the
    /// worker's queue to another thread); here the encoding waits for such a task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_encoding_does_not_hold_up_its_workers_tasks() {
        // on a worker (the test's own body runs outside the workers); a task spawned there is queued on it
        let ran_meanwhile = tokio::spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            tokio::spawn(async move { tx.send(()).ok() });
            encode(PARALLEL_MIN, || rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok())
        });
        assert!(ran_meanwhile.await.expect("joined"), "the task queued on the encoding's worker waited for it");
        // a current-thread runtime cannot hand its worker over: encodings run inline there
        let inline = tokio::task::spawn_blocking(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
                .block_on(async { encode(PARALLEL_MIN, || 7) })
        });
        assert_eq!(inline.await.expect("joined"), 7);
    }

    #[test]
    fn nul_bytes_are_refused() {
        let mut k = key();
        k.metric = "a\0b".into();
        let err = flatten_changes(&[RowChange::Retract { key: k, revision: 0 }], EventTime::UNIX_EPOCH).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
        assert!(check_id("pipeline", "p'; DROP TABLE x; --").is_err());
        assert!(check_id("pipeline", "clicks.v1:eu-1").is_ok());
    }
}
