//! Row state and the de-duplication set.
//!
//! A row keeps tidemark-core's accumulators ([`MetricAccumulator`], serde values), which a checkpoint
//! stores as they are. The de-duplication set ([`SeenIds`]) remembers event ids, not events: an id is
//! kept until the watermark reaches the time the last fixed window holding the event is purged (or its
//! late-ledger pin expires), and while a session row holds it (a session's end can still move, so
//! session rows list their events' ids and release them when purged).

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;

use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use tidemark_core::{CompiledMetric, Event, EventTime, MetricAccumulator, MetricRow, Origin, Pane, RowKey};

/// An event id. Ids of up to 23 bytes are stored inline; longer ones are shared, so clones are cheap.
pub(crate) type EventId = SmolStr;

/// The state of one row: (metric, window, dimensions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RowState {
    pub(crate) acc: MetricAccumulator,
    /// The revision of the last row emitted for this key.
    pub(crate) last_revision: Option<u32>,
    /// Changed since the last emission.
    pub(crate) dirty: bool,
}

impl RowState {
    pub(crate) fn new(metric: &CompiledMetric) -> Self {
        RowState { acc: metric.new_accumulator(), last_revision: None, dirty: false }
    }

    pub(crate) fn add(&mut self, metric: &CompiledMetric, event: &Event) {
        metric.add(&mut self.acc, event);
        self.dirty = true;
    }

    /// Merges another row's accumulators into this one (a session bridge).
    pub(crate) fn absorb(&mut self, other: &RowState) {
        self.acc.merge(&other.acc);
        self.dirty = true;
    }

    pub(crate) fn next_revision(&self) -> u32 {
        self.last_revision.map_or(0, |r| r.saturating_add(1))
    }

    /// The full row for `key`, recorded as emitted.
    pub(crate) fn emit(
        &mut self,
        metric: &CompiledMetric,
        key: RowKey,
        pane: Pane,
        watermark: Option<EventTime>,
        now: EventTime,
    ) -> MetricRow {
        let revision = self.next_revision();
        self.last_revision = Some(revision);
        self.dirty = false;
        row_of(metric, key, &self.acc, revision, pane, watermark, now)
    }
}

/// A finished row from an accumulator.
pub(crate) fn row_of(
    metric: &CompiledMetric,
    key: RowKey,
    acc: &MetricAccumulator,
    revision: u32,
    pane: Pane,
    watermark: Option<EventTime>,
    now: EventTime,
) -> MetricRow {
    let values: BTreeMap<String, _> = metric.aggregates.iter().map(|a| a.name.clone()).zip(acc.finish()).collect();
    MetricRow {
        key,
        values,
        events: acc.events(),
        origin: Origin::Speed { revision, pane, watermark: watermark.unwrap_or(EventTime::MIN) },
        computed_at: now,
    }
}

/// Why an id is still remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Remembered {
    /// Until the watermark reaches this (fixed-window rows, late-ledger pins). `Some(t)` implies
    /// `t > watermark` and that the id is in the `expiring` bucket `t`.
    until: Option<EventTime>,
    /// Session rows holding the event.
    held: u32,
}

/// The ids of the events that live state may hold: the de-duplication set.
///
/// An id is remembered while the watermark is before its `until` or a session row holds it; so the set
/// is bounded by the live state.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeenIds {
    ids: HashMap<EventId, Remembered>,
    /// Ids by the watermark at which their `until` runs out, in arrival order within a bucket.
    expiring: BTreeMap<EventTime, Vec<EventId>>,
}

impl SeenIds {
    /// Whether the id is remembered (a repeat of it is a duplicate).
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Remembers a new id until the watermark reaches `until` (if any) and while `held` session rows
    /// hold it; an id with neither is not remembered. `until` must be after the watermark.
    pub(crate) fn remember(&mut self, id: &EventId, until: Option<EventTime>, held: u32) {
        if until.is_none() && held == 0 {
            return;
        }
        debug_assert!(!self.ids.contains_key(id), "ids are remembered once");
        self.ids.insert(id.clone(), Remembered { until, held });
        if let Some(t) = until {
            self.expiring.entry(t).or_default().push(id.clone());
        }
    }

    /// One more session row holds the id (restoring a checkpoint).
    pub(crate) fn hold(&mut self, id: &EventId) {
        self.ids.entry(id.clone()).or_insert(Remembered { until: None, held: 0 }).held += 1;
    }

    /// A session row holding the id was purged.
    pub(crate) fn release(&mut self, id: &str) {
        if let Some(r) = self.ids.get_mut(id) {
            r.held = r.held.saturating_sub(1);
            if r.held == 0 && r.until.is_none() {
                self.ids.remove(id);
            }
        }
    }

    /// The watermark reached `watermark`: forgets the ids whose `until` ran out and no session row holds.
    pub(crate) fn expire(&mut self, watermark: EventTime) {
        while let Some(bucket) = self.expiring.first_entry() {
            if *bucket.key() > watermark {
                break;
            }
            for id in bucket.remove() {
                if let Entry::Occupied(mut e) = self.ids.entry(id) {
                    e.get_mut().until = None;
                    if e.get().held == 0 {
                        e.remove();
                    }
                }
            }
        }
    }

    /// Number of remembered ids.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The ids with an `until`, by it, in arrival order (for checkpoints).
    pub(crate) fn expiring(&self) -> impl Iterator<Item = (EventTime, &[EventId])> {
        self.expiring.iter().map(|(t, ids)| (*t, ids.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> EventTime {
        EventTime::from_secs(s).unwrap()
    }

    #[test]
    fn ids_are_remembered_until_their_time_and_while_session_rows_hold_them() {
        let mut seen = SeenIds::default();
        let (a, b, c, d) = (EventId::new("a"), EventId::new("b"), EventId::new("c"), EventId::new("d"));
        seen.remember(&a, Some(t(10)), 0);
        seen.remember(&b, Some(t(20)), 1);
        seen.remember(&c, None, 2);
        seen.remember(&d, None, 0);
        assert!(!seen.contains("d"), "an id nothing keeps is not remembered");
        assert_eq!(seen.len(), 3);
        seen.expire(t(9));
        assert!(seen.contains("a"));
        seen.expire(t(10));
        assert!(!seen.contains("a"), "forgotten when the watermark reaches its time");
        seen.release("b");
        assert!(seen.contains("b"), "its time has not come");
        seen.release("c");
        assert!(seen.contains("c"), "another session row holds it");
        seen.release("c");
        assert!(!seen.contains("c"));
        seen.hold(&b);
        seen.expire(t(25));
        assert!(seen.contains("b"), "a session row still holds it");
        seen.release("b");
        assert_eq!(seen.len(), 0);
        assert_eq!(seen.expiring().count(), 0);
    }
}
