//! Which windows can have changed since the last reconcile: from the event times of newly archived events
//! (new, late and replayed deliveries alike), the UTC-hour spans of window starts that a batch run and a
//! reconcile must redo (`tidemark reconcile --changed`).

use std::collections::BTreeSet;

use tidemark_core::window::WindowSpec;
use tidemark_core::{Duration, EventTime, ValidSpec};

const HOUR_US: i64 = 3_600_000_000;

/// The UTC hours (index = microseconds / 1 h) whose window starts an event at `t` can touch: every window
/// containing `t` starts in `(t - size, t]` for fixed windows; a session containing `t` starts at most
/// `session_lookaround` before it (the batch layer's own lookaround for sessions) and one `t` joins may
/// start up to a gap after it.
fn hours_of(spec: &ValidSpec, t: EventTime, session_lookaround: Duration, out: &mut BTreeSet<i64>) {
    let us = t.as_micros();
    for m in spec.metrics() {
        let (earliest, latest) = match &m.window {
            WindowSpec::Fixed(f) => (us.saturating_sub(f.size().as_micros()), us),
            WindowSpec::Session(s) => {
                (us.saturating_sub(session_lookaround.as_micros()), us.saturating_add(s.gap().as_micros()))
            }
        };
        for h in earliest.div_euclid(HOUR_US)..=latest.div_euclid(HOUR_US) {
            out.insert(h);
        }
    }
}

/// Hour-aligned spans `[from, to)` covering the start of every window that an event at one of `times`
/// belongs to (sessions: within `session_lookaround`), merged where adjacent, in order.
pub fn dirty_spans(
    spec: &ValidSpec,
    times: impl IntoIterator<Item = EventTime>,
    session_lookaround: Duration,
) -> Vec<(EventTime, EventTime)> {
    let mut hours = BTreeSet::new();
    for t in times {
        hours_of(spec, t, session_lookaround, &mut hours);
    }
    let mut spans: Vec<(i64, i64)> = Vec::new();
    for h in hours {
        match spans.last_mut() {
            Some(last) if last.1 == h => last.1 = h + 1,
            _ => spans.push((h, h + 1)),
        }
    }
    spans
        .into_iter()
        .filter_map(|(a, b)| {
            let t = |h: i64| EventTime::from_micros(h.saturating_mul(HOUR_US));
            Some((t(a)?, t(b)?))
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
            // spans are ordered, disjoint, hour-aligned, and not adjacent (merged)
            for w in spans.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
            for (a, b) in &spans {
                prop_assert!(a.as_micros() % HOUR_US == 0 && b.as_micros() % HOUR_US == 0 && a < b);
            }
        }
    }

    #[test]
    fn one_late_event_dirties_its_hours_only() {
        let spec = spec();
        let t = |s: &str| s.parse::<EventTime>().unwrap();
        // 90-minute hopping windows reach back two hours; the session lookaround (1h) one
        let spans = dirty_spans(&spec, [t("2026-01-02T10:20:00Z")], Duration::from_secs(3600));
        assert_eq!(spans, vec![(t("2026-01-02T08:00:00Z"), t("2026-01-02T11:00:00Z"))]);
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
