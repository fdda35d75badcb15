//! Half-open event-time windows and how events are assigned to them.
//!
//! - [`fixed`]: tumbling and hopping windows (tumbling is hopping with `slide == size`); an event's windows
//!   depend only on its own time.
//! - [`session`]: session windows; an event's window depends on the other events of its key.

pub mod fixed;
pub mod session;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::{Duration, EventTime};

pub use fixed::FixedWindows;
pub use session::{SessionSet, SessionUpdate, SessionWindows};

/// A half-open window `[start, end)` with `start < end`: an event at `t` belongs to it iff
/// `start <= t < end`, so an event exactly on a boundary belongs to the later window only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawWindow", into = "RawWindow")]
pub struct Window {
    start: EventTime,
    end: EventTime,
}

impl Window {
    /// The window `[start, end)`, or `None` unless `start < end`.
    pub fn new(start: EventTime, end: EventTime) -> Option<Self> {
        (start < end).then_some(Window { start, end })
    }

    /// Inclusive start.
    pub fn start(&self) -> EventTime {
        self.start
    }

    /// Exclusive end.
    pub fn end(&self) -> EventTime {
        self.end
    }

    /// `start <= t < end`.
    pub fn contains(&self, t: EventTime) -> bool {
        self.start <= t && t < self.end
    }

    /// Whether the two windows share at least one instant (touching windows do not).
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// `end - start`.
    pub fn len(&self) -> Duration {
        self.end.since(self.start).unwrap_or(Duration::MAX)
    }

    /// The smallest window covering both.
    pub fn union(&self, other: &Window) -> Window {
        Window { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

#[derive(Serialize, Deserialize)]
struct RawWindow {
    start: EventTime,
    end: EventTime,
}

impl TryFrom<RawWindow> for Window {
    type Error = String;
    fn try_from(r: RawWindow) -> Result<Self, Self::Error> {
        Window::new(r.start, r.end).ok_or_else(|| format!("window start {} is not before end {}", r.start, r.end))
    }
}

impl From<Window> for RawWindow {
    fn from(w: Window) -> Self {
        RawWindow { start: w.start, end: w.end }
    }
}

/// How a metric groups events in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Tumbling or hopping windows.
    Fixed(FixedWindows),
    /// Session windows.
    Session(SessionWindows),
}

impl WindowSpec {
    /// `tumbling`, `hopping` or `session`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            WindowSpec::Fixed(f) if f.is_tumbling() => "tumbling",
            WindowSpec::Fixed(_) => "hopping",
            WindowSpec::Session(_) => "session",
        }
    }
}
