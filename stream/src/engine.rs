//! The event-time engine: decode, de-duplicate, window, fire panes, account. Pure and synchronous;
//! processing time is passed in by the caller (see [`crate::clock`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidemark_core::spec::TimePolicy;
use tidemark_core::{CompiledMetric, Event, EventSchema, EventTime, ValidSpec, WindowSpec};

use crate::output::{Output, Record, RejectedRecord};
use crate::state::{EventId, SeenIds};
use crate::watermark::{Observed, PartitionSuspicion, SuspectPolicy, Watermark, WatermarkTracker};
use crate::window_state::fixed::FixedState;
use crate::window_state::session::SessionState;
use crate::window_state::{Arrival, Routing, Step};

/// Per-partition accounting. After every call,
/// `consumed = aggregated + late_routed + dead_lettered + duplicates_suppressed` holds for each partition.
///
/// Every consumed record lands in exactly one bucket:
/// - `dead_lettered`: it did not decode (a [`RejectedRecord`] with reason code and coordinates was emitted);
/// - `duplicates_suppressed`: its id is in the de-duplication set;
/// - `aggregated`: it was added to at least one window of at least one metric (on time, or late within
///   allowed lateness under `update` / `append`);
/// - `late_routed`: it was added to no window; then every window of every metric it belongs to got a
///   late-ledger entry for it.
///
/// An event on time for one metric and too late for another counts as `aggregated`; its ledger entries
/// for the windows it missed are counted in `late_ledger_entries`, which is outside the sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAccounts {
    /// Records consumed.
    pub consumed: u64,
    /// Events added to at least one window.
    pub aggregated: u64,
    /// Events added to no window (all their windows got late-ledger entries).
    pub late_routed: u64,
    /// Records that did not decode.
    pub dead_lettered: u64,
    /// Events whose id was already seen while state that could hold it lived.
    pub duplicates_suppressed: u64,
    /// Late-ledger entries written (one per event and missed window; not part of the sum).
    pub late_ledger_entries: u64,
}

impl PartitionAccounts {
    /// Whether `consumed = aggregated + late_routed + dead_lettered + duplicates_suppressed`.
    pub fn balanced(&self) -> bool {
        self.consumed == self.aggregated + self.late_routed + self.dead_lettered + self.duplicates_suppressed
    }
}

#[derive(Debug, Clone)]
pub(crate) enum MetricState {
    Fixed(FixedState),
    Session(SessionState),
}

impl MetricState {
    pub(crate) fn new(m: &CompiledMetric) -> Self {
        match m.window {
            WindowSpec::Fixed(f) => MetricState::Fixed(FixedState::new(f)),
            WindowSpec::Session(s) => MetricState::Session(SessionState::new(s)),
        }
    }
}

/// The speed layer's windowing engine for one pipeline spec.
///
/// Feed it records with [`Engine::process`] and processing-time ticks with [`Engine::advance`]; collect
/// what it emits from the [`Output`] you pass. Each (event, window) pair is judged against the operator
/// watermark as it was before the event arrived (see [`WatermarkTracker`] for how that moves):
///
/// - **on time** (`watermark < end`): added to the row; nothing is emitted until the window fires.
/// - **early panes**: with `time.early_firing`, every that much processing time the rows of open
///   windows that changed since their last emission are upserted with pane `early`.
/// - **on-time pane**: when the watermark reaches a window's end, each of its rows is upserted with pane
///   `on_time` (revision 0 unless early panes came first; a row's revision counts its emissions).
/// - **late** (`end <= watermark < end + allowed_lateness`), by `late_policy`: `update` adds the event and
///   upserts the full row (revision + 1, pane `late`); `append` adds it and emits a [`RowChange::Delta`]
///   holding only this event's contribution (revision + 1), or the full row if the key was never
///   emitted; `dead_letter` leaves the row alone and writes a late-ledger entry.
/// - **too late** (`end + allowed_lateness <= watermark`): always a late-ledger entry; the state is gone.
/// - **sessions**: when an event extends or bridges sessions, each superseded session that was emitted
///   is retracted ([`RowChange::Retract`] with its last revision) and the merged session is a new row;
///   if it already ended (a late event), it is upserted at once with pane `late`, whatever the policy.
///   A session is late or too late by the end of the session the event would join.
/// - **purge**: a window's state is dropped once `watermark >= end + allowed_lateness`.
///
/// De-duplication: an event id is remembered from its first arrival for as long as a live row holds the
/// event, i.e. until the watermark reaches `end + allowed_lateness` of the last window (or final session)
/// holding it; an event sent to the late ledger under `late_policy = "dead_letter"` is remembered until
/// its missed windows would have been purged. An event too late for every window is not remembered (no
/// state could hold it); a repeat of it goes to the late ledger again. The set is bounded by live state.
///
/// [`Engine::checkpoint`] / [`Engine::restore`] carry the whole state across restarts: a restored engine
/// fed the same records and times emits exactly what the uninterrupted one would have.
///
/// [`RowChange::Delta`]: tidemark_core::RowChange::Delta
/// [`RowChange::Retract`]: tidemark_core::RowChange::Retract
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) fingerprint: u64,
    pub(crate) schema: EventSchema,
    pub(crate) policy: TimePolicy,
    pub(crate) metrics: Vec<CompiledMetric>,
    pub(crate) states: Vec<MetricState>,
    pub(crate) seen: SeenIds,
    pub(crate) watermarks: WatermarkTracker,
    pub(crate) accounts: BTreeMap<i32, PartitionAccounts>,
    pub(crate) positions: BTreeMap<i32, i64>,
    pub(crate) last_now: Option<EventTime>,
    pub(crate) next_early: Option<EventTime>,
}

