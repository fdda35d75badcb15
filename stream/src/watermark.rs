//! Per-partition watermarks and the operator watermark (after Arroyo's `Watermark { EventTime, Idle }`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidemark_core::{Duration, EventTime};

/// The watermark of one input partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Watermark {
    /// No event earlier than this is expected any more from the partition.
    EventTime(EventTime),
    /// The partition has been silent for the idle timeout and does not hold the operator back.
    Idle,
}

/// How the tracker treats an event that runs ahead of its partition (see [`WatermarkTracker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuspectPolicy {
    /// Lead over the partition's event-time frontier beyond which an event is a suspect.
    pub lead: Duration,
    /// Suspects that confirm a jump (1: every event is trusted at once).
    pub confirmations: u32,
    /// Trusted events of the partition after which an unconfirmed suspect is forgotten.
    pub expiry: u32,
}

impl Default for SuspectPolicy {
    fn default() -> Self {
        SuspectPolicy { lead: Duration::from_secs(60), confirmations: 3, expiry: 1000 }
    }
}

/// What [`WatermarkTracker::observe`] made of an event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Within reach of the partition's frontier: it may move the watermark.
    Trusted,
    /// Far ahead of the frontier: held until confirmed; it does not move the watermark.
    Suspect,
    /// A suspect that confirmed a jump: the partition's frontier moved to the smallest pending suspect.
    Confirmed,
}

/// An event time held back from the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Suspect {
    time: EventTime,
    /// Trusted events of the partition still to come before it is forgotten.
    left: u32,
}

/// What the tracker knows of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartitionTime {
    /// Largest trusted event time.
    max_event: Option<EventTime>,
    /// Processing (arrival) time at which `max_event` was last raised.
    frontier_at: EventTime,
    /// Processing time of the last trusted event (or of registration).
    last_active: EventTime,
    /// Suspects not confirmed yet (fewer than the policy's confirmations).
    suspects: Vec<Suspect>,
    /// Largest event time delivered, suspects included (for the lag metric).
    max_seen: Option<EventTime>,
    /// Suspects seen since the partition became known.
    suspects_seen: u64,
}

impl PartitionTime {
    fn new(now: EventTime) -> Self {
        PartitionTime {
            max_event: None,
            frontier_at: now,
            last_active: now,
            suspects: Vec::new(),
            max_seen: None,
            suspects_seen: 0,
        }
    }

    /// Where the partition's event time is expected at processing time `now`: the trusted maximum plus
    /// the processing time elapsed since it was set (an event-time gap the arrival clock explains is no
    /// jump), and at least `now` itself (an event is never ahead of its own arrival's time).
    fn frontier(&self, now: EventTime) -> EventTime {
        let carried = self.max_event.map(|m| m.saturating_add(now.since(self.frontier_at).unwrap_or(Duration::ZERO)));
        carried.map_or(now, |c| c.max(now))
    }

    fn raise(&mut self, t: EventTime, now: EventTime) {
        if self.max_event.is_none_or(|m| t > m) {
            self.max_event = Some(t);
            self.frontier_at = now;
        }
    }
}

/// Tracks partition watermarks and computes the operator watermark.
///
/// - A partition's watermark is its largest *trusted* event time minus `watermark_delay`. A partition
///   that is known (assigned, or delivered any record) but has delivered no trusted event yet holds the
///   operator watermark at its start.
/// - **Suspects.** An event more than `lead` ahead of its partition's frontier (the largest trusted event
///   time plus the processing time elapsed since it was set, and at least the processing time itself:
///   with an arrival clock, an event within `lead` of its own arrival is never a suspect) is a suspect: a wrong producer clock, a corrupt timestamp. The engine aggregates it as
///   usual, but it moves no watermark and does not count as activity. `confirmations` pending suspects
///   confirm a real jump: the frontier moves to the smallest of them, and the rest are judged again
///   against it. A suspect not confirmed within `expiry` later trusted events is forgotten, as is one the
///   frontier has come within `lead` of. So up to `confirmations - 1` far-ahead events per partition
///   (within `expiry` trusted events) change nothing but their own windows, whatever their lead.
/// - A partition is idle once no trusted event arrived on it for `idle_timeout` of processing time.
/// - The operator watermark is the minimum over the partitions that are not idle. When every partition is
///   idle it is the largest partition watermark: nothing holds it back any more.
/// - It never goes backwards: a computed value below the current one is ignored.
///
/// Everything it decides is a function of the event times and processing times it is given, so a
/// restored tracker (the state is checkpointed; the policy is not) decides as the original would have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkTracker {
    #[serde(skip, default)]
    delay: Duration,
    #[serde(skip, default)]
    idle_timeout: Duration,
    #[serde(skip, default)]
    suspects: SuspectPolicy,
    partitions: BTreeMap<i32, PartitionTime>,
    current: Option<EventTime>,
}

