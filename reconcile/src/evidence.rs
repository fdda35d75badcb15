//! Evidence gathering: what the reconciler learns from the stores besides the two sets of rows (step 3 of
//! docs/reconcile.md, its "Evidence" table): the emission log's stream watermark and restarts, the late
//! ledger and late-policy delta rows (late events per key), the raw archive (duplicate deliveries per key
//! and arrivals for the lateness report), and what could not be gathered.
//!
//! The raw archive and the late ledger are read only over the event times that can count into a window
//! starting in `[from, to)` ([`reach`]): the range, plus the largest fixed window after it, plus for
//! sessions the largest gap before it and the end of the range's longest session after it (at most
//! [`MAX_SESSION_REACH`] past `to`). The archive read is pruned by file statistics and columnar
//! ([`RawArchive::read_range`]); the ledger lists only the days and hours of that range
//! ([`DeadLetterStore::list_late_range`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use tidemark_core::window::WindowSpec;
use tidemark_core::{Dimensions, Duration, EventTime, RowKey, ValidSpec, Window};
use tidemark_store::{ArchiveRow, DeadLetterStore, LateRecord, MetricFilter, RangeEvidence, RawArchive, ServingStore};

use crate::error::Error;
use crate::explain::Evidence;
use crate::lateness::{Arrival, LatenessReport, analyse};

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
    /// A lower bound of the stream's operator watermark (the highest watermark any speed firing carried);
    /// [`EventTime::MAX`] once a `--finish` run drained its input (report.json then says null and
    /// `stream_drained: true`, not a time in the year 148108).
    #[serde(serialize_with = "watermark_json")]
    pub stream_watermark: Option<EventTime>,
    /// Whether the stream drained its input (`tidemark stream --finish`): every window has fired for good.
    pub stream_drained: bool,
    /// Stream restarts seen in the emission log (new writer epochs), with the watermark before each.
    pub restarts: Vec<EventTime>,
    /// The speed layer's clock as of the last record it archived: the raw archive's latest arrival
    /// (`ingest_time`, millisecond precision). Emission times are on this clock, which is the recorded
    /// arrival clock when a backlog or a file replays history, so corrections are timed on it too (see
    /// [`crate::contract::MetricContract::correction_latency`]). `None` when the archive holds nothing.
    pub stream_clock: Option<EventTime>,
    /// Evidence that could not be gathered, and why.
    pub unavailable: Vec<String>,
    /// What was read of the raw archive and the late ledger.
    pub reads: EvidenceReads,
}

/// A drained watermark ([`EventTime::MAX`]) as null: it is not a time ([`EvidenceSummary::stream_drained`]).
fn watermark_json<S: serde::Serializer>(w: &Option<EventTime>, s: S) -> Result<S::Ok, S::Error> {
    match w {
        Some(t) if *t != EventTime::MAX => s.serialize_some(t),
        _ => s.serialize_none(),
    }
}

/// What the evidence reads of the raw archive and the late ledger cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EvidenceReads {
    /// Start of the event-time range read: the range's windows and the lookaround their kinds need.
    pub event_time_from: Option<EventTime>,
    /// End (exclusive) of the event-time range read.
    pub event_time_to: Option<EventTime>,
    /// Data files in the raw archive's latest version.
    pub archive_files: u64,
    /// Of those, files whose event-time statistics overlap the range: read (narrow columns).
    pub archive_files_read: u64,
    /// Rows decoded from them (narrow columns: id, times, coordinates).
    pub archive_rows_read: u64,
    /// Rows whose payload was decoded (the deliveries of ids archived more than once).
    pub archive_payload_rows_read: u64,
    /// Late-ledger objects fetched.
    pub late_records_read: u64,
}

/// Everything a run gathers besides the rows.
pub(crate) struct Gathered {
    /// What [`crate::explain()`] and the contract report use.
    pub(crate) evidence: Evidence,
    /// The same in numbers, for the outcome, and what could not be gathered.
    pub(crate) summary: EvidenceSummary,
    /// The lateness analysis of the range's arrivals (raw archive), when asked for and there were any.
    pub(crate) lateness: Option<LatenessReport>,
}

