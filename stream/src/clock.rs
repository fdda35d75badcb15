//! Processing time, injected: the engine never reads the system clock itself.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tidemark_core::{Duration, EventTime};

/// A source of processing time ("now"), in the same microsecond scale as event time.
pub trait Clock: Debug + Send + Sync {
    /// The current processing time.
    fn now(&self) -> EventTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> EventTime {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        EventTime::from_micros(us).unwrap_or(EventTime::MAX)
    }
}

/// A clock that only moves when told to; clones share the same time. For tests and replays.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: EventTime) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.as_micros())))
    }

    /// Sets the time (it may move backwards; the engine ignores backward steps).
    pub fn set(&self, t: EventTime) {
        self.0.store(t.as_micros(), Ordering::SeqCst);
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let t = self.now().saturating_add(d);
        self.set(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> EventTime {
        EventTime::from_micros(self.0.load(Ordering::SeqCst)).unwrap_or(EventTime::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let c = ManualClock::new(EventTime::from_secs(10).unwrap());
        let d = c.clone();
        c.advance(Duration::from_secs(5));
        assert_eq!(d.now(), EventTime::from_secs(15).unwrap());
        assert!(SystemClock.now() > EventTime::from_secs(1_700_000_000).unwrap());
    }
}

/// Processing time taken from the records themselves, for sources whose records carry their arrival time
/// (a Kafka record's timestamp): each record is processed at its arrival time; between records time stands
/// still, except while the source has nothing to deliver, when it runs with the wall clock (polls that
/// came back empty). A backlog is thereby processed at the times it arrived, however fast or slowly it is
/// read, and a silent live topic still sees time pass (idle partitions, early panes).
///
/// Arrivals are clamped to the wall clock, so a producer stamping records in the future cannot move
/// processing time past now, and processing time never goes backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrivalClock {
    /// Processing time reached; `None` before the first record of a fresh pipeline.
    now: Option<EventTime>,
}

impl ArrivalClock {
    /// A clock resuming at `start` (the processing time a restored engine reached), or unknown.
    pub fn new(start: Option<EventTime>) -> Self {
        ArrivalClock { now: start }
    }

    /// Processing time now (`None` before the first record of a fresh pipeline).
    pub fn now(&self) -> Option<EventTime> {
        self.now
    }

    /// A record that arrived at `received_at` is processed at wall time `wall`; returns its processing
    /// time.
    pub fn record(&mut self, received_at: EventTime, wall: EventTime) -> EventTime {
        let t = received_at.min(wall);
        let now = self.now.map_or(t, |n| n.max(t));
        self.now = Some(now);
        now
    }

    /// The source delivered nothing for `silent` of wall time, up to wall time `wall`: time runs on (never
    /// past the wall clock).
    pub fn silent(&mut self, silent: Duration, wall: EventTime) {
        if let Some(n) = self.now {
            self.now = Some(n.saturating_add(silent).min(wall).max(n));
        }
    }
}

#[cfg(test)]
mod arrival_tests {
    use super::*;

    fn s(x: i64) -> EventTime {
        EventTime::from_secs(x).unwrap()
    }

    #[test]
    fn a_backlog_runs_on_record_time_and_a_silent_source_on_the_wall() {
        let mut c = ArrivalClock::new(None);
        c.silent(Duration::from_secs(5), s(1000));
        assert_eq!(c.now(), None, "no time before the first record");
        assert_eq!(c.record(s(10), s(1000)), s(10));
        assert_eq!(c.now(), Some(s(10)), "time stands still between records, however long they take");
        assert_eq!(c.record(s(5), s(1600)), s(10), "an earlier stamp does not move time back");
        assert_eq!(c.record(s(20), s(1700)), s(20));
        c.silent(Duration::from_secs(30), s(1800));
        assert_eq!(c.now(), Some(s(50)), "nothing to deliver: the wall clock runs");
        assert_eq!(c.record(s(40), s(1840)), s(50), "a record stamped before the running time");
        assert_eq!(c.record(s(5000), s(1850)), s(1850), "a stamp past the wall clock is clamped to it");
        c.silent(Duration::from_secs(60), s(1870));
        assert_eq!(c.now(), Some(s(1870)), "never past the wall clock");
        assert_eq!(ArrivalClock::new(Some(s(77))).now(), Some(s(77)));
    }
}
