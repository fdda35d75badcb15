//! Session windows per dimension key, kept with tidemark-core's [`SessionSet`]. When an event extends or
//! bridges sessions, the rows already emitted for the superseded sessions are retracted and the merged
//! session becomes a new row (a new key, so its revisions start again at 0).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;
use tidemark_core::{Dimensions, EventTime, LatePolicy, Pane, RowChange, SessionSet, SessionWindows, Window};

use super::{Arrival, Routing, Step, Timing, key, late_firing, ledger, timing};
use crate::keys::KeyTable;
use crate::output::{LateReason, Output};
use crate::state::{EventId, RowState, SeenIds};

/// The row of one session and the ids of the events it holds (released from the de-duplication set
/// when the session is purged).
#[derive(Debug, Clone)]
pub(crate) struct SessionRow {
    pub(crate) row: RowState,
    pub(crate) members: Vec<EventId>,
}

/// The sessions of one dimension key and their rows.
#[derive(Debug, Clone, Default)]
struct KeySessions {
    set: SessionSet,
    rows: BTreeMap<Window, SessionRow>,
}

/// (end, key id, window)
type Slot = (EventTime, u32, Window);

#[derive(Debug, Clone)]
pub(crate) struct SessionState {
    spec: SessionWindows,
    keys: KeyTable,
    sessions: HashMap<u32, KeySessions>,
    /// Sessions whose on-time pane is still due.
    unfired: BTreeSet<Slot>,
    /// Every live session.
    live: BTreeSet<Slot>,
}

impl SessionState {
    pub(crate) fn new(spec: SessionWindows) -> Self {
        SessionState {
            spec,
            keys: KeyTable::default(),
            sessions: HashMap::default(),
            unfired: BTreeSet::new(),
            live: BTreeSet::new(),
        }
    }

