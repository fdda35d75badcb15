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
