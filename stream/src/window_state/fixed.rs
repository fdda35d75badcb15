//! Tumbling and hopping windows: rows grouped by window, windows ordered by start (and so by end, since
//! every window of a metric has the same size).

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;

use foldhash::HashMap;
use tidemark_core::{Dimensions, EventTime, FixedWindows, LatePolicy, Pane, RowChange, Window};

use super::{Arrival, Routing, Step, Timing, key, late_firing, ledger, timing};
use crate::keys::KeyTable;
use crate::output::{LateReason, Output};
use crate::state::RowState;

#[derive(Debug, Clone)]
pub(crate) struct FixedState {
    windows: FixedWindows,
    keys: KeyTable,
    /// Window -> key id -> row.
    groups: BTreeMap<Window, HashMap<u32, RowState>>,
}

impl FixedState {
    pub(crate) fn new(windows: FixedWindows) -> Self {
        FixedState { windows, keys: KeyTable::default(), groups: BTreeMap::new() }
    }

    pub(crate) fn route(&mut self, step: &Step<'_>, a: &Arrival<'_>, out: &mut Output) -> Routing {
        let kid = self.keys.intern(step.metric, a.event);
        let lateness = step.policy.allowed_lateness;
        let mut r = Routing::default();
        for w in self.windows.assign(a.event.time) {
            let t = timing(w.end(), step);
            match t {
                Timing::TooLate => {
                    ledger(step, a, w, self.keys.dims(kid), LateReason::BeyondAllowedLateness, out);
                    r.ledgered += 1;
                    continue;
                }
                Timing::Late if step.policy.late_policy == LatePolicy::DeadLetter => {
                    ledger(step, a, w, self.keys.dims(kid), LateReason::LatePolicy, out);
                    r.ledgered += 1;
                    r.keep_until(w.end().saturating_add(lateness));
                    continue;
                }
                Timing::Late | Timing::OnTime => {}
            }
            let row = match self.groups.entry(w).or_default().entry(kid) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    self.keys.retain(kid);
                    v.insert(RowState::new(step.metric))
                }
            };
            row.add(step.metric, a.event);
            r.keep_until(w.end().saturating_add(lateness));
            r.contributed = true;
            if t == Timing::Late {
                late_firing(step, a, key(step, w, self.keys.dims(kid).clone()), row, out);
            }
        }
        self.keys.settle(kid);
        r
    }

    /// Emits the on-time pane of every window with `previous < end <= watermark`.
    pub(crate) fn fire(&mut self, step: &Step<'_>, previous: Option<EventTime>, out: &mut Output) {
        let Some(wm) = step.watermark else { return };
        for (w, rows) in self.groups.iter_mut() {
            if w.end() > wm {
                break;
            }
            if previous.is_some_and(|p| w.end() <= p) {
                continue;
            }
            emit_sorted(step, &self.keys, *w, rows, Pane::OnTime, |_| true, out);
        }
    }

    /// Emits an early pane for every open window's rows that changed since their last emission.
    pub(crate) fn early(&mut self, step: &Step<'_>, out: &mut Output) {
        for (w, rows) in self.groups.iter_mut() {
            if step.watermark.is_some_and(|wm| w.end() <= wm) {
                continue;
            }
            emit_sorted(step, &self.keys, *w, rows, Pane::Early, |r| r.dirty, out);
        }
    }

    /// Drops windows with `end + allowed_lateness <= watermark` (the ids of their events expire in the
    /// de-duplication set at the same watermark).
    pub(crate) fn purge(&mut self, step: &Step<'_>) {
        let Some(wm) = step.watermark else { return };
        while let Some(entry) = self.groups.first_entry() {
            if entry.key().end().saturating_add(step.policy.allowed_lateness) > wm {
                break;
            }
            for kid in entry.remove().into_keys() {
                self.keys.release(kid);
            }
        }
    }

    /// Every live row.
    pub(crate) fn rows(&self) -> impl Iterator<Item = (Window, &Dimensions, &RowState)> {
        let keys = &self.keys;
        self.groups.iter().flat_map(move |(w, rows)| rows.iter().map(move |(k, r)| (*w, keys.dims(*k), r)))
    }

    /// Number of live rows.
    pub(crate) fn len(&self) -> usize {
        self.groups.values().map(|g| g.len()).sum()
    }

    /// Re-creates a row from a checkpoint.
    pub(crate) fn restore_row(&mut self, step: &Step<'_>, window: Window, dims: &Dimensions, row: RowState) {
        let kid = self.keys.intern_dims(step.metric, dims);
        if self.groups.entry(window).or_default().insert(kid, row).is_none() {
            self.keys.retain(kid);
        }
    }
}

fn emit_sorted(
    step: &Step<'_>,
    keys: &KeyTable,
    w: Window,
    rows: &mut HashMap<u32, RowState>,
    pane: Pane,
    pick: impl Fn(&RowState) -> bool,
    out: &mut Output,
) {
    let mut picked: Vec<(&Dimensions, &mut RowState)> =
        rows.iter_mut().filter(|(_, r)| pick(r)).map(|(k, r)| (keys.dims(*k), r)).collect();
    picked.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (dims, row) in picked {
        let k = key(step, w, dims.clone());
        out.changes.push(RowChange::Upsert(row.emit(step.metric, k, pane, step.watermark, step.now)));
    }
}
