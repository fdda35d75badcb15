//! Evidence gathering: what the reconciler learns from the stores besides the two sets of rows (step 3 of
//! docs/reconcile.md, its "Evidence" table): the emission log's stream watermark and restarts, the late
//! ledger and late-policy delta rows (late events per key), the raw archive (duplicate deliveries per key
//! and arrivals for the lateness report), and what could not be gathered.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tidemark_core::window::WindowSpec;
use tidemark_core::{Dimensions, Duration, EventTime, RowKey, ValidSpec, Window};
use tidemark_store::{DeadLetterStore, MetricFilter, RawArchive, ServingStore};

use crate::error::Error;
use crate::explain::Evidence;
use crate::lateness::Arrival;

/// What the reconciler knew besides the rows, in numbers, and what it could not know.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvidenceSummary {
    /// Late events of the range: late-ledger events that count into at least one key of the range (each
    /// once, however many windows it missed), plus the events of late-policy delta rows.
    pub late_events: u64,
    /// Of those, events the speed layer emitted as delta rows (`late_policy = "append"`).
    pub delta_events: u64,
    /// Extra deliveries of an event id (raw archive) counted into keys of the range.
    pub duplicate_deliveries: u64,
    /// A lower bound of the stream's operator watermark (the highest watermark any speed firing carried).
    pub stream_watermark: Option<EventTime>,
    /// Stream restarts seen in the emission log (new writer epochs), with the watermark before each.
    pub restarts: Vec<EventTime>,
    /// Evidence that could not be gathered, and why.
    pub unavailable: Vec<String>,
}

/// Everything a run gathers besides the rows.
pub(crate) struct Gathered {
    /// What [`crate::explain()`] and the contract report use.
    pub(crate) evidence: Evidence,
    /// The same in numbers, for the outcome, and what could not be gathered.
    pub(crate) summary: EvidenceSummary,
    /// Raw-archive arrivals of events in the range, for the lateness report.
    pub(crate) arrivals: Vec<Arrival>,
}

/// Gathers the evidence for `[from, to)` from the late ledger, the raw archive and the serving store's
/// delta rows. `sessions` holds the session windows of both sides (they place events in sessions),
/// `serving_watermark` the highest watermark of the serving rows, and `stream` what the scan of the emission
/// log found (the stream's watermark and restarts).
pub(crate) async fn gather(
    spec: &ValidSpec,
    serving: &dyn ServingStore,
    sessions: &SessionIndex,
    serving_watermark: Option<EventTime>,
    stream: &StreamFacts,
    from: EventTime,
    to: EventTime,
) -> Result<Gathered, Error> {
    let stores = &spec.spec().stores;
    let mut summary = EvidenceSummary::default();
    let stream_watermark = match (stream.watermark, serving_watermark) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    if stream_watermark.is_none() {
        summary
            .unavailable
            .push(format!("stream watermark: no speed-layer firing of a window starting at or after {from}"));
    }
    let restarts = stream.restarts();
    summary.stream_watermark = stream_watermark;
    summary.restarts = restarts.clone();
    if stream.firings == 0 {
        summary.unavailable.push("restarts: the emission log holds no firing of the range".into());
    }

    let (late_events, ledger_events) = match DeadLetterStore::open(&stores.dead_letter) {
        Ok(dl) => match dl.list_late().await {
            Ok(records) => late_keys(spec, &records, sessions, from, to),
            Err(e) => {
                summary.unavailable.push(format!("late ledger: {e}"));
                (HashMap::new(), 0)
            }
        },
        Err(e) => {
            summary.unavailable.push(format!("late ledger: {e}"));
            (HashMap::new(), 0)
        }
    };
    let mut arrivals = Vec::new();
    let duplicate_deliveries = match RawArchive::open(stores.raw_archive.clone()).await {
        Ok(archive) => match archive.read_all().await {
            Ok(rows) => {
                arrivals = rows
                    .iter()
                    .filter(|r| from <= r.event_time && r.event_time < to)
                    .map(|r| Arrival {
                        partition: r.coords.partition,
                        offset: r.coords.offset,
                        event_time: r.event_time,
                        ingest_time: r.ingest_time,
                    })
                    .collect();
                duplicate_keys(spec, &rows, sessions, from, to)
            }
            Err(e) => {
                summary.unavailable.push(format!("raw archive (duplicate deliveries): {e}"));
                HashMap::new()
            }
        },
        Err(e) => {
            summary.unavailable.push(format!("raw archive (duplicate deliveries): {e}"));
            HashMap::new()
        }
    };
    // late-policy `append`: late events within the allowed lateness reach the serving store as delta rows
    // beside the row (the row itself keeps the on-time value), so they are late-event evidence too
    let mut late_events = late_events;
    for d in serving.read_deltas(&MetricFilter::All, from, to).await? {
        summary.delta_events += d.events;
        *late_events.entry(d.key).or_default() += d.events;
    }
    summary.late_events = ledger_events + summary.delta_events;
    summary.duplicate_deliveries = duplicate_deliveries.values().sum();
    let evidence = Evidence { late_events, duplicate_deliveries, stream_watermark, restart_watermarks: restarts };
    Ok(Gathered { evidence, summary, arrivals })
}

