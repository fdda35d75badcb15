//! Which windows can have changed since the last reconcile: from the event times of newly archived events
//! (new, late and replayed deliveries alike), the minute-aligned spans of window starts that a batch run and
//! a reconcile must redo (`tidemark reconcile --changed`).

use std::collections::BTreeSet;

use tidemark_core::window::WindowSpec;
use tidemark_core::{Duration, EventTime, ValidSpec};

/// The grid of dirty spans: a UTC minute, in µs. Finer than any window a dashboard keeps, so a span is a few
/// windows wider than what changed, never an hour.
const GRID_US: i64 = 60_000_000;

/// Spans less than this many grid cells (an hour) apart are merged: each span is a batch run and a reconcile
/// of its own, whose fixed costs (opening the stores, reading the archive's and the view's logs) would
/// otherwise outweigh recomputing the minutes between sparse late events.
const MERGE_GAP_CELLS: i64 = 60;

/// The grid cells (index = microseconds / 1 min) of window starts that an event in cell `cell` can touch, as
/// an inclusive range: every window containing an event at `t` starts in `(t - size, t]` for fixed windows; a
/// session containing `t` starts at most `session_lookaround` before it (the batch layer's own lookaround for
/// sessions) and one `t` joins may start up to a gap after it.
fn cells_of(spec: &ValidSpec, cell: i64, session_lookaround: Duration, out: &mut Vec<(i64, i64)>) {
    // the events of the cell lie in [lo, hi]
    let lo = cell.saturating_mul(GRID_US);
    let hi = lo.saturating_add(GRID_US - 1);
    for m in spec.metrics() {
        let (earliest, latest) = match &m.window {
            WindowSpec::Fixed(f) => (lo.saturating_sub(f.size().as_micros()), hi),
            WindowSpec::Session(s) => {
                (lo.saturating_sub(session_lookaround.as_micros()), hi.saturating_add(s.gap().as_micros()))
            }
        };
        out.push((earliest.div_euclid(GRID_US), latest.div_euclid(GRID_US)));
    }
}

/// Minute-aligned spans `[from, to)` covering the start of every window that an event at one of `times`
/// belongs to (sessions: within `session_lookaround`), merged where they are less than an hour apart, in
/// order. Cost follows the distinct minutes of `times`, not their number.
pub fn dirty_spans(
    spec: &ValidSpec,
    times: impl IntoIterator<Item = EventTime>,
    session_lookaround: Duration,
) -> Vec<(EventTime, EventTime)> {
    let minutes: BTreeSet<i64> = times.into_iter().map(|t| t.as_micros().div_euclid(GRID_US)).collect();
    let mut cells = Vec::new();
    for c in minutes {
        cells_of(spec, c, session_lookaround, &mut cells);
    }
    cells.sort_unstable();
    let mut spans: Vec<(i64, i64)> = Vec::new();
    for (a, b) in cells {
        match spans.last_mut() {
            Some(last) if a <= last.1.saturating_add(1 + MERGE_GAP_CELLS) => last.1 = last.1.max(b),
            _ => spans.push((a, b)),
        }
    }
    spans
        .into_iter()
        .filter_map(|(a, b)| {
            let t = |c: i64| EventTime::from_micros(c.saturating_mul(GRID_US));
            Some((t(a)?, t(b.saturating_add(1))?))
        })
        .collect()
}

