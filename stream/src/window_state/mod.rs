//! Window state per metric, one file per window kind: [`fixed`] (tumbling and hopping) and [`session`].
//!
//! Both classify each (event, window) pair against the operator watermark *before* the event:
//! on time (`watermark < end`), late (`end <= watermark < end + allowed_lateness`) or too late
//! (`end + allowed_lateness <= watermark`, the window's state is gone).

pub(crate) mod fixed;
pub(crate) mod session;

use tidemark_core::spec::TimePolicy;
use tidemark_core::{CompiledMetric, Dimensions, Event, EventTime, LatePolicy, Pane, RowChange, RowKey, Window};

use crate::output::{LateEvent, LateReason, Output, Record};
use crate::state::{EventId, RowState, row_of};

/// What a window-state call needs to know about the engine.
pub(crate) struct Step<'a> {
    pub(crate) metric: &'a CompiledMetric,
    pub(crate) policy: &'a TimePolicy,
    /// The operator watermark (`None`: none yet, nothing is late).
    pub(crate) watermark: Option<EventTime>,
    /// Processing time.
    pub(crate) now: EventTime,
}

/// The event being routed.
pub(crate) struct Arrival<'a> {
    pub(crate) record: &'a Record,
    pub(crate) event: &'a Event,
    pub(crate) id: &'a EventId,
}

/// What routing one event through one metric did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Routing {
    /// The event was added to at least one row.
    pub(crate) contributed: bool,
    /// Session rows that now hold the event (they release it when purged).
    pub(crate) held: u32,
    /// Keep the id in the de-duplication set until the watermark reaches this: the purge time of the
    /// last fixed window holding the event, or of a window it missed under the dead-letter policy.
    pub(crate) until: Option<EventTime>,
    /// Late-ledger entries written.
    pub(crate) ledgered: u64,
}

impl Routing {
    pub(crate) fn merge(&mut self, o: Routing) {
        self.contributed |= o.contributed;
        self.held += o.held;
        if let Some(t) = o.until {
            self.keep_until(t);
        }
        self.ledgered += o.ledgered;
    }

    /// Keeps the id at least until the watermark reaches `t`.
    pub(crate) fn keep_until(&mut self, t: EventTime) {
        self.until = Some(self.until.map_or(t, |u| u.max(t)));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timing {
    OnTime,
    Late,
    TooLate,
}

pub(crate) fn timing(end: EventTime, step: &Step<'_>) -> Timing {
    match step.watermark {
        None => Timing::OnTime,
        Some(wm) if end.saturating_add(step.policy.allowed_lateness) <= wm => Timing::TooLate,
        Some(wm) if end <= wm => Timing::Late,
        Some(_) => Timing::OnTime,
    }
}

/// Writes a late-ledger entry.
pub(crate) fn ledger(
    step: &Step<'_>,
    a: &Arrival<'_>,
    window: Window,
    dims: &Dimensions,
    reason: LateReason,
    out: &mut Output,
) {
    out.late.push(LateEvent {
        coords: a.record.coords.clone(),
        event_id: a.event.id.to_string(),
        event_time: a.event.time,
        metric: step.metric.name.clone(),
        window,
        dims: dims.clone(),
        reason,
        watermark: step.watermark.unwrap_or(EventTime::MIN),
        payload: String::from_utf8_lossy(&a.record.payload).into_owned(),
    });
}

/// Applies the late policy to a late event already added to `row` (an unchanged window): `update` re-emits
/// the full row; `append` emits a delta of the event alone, or the full row if the key was never emitted.
pub(crate) fn late_firing(step: &Step<'_>, a: &Arrival<'_>, key: RowKey, row: &mut RowState, out: &mut Output) {
    match step.policy.late_policy {
        // a delta needs an earlier row of the key; the first row of a key is always a full row
        LatePolicy::Append if row.last_revision.is_some() => {
            let mut only = step.metric.new_accumulator();
            step.metric.add(&mut only, a.event);
            let revision = row.next_revision();
            row.last_revision = Some(revision);
            row.dirty = false;
            out.changes.push(RowChange::Delta(row_of(
                step.metric,
                key,
                &only,
                revision,
                Pane::Late,
                step.watermark,
                step.now,
            )));
        }
        // dead_letter never adds late events to rows; treat like update if it ever does
        LatePolicy::Append | LatePolicy::Update | LatePolicy::DeadLetter => {
            out.changes.push(RowChange::Upsert(row.emit(step.metric, key, Pane::Late, step.watermark, step.now)));
        }
    }
}

pub(crate) fn key(step: &Step<'_>, window: Window, dims: Dimensions) -> RowKey {
    RowKey { metric: step.metric.name.clone(), window, dims }
}