/// The tracker's suspect policy from the spec's `[time]`.
pub(crate) fn suspect_policy(policy: &TimePolicy) -> SuspectPolicy {
    SuspectPolicy {
        lead: policy.suspect_lead,
        confirmations: policy.suspect_confirmations,
        expiry: policy.suspect_expiry,
    }
}

impl Engine {
    /// An engine with empty state for `spec`.
    pub fn new(spec: &ValidSpec) -> Self {
        let policy = spec.spec().time.clone();
        let metrics = spec.metrics().to_vec();
        Engine {
            fingerprint: crate::checkpoint::fingerprint(spec),
            schema: spec.schema().clone(),
            states: metrics.iter().map(MetricState::new).collect(),
            watermarks: WatermarkTracker::new(policy.watermark_delay, policy.idle_timeout, suspect_policy(&policy)),
            policy,
            metrics,
            seen: SeenIds::default(),
            accounts: BTreeMap::new(),
            positions: BTreeMap::new(),
            last_now: None,
            next_early: None,
        }
    }

    /// Processing time never goes backwards inside the engine.
    fn tick(&mut self, now: EventTime) -> EventTime {
        let now = self.last_now.map_or(now, |l| l.max(now));
        self.last_now = Some(now);
        now
    }

    /// Makes a partition known (e.g. on assignment): until it delivers an event or goes idle, it holds
    /// the operator watermark back.
    pub fn register_partition(&mut self, partition: i32, now: EventTime) {
        let now = self.tick(now);
        self.watermarks.register(partition, now);
    }

    /// Forgets a partition's watermark (e.g. on revocation); may advance the watermark and fire windows.
    pub fn remove_partition(&mut self, partition: i32, now: EventTime, out: &mut Output) {
        self.watermarks.remove(partition);
        self.advance(now, out);
    }

    /// Consumes one record at processing time `now`. Returns the decoded event (`None` when the record
    /// went to the dead letters), so a caller that also needs its fields (the raw archive) does not
    /// decode the payload a second time.
    pub fn process(&mut self, record: &Record, now: EventTime, out: &mut Output) -> Option<Event> {
        let now = self.tick(now);
        let p = record.coords.partition;
        self.watermarks.register(p, now);
        let pos = self.positions.entry(p).or_insert(record.coords.offset + 1);
        *pos = (*pos).max(record.coords.offset + 1);
        let accounts = self.accounts.entry(p).or_default();
        accounts.consumed += 1;
        let decoded = match self.schema.decode(&record.payload, record.received_at) {
            Err(e) => {
                accounts.dead_lettered += 1;
                out.dead_letters.push(RejectedRecord {
                    coords: record.coords.clone(),
                    received_at: record.received_at,
                    reason: e.reason,
                    field: e.field,
                    detail: e.detail,
                    payload: record.payload.clone(),
                });
                None
            }
            Ok(event) => {
                let t = event.time;
                if !self.seen.contains(&event.id) {
                    let id = EventId::new(&*event.id);
                    let watermark = self.watermarks.current();
                    let mut routing = Routing::default();
                    let arrival = Arrival { record, event: &event, id: &id };
                    for (metric, state) in self.metrics.iter().zip(&mut self.states) {
                        let step = Step { metric, policy: &self.policy, watermark, now };
                        routing.merge(match state {
                            MetricState::Fixed(s) => s.route(&step, &arrival, out),
                            MetricState::Session(s) => s.route(&step, &arrival, out),
                        });
                    }
                    self.seen.remember(&id, routing.until, routing.held);
                    if routing.contributed {
                        accounts.aggregated += 1;
                    } else {
                        debug_assert!(routing.ledgered > 0, "an event in no window must be in the late ledger");
                        accounts.late_routed += 1;
                    }
                    accounts.late_ledger_entries += routing.ledgered;
                } else {
                    accounts.duplicates_suppressed += 1;
                }
                // A suspect is aggregated like any event; it only does not move the watermark.
                let _: Observed = self.watermarks.observe(p, t, now);
                Some(event)
            }
        };
        self.after(now, out);
        decoded
    }