/// What was read of the late ledger and the raw archive over one [`Reach`] ([`Reads::read`]).
#[derive(Debug)]
struct Reads {
    /// Over what.
    reach: Reach,
    /// The late records, and the ledger objects fetched; an error as text.
    late: Result<(Vec<LateRecord>, u64), String>,
    /// With the archive's latest arrival and the lateness analysis of the arrivals read; an error as text.
    archive: Result<(RangeEvidence, Option<EventTime>, Option<LatenessReport>), String>,
}

impl Reads {
    /// Reads the late ledger and the raw archive of `spec`'s stores over `reach`, the two at once, and
    /// analyses the lateness of the events whose time is in `arrivals` (then drops them: 32 bytes per event).
    async fn read(spec: &ValidSpec, reach: Reach, arrivals: Option<(EventTime, EventTime)>) -> Reads {
        let stores = &spec.spec().stores;
        let late = async {
            let clock = crate::run::Clock::start();
            let dl = DeadLetterStore::open(&stores.dead_letter).map_err(|e| e.to_string())?;
            let listed = dl.list_late_range(reach.from, reach.to).await.map_err(|e| e.to_string())?;
            clock.lap("evidence: the late ledger");
            Ok((listed, dl.stats().objects_read.load(std::sync::atomic::Ordering::Relaxed)))
        };
        let archive = async {
            let clock = crate::run::Clock::start();
            let (mut read, latest) = read_archive(&stores.raw_archive, reach, arrivals).await?;
            clock.lap("evidence: the raw archive");
            // the same size: collected in place
            let arrived: Vec<Arrival> = std::mem::take(&mut read.arrivals).into_iter().map(Arrival::from).collect();
            let lateness = if arrived.is_empty() {
                None
            } else {
                let t = &spec.spec().time;
                let (delay, lateness) = (t.watermark_delay, t.allowed_lateness);
                let analysed =
                    tokio::task::spawn_blocking(move || analyse(arrived, delay, lateness, &[0.99, 0.999, 0.9999]))
                        .await
                        .map_err(|e| format!("the lateness analysis failed: {e}"))?;
                clock.lap("evidence: lateness analysis");
                Some(analysed)
            };
            Ok::<_, String>((read, latest, lateness))
        };
        let (late, archive) = futures::join!(late, archive);
        Reads { reach, late, archive }
    }
}