impl WatermarkTracker {
    /// A tracker with no partitions and no watermark.
    pub fn new(delay: Duration, idle_timeout: Duration, suspects: SuspectPolicy) -> Self {
        WatermarkTracker { delay, idle_timeout, suspects, partitions: BTreeMap::new(), current: None }
    }

    /// Sets the policy of a tracker restored from a checkpoint (the policy is not part of the blob).
    pub(crate) fn with_policy(mut self, delay: Duration, idle_timeout: Duration, suspects: SuspectPolicy) -> Self {
        self.delay = delay;
        self.idle_timeout = idle_timeout;
        self.suspects = suspects;
        self
    }

    /// A tracker from a checkpoint of format 2, which knew no suspects.
    pub(crate) fn from_legacy(
        partitions: BTreeMap<i32, (Option<EventTime>, EventTime)>,
        current: Option<EventTime>,
    ) -> Self {
        let partitions = partitions
            .into_iter()
            .map(|(id, (max_event, last_active))| {
                let mut p = PartitionTime::new(last_active);
                p.max_event = max_event;
                p.max_seen = max_event;
                (id, p)
            })
            .collect();
        WatermarkTracker {
            partitions,
            current,
            ..WatermarkTracker::new(Duration::ZERO, Duration::ZERO, SuspectPolicy::default())
        }
    }

    /// Makes a partition known (e.g. on assignment) as active at `now`. Known partitions are unchanged.
    pub fn register(&mut self, partition: i32, now: EventTime) {
        self.partitions.entry(partition).or_insert_with(|| PartitionTime::new(now));
    }

    /// Forgets a partition (e.g. on revocation): it no longer holds the operator watermark back.
    pub fn remove(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Records a decodable event of `partition` with event time `t`, received at processing time `now`.
    pub fn observe(&mut self, partition: i32, t: EventTime, now: EventTime) -> Observed {
        let policy = self.suspects;
        let p = self.partitions.entry(partition).or_insert_with(|| PartitionTime::new(now));
        p.max_seen = Some(p.max_seen.map_or(t, |m| m.max(t)));
        if t > now.saturating_add(policy.lead) {
            tracing::debug!(partition, %t, %now, frontier = %p.frontier(now), max = ?p.max_event, at = %p.frontier_at, pending = p.suspects.len(), "an event ahead of processing time");
        }
        if policy.confirmations <= 1 || t <= p.frontier(now).saturating_add(policy.lead) {
            p.raise(t, now);
            p.last_active = p.last_active.max(now);
            let frontier = p.frontier(now).saturating_add(policy.lead);
            p.suspects.retain_mut(|s| {
                s.left = s.left.saturating_sub(1);
                s.left > 0 && s.time > frontier
            });
            return Observed::Trusted;
        }
        p.suspects_seen += 1;
        p.suspects.push(Suspect { time: t, left: policy.expiry.max(1) });
        if p.suspects.len() < policy.confirmations as usize {
            return Observed::Suspect;
        }
        // Confirmed: the frontier moves to the smallest suspect; the others are judged against it.
        p.suspects.sort_unstable_by_key(|s| s.time);
        let first = p.suspects.remove(0);
        p.raise(first.time, now);
        p.last_active = p.last_active.max(now);
        let mut pending = std::mem::take(&mut p.suspects);
        pending.retain(|s| {
            if s.time <= p.frontier(now).saturating_add(policy.lead) {
                p.raise(s.time, now);
                false
            } else {
                true
            }
        });
        p.suspects = pending;
        Observed::Confirmed
    }

    /// A partition's watermark at processing time `now`, or `None` if the partition is unknown.
    pub fn partition(&self, partition: i32, now: EventTime) -> Option<Watermark> {
        self.partitions.get(&partition).map(|p| self.watermark_of(p, now))
    }

    fn watermark_of(&self, p: &PartitionTime, now: EventTime) -> Watermark {
        let idle = now.since(p.last_active).is_some_and(|silent| silent >= self.idle_timeout);
        if idle {
            Watermark::Idle
        } else {
            Watermark::EventTime(p.max_event.map_or(EventTime::MIN, |m| m.saturating_sub(self.delay)))
        }
    }

    /// The partitions and their watermarks at `now`.
    pub fn partitions(&self, now: EventTime) -> impl Iterator<Item = (i32, Watermark)> + '_ {
        self.partitions.iter().map(move |(&id, p)| (id, self.watermark_of(p, now)))
    }