    /// A processing-time tick: re-evaluates idle partitions (which may advance the watermark and fire
    /// windows) and emits early panes when due.
    pub fn advance(&mut self, now: EventTime, out: &mut Output) {
        let now = self.tick(now);
        self.after(now, out);
    }

    /// End of a bounded input: moves the watermark past every window, firing and purging everything.
    /// Every later event is too late.
    pub fn drain(&mut self, now: EventTime, out: &mut Output) {
        let now = self.tick(now);
        let previous = self.watermarks.current();
        if let Some(wm) = self.watermarks.advance_to(EventTime::MAX) {
            self.on_watermark(previous, wm, now, out);
        }
    }

    fn after(&mut self, now: EventTime, out: &mut Output) {
        let previous = self.watermarks.current();
        if let Some(wm) = self.watermarks.update(now) {
            self.on_watermark(previous, wm, now, out);
        }
        if let Some(every) = self.policy.early_firing {
            match self.next_early {
                None => self.next_early = Some(now.saturating_add(every)),
                Some(at) if now >= at => {
                    let watermark = self.watermarks.current();
                    for (metric, state) in self.metrics.iter().zip(&mut self.states) {
                        let step = Step { metric, policy: &self.policy, watermark, now };
                        match state {
                            MetricState::Fixed(s) => s.early(&step, out),
                            MetricState::Session(s) => s.early(&step, out),
                        }
                    }
                    self.next_early = Some(now.saturating_add(every));
                }
                Some(_) => {}
            }
        }
    }

    fn on_watermark(&mut self, previous: Option<EventTime>, wm: EventTime, now: EventTime, out: &mut Output) {
        for (metric, state) in self.metrics.iter().zip(&mut self.states) {
            let step = Step { metric, policy: &self.policy, watermark: Some(wm), now };
            match state {
                MetricState::Fixed(s) => {
                    s.fire(&step, previous, out);
                    s.purge(&step);
                }
                MetricState::Session(s) => {
                    s.fire(&step, out);
                    s.purge(&step, &mut self.seen);
                }
            }
        }
        self.seen.expire(wm);
    }

    /// The latest processing time the engine was given (`None` before any).
    pub fn processing_time(&self) -> Option<EventTime> {
        self.last_now
    }

    /// The operator watermark (`None` before the first one).
    pub fn watermark(&self) -> Option<EventTime> {
        self.watermarks.current()
    }

    /// Per known partition: its suspects and how far its event times run ahead of its watermark.
    pub fn suspicion(&self) -> Vec<(i32, PartitionSuspicion)> {
        self.watermarks.suspicion().collect()
    }

    /// Each known partition's watermark at processing time `now`.
    pub fn partition_watermarks(&self, now: EventTime) -> Vec<(i32, Watermark)> {
        self.watermarks.partitions(now).collect()
    }

    /// Accounting per partition.
    pub fn accounts(&self) -> &BTreeMap<i32, PartitionAccounts> {
        &self.accounts
    }

    /// The next offset to read per partition (one past the last record processed).
    pub fn positions(&self) -> &BTreeMap<i32, i64> {
        &self.positions
    }

    /// Number of live rows over all metrics.
    pub fn live_rows(&self) -> usize {
        self.states
            .iter()
            .map(|s| match s {
                MetricState::Fixed(f) => f.len(),
                MetricState::Session(s) => s.len(),
            })
            .sum()
    }

    /// Number of event ids in the de-duplication set.
    pub fn remembered_events(&self) -> usize {
        self.seen.len()
    }
}
