//! Cause attribution: for each difference, the first cause the evidence supports, or `unexplained`.
//!
//! Malformed events are not a cause: both layers decode with the same code and dead-letter the same
//! events. The causes, in the order they are tried:
//! 1. `not_yet_final`: the stream's watermark has not passed `window end + allowed lateness`, so the speed
//!    row may still change (the speed layer is not wrong yet).
//! 2. `superseded_session` (phantom session rows only): a batch session of the same metric and dimensions
//!    overlaps the phantom's window: the stream emitted a session that later events merged into a bigger one.
//! 3. `late_events`: the late ledger holds events for this key; for a drift, the row is short by exactly
//!    those events (or by at least one of them when counts do not add up exactly).
//! 4. `duplicate_delivery`: the raw archive holds events of this key delivered more than once and the
//!    serving row counts more events than the batch.
//! 5. `restart`: the stream service restarted while this window was open (its watermark at the restart lies
//!    in `[window start, window end + allowed lateness)`).

use std::collections::HashMap;

use serde::Serialize;
use tidemark_core::window::WindowSpec;
use tidemark_core::{Duration, EventTime, Layer, RowKey, ValidSpec};

use crate::diff::{KeyDiff, Verdict};

/// Why the serving store differed from the batch view for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The window is still open for late events in the speed layer.
    NotYetFinal,
    /// A session window the stream emitted was merged into a larger one.
    SupersededSession,
    /// Events arrived after the window fired (late ledger).
    LateEvents,
    /// The same event was delivered more than once and counted twice by the speed layer.
    DuplicateDelivery,
    /// The stream service restarted while the window was open.
    Restart,
    /// No evidence explains the difference.
    Unexplained,
}

/// What the reconciler knows besides the two sets of rows.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Events routed to the late ledger, per key they missed.
    pub late_events: HashMap<RowKey, u64>,
    /// Per key, archived deliveries of an event id seen before (duplicates in the raw archive).
    pub duplicate_deliveries: HashMap<RowKey, u64>,
    /// The stream's operator watermark at reconcile time, if known.
    pub stream_watermark: Option<EventTime>,
    /// The stream's watermark at each restart of the service.
    pub restart_watermarks: Vec<EventTime>,
}

/// A difference with its cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    /// The difference.
    #[serde(flatten)]
    pub diff: KeyDiff,
    /// The cause.
    pub cause: Cause,
    /// The evidence, in words.
    pub detail: String,
}

fn session_overlap(
    spec: &ValidSpec,
    d: &KeyDiff,
    batch_sessions: &HashMap<(&str, String), Vec<tidemark_core::Window>>,
) -> bool {
    let is_session = spec.metric(&d.key.metric).is_some_and(|m| matches!(m.window, WindowSpec::Session(_)));
    is_session
        && batch_sessions
            .get(&(d.key.metric.as_str(), d.key.dims.encode()))
            .is_some_and(|ws| ws.iter().any(|w| w.overlaps(&d.key.window)))
}

/// Attributes a cause to every difference (taken, not copied: a day's differences are hundreds of MB),
/// in their order. `batch_keys` are all keys of the batch view in the range (used to recognise superseded
/// sessions).
pub fn explain<'a>(
    spec: &ValidSpec,
    differences: Vec<KeyDiff>,
    batch_keys: impl IntoIterator<Item = &'a RowKey>,
    evidence: &Evidence,
) -> Vec<Explained> {
    let lateness: Duration = spec.spec().time.allowed_lateness;
    let mut batch_sessions: HashMap<(&str, String), Vec<tidemark_core::Window>> = HashMap::new();
    for k in batch_keys {
        if spec.metric(&k.metric).is_some_and(|m| matches!(m.window, WindowSpec::Session(_))) {
            batch_sessions.entry((k.metric.as_str(), k.dims.encode())).or_default().push(k.window);
        }
    }
    // sessions only the serving store has: the counterparts of batch sessions the stream bounded differently
    let mut serving_only_sessions: HashMap<(&str, String), Vec<tidemark_core::Window>> = HashMap::new();
    for d in differences.iter().filter(|d| d.verdict == Verdict::UnexpectedInServing) {
        if spec.metric(&d.key.metric).is_some_and(|m| matches!(m.window, WindowSpec::Session(_))) {
            serving_only_sessions.entry((d.key.metric.as_str(), d.key.dims.encode())).or_default().push(d.key.window);
        }
    }
    let causes: Vec<(Cause, String)> = differences
        .iter()
        .map(|d| {
            let (mut cause, mut detail) = attribute(spec, d, &batch_sessions, evidence, lateness);
            if cause == Cause::Unexplained
                && d.verdict == Verdict::MissingInServing
                && session_overlap(spec, d, &serving_only_sessions)
            {
                cause = Cause::SupersededSession;
                detail = "the speed layer bounded this session differently: a serving-only session of the same key \
                          overlaps it"
                    .into();
            }
            (cause, detail)
        })
        .collect();
    differences.into_iter().zip(causes).map(|(diff, (cause, detail))| Explained { diff, cause, detail }).collect()
}

fn attribute(
    spec: &ValidSpec,
    d: &KeyDiff,
    batch_sessions: &HashMap<(&str, String), Vec<tidemark_core::Window>>,
    ev: &Evidence,
    lateness: Duration,
) -> (Cause, String) {
    let final_at = d.key.window.end().saturating_add(lateness);
    let speed_row = d.serving_origin.as_ref().is_none_or(|o| o.layer() == Layer::Speed);
    if let Some(wm) = ev.stream_watermark
        && speed_row
        && wm < final_at
    {
        return (
            Cause::NotYetFinal,
            format!("stream watermark {wm} has not reached window end + allowed lateness {final_at}"),
        );
    }
    if d.verdict == Verdict::UnexpectedInServing && session_overlap(spec, d, batch_sessions) {
        return (Cause::SupersededSession, "a batch session of the same key overlaps this window".into());
    }
    let batch_events = d.batch_events.unwrap_or(0);
    let serving_events = d.serving_events.unwrap_or(0);
    if let Some(&late) = ev.late_events.get(&d.key).filter(|n| **n > 0) {
        let exact = serving_events + late == batch_events;
        return (
            Cause::LateEvents,
            if exact {
                format!("{late} late event(s) in the ledger account for the {late} missing event(s)")
            } else {
                format!("{late} late event(s) in the ledger; batch counts {batch_events}, serving {serving_events}")
            },
        );
    }
    if let Some(&dups) = ev.duplicate_deliveries.get(&d.key).filter(|n| **n > 0)
        && serving_events > batch_events
    {
        return (
            Cause::DuplicateDelivery,
            format!(
                "{dups} duplicate deliveries archived; serving counts {serving_events} events, batch {batch_events}"
            ),
        );
    }
    if let Some(wm) = ev.restart_watermarks.iter().find(|wm| d.key.window.start() <= **wm && **wm < final_at) {
        return (Cause::Restart, format!("the stream restarted at watermark {wm}, while the window was open"));
    }
    (Cause::Unexplained, "no late, duplicate, session or restart evidence for this key".into())
}