    /// Per partition: the largest event time delivered (suspects included), the partition's trusted
    /// watermark (largest trusted event time minus the delay) and the suspects seen so far.
    pub fn suspicion(&self) -> impl Iterator<Item = (i32, PartitionSuspicion)> + '_ {
        self.partitions.iter().map(|(&id, p)| {
            (
                id,
                PartitionSuspicion {
                    max_seen: p.max_seen,
                    trusted: p.max_event.map(|m| m.saturating_sub(self.delay)),
                    pending: p.suspects.len(),
                    seen: p.suspects_seen,
                },
            )
        })
    }

    /// The operator watermark (`None` before any was established).
    pub fn current(&self) -> Option<EventTime> {
        self.current
    }

    /// Recomputes the operator watermark at processing time `now`; returns it if it moved forward.
    pub fn update(&mut self, now: EventTime) -> Option<EventTime> {
        let mut active_min: Option<EventTime> = None;
        let mut any_active = false;
        let mut idle_max: Option<EventTime> = None;
        for p in self.partitions.values() {
            match self.watermark_of(p, now) {
                Watermark::EventTime(w) => {
                    any_active = true;
                    active_min = Some(active_min.map_or(w, |m| m.min(w)));
                }
                Watermark::Idle => {
                    if let Some(m) = p.max_event {
                        let w = m.saturating_sub(self.delay);
                        idle_max = Some(idle_max.map_or(w, |x| x.max(w)));
                    }
                }
            }
        }
        let candidate = if any_active { active_min } else { idle_max };
        self.advance_to(candidate?)
    }

    /// Moves the operator watermark to `t` if that is forward; returns it if it moved.
    pub fn advance_to(&mut self, t: EventTime) -> Option<EventTime> {
        if self.current.is_none_or(|c| t > c) {
            self.current = Some(t);
            Some(t)
        } else {
            None
        }
    }
}