    pub(crate) fn route(&mut self, step: &Step<'_>, a: &Arrival<'_>, out: &mut Output) -> Routing {
        let kid = self.keys.intern(step.metric, a.event);
        let proposal = self.spec.proposal(a.event.time);
        // the session the event would join, computed before changing anything
        let merged = self
            .sessions
            .get(&kid)
            .map_or(proposal, |k| k.set.iter().filter(|w| w.overlaps(&proposal)).fold(proposal, |m, w| m.union(&w)));
        let mut r = Routing::default();
        let t = timing(merged.end(), step);
        let ledgered = match t {
            Timing::TooLate => Some(LateReason::BeyondAllowedLateness),
            Timing::Late if step.policy.late_policy == LatePolicy::DeadLetter => Some(LateReason::LatePolicy),
            Timing::Late | Timing::OnTime => None,
        };
        if let Some(reason) = ledgered {
            ledger(step, a, merged, self.keys.dims(kid), reason, out);
            r.ledgered = 1;
            if reason == LateReason::LatePolicy {
                r.keep_until(merged.end().saturating_add(step.policy.allowed_lateness));
            }
            self.keys.settle(kid);
            return r;
        }
        r.contributed = true;
        r.held = 1;
        let ks = match self.sessions.entry(kid) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                self.keys.retain(kid);
                v.insert(KeySessions::default())
            }
        };
        let update = ks.set.insert(self.spec, a.event.time);
        debug_assert_eq!(update.window, merged);
        let dims = self.keys.dims(kid);
        if update.unchanged() {
            let s = ks
                .rows
                .entry(update.window)
                .or_insert_with(|| SessionRow { row: RowState::new(step.metric), members: Vec::new() });
            s.row.add(step.metric, a.event);
            s.members.push(a.id.clone());
            if t == Timing::Late {
                late_firing(step, a, key(step, update.window, dims.clone()), &mut s.row, out);
            }
            return r;
        }
        let mut merged_row: Option<SessionRow> = None;
        for old_w in &update.absorbed {
            let slot = (old_w.end(), kid, *old_w);
            self.unfired.remove(&slot);
            self.live.remove(&slot);
            let Some(old) = ks.rows.remove(old_w) else { continue };
            if let Some(revision) = old.row.last_revision {
                out.changes.push(RowChange::Retract { key: key(step, *old_w, dims.clone()), revision });
            }
            match merged_row.as_mut() {
                None => {
                    let mut first = old;
                    first.row.last_revision = None;
                    merged_row = Some(first);
                }
                Some(m) => {
                    m.row.absorb(&old.row);
                    m.members.extend(old.members);
                }
            }
        }
        let SessionRow { mut row, mut members } =
            merged_row.unwrap_or_else(|| SessionRow { row: RowState::new(step.metric), members: Vec::new() });
        row.add(step.metric, a.event);
        members.push(a.id.clone());
        let w = update.window;
        self.live.insert((w.end(), kid, w));
        if t == Timing::Late {
            // a session already behind the watermark: its first row is a late pane, whatever the policy
            // (append has no earlier row of this key to add a delta to)
            let k = key(step, w, dims.clone());
            out.changes.push(RowChange::Upsert(row.emit(step.metric, k, Pane::Late, step.watermark, step.now)));
        } else {
            self.unfired.insert((w.end(), kid, w));
        }
        ks.rows.insert(w, SessionRow { row, members });
        r
    }

    /// Emits rows for `slots` in (end, dimensions, window) order, so the order does not depend on key ids.
    fn emit(&mut self, step: &Step<'_>, slots: Vec<Slot>, pane: Pane, out: &mut Output) {
        let mut sorted: Vec<(EventTime, &Dimensions, Window, u32)> =
            slots.into_iter().map(|(end, kid, w)| (end, self.keys.dims(kid), w, kid)).collect();
        sorted.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        for (_, dims, w, kid) in sorted {
            if let Some(s) = self.sessions.get_mut(&kid).and_then(|k| k.rows.get_mut(&w)) {
                let k = key(step, w, dims.clone());
                out.changes.push(RowChange::Upsert(s.row.emit(step.metric, k, pane, step.watermark, step.now)));
            }
        }
    }

    /// Emits the on-time pane of every session with `end <= watermark` not yet fired.
    pub(crate) fn fire(&mut self, step: &Step<'_>, out: &mut Output) {
        let Some(wm) = step.watermark else { return };
        let mut due = Vec::new();
        while self.unfired.first().is_some_and(|(end, _, _)| *end <= wm) {
            due.extend(self.unfired.pop_first());
        }
        self.emit(step, due, Pane::OnTime, out);
    }

    /// Emits an early pane for every open session that changed since its last emission.
    pub(crate) fn early(&mut self, step: &Step<'_>, out: &mut Output) {
        let sessions = &self.sessions;
        let dirty: Vec<Slot> = self
            .unfired
            .iter()
            .filter(|(_, kid, w)| sessions.get(kid).and_then(|k| k.rows.get(w)).is_some_and(|s| s.row.dirty))
            .copied()
            .collect();
        self.emit(step, dirty, Pane::Early, out);
    }

    /// Drops sessions with `end + allowed_lateness <= watermark`, releasing their events' ids.
    pub(crate) fn purge(&mut self, step: &Step<'_>, seen: &mut SeenIds) {
        let Some(wm) = step.watermark else { return };
        while let Some(&(end, kid, w)) = self.live.first() {
            if end.saturating_add(step.policy.allowed_lateness) > wm {
                break;
            }
            self.live.pop_first();
            self.unfired.remove(&(end, kid, w));
            if let Some(ks) = self.sessions.get_mut(&kid) {
                ks.set.remove(&w);
                if let Some(s) = ks.rows.remove(&w) {
                    for id in &s.members {
                        seen.release(id);
                    }
                }
                if ks.rows.is_empty() {
                    self.sessions.remove(&kid);
                    self.keys.release(kid);
                }
            }
        }
    }

    /// Every live row.
    pub(crate) fn rows(&self) -> impl Iterator<Item = (Window, &Dimensions, &SessionRow)> {
        let keys = &self.keys;
        self.sessions.iter().flat_map(move |(kid, k)| k.rows.iter().map(move |(w, r)| (*w, keys.dims(*kid), r)))
    }

    /// Number of live rows.
    pub(crate) fn len(&self) -> usize {
        self.sessions.values().map(|k| k.rows.len()).sum()
    }

    /// Re-creates a session and its row from a checkpoint.
    pub(crate) fn restore_row(
        &mut self,
        step: &Step<'_>,
        window: Window,
        dims: &Dimensions,
        row: SessionRow,
    ) -> Result<(), String> {
        if window.end() < window.start().saturating_add(self.spec.gap()) || row.members.is_empty() {
            return Err(format!("session {window} of {dims} is shorter than the gap or holds no event"));
        }
        let kid = self.keys.intern_dims(step.metric, dims);
        let ks = match self.sessions.entry(kid) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                self.keys.retain(kid);
                v.insert(KeySessions::default())
            }
        };
        if !ks.set.insert_session(window) {
            return Err(format!("session {window} of {dims} overlaps another session of the key"));
        }
        if step.watermark.is_none_or(|wm| window.end() > wm) {
            self.unfired.insert((window.end(), kid, window));
        }
        self.live.insert((window.end(), kid, window));
        ks.rows.insert(window, row);
        Ok(())
    }
}
