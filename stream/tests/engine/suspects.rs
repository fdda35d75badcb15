//! Issue 24: one bad clock cannot break the watermark. Inserting up to `suspect_confirmations - 1`
//! far-ahead events per partition (any lead) into a valid input — every event within `suspect_lead` of
//! its arrival, processing time following the arrivals — leaves every other event's fate unchanged: the
//! watermark each one meets, the late ledger and the accounts; the far-ahead events are aggregated into
//! their own windows.

use proptest::prelude::*;
use tidemark_core::{Duration, EventTime, SourceCoordinates};
use tidemark_stream::{Engine, Output, Record};

use crate::common::*;

const PARTITIONS: i32 = 4;
/// The spec's default: 3 confirmations, so 2 far-ahead events per partition change nothing.
const TOLERATED: usize = 2;
const LEAD_S: u32 = 60;

#[derive(Debug, Clone)]
struct Input {
    window: String,
    /// (arrival s, event time s, partition, key, value), in arrival order.
    events: Vec<(i64, i64, i32, usize, i64)>,
    /// (insert before this index of `events`, partition, extra lead s beyond the frontier).
    far_ahead: Vec<(usize, i32, i64)>,
}

fn window() -> impl Strategy<Value = String> {
    prop_oneof![
        (1i64..120).prop_map(|s| format!("{{ type = \"tumbling\", size = \"{s}s\" }}")),
        (1i64..30, 1i64..4)
            .prop_map(|(sl, m)| format!("{{ type = \"hopping\", size = \"{}s\", slide = \"{sl}s\" }}", sl * m)),
        (1i64..60).prop_map(|g| format!("{{ type = \"session\", gap = \"{g}s\" }}")),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let event = (
        0i64..4,                                    // arrival step
        prop_oneof![8 => 0i64..10, 1 => 0i64..900], // delay: mostly seconds, some minutes (late)
        0..PARTITIONS,
        0usize..3,
        -50i64..50,
    );
    (window(), prop::collection::vec(event, 1..150))
        .prop_flat_map(|(window, raw)| {
            let mut arrival = 1_000;
            let events: Vec<_> = raw
                .into_iter()
                .map(|(step, delay, p, k, v)| {
                    arrival += step;
                    (arrival, arrival - delay, p, k, v)
                })
                .collect();
            let n = events.len();
            let far = prop::collection::vec((0..=n, 0..PARTITIONS, prop_oneof![0i64..100, 0i64..400_000_000]), 0..12);
            (Just(window), Just(events), far)
        })
        .prop_map(|(window, events, far)| {
            // at most TOLERATED per partition
            let mut per = [0usize; PARTITIONS as usize];
            let far_ahead = far
                .into_iter()
                .filter(|(_, p, _)| {
                    let c = &mut per[usize::try_from(*p).unwrap()];
                    *c += 1;
                    *c <= TOLERATED
                })
                .collect();
            Input { window, events, far_ahead }
        })
}

/// What a run saw: per normal event the watermark it met and the watermark after it, the late ledger of
/// normal events, the accounts summed over partitions, and the ids aggregated into some emitted row.
#[derive(Debug, PartialEq)]
struct Seen {
    watermarks: Vec<(EventTime, EventTime)>,
    late: Vec<String>,
    aggregated: u64,
    late_routed: u64,
}

fn run(input: &Input, with_far_ahead: bool) -> (Seen, Output) {
    let time = "watermark_delay = \"5s\"\nallowed_lateness = \"30s\"\nidle_timeout = \"20s\"\nlate_policy = \"update\"";
    let spec = spec(time, &[("m", &input.window)], INT_AGGS);
    assert_eq!(spec.spec().time.suspect_confirmations as usize, TOLERATED + 1, "the default");
    assert_eq!(spec.spec().time.suspect_lead, Duration::from_secs(LEAD_S));
    let mut engine = Engine::new(&spec);
    let mut out = Output::default();
    let mut offsets = [0i64; PARTITIONS as usize];
    let start = s(input.events[0].0);
    // Kafka registers every assigned partition before its first record.
    for p in 0..PARTITIONS {
        engine.register_partition(p, start);
    }
    let mut seen = Seen { watermarks: Vec::new(), late: Vec::new(), aggregated: 0, late_routed: 0 };
    let mut send =
        |engine: &mut Engine, out: &mut Output, id: String, arrival: i64, t: i64, p: i32, k: usize, v: i64| {
            let o = &mut offsets[usize::try_from(p).unwrap()];
            let rec = Record {
                coords: SourceCoordinates { source: "t".into(), partition: p, offset: *o },
                // receive times far on, so no lead is a `future_event`: this is about the watermark alone
                received_at: received(),
                payload: payload(&id, t, ["a", "b", "c"][k], v),
            };
            *o += 1;
            engine.process(&rec, s(arrival), out);
        };
    let mut far = input.far_ahead.clone();
    far.sort_by_key(|f| f.0);
    // numbered: the input may hold the same far-ahead tuple twice, and two events of one id are a duplicate
    let mut far = far.into_iter().enumerate().peekable();
    let mut last_arrival = input.events[0].0;
    for (i, &(arrival, t, p, k, v)) in input.events.iter().enumerate() {
        while let Some(&(j, (at, fp, extra))) = far.peek()
            && at <= i
        {
            far.next();
            if with_far_ahead {
                // Ahead of everything the input holds by more than the lead plus all the arrival time.
                let max_t = input.events.iter().map(|e| e.1.max(e.0)).max().unwrap();
                let lead = max_t + (arrival - input.events[0].0) + i64::from(LEAD_S) + 1 + extra;
                send(&mut engine, &mut out, format!("far{j}-{at}-{fp}-{extra}"), last_arrival, lead, fp, 0, 1);
            }
        }
        // No watermark yet and the minimum one judge alike.
        let before = engine.watermark().unwrap_or(EventTime::MIN);
        send(&mut engine, &mut out, format!("e{i}"), arrival, t, p, k, v);
        seen.watermarks.push((before, engine.watermark().unwrap_or(EventTime::MIN)));
        last_arrival = arrival;
    }
    if with_far_ahead {
        for (j, (at, fp, extra)) in far {
            let max_t = input.events.iter().map(|e| e.1.max(e.0)).max().unwrap();
            let lead = max_t + (last_arrival - input.events[0].0) + i64::from(LEAD_S) + 1 + extra;
            send(&mut engine, &mut out, format!("far{j}-{at}-{fp}-{extra}"), last_arrival, lead, fp, 0, 1);
        }
    }
    seen.late = out.late.iter().filter(|l| !l.event_id.starts_with("far")).map(|l| l.event_id.clone()).collect();
    for a in engine.accounts().values() {
        assert!(a.balanced(), "{a:?}");
        seen.aggregated += a.aggregated;
        seen.late_routed += a.late_routed;
    }
    (seen, out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn issue_24_far_ahead_events_change_no_other_events_fate(input in input()) {
        let (clean, _) = run(&input, false);
        let (dirty, out) = run(&input, true);
        let inserted = input.far_ahead.len() as u64;
        prop_assert_eq!(&dirty.watermarks, &clean.watermarks, "the watermark each event met");
        prop_assert_eq!(&dirty.late, &clean.late, "the late ledger");
        prop_assert_eq!(dirty.late_routed, clean.late_routed);
        prop_assert_eq!(dirty.aggregated, clean.aggregated + inserted, "far-ahead events are aggregated");
        prop_assert!(out.late.iter().all(|l| !l.event_id.starts_with("far")), "none of them is late");
    }
}

/// The same input with one more far-ahead event than tolerated on one partition: the jump is confirmed and
/// the watermark moves to the smallest of them (the bound is real, not a blanket refusal).
#[test]
fn issue_24_one_suspect_more_than_tolerated_confirms_a_jump() {
    let time = "watermark_delay = \"5s\"\nidle_timeout = \"1h\"";
    let spec = spec(time, &[("m", "{ type = \"tumbling\", size = \"60s\" }")], INT_AGGS);
    let mut engine = Engine::new(&spec);
    let mut out = Output::default();
    let rec = |o: i64, t: i64| Record {
        coords: SourceCoordinates { source: "t".into(), partition: 0, offset: o },
        received_at: received(),
        payload: payload(&format!("e{o}"), t, "a", 1),
    };
    engine.process(&rec(0, 1_000), s(1_000), &mut out);
    assert_eq!(engine.watermark(), Some(s(995)));
    for (o, t) in [(1, 9_000), (2, 9_100)] {
        engine.process(&rec(o, t), s(1_000 + o), &mut out);
        assert_eq!(engine.watermark(), Some(s(995)), "suspect {o} holds");
    }
    engine.process(&rec(3, 9_050), s(1_003), &mut out);
    assert_eq!(engine.watermark(), Some(s(9_095)), "confirmed: the smallest, then the others within the lead");
    let p = engine.suspicion()[0].1;
    assert_eq!((p.seen, p.pending), (3, 0));
    assert_eq!(engine.accounts()[&0].aggregated, 4);
}
