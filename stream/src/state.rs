//! Row state and the table of live events.
//!
//! A row's accumulators come from tidemark-core ([`MetricAccumulator`]), which is not serializable. Each
//! row therefore also keeps the log of operations that built its accumulators (add event *n*, merge
//! another row's accumulators), and the engine keeps the events those logs refer to. A checkpoint stores
//! events and logs; restoring replays the same operations in the same order, so the accumulators are
//! bit-for-bit those of the uninterrupted run. The event table doubles as the de-duplication set.
//!
//! (If tidemark-core's accumulators become serializable, rows can be checkpointed directly and the
//! table can shrink to ids.)

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use foldhash::HashMap;
use tidemark_core::{CompiledMetric, Event, EventTime, MetricAccumulator, MetricRow, Origin, Pane, RowKey};

use crate::error::Error;
use crate::output::Record;

/// One step of a row's construction log, packed in 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op(u64);

/// What an [`Op`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// Add the event with this sequence number to the accumulator on top of the stack.
    Add(u64),
    /// Push an empty accumulator (the start of a merged-in row).
    Begin,
    /// Pop the top accumulator and merge it into the one below.
    End,
}

impl Op {
    const BEGIN: Op = Op(u64::MAX);
    const END: Op = Op(u64::MAX - 1);

    /// Adds event `seq` (sequence numbers count events, so they never reach the reserved values).
    fn add(seq: u64) -> Op {
        Op(seq)
    }

    pub(crate) fn kind(self) -> OpKind {
        match self {
            Op::BEGIN => OpKind::Begin,
            Op::END => OpKind::End,
            Op(seq) => OpKind::Add(seq),
        }
    }

    /// Compact form for checkpoints: `n >= 0` adds event `n`, `-1` begins, `-2` ends.
    pub(crate) fn encode(self) -> i64 {
        match self.kind() {
            OpKind::Add(seq) => i64::try_from(seq).unwrap_or(i64::MAX),
            OpKind::Begin => -1,
            OpKind::End => -2,
        }
    }

    pub(crate) fn decode(x: i64) -> Option<Op> {
        match x {
            -1 => Some(Op::BEGIN),
            -2 => Some(Op::END),
            n => u64::try_from(n).ok().map(Op::add),
        }
    }
}

/// The state of one row: (metric, window, dimensions).
#[derive(Debug, Clone)]
pub(crate) struct RowState {
    pub(crate) acc: MetricAccumulator,
    pub(crate) log: Vec<Op>,
    /// The revision of the last row emitted for this key.
    pub(crate) last_revision: Option<u32>,
    /// Changed since the last emission.
    pub(crate) dirty: bool,
}

impl RowState {
    pub(crate) fn new(metric: &CompiledMetric) -> Self {
        RowState { acc: metric.new_accumulator(), log: Vec::new(), last_revision: None, dirty: false }
    }

    pub(crate) fn add(&mut self, metric: &CompiledMetric, event: &Event, seq: u64) {
        metric.add(&mut self.acc, event);
        self.log.push(Op::add(seq));
        self.dirty = true;
    }

    /// Merges another row's accumulators into this one (a session bridge).
    pub(crate) fn absorb(&mut self, other: RowState) {
        self.acc.merge(&other.acc);
        self.log.push(Op::BEGIN);
        self.log.extend(other.log);
        self.log.push(Op::END);
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

    /// Sequence numbers of the events this row holds.
    pub(crate) fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.log.iter().filter_map(|op| match op.kind() {
            OpKind::Add(s) => Some(s),
            _ => None,
        })
    }

