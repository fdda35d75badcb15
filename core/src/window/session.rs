//! Session windows: the events of one key, grouped while consecutive events are less than `gap` apart.
//!
//! An event at `t` proposes the window `[t, t + gap)`. Windows that overlap (share an instant) merge, so a
//! session is `[first event, last event + gap)` and two events exactly `gap` apart start separate sessions.
//! The resulting sessions are the connected components of the proposed windows, so they do not depend on
//! the order in which events arrive.

use std::collections::BTreeMap;

use crate::time::{Duration, EventTime};
use crate::window::Window;

/// Session windows with an inactivity gap (> 0, checked by [`SessionWindows::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionWindows {
    gap: Duration,
}

impl SessionWindows {
    /// Sessions with the given gap, or `None` if the gap is zero.
    pub fn new(gap: Duration) -> Option<Self> {
        (!gap.is_zero()).then_some(SessionWindows { gap })
    }

    /// The inactivity gap.
    pub fn gap(&self) -> Duration {
        self.gap
    }

    /// The window an event at `t` proposes on its own: `[t, t + gap)`.
    pub fn proposal(&self, t: EventTime) -> Window {
        Window::new(t, t.saturating_add(self.gap)).expect("gap > 0")
    }
}

/// What inserting one event did to a key's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUpdate {
    /// The session that now holds the event.
    pub window: Window,
    /// Sessions that existed before and are replaced by `window` (oldest first). Empty if the event
    /// created a new session; `[window]` if it fell inside an existing session without changing it.
    pub absorbed: Vec<Window>,
}

impl SessionUpdate {
    /// Whether the event fell inside an existing session and changed no window.
    pub fn unchanged(&self) -> bool {
        self.absorbed.len() == 1 && self.absorbed[0] == self.window
    }
}

/// The sessions of one key: disjoint windows ordered by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSet {
    /// start -> end
    sessions: BTreeMap<EventTime, EventTime>,
}

impl SessionSet {
    /// No sessions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an event at `t`: it extends a session, bridges several into one, or starts a new one.
    pub fn insert(&mut self, spec: SessionWindows, t: EventTime) -> SessionUpdate {
        let proposal = spec.proposal(t);
        let mut absorbed = Vec::new();
        for (&start, &end) in self.sessions.range(..proposal.end()).rev() {
            if end <= proposal.start() {
                break; // disjoint and sorted: nothing earlier can overlap
            }
            absorbed.push(Window::new(start, end).expect("stored sessions are non-empty"));
        }
        absorbed.reverse();
        let mut window = proposal;
        for w in &absorbed {
            window = window.union(w);
            self.sessions.remove(&w.start());
        }
        self.sessions.insert(window.start(), window.end());
        SessionUpdate { window, absorbed }
    }

    /// Adds a whole session as it is (for example restoring saved state). Returns `false`, changing
    /// nothing, if it overlaps a session already in the set.
    pub fn insert_session(&mut self, window: Window) -> bool {
        let before = self.sessions.range(..window.end()).next_back();
        if before.is_some_and(|(_, &end)| end > window.start()) {
            return false;
        }
        self.sessions.insert(window.start(), window.end());
        true
    }

    /// Removes a session (for example once it is finalized and purged). Returns whether it existed.
    pub fn remove(&mut self, window: &Window) -> bool {
        if self.sessions.get(&window.start()) == Some(&window.end()) {
            self.sessions.remove(&window.start());
            true
        } else {
            false
        }
    }