/// Merges overlapping or adjacent spans (e.g. dirty spans and the ranges of new batch runs).
pub fn merge_spans(mut spans: Vec<(EventTime, EventTime)>) -> Vec<(EventTime, EventTime)> {
    spans.sort();
    let mut out: Vec<(EventTime, EventTime)> = Vec::new();
    for (a, b) in spans.into_iter().filter(|(a, b)| a < b) {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tidemark_core::PipelineSpec;

    use super::*;

    fn spec() -> ValidSpec {
        let text = r#"
version = 1
name = "d"
[source]
type = "file"
path = "/tmp/e.jsonl"
[event]
id = "id"
time = { field = "ts", format = "rfc3339" }
dimensions = ["k"]
[time]
watermark_delay = "1s"
allowed_lateness = "1m"
[[metrics]]
name = "m1"
dimensions = ["k"]
window = { type = "tumbling", size = "1m" }
aggregates = [{ name = "n", fn = "count" }]
[[metrics]]
name = "m5"
dimensions = ["k"]
window = { type = "hopping", size = "90m", slide = "30m" }
aggregates = [{ name = "n", fn = "count" }]
[[metrics]]
name = "s"
dimensions = ["k"]
window = { type = "session", gap = "10m" }
aggregates = [{ name = "n", fn = "count" }]
[stores]
raw_archive = "file:///tmp/r"
serving = "file:///tmp/s"
dead_letter = "file:///tmp/d"
batch_view = "file:///tmp/b"
"#;
        PipelineSpec::parse(text, "d.toml", None).unwrap()
    }

    proptest! {
        /// Every window an event belongs to starts inside a dirty span; sessions within the lookaround.
        #[test]
        fn every_window_of_a_new_event_starts_in_a_dirty_span(
            secs in proptest::collection::vec(0i64..(3 * 86_400), 1..20),
        ) {
            let spec = spec();
            let lookaround = Duration::from_secs(3600);
            let times: Vec<EventTime> = secs.iter().map(|s| EventTime::from_secs(1_767_225_600 + s).unwrap()).collect();
            let spans = dirty_spans(&spec, times.iter().copied(), lookaround);
            let covered = |start: EventTime| spans.iter().any(|(a, b)| *a <= start && start < *b);
            for t in &times {
                for m in spec.metrics() {
                    match &m.window {
                        WindowSpec::Fixed(f) => {
                            for w in f.assign(*t) {
                                prop_assert!(covered(w.start()), "{} {w} of {t}: {spans:?}", m.name);
                            }
                        }
                        WindowSpec::Session(s) => {
                            // its own session, one it extends (starting within the lookaround before), one
                            // it bridges to (starting within a gap after)
                            prop_assert!(covered(*t));
                            prop_assert!(covered(t.saturating_sub(lookaround)));
                            prop_assert!(covered(t.saturating_add(s.gap())));
                        }
                    }
                }
            }
            // spans are ordered, minute-aligned, and more than an hour apart (closer ones are merged)
            for w in spans.windows(2) {
                prop_assert!(w[1].0.as_micros() - w[0].1.as_micros() > MERGE_GAP_CELLS * GRID_US);
            }
            for (a, b) in &spans {
                prop_assert!(a.as_micros() % GRID_US == 0 && b.as_micros() % GRID_US == 0 && a < b);
            }
            // and no wider than needed: per event at most the reach of the widest metric (90-min windows back,
            // a 10-min gap forward, the minute itself) and a merged gap of under an hour
            let total: i64 = spans.iter().map(|(a, b)| (b.as_micros() - a.as_micros()) / GRID_US).sum();
            prop_assert!(total <= times.len() as i64 * (90 + 10 + 2 + MERGE_GAP_CELLS), "{total} minutes");
        }
    }

    #[test]
    fn one_late_event_dirties_its_minutes_only() {
        let spec = spec();
        let t = |s: &str| s.parse::<EventTime>().unwrap();
        // 90-minute hopping windows reach back 90 minutes; the session lookaround 1 h; a session's gap (10 min)
        // forward, from anywhere in the event's minute
        let spans = dirty_spans(&spec, [t("2026-01-02T10:20:30Z")], Duration::from_secs(3600));
        assert_eq!(spans, vec![(t("2026-01-02T08:50:00Z"), t("2026-01-02T10:31:00Z"))]);
        // two events a day apart: two spans; many events of one minute: the same spans as one
        let many = dirty_spans(
            &spec,
            (0..1000).map(|i| t("2026-01-02T10:20:00Z").saturating_add(Duration::from_millis(i * 59))),
            Duration::from_secs(3600),
        );
        assert_eq!(many, spans);
        let two = dirty_spans(&spec, [t("2026-01-02T10:20:30Z"), t("2026-01-03T10:20:30Z")], Duration::from_secs(3600));
        assert_eq!(two.len(), 2);
        // spans 29 minutes apart are merged (the minutes between are recomputed too)
        let near =
            dirty_spans(&spec, [t("2026-01-02T10:20:30Z"), t("2026-01-02T12:30:00Z")], Duration::from_secs(3600));
        assert_eq!(near, vec![(t("2026-01-02T08:50:00Z"), t("2026-01-02T12:41:00Z"))]);
        assert_eq!(
            merge_spans(vec![
                (t("2026-01-02T10:00:00Z"), t("2026-01-02T11:00:00Z")),
                (t("2026-01-02T08:00:00Z"), t("2026-01-02T10:00:00Z")),
                (t("2026-01-03T00:00:00Z"), t("2026-01-03T01:00:00Z")),
            ]),
            vec![
                (t("2026-01-02T08:00:00Z"), t("2026-01-02T11:00:00Z")),
                (t("2026-01-03T00:00:00Z"), t("2026-01-03T01:00:00Z"))
            ]
        );
    }
}