/// The stream facts of the range's emission log (`scanned`), completed with later firings: a firing whose
/// watermark passed the end of every window of the range plus the allowed lateness proves each of them final,
/// so later records are read (windows starting in `[to, to + allowed lateness + 1 day)`) only until one does.
pub(crate) async fn stream_after(
    spec: &ValidSpec,
    serving: &dyn ServingStore,
    scanned: &crate::scan::Scanned,
    to: EventTime,
) -> Result<StreamFacts, Error> {
    use futures::TryStreamExt as _;
    let mut facts = scanned.stream.clone();
    let Some(end) = scanned.max_window_end else { return Ok(facts) };
    let lateness = spec.spec().time.allowed_lateness;
    let needed = end.saturating_add(lateness);
    let horizon = to.saturating_add(lateness).saturating_add(Duration::from_secs(86_400));
    for m in spec.metrics() {
        if facts.watermark.is_some_and(|w| w >= needed) {
            break;
        }
        let mut chunks = serving.scan_emissions(&m.name, to, horizon);
        while let Some(c) = chunks.try_next().await? {
            for i in 0..c.len() {
                facts.observe(c.writer_epoch(i), c.watermark(i));
            }
            if facts.watermark.is_some_and(|w| w >= needed) {
                break;
            }
        }
    }
    Ok(facts)
}

/// What the emission log says about the stream, gathered record by record ([`StreamFacts::observe`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamFacts {
    /// A lower bound of the stream's operator watermark: the highest watermark any firing carried.
    pub(crate) watermark: Option<EventTime>,
    /// Firings observed.
    pub(crate) firings: u64,
    /// Per writer epoch, the highest watermark its firings carried (`None`: none that tells anything).
    per_epoch: BTreeMap<u64, Option<EventTime>>,
}

impl StreamFacts {
    /// Takes one firing (any pane, deltas too) of writer `epoch` carrying `watermark`.
    pub(crate) fn observe(&mut self, epoch: u64, watermark: EventTime) {
        self.firings += 1;
        self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
        let w = self.per_epoch.entry(epoch).or_default();
        if EventTime::MIN < watermark && watermark < EventTime::MAX {
            *w = Some(w.map_or(watermark, |x| x.max(watermark)));
        }
    }