/// Gathers the evidence for `[from, to)` from the late ledger, the raw archive and the serving store's
/// delta rows. `sessions` holds the session windows of both sides read for the range (they place events in
/// sessions and bound the event times read: it must hold every session key of the range);
/// `serving_watermark` is the highest watermark the serving rows' speed origins carry, and `stream` what
/// the scan of the emission log found (the stream's watermark and restarts). The arrivals of the range's
/// events are read only `with_arrivals`, for the lateness report (analysed as soon as they are read, then
/// dropped).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn gather(
    spec: &ValidSpec,
    serving: &dyn ServingStore,
    sessions: &SessionIndex,
    serving_watermark: Option<EventTime>,
    stream: &StreamFacts,
    from: EventTime,
    to: EventTime,
    with_arrivals: bool,
) -> Result<Gathered, Error> {
    let clock = crate::run::Clock::start();
    let mut summary = EvidenceSummary::default();
    let stream_watermark = stream.watermark.into_iter().chain(serving_watermark).max();
    if stream_watermark.is_none() {
        summary
            .unavailable
            .push(format!("stream watermark: no speed-layer firing of a window starting at or after {from}"));
    }
    let restarts = stream.restarts();
    summary.stream_watermark = stream_watermark;
    summary.stream_drained = stream_watermark == Some(EventTime::MAX);
    summary.restarts = restarts.clone();
    if stream.firings == 0 {
        summary.unavailable.push("restarts: the emission log holds no firing of the range".into());
    }

    let reads = Reads::read(spec, reach(spec, sessions, from, to), with_arrivals.then_some((from, to))).await;
    let reach = reads.reach;
    if let Some(end) = reach.cut {
        summary.unavailable.push(format!(
            "a session of the range ends at {end}: events after {} (the range's end + {}) were not read",
            reach.to, MAX_SESSION_REACH
        ));
    }
    summary.reads.event_time_from = Some(reach.from);
    summary.reads.event_time_to = Some(reach.to);
    let (late_events, ledger_events) = match reads.late {
        Ok((records, objects)) => {
            summary.reads.late_records_read = objects;
            late_keys(spec, &records, sessions, from, to)
        }
        Err(e) => {
            summary.unavailable.push(format!("late ledger: {e}"));
            (HashMap::new(), 0)
        }
    };
    let mut lateness = None;
    let duplicate_deliveries = match reads.archive {
        Ok((read, latest, analysed)) => {
            lateness = analysed;
            summary.stream_clock = latest;
            let r = &read.stats;
            summary.reads.archive_files = r.files_in_table;
            summary.reads.archive_files_read = r.files_read;
            summary.reads.archive_rows_read = r.rows_read;
            summary.reads.archive_payload_rows_read = r.payload_rows_read;
            duplicate_keys(spec, &read.duplicates, sessions, from, to)
        }
        Err(e) => {
            summary.unavailable.push(format!("raw archive (duplicate deliveries): {e}"));
            HashMap::new()
        }
    };
    clock.lap("evidence: late keys and duplicate deliveries");
    // late-policy `append`: late events within the allowed lateness reach the serving store as delta rows
    // beside the row (the row itself keeps the on-time value), so they are late-event evidence too
    let mut late_events = late_events;
    for d in serving.read_deltas(&MetricFilter::All, from, to).await? {
        summary.delta_events += d.events;
        *late_events.entry(d.key).or_default() += d.events;
    }
    clock.lap("evidence: delta rows");
    summary.late_events = ledger_events + summary.delta_events;
    summary.duplicate_deliveries = duplicate_deliveries.values().sum();
    let evidence = Evidence { late_events, duplicate_deliveries, stream_watermark, restart_watermarks: restarts };
    Ok(Gathered { evidence, summary, lateness })
}

/// Reads the raw archive at `url` over `reach`: every delivery of ids archived more than once, and the
/// arrivals of events in `arrivals` (a range of event times) if given; an error as text (the evidence is
/// then unavailable, the run goes on). Also the archive's latest arrival ([`RawArchive::latest_arrival`]).
async fn read_archive(
    url: &str,
    reach: Reach,
    arrivals: Option<(EventTime, EventTime)>,
) -> Result<(RangeEvidence, Option<EventTime>), String> {
    let archive = RawArchive::open(url).await.map_err(|e| e.to_string())?;
    let mut read = archive.read_range(reach.from, reach.to).duplicates(true);
    if let Some((from, to)) = arrivals {
        read = read.arrivals(from, to);
    }
    let read = read.run().await.map_err(|e| e.to_string())?;
    let latest = archive.latest_arrival().await.map_err(|e| e.to_string())?;
    Ok((read, latest))
}

/// How far after `to` a session of the range is followed when reading events: the batch layer's default
/// `max_lookaround`, beyond which it does not complete sessions either.
pub(crate) const MAX_SESSION_REACH: Duration = Duration::from_secs(7 * 86_400);

/// The event times whose events can count into a key of `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reach {
    /// Start (inclusive).
    pub(crate) from: EventTime,
    /// End (exclusive).
    pub(crate) to: EventTime,
    /// The end of a session of the range that lies beyond `to` (cut at [`MAX_SESSION_REACH`]).
    pub(crate) cut: Option<EventTime>,
}