    /// The sessions, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Window> + '_ {
        self.sessions.iter().map(|(&s, &e)| Window::new(s, e).expect("stored sessions are non-empty"))
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// The sessions of a set of event times computed at once, as a batch engine does: sort, then start a new
/// session wherever the distance to the previous event is `>= gap`. The reference that [`SessionSet`] and
/// the batch layer's plan are tested against.
pub fn sessions_of(spec: SessionWindows, times: &[EventTime]) -> Vec<Window> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<Window> = Vec::new();
    for t in sorted {
        let proposal = spec.proposal(t);
        match out.last_mut() {
            Some(last) if last.overlaps(&proposal) => *last = last.union(&proposal),
            _ => out.push(proposal),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> EventTime {
        EventTime::from_secs(s).unwrap()
    }

    fn w(a: i64, b: i64) -> Window {
        Window::new(t(a), t(b)).unwrap()
    }

    fn spec(gap_s: u32) -> SessionWindows {
        SessionWindows::new(Duration::from_secs(gap_s)).unwrap()
    }

    #[test]
    fn whole_sessions_are_inserted_only_where_nothing_overlaps() {
        let mut s = SessionSet::new();
        assert!(s.insert_session(w(10, 20)));
        assert!(s.insert_session(w(30, 45)));
        for overlapping in [w(15, 25), w(5, 11), w(19, 31), w(12, 13), w(0, 100), w(44, 50)] {
            assert!(!s.insert_session(overlapping), "{overlapping}");
        }
        assert!(s.insert_session(w(20, 30)), "touching ends do not overlap");
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![w(10, 20), w(20, 30), w(30, 45)]);
        // a restored set grows like the original
        let mut original = SessionSet::new();
        for x in [0, 4, 8] {
            original.insert(spec(5), t(x));
        }
        let mut restored = SessionSet::new();
        assert!(restored.insert_session(w(0, 13)));
        assert_eq!(restored.insert(spec(5), t(15)), original.insert(spec(5), t(15)));
    }

    #[test]
    fn create_extend_bridge() {
        let mut s = SessionSet::new();
        let u = s.insert(spec(10), t(0));
        assert_eq!(u, SessionUpdate { window: w(0, 10), absorbed: vec![] });
        let u = s.insert(spec(10), t(30));
        assert_eq!(u, SessionUpdate { window: w(30, 40), absorbed: vec![] });
        let u = s.insert(spec(10), t(5)); // extends the first
        assert_eq!(u, SessionUpdate { window: w(0, 15), absorbed: vec![w(0, 10)] });
        let u = s.insert(spec(10), t(22)); // extends the second backwards
        assert_eq!(u, SessionUpdate { window: w(22, 40), absorbed: vec![w(30, 40)] });
        let u = s.insert(spec(10), t(14)); // bridges both
        assert_eq!(u, SessionUpdate { window: w(0, 40), absorbed: vec![w(0, 15), w(22, 40)] });
        let u = s.insert(spec(10), t(25)); // inside
        assert!(u.unchanged());
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![w(0, 40)]);
    }

    #[test]
    fn events_exactly_gap_apart_are_separate_sessions() {
        let mut s = SessionSet::new();
        s.insert(spec(10), t(0));
        let u = s.insert(spec(10), t(10));
        assert!(u.absorbed.is_empty());
        assert_eq!(s.len(), 2);
        assert_eq!(sessions_of(spec(10), &[t(0), t(10)]), vec![w(0, 10), w(10, 20)]);
    }

    #[test]
    fn an_event_before_a_session_can_extend_it_backwards() {
        let mut s = SessionSet::new();
        s.insert(spec(10), t(20));
        let u = s.insert(spec(10), t(12));
        assert_eq!(u.window, w(12, 30));
    }

    proptest! {
        #[test]
        fn session_merging_is_independent_of_arrival_order(
            times in prop::collection::vec(0i64..500, 0..60), gap in 1u32..40, seed in any::<u64>(),
        ) {
            let times: Vec<EventTime> = times.into_iter().map(t).collect();
            let mut shuffled = times.clone();
            // deterministic shuffle from the seed
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut set = SessionSet::new();
            for &e in &shuffled {
                let u = set.insert(spec(gap), e);
                prop_assert!(u.window.contains(e));
            }
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), sessions_of(spec(gap), &times));
        }
    }
}