    /// Watermarks before each restart of the stream service: for every writer epoch after the first seen,
    /// the highest watermark an earlier epoch's firing carried (the drain of a bounded input,
    /// `EventTime::MAX`, and the `EventTime::MIN` of early panes tell nothing and are skipped; a restart
    /// before any known watermark is not reported).
    pub(crate) fn restarts(&self) -> Vec<EventTime> {
        let mut out = Vec::new();
        let mut before: Option<EventTime> = None;
        for (i, w) in self.per_epoch.values().enumerate() {
            if i > 0
                && let Some(b) = before
            {
                out.push(b);
            }
            if let Some(w) = w {
                before = Some(before.map_or(*w, |b| b.max(*w)));
            }
        }
        out
    }
}

/// Session windows of both sides, per (metric, dimensions), to find the session an event belongs to.
#[derive(Debug, Default)]
pub(crate) struct SessionIndex {
    windows: HashMap<(String, String), Vec<Window>>,
}

impl SessionIndex {
    /// Adds the window of `key` when its metric has session windows (other keys are ignored).
    pub(crate) fn add(&mut self, spec: &ValidSpec, key: &RowKey) {
        if spec.metric(&key.metric).is_some_and(|m| matches!(m.window, WindowSpec::Session(_))) {
            self.windows.entry((key.metric.clone(), key.dims.encode())).or_default().push(key.window);
        }
    }

    fn containing(&self, metric: &str, dims: &Dimensions, t: EventTime) -> Vec<Window> {
        self.matching(metric, dims, |w| w.contains(t))
    }

    /// The sessions overlapping `w`. For an event's own session `[t, t + gap)` these are exactly the sessions
    /// it would join: the one containing it, one it extends at either end, and the two it bridges.
    fn overlapping(&self, metric: &str, dims: &Dimensions, w: Window) -> Vec<Window> {
        self.matching(metric, dims, |s| s.overlaps(&w))
    }

    fn matching(&self, metric: &str, dims: &Dimensions, keep: impl Fn(&Window) -> bool) -> Vec<Window> {
        self.windows
            .get(&(metric.to_owned(), dims.encode()))
            .map(|ws| ws.iter().filter(|w| keep(w)).copied().collect())
            .unwrap_or_default()
    }
}

/// Which sessions of its key an event counts into.
#[derive(Debug, Clone, Copy)]
enum SessionReach {
    /// The sessions containing the event time: where a delivered event was counted (duplicates).
    Containing,
    /// The sessions the event would have joined (`SessionIndex::overlapping` its own session): where an
    /// event the stream missed (late) is missing, on either side.
    Joined,
}

/// Every key (of windows starting in `[from, to)`) a decoded event counts into.
fn keys_of(
    spec: &ValidSpec,
    event: &tidemark_core::Event,
    sessions: &SessionIndex,
    reach: SessionReach,
    from: EventTime,
    to: EventTime,
) -> Vec<RowKey> {
    let mut out = Vec::new();
    for m in spec.metrics() {
        let dims = m.dimensions_of(event);
        let windows: Vec<Window> = match (&m.window, reach) {
            (WindowSpec::Fixed(f), _) => f.assign(event.time).collect(),
            (WindowSpec::Session(_), SessionReach::Containing) => sessions.containing(&m.name, &dims, event.time),
            (WindowSpec::Session(s), SessionReach::Joined) => {
                sessions.overlapping(&m.name, &dims, s.proposal(event.time))
            }
        };
        for w in windows.into_iter().filter(|w| from <= w.start() && w.start() < to) {
            out.push(RowKey { metric: m.name.clone(), window: w, dims: dims.clone() });
        }
    }
    out
}