    /// Rebuilds the accumulators from a log by replaying it.
    pub(crate) fn replay(
        metric: &CompiledMetric,
        log: &[Op],
        events: &HashMap<u64, Event>,
    ) -> Result<MetricAccumulator, Error> {
        let mut stack = vec![metric.new_accumulator()];
        for op in log {
            match op.kind() {
                OpKind::Add(seq) => {
                    let e = events
                        .get(&seq)
                        .ok_or_else(|| Error::CheckpointCorrupt(format!("row log names missing event {seq}")))?;
                    let top = stack.last_mut().ok_or_else(|| Error::CheckpointCorrupt("unbalanced row log".into()))?;
                    metric.add(top, e);
                }
                OpKind::Begin => stack.push(metric.new_accumulator()),
                OpKind::End => {
                    let inner = stack.pop().ok_or_else(|| Error::CheckpointCorrupt("unbalanced row log".into()))?;
                    let top = stack.last_mut().ok_or_else(|| Error::CheckpointCorrupt("unbalanced row log".into()))?;
                    top.merge(&inner);
                }
            }
        }
        match (stack.pop(), stack.is_empty()) {
            (Some(acc), true) => Ok(acc),
            _ => Err(Error::CheckpointCorrupt("unbalanced row log".into())),
        }
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

/// A live event: held by `refs` rows, or pinned in the de-duplication set until a watermark. Kept as
/// received (payload and receive time), which is compact; decoding it again gives the same event.
#[derive(Debug, Clone)]
pub(crate) struct LiveEvent {
    pub(crate) id: Arc<str>,
    pub(crate) time: EventTime,
    pub(crate) received_at: EventTime,
    pub(crate) payload: Box<[u8]>,
    pub(crate) refs: u32,
    pub(crate) pin_until: Option<EventTime>,
}

/// The events that live row state may hold, by sequence number and by id.
///
/// An event stays while a row holds it or its pin (set when it went to the late ledger under
/// `late_policy = "dead_letter"`, until the missed window is purged) has not expired. Its id is
/// remembered exactly that long, so the set is bounded by the live state.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventTable {
    by_id: HashMap<Arc<str>, u64>,
    live: HashMap<u64, LiveEvent>,
    pins: BTreeSet<(EventTime, u64)>,
    pub(crate) next_seq: u64,
}

impl EventTable {
    /// Adds an event (held by nothing yet) from its decoded form and the record it came from, and returns
    /// its sequence number; `None` if its id is already remembered (a duplicate).
    pub(crate) fn insert_new(&mut self, event: &Event, record: &Record) -> Option<u64> {
        let id: Arc<str> = Arc::from(&*event.id);
        let seq = self.next_seq;
        match self.by_id.entry(id.clone()) {
            Entry::Occupied(_) => return None,
            Entry::Vacant(v) => v.insert(seq),
        };
        self.next_seq += 1;
        let payload = record.payload.as_slice().into();
        let live =
            LiveEvent { id, time: event.time, received_at: record.received_at, payload, refs: 0, pin_until: None };
        self.live.insert(seq, live);
        Some(seq)
    }

    pub(crate) fn insert_at(
        &mut self,
        seq: u64,
        event: &Event,
        received_at: EventTime,
        payload: Box<[u8]>,
        refs: u32,
        pin_until: Option<EventTime>,
    ) {
        let id: Arc<str> = Arc::from(&*event.id);
        self.by_id.insert(id.clone(), seq);
        if let Some(p) = pin_until {
            self.pins.insert((p, seq));
        }
        self.live.insert(seq, LiveEvent { id, time: event.time, received_at, payload, refs, pin_until });
    }

    pub(crate) fn get(&self, seq: u64) -> Option<&LiveEvent> {
        self.live.get(&seq)
    }

    /// Records that `n` more rows hold the event and that it is pinned until `pin` (if any); then drops
    /// it if nothing keeps it.
    pub(crate) fn settle(&mut self, seq: u64, n: u32, pin: Option<EventTime>, watermark: Option<EventTime>) {
        let Some(l) = self.live.get_mut(&seq) else { return };
        l.refs += n;
        if let Some(p) = pin
            && l.pin_until.is_none_or(|old| p > old)
        {
            if let Some(old) = l.pin_until {
                self.pins.remove(&(old, seq));
            }
            l.pin_until = Some(p);
            self.pins.insert((p, seq));
        }
        self.drop_if_unused(seq, watermark);
    }

    /// One row holding the event was purged.
    pub(crate) fn release(&mut self, seq: u64, watermark: Option<EventTime>) {
        self.update(seq, watermark, |l| l.refs = l.refs.saturating_sub(1));
    }

    /// Expires pins at or behind the watermark.
    pub(crate) fn expire_pins(&mut self, watermark: EventTime) {
        while let Some(&(until, seq)) = self.pins.first() {
            if until > watermark {
                break;
            }
            self.pins.pop_first();
            self.update(seq, Some(watermark), |l| l.pin_until = None);
        }
    }

    fn drop_if_unused(&mut self, seq: u64, watermark: Option<EventTime>) {
        self.update(seq, watermark, |_| {});
    }

    /// Changes a live event in place, then drops it if nothing keeps it (one lookup).
    fn update(&mut self, seq: u64, watermark: Option<EventTime>, change: impl FnOnce(&mut LiveEvent)) {
        let Entry::Occupied(mut entry) = self.live.entry(seq) else { return };
        let l = entry.get_mut();
        change(l);
        let pinned = l.pin_until.is_some_and(|p| watermark.is_none_or(|w| p > w));
        if l.refs == 0 && !pinned {
            let l = entry.remove();
            self.by_id.remove(&l.id);
            if let Some(p) = l.pin_until {
                self.pins.remove(&(p, seq));
            }
        }
    }

    /// Number of remembered events.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &LiveEvent)> {
        self.live.iter().map(|(s, l)| (*s, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_pack_into_eight_bytes_and_round_trip() {
        assert_eq!(std::mem::size_of::<Op>(), 8);
        for op in [Op::add(0), Op::add(123_456_789), Op::BEGIN, Op::END] {
            assert_eq!(Op::decode(op.encode()), Some(op));
        }
        assert_eq!(Op::BEGIN.kind(), OpKind::Begin);
        assert_eq!(Op::add(7).kind(), OpKind::Add(7));
        assert_eq!(Op::decode(-3), None);
    }
}
