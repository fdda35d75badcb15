//! Evidence gathering: what the reconciler learns from the stores besides the two sets of rows (step 3 of
//! docs/reconcile.md, its "Evidence" table): the emission log's stream watermark and restarts, the late
//! ledger and late-policy delta rows (late events per key), the raw archive (duplicate deliveries per key
//! and arrivals for the lateness report), and what could not be gathered.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tidemark_core::window::WindowSpec;
use tidemark_core::{Dimensions, Duration, EventTime, MetricRow, Origin, RowKey, ValidSpec, Window};
use tidemark_store::{DeadLetterStore, MetricFilter, RawArchive, ServingStore};

use crate::contract::SpeedFiring;
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
    /// The range's speed firings (delta rows aside), for the contract report and the report page.
    pub(crate) emissions: Vec<SpeedFiring>,
    /// Raw-archive arrivals of events in the range, for the lateness report.
    pub(crate) arrivals: Vec<Arrival>,
}

/// Gathers the evidence for `[from, to)` from the serving store's emission log and delta rows, the late
/// ledger and the raw archive; `batch` and `serving_rows` are the two sides read for the range (their
/// session windows place events in sessions; the serving rows' watermarks count towards the stream's).
pub(crate) async fn gather(
    spec: &ValidSpec,
    serving: &dyn ServingStore,
    batch: &[MetricRow],
    serving_rows: &[MetricRow],
    from: EventTime,
    to: EventTime,
) -> Result<Gathered, Error> {
    let stores = &spec.spec().stores;
    let mut summary = EvidenceSummary::default();
    // the emission log from `from` on: the range's firings for the contract, later ones for the watermark.
    // A firing of a window starting past `to + allowed lateness + 1 day` proves the watermark passed every
    // window of the range (sessions longer than a day aside), so nothing later is read.
    let horizon = to.saturating_add(spec.spec().time.allowed_lateness).saturating_add(Duration::from_secs(86_400));
    let all_emissions = serving.read_emissions(&MetricFilter::All, from, horizon).await?;
    let emissions: Vec<SpeedFiring> = all_emissions
        .iter()
        .filter(|e| e.key.window.start() < to && !e.delta)
        .map(|e| SpeedFiring {
            key: e.key.clone(),
            values: e.values.clone(),
            pane: e.pane,
            revision: e.revision,
            emitted_at: e.emitted_at,
        })
        .collect();
    let stream_watermark = all_emissions
        .iter()
        .map(|e| e.watermark)
        .chain(serving_rows.iter().filter_map(|r| match r.origin {
            Origin::Speed { watermark, .. } => Some(watermark),
            Origin::Batch { .. } => None,
        }))
        .max();
    if stream_watermark.is_none() {
        summary
            .unavailable
            .push(format!("stream watermark: no speed-layer firing of a window starting at or after {from}"));
    }
    let restarts = restart_watermarks(&all_emissions);
    summary.stream_watermark = stream_watermark;
    summary.restarts = restarts.clone();
    if all_emissions.is_empty() {
        summary.unavailable.push("restarts: the emission log holds no firing of the range".into());
    }

    let sessions = SessionIndex::new(spec, batch.iter().chain(serving_rows));
    let (late_events, ledger_events) = match DeadLetterStore::open(&stores.dead_letter) {
        Ok(dl) => match dl.list_late().await {
            Ok(records) => late_keys(spec, &records, &sessions, from, to),
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
                duplicate_keys(spec, &rows, &sessions, from, to)
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
    Ok(Gathered { evidence, summary, emissions, arrivals })
}

/// Watermarks before each restart of the stream service: for every writer epoch after the first seen in
/// the emission log, the highest watermark an earlier epoch's firing carried (the drain of a bounded input,
/// `EventTime::MAX`, and the `EventTime::MIN` of early panes tell nothing and are skipped; a restart before
/// any known watermark is not reported).
fn restart_watermarks(emissions: &[tidemark_store::Emission]) -> Vec<EventTime> {
    let mut per_epoch: BTreeMap<u64, Option<EventTime>> = BTreeMap::new();
    for e in emissions {
        let w = per_epoch.entry(e.writer_epoch).or_default();
        if EventTime::MIN < e.watermark && e.watermark < EventTime::MAX {
            *w = Some(w.map_or(e.watermark, |x| x.max(e.watermark)));
        }
    }
    let mut out = Vec::new();
    let mut before: Option<EventTime> = None;
    for (i, w) in per_epoch.values().enumerate() {
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

/// Session windows of both sides, per (metric, dimensions), to find the session an event belongs to.
struct SessionIndex<'a> {
    windows: HashMap<(&'a str, String), Vec<Window>>,
}

impl<'a> SessionIndex<'a> {
    fn new(spec: &ValidSpec, rows: impl Iterator<Item = &'a MetricRow>) -> Self {
        let mut windows: HashMap<(&'a str, String), Vec<Window>> = HashMap::new();
        for r in rows {
            if spec.metric(&r.key.metric).is_some_and(|m| matches!(m.window, WindowSpec::Session(_))) {
                windows.entry((r.key.metric.as_str(), r.key.dims.encode())).or_default().push(r.key.window);
            }
        }
        SessionIndex { windows }
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
            .get(&(metric, dims.encode()))
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
    sessions: &SessionIndex<'_>,
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
    sessions: &SessionIndex<'_>,
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
    sessions: &SessionIndex<'_>,
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
    use std::collections::BTreeMap;

    use tidemark_core::{Pane, Window};

    use super::*;

    fn t(secs: i64) -> EventTime {
        EventTime::from_secs(secs).unwrap()
    }

    fn emission(epoch: u64, watermark: EventTime) -> tidemark_store::Emission {
        tidemark_store::Emission {
            key: RowKey { metric: "m".into(), window: Window::new(t(0), t(60)).unwrap(), dims: Dimensions::default() },
            values: BTreeMap::new(),
            events: 1,
            pane: Pane::OnTime,
            revision: 0,
            delta: false,
            watermark,
            writer_epoch: epoch,
            emitted_at: t(100),
        }
    }

    #[test]
    fn restarts_are_new_writer_epochs_with_the_watermark_before_them() {
        let log = [
            emission(3, t(40)),
            emission(1, t(10)),
            emission(1, t(20)),
            emission(2, t(30)),
            emission(2, EventTime::MAX),
            emission(2, EventTime::MIN),
        ];
        assert_eq!(restart_watermarks(&log), vec![t(20), t(30)]);
        assert!(restart_watermarks(&log[1..3]).is_empty(), "one epoch: no restart");
        // a restart before any known watermark is not reported
        assert!(restart_watermarks(&[emission(1, EventTime::MAX), emission(2, t(5))]).is_empty());
    }
}