/// Late-ledger events per key of the range. A record lists the windows it missed (`missed`: metric,
/// window_start, window_end, dimensions); a record without that list is decoded from its payload with the
/// spec's schema and assigned to windows with core. A missed session is the event's own session as the
/// stream saw it, so the event also counts into every batch or serving session of its key that this one
/// overlaps: the batch session containing it, and the serving sessions it would have extended or bridged.
/// Also returns how many records counted into at least one key.
fn late_keys(
    spec: &ValidSpec,
    records: &[tidemark_store::LateRecord],
    sessions: &SessionIndex,
    from: EventTime,
    to: EventTime,
) -> (HashMap<RowKey, u64>, u64) {
    let mut out: HashMap<RowKey, u64> = HashMap::new();
    let mut events = 0;
    for r in records {
        let mut keys = Vec::new();
        if let Some(missed) = r.body.get("missed").and_then(|m| m.as_array()) {
            for m in missed {
                let s = |k: &str| m.get(k).and_then(|v| v.as_str());
                let time = |k: &str| s(k).and_then(|v| v.parse::<EventTime>().ok());
                let (Some(metric), Some(start), Some(end), Some(dims)) =
                    (s("metric"), time("window_start"), time("window_end"), s("dimensions"))
                else {
                    continue;
                };
                let (Some(window), Ok(dims)) = (Window::new(start, end), Dimensions::decode(dims)) else { continue };
                let mut windows = vec![window];
                if spec.metric(metric).is_some_and(|m| matches!(m.window, WindowSpec::Session(_))) {
                    windows.extend(sessions.overlapping(metric, &dims, window));
                }
                for window in windows.into_iter().filter(|w| from <= w.start() && w.start() < to) {
                    keys.push(RowKey { metric: metric.to_owned(), window, dims: dims.clone() });
                }
            }
        } else if let Some(payload) = r.body.get("payload").and_then(|p| p.as_str())
            && let Ok(event) = spec.schema().decode(payload.as_bytes(), EventTime::MAX)
        {
            keys = keys_of(spec, &event, sessions, SessionReach::Joined, from, to);
        }
        keys.sort();
        keys.dedup();
        events += u64::from(!keys.is_empty());
        for k in keys {
            *out.entry(k).or_default() += 1;
        }
    }
    (out, events)
}

/// Extra deliveries per key: archived events whose id was delivered more than once (different source
/// coordinates), decoded with the spec's schema and assigned to windows with core.
fn duplicate_keys(
    spec: &ValidSpec,
    rows: &[tidemark_store::ArchiveRow],
    sessions: &SessionIndex,
    from: EventTime,
    to: EventTime,
) -> HashMap<RowKey, u64> {
    let mut by_id: HashMap<&str, Vec<&tidemark_store::ArchiveRow>> = HashMap::new();
    for r in rows {
        by_id.entry(r.event_id.as_str()).or_default().push(r);
    }
    let mut out: HashMap<RowKey, u64> = HashMap::new();
    for deliveries in by_id.values().filter(|d| d.len() > 1) {
        let first = deliveries[0];
        let Ok(event) = spec.schema().decode(first.payload.as_bytes(), first.ingest_time) else { continue };
        for k in keys_of(spec, &event, sessions, SessionReach::Containing, from, to) {
            *out.entry(k).or_default() += deliveries.len() as u64 - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> EventTime {
        EventTime::from_secs(secs).unwrap()
    }

    fn restarts(log: &[(u64, EventTime)]) -> Vec<EventTime> {
        let mut facts = StreamFacts::default();
        for (epoch, w) in log {
            facts.observe(*epoch, *w);
        }
        facts.restarts()
    }

    #[test]
    fn restarts_are_new_writer_epochs_with_the_watermark_before_them() {
        let log = [(3, t(40)), (1, t(10)), (1, t(20)), (2, t(30)), (2, EventTime::MAX), (2, EventTime::MIN)];
        assert_eq!(restarts(&log), vec![t(20), t(30)]);
        assert!(restarts(&log[1..3]).is_empty(), "one epoch: no restart");
        // a restart before any known watermark is not reported
        assert!(restarts(&[(1, EventTime::MAX), (2, t(5))]).is_empty());
        let mut facts = StreamFacts::default();
        facts.observe(1, t(10));
        facts.observe(1, EventTime::MAX);
        assert_eq!((facts.watermark, facts.firings), (Some(EventTime::MAX), 2), "the drain counts as a watermark");
    }
}