/// One partition's suspects and how far its event times run ahead of its watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSuspicion {
    /// Largest event time delivered, suspects included.
    pub max_seen: Option<EventTime>,
    /// The partition's watermark from trusted events (idleness aside).
    pub trusted: Option<EventTime>,
    /// Suspects waiting for confirmation.
    pub pending: usize,
    /// Suspects seen since the partition became known (this process or the checkpoint it restored).
    pub seen: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: i64) -> EventTime {
        EventTime::from_secs(x).unwrap()
    }

    /// A tracker that trusts every event (these tests are about minimum and idleness).
    fn tracker() -> WatermarkTracker {
        let trusting = SuspectPolicy { confirmations: 1, ..SuspectPolicy::default() };
        WatermarkTracker::new(Duration::from_secs(5), Duration::from_secs(30), trusting)
    }

    /// Suspect after a lead of 60 s; 3 confirm; forgotten after 4 trusted events.
    fn suspicious() -> WatermarkTracker {
        let policy = SuspectPolicy { lead: Duration::from_secs(60), confirmations: 3, expiry: 4 };
        WatermarkTracker::new(Duration::from_secs(5), Duration::from_secs(30), policy)
    }

    #[test]
    fn one_event_far_ahead_does_not_move_the_watermark() {
        let mut w = suspicious();
        assert_eq!(w.observe(0, s(100), s(100)), Observed::Trusted);
        assert_eq!(w.update(s(100)), Some(s(95)));
        // a clock an hour ahead, and one a year ahead
        assert_eq!(w.observe(0, s(3_700), s(101)), Observed::Suspect);
        assert_eq!(w.observe(0, s(40_000_000), s(102)), Observed::Suspect);
        assert_eq!(w.update(s(102)), None, "suspects move nothing");
        assert_eq!(w.observe(0, s(103), s(103)), Observed::Trusted);
        assert_eq!(w.update(s(103)), Some(s(98)));
        let p = w.suspicion().next().unwrap().1;
        assert_eq!((p.pending, p.seen, p.max_seen), (2, 2, Some(s(40_000_000))));
        // forgotten after `expiry` (4) trusted events: they can no longer confirm a later jump
        for t in 104..107 {
            assert_eq!(w.observe(0, s(t), s(t)), Observed::Trusted);
        }
        assert_eq!(w.suspicion().next().unwrap().1.pending, 0);
        assert_eq!(w.observe(0, s(5_000), s(107)), Observed::Suspect, "a new jump starts from scratch");
    }

    #[test]
    fn confirmed_jumps_move_to_the_smallest_suspect() {
        let mut w = suspicious();
        w.observe(0, s(100), s(100));
        // the producer comes back after an outage with events an hour on: 3 confirm the jump
        assert_eq!(w.observe(0, s(3_700), s(101)), Observed::Suspect);
        assert_eq!(w.observe(0, s(3_702), s(102)), Observed::Suspect);
        assert_eq!(w.update(s(102)), Some(s(95)));
        assert_eq!(w.observe(0, s(3_701), s(103)), Observed::Confirmed);
        assert_eq!(w.update(s(103)), Some(s(3_697)), "the others within the lead of the smallest follow it");
        // a gap the arrival clock explains is no jump: 10 minutes of silence, then events 10 minutes on
        assert_eq!(w.observe(0, s(4_302), s(703)), Observed::Trusted);
        // a first event is judged against its own arrival
        assert_eq!(w.observe(1, s(900), s(800)), Observed::Suspect);
        assert_eq!(w.observe(1, s(790), s(800)), Observed::Trusted);
    }

    #[test]
    fn suspects_do_not_keep_a_partition_active() {
        let mut w = suspicious();
        w.observe(0, s(100), s(100));
        w.observe(1, s(50), s(100));
        assert_eq!(w.update(s(100)), Some(s(45)));
        // partition 1 only delivers a far-ahead event: it goes idle all the same
        w.observe(1, s(9_999), s(120));
        w.observe(0, s(129), s(129));
        assert_eq!(w.partition(1, s(130)), Some(Watermark::Idle));
        assert_eq!(w.update(s(130)), Some(s(124)));
    }

    #[test]
    fn minimum_over_partitions_minus_delay() {
        let mut w = tracker();
        w.observe(0, s(100), s(0));
        assert_eq!(w.update(s(0)), Some(s(95)));
        w.observe(1, s(50), s(1));
        assert_eq!(w.update(s(1)), None, "a slower partition cannot move the watermark back");
        assert_eq!(w.current(), Some(s(95)));
        assert_eq!(w.partition(1, s(1)), Some(Watermark::EventTime(s(45))));
        w.observe(1, s(120), s(2));
        w.observe(0, s(130), s(2));
        assert_eq!(w.update(s(2)), Some(s(115)));
    }

    #[test]
    fn a_known_partition_without_events_holds_back_until_idle() {
        let mut w = tracker();
        w.register(1, s(0));
        w.observe(0, s(100), s(0));
        assert_eq!(w.update(s(10)), Some(EventTime::MIN));
        assert_eq!(w.partition(1, s(10)), Some(Watermark::EventTime(EventTime::MIN)));
        assert_eq!(w.partition(1, s(30)), Some(Watermark::Idle));
        // partition 0 is still active at 29s (last event at 0s)
        assert_eq!(w.update(s(29)), None);
        w.observe(0, s(101), s(29));
        assert_eq!(w.update(s(30)), Some(s(96)));
    }

    #[test]
    fn all_idle_releases_the_largest_partition_watermark() {
        let mut w = tracker();
        w.observe(0, s(100), s(0));
        w.observe(1, s(200), s(10));
        assert_eq!(w.update(s(10)), Some(s(95)));
        // partition 0 idle at 30s: only partition 1 counts
        assert_eq!(w.update(s(30)), Some(s(195)));
        assert_eq!(w.partition(0, s(30)), Some(Watermark::Idle));
        // both idle: nothing holds back, the largest partition watermark stays
        assert_eq!(w.update(s(60)), None);
        assert_eq!(w.current(), Some(s(195)));
        // partition 0 wakes up with old data: the watermark does not go back
        w.observe(0, s(120), s(61));
        assert_eq!(w.update(s(61)), None);
        assert_eq!(w.current(), Some(s(195)));
    }

    #[test]
    fn revoked_partitions_stop_holding_back() {
        let mut w = tracker();
        w.observe(0, s(100), s(0));
        w.observe(1, s(10), s(0));
        assert_eq!(w.update(s(0)), Some(s(5)));
        w.remove(1);
        assert_eq!(w.update(s(0)), Some(s(95)));
        assert_eq!(w.partition(1, s(0)), None);
    }
}
