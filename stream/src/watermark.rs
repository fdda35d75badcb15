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

/// What the tracker knows of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PartitionTime {
    /// Largest event time delivered.
    max_event: Option<EventTime>,
    /// Processing time of the last decodable event (or of registration).
    last_active: EventTime,
}

/// Tracks partition watermarks and computes the operator watermark.
///
/// - A partition's watermark is the largest event time it delivered minus `watermark_delay`. A partition
///   that is known (assigned, or delivered any record) but has delivered no decodable event yet holds the
///   operator watermark at its start.
/// - A partition is idle once no decodable event arrived on it for `idle_timeout` of processing time.
/// - The operator watermark is the minimum over the partitions that are not idle. When every partition is
///   idle it is the largest partition watermark: nothing holds it back any more.
/// - It never goes backwards: a computed value below the current one is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkTracker {
    #[serde(skip, default)]
    delay: Duration,
    #[serde(skip, default)]
    idle_timeout: Duration,
    partitions: BTreeMap<i32, PartitionTime>,
    current: Option<EventTime>,
}

impl WatermarkTracker {
    /// A tracker with no partitions and no watermark.
    pub fn new(delay: Duration, idle_timeout: Duration) -> Self {
        WatermarkTracker { delay, idle_timeout, partitions: BTreeMap::new(), current: None }
    }

    /// Sets the policy of a tracker restored from a checkpoint (the policy is not part of the blob).
    pub(crate) fn with_policy(mut self, delay: Duration, idle_timeout: Duration) -> Self {
        self.delay = delay;
        self.idle_timeout = idle_timeout;
        self
    }

    /// Makes a partition known (e.g. on assignment) as active at `now`. Known partitions are unchanged.
    pub fn register(&mut self, partition: i32, now: EventTime) {
        self.partitions.entry(partition).or_insert(PartitionTime { max_event: None, last_active: now });
    }

    /// Forgets a partition (e.g. on revocation): it no longer holds the operator watermark back.
    pub fn remove(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Records a decodable event of `partition` with event time `t`, received at processing time `now`.
    pub fn observe(&mut self, partition: i32, t: EventTime, now: EventTime) {
        let p = self.partitions.entry(partition).or_insert(PartitionTime { max_event: None, last_active: now });
        p.max_event = Some(p.max_event.map_or(t, |m| m.max(t)));
        p.last_active = p.last_active.max(now);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: i64) -> EventTime {
        EventTime::from_secs(x).unwrap()
    }

    fn tracker() -> WatermarkTracker {
        WatermarkTracker::new(Duration::from_secs(5), Duration::from_secs(30))
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