/// The event-time range whose events can count into a window starting in `[from, to)`:
/// - fixed windows: `[from, to + size)` (a window starting before `to` ends before that);
/// - sessions: an event counts into a session containing it (duplicates), or into one its own session
///   `[t, t + gap)` overlaps (late events), so `[from - gap, end of the latest session of the range)`, with
///   the sessions of `sessions` that start in the range, cut at `to +` [`MAX_SESSION_REACH`].
pub(crate) fn reach(spec: &ValidSpec, sessions: &SessionIndex, from: EventTime, to: EventTime) -> Reach {
    let (mut lo, mut hi) = (from, to);
    for m in spec.metrics() {
        match &m.window {
            WindowSpec::Fixed(f) => hi = hi.max(to.saturating_add(f.size())),
            WindowSpec::Session(s) => lo = lo.min(from.saturating_sub(s.gap())),
        }
    }
    let limit = to.saturating_add(MAX_SESSION_REACH);
    let mut cut = None;
    if let Some(end) = sessions.last_end(from, to) {
        if end > limit {
            cut = Some(end);
        }
        hi = hi.max(end.min(limit));
    }
    Reach { from: lo, to: hi, cut }
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

    /// Adds the facts of another part of the emission log.
    pub(crate) fn absorb(&mut self, other: StreamFacts) {
        self.firings += other.firings;
        self.watermark = self.watermark.max(other.watermark);
        for (epoch, w) in other.per_epoch {
            let mine = self.per_epoch.entry(epoch).or_default();
            *mine = (*mine).max(w);
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

/// Session windows of both sides, per (metric, dimensions), to find the session an event belongs to. Built
/// incrementally: [`SessionIndex::add`] each key read (keys of other metrics are ignored).
#[derive(Debug, Default)]
pub(crate) struct SessionIndex {
    /// metric -> canonical dimensions -> sessions (each once, however many sides hold it)
    windows: HashMap<String, HashMap<String, BTreeSet<Window>>>,
}

impl SessionIndex {
    /// Adds the window of `key` if its metric is a session metric of `spec`.
    pub(crate) fn add(&mut self, spec: &ValidSpec, key: &RowKey) {
        if !spec.metric(&key.metric).is_some_and(|m| matches!(m.window, WindowSpec::Session(_))) {
            return;
        }
        let by_dims = match self.windows.get_mut(key.metric.as_str()) {
            Some(m) => m,
            None => self.windows.entry(key.metric.clone()).or_default(),
        };
        by_dims.entry(key.dims.encode()).or_default().insert(key.window);
    }

    /// Adds the sessions of another index.
    pub(crate) fn absorb(&mut self, other: SessionIndex) {
        for (metric, by_dims) in other.windows {
            let mine = self.windows.entry(metric).or_default();
            for (dims, windows) in by_dims {
                mine.entry(dims).or_default().extend(windows);
            }
        }
    }

    /// The latest end of a session starting in `[from, to)`.
    fn last_end(&self, from: EventTime, to: EventTime) -> Option<EventTime> {
        self.windows
            .values()
            .flat_map(HashMap::values)
            .flatten()
            .filter(|w| from <= w.start() && w.start() < to)
            .map(Window::end)
            .max()
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
            .get(metric)
            .and_then(|m| m.get(&dims.encode()))
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
    records: &[LateRecord],
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

/// Extra deliveries per key: the groups of archived rows of one event id delivered more than once
/// (different source coordinates), the first decoded with the spec's schema and assigned to windows with
/// core.
fn duplicate_keys(
    spec: &ValidSpec,
    groups: &[Vec<ArchiveRow>],
    sessions: &SessionIndex,
    from: EventTime,
    to: EventTime,
) -> HashMap<RowKey, u64> {
    let mut out: HashMap<RowKey, u64> = HashMap::new();
    for deliveries in groups.iter().filter(|d| d.len() > 1) {
        let first = &deliveries[0];
        let Ok(event) = spec.schema().decode(first.payload.as_bytes(), first.ingest_time) else { continue };
        let mut keys = keys_of(spec, &event, sessions, SessionReach::Containing, from, to);
        keys.sort();
        keys.dedup();
        for k in keys {
            *out.entry(k).or_default() += deliveries.len() as u64 - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tidemark_core::Window;

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

    fn at(s: &str) -> EventTime {
        s.parse().unwrap()
    }

    fn key(metric: &str, start: &str, end: &str, dims: &str) -> RowKey {
        RowKey {
            metric: metric.into(),
            window: Window::new(at(start), at(end)).unwrap(),
            dims: Dimensions::decode(dims).unwrap(),
        }
    }

    /// A spec with 1-minute tumbling views per page and sessions (gap 2m) per user, its stores in `dir`.
    fn spec_in(dir: &std::path::Path) -> ValidSpec {
        let url = |s: &str| format!("file://{}", dir.join(s).display());
        std::fs::write(dir.join("events.jsonl"), "").unwrap();
        let text = format!(
            r#"
version = 1
name = "issue19"
[source]
type = "file"
path = "{events}"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page", "user"]
[time]
watermark_delay = "1s"
allowed_lateness = "10m"
late_policy = "dead_letter"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}]
[[metrics]]
name = "sessions"
dimensions = ["user"]
window = {{ type = "session", gap = "2m" }}
aggregates = [{{ name = "n", fn = "count" }}]
[stores]
raw_archive = "{raw}"
serving = "{serving}"
dead_letter = "{dead}"
batch_view = "{batch}"
"#,
            events = dir.join("events.jsonl").display(),
            raw = url("raw"),
            serving = url("serving"),
            dead = url("dead"),
            batch = url("batch"),
        );
        tidemark_core::PipelineSpec::parse(&text, "spec.toml", Some(dir)).unwrap()
    }

    /// An archived event `id` at `ts` (page, user), received a second later, at `partition`/`offset`.
    fn archived(id: &str, ts: &str, page: &str, user: &str, partition: i32, offset: i64) -> ArchiveRow {
        ArchiveRow {
            payload: format!(r#"{{"id":"{id}","ts":"{ts}","page":"{page}","user":"{user}"}}"#),
            event_id: id.into(),
            event_time: at(ts),
            ingest_time: at(ts).saturating_add(Duration::from_secs(1)),
            coords: tidemark_core::SourceCoordinates { source: "views".into(), partition, offset },
        }
    }

    fn ledgered(offset: i64, ts: &str, missed: serde_json::Value) -> LateRecord {
        LateRecord {
            coordinates: tidemark_core::SourceCoordinates { source: "views".into(), partition: 0, offset },
            event_time: at(ts),
            body: serde_json::json!({ "event_id": format!("l{offset}"), "event_time": ts, "missed": [missed] }),
        }
    }

    fn missed(metric: &str, start: &str, end: &str, dims: &str) -> serde_json::Value {
        serde_json::json!({ "metric": metric, "window_start": start, "window_end": end, "dimensions": dims })
    }

    /// Issue 19: reconciling one day of a multi-day archive and late ledger reads only the files and ledger
    /// folders of that day (plus the lookaround: the fixed windows' size, the session gap before it and the
    /// range's sessions after it), and still attributes the duplicates and late events inside that reach,
    /// sessions included; duplicates outside it are never read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn issue_19_evidence_reads_follow_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let stores = &spec.spec().stores;
        let archive = RawArchive::open(stores.raw_archive.clone()).await.unwrap();
        let p0 = |i: i64| i;
        // one append (one file) per group
        let files = [
            // day 0: an id delivered twice, far before the range
            vec![
                archived("a0", "2026-11-23T10:00:00Z", "/a", "u9", 0, p0(1)),
                archived("a0", "2026-11-23T10:00:00Z", "/a", "u9", 1, 1),
            ],
            // the range's day: `in1` delivered twice; `s1` opens user u2's session before midnight
            vec![
                archived("in1", "2026-11-24T05:00:10Z", "/a", "u1", 0, 10),
                archived("b1", "2026-11-24T06:00:00Z", "/b", "u3", 0, 11),
                archived("s1", "2026-11-24T23:58:30Z", "/b", "u2", 0, 12),
                archived("in1", "2026-11-24T05:00:10Z", "/a", "u1", 1, 10),
            ],
            // just after the range: u2's session goes on (`s3` delivered twice); `x9` delivered twice
            // after the session's end
            vec![
                archived("s2", "2026-11-25T00:02:00Z", "/c", "u2", 0, 20),
                archived("s3", "2026-11-25T00:04:00Z", "/c", "u2", 0, 21),
                archived("x9", "2026-11-25T00:09:00Z", "/c", "u3", 0, 22),
                archived("s3", "2026-11-25T00:04:00Z", "/c", "u2", 1, 20),
                archived("x9", "2026-11-25T00:09:00Z", "/c", "u3", 1, 21),
            ],
            // later that day: another id delivered twice
            vec![
                archived("d9", "2026-11-25T10:00:00Z", "/d", "u4", 0, 30),
                archived("d9", "2026-11-25T10:00:00Z", "/d", "u4", 1, 30),
            ],
        ];
        for rows in &files {
            archive.append(rows).await.unwrap();
        }

        let dl = DeadLetterStore::open(&stores.dead_letter).unwrap();
        dl.append_late(&[
            ledgered(
                1,
                "2026-11-23T12:00:05Z",
                missed("views", "2026-11-23T12:00:00Z", "2026-11-23T12:01:00Z", "page=/a"),
            ),
            ledgered(
                2,
                "2026-11-24T07:00:05Z",
                missed("views", "2026-11-24T07:00:00Z", "2026-11-24T07:01:00Z", "page=/a"),
            ),
            // u2's own session as the stream saw it: it overlaps the range's session of u2
            ledgered(
                3,
                "2026-11-25T00:05:00Z",
                missed("sessions", "2026-11-25T00:05:00Z", "2026-11-25T00:07:00Z", "user=u2"),
            ),
            ledgered(
                4,
                "2026-11-25T12:00:05Z",
                missed("views", "2026-11-25T12:00:00Z", "2026-11-25T12:01:00Z", "page=/d"),
            ),
        ])
        .await
        .unwrap();
        // a record of the old layout, inside the range
        let (objects, base) =
            tidemark_store::objects::open(&url::Url::parse(&stores.dead_letter).unwrap(), &Default::default()).unwrap();
        let old = ledgered(
            5,
            "2026-11-24T08:00:05Z",
            missed("views", "2026-11-24T08:00:00Z", "2026-11-24T08:01:00Z", "page=/b"),
        );
        let path = base.join("late").join(hex_of("views").as_str()).join("0").join(format!("{:020}.json", 5).as_str());
        let body = serde_json::json!({ "coordinates": old.coordinates, "body": old.body });
        object_store::ObjectStoreExt::put(&*objects, &path, serde_json::to_vec(&body).unwrap().into()).await.unwrap();

        let serving = tidemark_store::open(&spec.serving_store()).await.unwrap();
        serving.init().await.unwrap();
        let mut sessions = SessionIndex::default();
        for k in [
            key("sessions", "2026-11-24T05:00:10Z", "2026-11-24T05:02:10Z", "user=u1"),
            key("sessions", "2026-11-24T06:00:00Z", "2026-11-24T06:02:00Z", "user=u3"),
            key("sessions", "2026-11-24T23:58:30Z", "2026-11-25T00:06:00Z", "user=u2"),
            // a session starting after the range does not widen the read
            key("sessions", "2026-11-25T00:09:00Z", "2026-11-25T12:00:00Z", "user=u3"),
            key("views", "2026-11-24T05:00:00Z", "2026-11-24T05:01:00Z", "page=/a"),
        ] {
            sessions.add(&spec, &k);
        }
        let (from, to) = (at("2026-11-24T00:00:00Z"), at("2026-11-25T00:00:00Z"));
        let g = gather(&spec, &*serving, &sessions, None, &StreamFacts::default(), from, to, true).await.unwrap();

        let reads = &g.summary.reads;
        // the session gap before the range; the end of u2's session after it
        assert_eq!(reads.event_time_from, Some(at("2026-11-23T23:58:00Z")));
        assert_eq!(reads.event_time_to, Some(at("2026-11-25T00:06:00Z")));
        assert_eq!((reads.archive_files, reads.archive_files_read), (4, 2), "{reads:?}");
        assert_eq!(reads.archive_rows_read, 9);
        // in1 and s3, twice each; x9 and d9 (outside the reach) and a0 (another day) are never read
        assert_eq!(reads.archive_payload_rows_read, 4);
        assert_eq!(reads.late_records_read, 3, "the range's two and the old layout's one");
        let expected_dups: HashMap<RowKey, u64> = [
            key("views", "2026-11-24T05:00:00Z", "2026-11-24T05:01:00Z", "page=/a"),
            key("sessions", "2026-11-24T05:00:10Z", "2026-11-24T05:02:10Z", "user=u1"),
            key("sessions", "2026-11-24T23:58:30Z", "2026-11-25T00:06:00Z", "user=u2"),
        ]
        .into_iter()
        .map(|k| (k, 1))
        .collect();
        assert_eq!(g.evidence.duplicate_deliveries, expected_dups);
        assert_eq!(g.summary.duplicate_deliveries, 3);
        let expected_late: HashMap<RowKey, u64> = [
            key("views", "2026-11-24T07:00:00Z", "2026-11-24T07:01:00Z", "page=/a"),
            key("views", "2026-11-24T08:00:00Z", "2026-11-24T08:01:00Z", "page=/b"),
            key("sessions", "2026-11-24T23:58:30Z", "2026-11-25T00:06:00Z", "user=u2"),
        ]
        .into_iter()
        .map(|k| (k, 1))
        .collect();
        assert_eq!(g.evidence.late_events, expected_late);
        assert_eq!(g.summary.late_events, 3);
        // the lateness analysis: the archived events of the range itself, (0, 10..=12) and (1, 10)
        let lateness = g.lateness.as_ref().expect("arrivals were asked for");
        assert_eq!(lateness.events, 4);
        let partitions: Vec<(i32, u64)> = lateness.partitions.iter().map(|p| (p.partition, p.disorder.n)).collect();
        assert_eq!(partitions, vec![(0, 3), (1, 1)]);
        assert!(g.summary.unavailable.iter().all(|u| !u.contains("raw archive") && !u.contains("late ledger")));
    }

    #[test]
    fn the_reach_follows_the_range_sessions_up_to_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let (from, to) = (at("2026-11-24T00:00:00Z"), at("2026-11-25T00:00:00Z"));
        let mut sessions = SessionIndex::default();
        // no session: fixed windows after the range, the session gap before it
        let r = reach(&spec, &sessions, from, to);
        assert_eq!((r.from, r.to, r.cut), (at("2026-11-23T23:58:00Z"), at("2026-11-25T00:01:00Z"), None));
        // a session of the range running ten days is followed for seven
        sessions.add(&spec, &key("sessions", "2026-11-24T23:00:00Z", "2026-12-05T00:00:00Z", "user=u1"));
        let r = reach(&spec, &sessions, from, to);
        assert_eq!((r.to, r.cut), (at("2026-12-02T00:00:00Z"), Some(at("2026-12-05T00:00:00Z"))));
        // both sides holding the same session index it once
        sessions.add(&spec, &key("sessions", "2026-11-24T23:00:00Z", "2026-12-05T00:00:00Z", "user=u1"));
        let u1 = Dimensions::decode("user=u1").unwrap();
        assert_eq!(sessions.containing("sessions", &u1, at("2026-11-30T00:00:00Z")).len(), 1);
    }

    fn hex_of(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }
}
