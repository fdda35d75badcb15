//! What goes into the engine (a [`Record`]) and what comes out of it ([`Output`]): row changes for the
//! serving store, late-ledger entries and rejected records.

use serde::{Deserialize, Serialize};
use tidemark_core::{Dimensions, EventTime, ReasonCode, RowChange, SourceCoordinates, Window};

/// One consumed record: where it came from, when it was received, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic or file, partition, offset.
    pub coords: SourceCoordinates,
    /// When tidemark received it (Kafka timestamp or read time); used for the `future_event` check.
    pub received_at: EventTime,
    /// The payload as received.
    pub payload: Vec<u8>,
}

/// Why an event went to the late ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateReason {
    /// The window's end plus allowed lateness was already at or behind the watermark; its state is gone.
    BeyondAllowedLateness,
    /// Late but within allowed lateness, and `late_policy = "dead_letter"`.
    LatePolicy,
}

/// One event that missed one window of one metric. An event late for several windows (hopping windows,
/// several metrics) has one entry per window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateEvent {
    /// Where the event came from.
    pub coords: SourceCoordinates,
    /// The event id.
    pub event_id: String,
    /// The event time.
    pub event_time: EventTime,
    /// The metric whose window it missed.
    pub metric: String,
    /// The window it missed (for sessions: the session it would have joined).
    pub window: Window,
    /// The row's dimensions.
    pub dims: Dimensions,
    /// Why.
    pub reason: LateReason,
    /// The operator watermark when the event arrived.
    pub watermark: EventTime,
    /// The payload as received.
    pub payload: String,
}

/// One record that could not be decoded, on its way to the dead-letter store (which keeps it as a
/// [`tidemark_store::DeadLetter`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRecord {
    /// Where it came from.
    pub coords: SourceCoordinates,
    /// When it was received.
    pub received_at: EventTime,
    /// The reason code.
    pub reason: ReasonCode,
    /// The field to blame, if any.
    pub field: Option<String>,
    /// What is wrong.
    pub detail: String,
    /// The payload as received (possibly not UTF-8).
    pub payload: Vec<u8>,
}

/// Everything the engine emitted, in emission order per kind. The caller drains it into its sink.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// Changes for the serving store, in the order they must be applied.
    pub changes: Vec<RowChange>,
    /// Late-ledger entries.
    pub late: Vec<LateEvent>,
    /// Records that could not be decoded, for the dead-letter store.
    pub dead_letters: Vec<RejectedRecord>,
}

impl Output {
    /// Empties every list (keeping capacity).
    pub fn clear(&mut self) {
        self.changes.clear();
        self.late.clear();
        self.dead_letters.clear();
    }

    /// Whether nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.late.is_empty() && self.dead_letters.is_empty()
    }
}
