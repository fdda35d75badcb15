//! Scenario tests: one per pane / late-policy case, idleness, sessions, de-duplication, accounting.

use tidemark_core::{AggValue, Origin, ReasonCode, RowChange, Window};
use tidemark_stream::{Engine, Error, LateReason, PartitionAccounts, Watermark};

use crate::common::*;

fn secs(w: &Window) -> (i64, i64) {
    (w.start().as_micros() / 1_000_000, w.end().as_micros() / 1_000_000)
}

fn value(v: &AggValue) -> String {
    v.to_string()
}

/// `kind metric [start,end) dims rev pane n=..,s=..` with values in aggregate-name order.
fn show(c: &RowChange) -> String {
    let (kind, row) = match c {
        RowChange::Upsert(r) => ("upsert", r),
        RowChange::Delta(r) => ("delta", r),
        RowChange::Retract { key, revision } => {
            let (a, b) = secs(&key.window);
            return format!("retract {} [{a},{b}) {} rev{revision}", key.metric, key.dims);
        }
    };
    let (a, b) = secs(&row.key.window);
    let Origin::Speed { revision, pane, .. } = &row.origin else { panic!("speed rows only") };
    let vals: Vec<String> = row.values.iter().map(|(k, v)| format!("{k}={}", value(v))).collect();
    format!(
        "{kind} {} [{a},{b}) {} rev{revision} {pane:?} events={} {}",
        row.key.metric,
        row.key.dims,
        row.events,
        vals.join(",")
    )
}

fn shown(out: &tidemark_stream::Output) -> Vec<String> {
    out.changes.iter().map(show).collect()
}

const TUMBLE: &str = r#"{ type = "tumbling", size = "60s" }"#;

fn policy(late: &str) -> String {
    // Processing time stands still in these scenarios: trust every event (suspects have their own tests).
    format!(
        "watermark_delay = \"5s\"\nallowed_lateness = \"60s\"\nidle_timeout = \"1h\"\nlate_policy = \"{late}\"\n\
         suspect_confirmations = 1"
    )
}

/// Three events in [0,60), then one at 70s: the watermark (65s) passes 60s and fires the window.
fn fire_first_window(late: &str) -> Harness {
    let mut h = Harness::new(&spec(&policy(late), &[("m", TUMBLE)], INT_AGGS));
    h.send("e1", 10, "a", 1);
    h.send("e2", 20, "a", 2);
    h.send("e3", 30, "b", 5);
    assert!(h.out.changes.is_empty(), "nothing fires before the watermark passes the end");
    assert_eq!(h.engine.watermark(), Some(s(25)));
    h.send("e4", 70, "a", 1);
    assert_eq!(h.engine.watermark(), Some(s(65)));
    assert_eq!(
        shown(&h.take()),
        vec![
            "upsert m [0,60) k=a rev0 OnTime events=2 hi=2,lo=1,n=2,s=3",
            "upsert m [0,60) k=b rev0 OnTime events=1 hi=5,lo=5,n=1,s=5",
        ]
    );
    h
}

#[test]
fn on_time_pane_when_the_watermark_passes_the_end() {
    let mut h = fire_first_window("update");
    // the emitted rows carry the watermark at emission
    h.send("e5", 200, "a", 1);
    let out = h.take();
    assert_eq!(shown(&out), vec!["upsert m [60,120) k=a rev0 OnTime events=1 hi=1,lo=1,n=1,s=1"]);
    let RowChange::Upsert(row) = &out.changes[0] else { panic!() };
    assert_eq!(row.origin, Origin::Speed { revision: 0, pane: tidemark_core::Pane::OnTime, watermark: s(195) });
    assert_eq!(row.computed_at, h.now);
}

#[test]
fn late_event_under_update_re_emits_the_full_row() {
    let mut h = fire_first_window("update");
    h.send("late", 50, "a", 10);
    assert_eq!(shown(&h.take()), vec!["upsert m [0,60) k=a rev1 Late events=3 hi=10,lo=1,n=3,s=13"]);
    h.send("late2", 55, "a", -4);
    assert_eq!(shown(&h.take()), vec!["upsert m [0,60) k=a rev2 Late events=4 hi=10,lo=-4,n=4,s=9"]);
    assert_eq!(h.engine.accounts()[&0], PartitionAccounts { consumed: 6, aggregated: 6, ..Default::default() });
}

#[test]
fn late_event_under_append_emits_a_delta_of_its_contribution() {
    let mut h = fire_first_window("append");
    h.send("late", 50, "a", 10);
    assert_eq!(shown(&h.take()), vec!["delta m [0,60) k=a rev1 Late events=1 hi=10,lo=10,n=1,s=10"]);
    h.send("late2", 40, "b", 3);
    assert_eq!(shown(&h.take()), vec!["delta m [0,60) k=b rev1 Late events=1 hi=3,lo=3,n=1,s=3"]);
}

#[test]
fn late_event_under_dead_letter_goes_to_the_ledger_and_changes_nothing() {
    let mut h = fire_first_window("dead_letter");
    h.send("late", 50, "a", 10);
    let out = h.take();
    assert!(out.changes.is_empty());
    assert_eq!(out.late.len(), 1);
    let l = &out.late[0];
    assert_eq!(
        (l.event_id.as_str(), l.metric.as_str(), secs(&l.window), l.reason),
        ("late", "m", (0, 60), LateReason::LatePolicy)
    );
    assert_eq!((l.coords.offset, l.watermark, l.dims.encode()), (4, s(65), "k=a".to_owned()));
    // its id is remembered while the window could still take it: a repeat is a duplicate
    h.send("late", 50, "a", 10);
    assert!(h.take().is_empty());
    assert_eq!(
        h.engine.accounts()[&0],
        PartitionAccounts {
            consumed: 6,
            aggregated: 4,
            late_routed: 1,
            duplicates_suppressed: 1,
            late_ledger_entries: 1,
            ..Default::default()
        }
    );
}

#[test]
fn events_beyond_allowed_lateness_always_reach_the_ledger_and_state_is_purged() {
    let mut h = fire_first_window("update");
    assert_eq!(h.engine.live_rows(), 3);
    h.send("far", 130, "a", 1); // watermark 125 >= 60 + 60: [0,60) purged
    h.take();
    assert_eq!(h.engine.live_rows(), 2, "[60,120) for a and [120,180) for a");
    h.send("old", 59, "b", 1);
    let out = h.take();
    assert!(out.changes.is_empty());
    assert_eq!(out.late.len(), 1);
    assert_eq!((secs(&out.late[0].window), out.late[0].reason), ((0, 60), LateReason::BeyondAllowedLateness));
    // its events were forgotten with the window: a repeat of e1 is too late, not a duplicate
    h.send("e1", 10, "a", 1);
    assert_eq!(h.take().late.len(), 1);
    assert_eq!(
        h.engine.accounts()[&0],
        PartitionAccounts { consumed: 7, aggregated: 5, late_routed: 2, late_ledger_entries: 2, ..Default::default() }
    );
}

#[test]
fn on_time_for_one_metric_too_late_for_another_counts_as_aggregated() {
    let time = "watermark_delay = \"0s\"\nallowed_lateness = \"5s\"\nidle_timeout = \"1h\"";
    let metrics =
        [("small", r#"{ type = "tumbling", size = "10s" }"#), ("big", r#"{ type = "tumbling", size = "100s" }"#)];
    let mut h = Harness::new(&spec(time, &metrics, INT_AGGS));
    h.send("a", 50, "x", 1);
    h.take();
    h.send("b", 30, "x", 2); // [30,40) of small: 45 <= 50, too late; [0,100) of big: on time
    let out = h.take();
    assert_eq!(out.late.len(), 1);
    assert_eq!((out.late[0].metric.as_str(), secs(&out.late[0].window)), ("small", (30, 40)));
    assert_eq!(
        h.engine.accounts()[&0],
        PartitionAccounts { consumed: 2, aggregated: 2, late_ledger_entries: 1, ..Default::default() }
    );
    h.drain();
    assert_eq!(
        shown(&h.take()),
        vec![
            "upsert small [50,60) k=x rev0 OnTime events=1 hi=1,lo=1,n=1,s=1",
            "upsert big [0,100) k=x rev0 OnTime events=2 hi=2,lo=1,n=2,s=3"
        ]
    );
}

#[test]
fn hopping_windows_fire_each_window_once() {
    let time = "watermark_delay = \"0s\"\nallowed_lateness = \"0s\"\nidle_timeout = \"1h\"";
    let mut h = Harness::new(&spec(time, &[("h", r#"{ type = "hopping", size = "20s", slide = "10s" }"#)], INT_AGGS));
    h.send("a", 5, "x", 1);
    h.send("b", 15, "x", 2);
    assert_eq!(shown(&h.take()), vec!["upsert h [-10,10) k=x rev0 OnTime events=1 hi=1,lo=1,n=1,s=1"]);
    h.send("c", 30, "x", 4);
    assert_eq!(
        shown(&h.take()),
        vec![
            "upsert h [0,20) k=x rev0 OnTime events=2 hi=2,lo=1,n=2,s=3",
            "upsert h [10,30) k=x rev0 OnTime events=1 hi=2,lo=2,n=1,s=2"
        ]
    );
    assert_eq!(h.engine.live_rows(), 2, "windows ending at or before the watermark are purged with zero lateness");
}

#[test]
fn duplicates_are_suppressed_while_their_state_lives_and_forgotten_after() {
    let mut h = fire_first_window("update");
    h.send("e2", 20, "a", 2); // late window still alive: duplicate
    h.send("e4", 70, "a", 1); // open window: duplicate
    assert!(h.take().is_empty());
    assert_eq!(h.engine.accounts()[&0].duplicates_suppressed, 2);
    assert_eq!(h.engine.remembered_events(), 4);
    h.drain();
    assert_eq!(h.engine.remembered_events(), 0, "the de-duplication set shrinks with the state");
    assert_eq!(h.engine.live_rows(), 0);
}

#[test]
fn undecodable_records_are_dead_lettered_with_reason_and_coordinates() {
    let mut h = Harness::new(&spec(&policy("update"), &[("m", TUMBLE)], INT_AGGS));
    h.send_raw(0, b"not json".to_vec());
    h.send_raw(0, br#"{"id":"x","ts":1,"k":"a","u":"b","f":1.0}"#.to_vec());
    h.send("ok", 1, "a", 1);
    let out = h.take();
    let got: Vec<(ReasonCode, Option<&str>, i64)> =
        out.dead_letters.iter().map(|d| (d.reason, d.field.as_deref(), d.coords.offset)).collect();
    assert_eq!(got, vec![(ReasonCode::NotJson, None, 0), (ReasonCode::MissingField, Some("v"), 1)]);
    assert_eq!(out.dead_letters[0].payload, b"not json");
    assert_eq!(
        h.engine.accounts()[&0],
        PartitionAccounts { consumed: 3, aggregated: 1, dead_lettered: 2, ..Default::default() }
    );
    assert_eq!(h.engine.positions()[&0], 3);
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_back() {
    let time = "watermark_delay = \"0s\"\nallowed_lateness = \"0s\"\nidle_timeout = \"30s\"";
    let mut h = Harness::new(&spec(time, &[("m", r#"{ type = "tumbling", size = "10s" }"#)], INT_AGGS));
    h.send_raw(1, payload("p1", 3, "a", 1));
    h.send_raw(0, payload("p0a", 5, "a", 1));
    h.advance(10);
    h.send_raw(0, payload("p0b", 25, "a", 1));
    assert_eq!(h.engine.watermark(), Some(s(3)), "partition 1 holds the watermark at 3s");
    assert!(h.take().changes.is_empty());
    h.advance(19); // 29s after partition 1's last event: not idle yet
    assert!(h.take().changes.is_empty());
    h.advance(1);
    assert_eq!(h.engine.partition_watermarks(h.now), vec![(0, Watermark::EventTime(s(25))), (1, Watermark::Idle)]);
    assert_eq!(h.engine.watermark(), Some(s(25)));
    assert_eq!(shown(&h.take()), vec!["upsert m [0,10) k=a rev0 OnTime events=2 hi=1,lo=1,n=2,s=2"]);
    h.send_raw(0, payload("p0c", 40, "a", 1));
    assert_eq!(h.engine.partition_watermarks(h.now), vec![(0, Watermark::EventTime(s(40))), (1, Watermark::Idle)]);
    assert_eq!(h.engine.watermark(), Some(s(40)));
    assert_eq!(shown(&h.take()), vec!["upsert m [20,30) k=a rev0 OnTime events=1 hi=1,lo=1,n=1,s=1"]);
}

#[test]
fn an_assigned_partition_without_events_holds_back_until_idle() {
    let time = "watermark_delay = \"0s\"\nallowed_lateness = \"0s\"\nidle_timeout = \"30s\"";
    let mut h = Harness::new(&spec(time, &[("m", r#"{ type = "tumbling", size = "10s" }"#)], INT_AGGS));
    h.engine.register_partition(1, h.now);
    h.send("a", 5, "a", 1);
    h.send("b", 15, "a", 1);
    assert!(h.take().changes.is_empty());
    h.advance(29);
    h.send("c", 16, "a", 1); // keeps partition 0 active
    h.advance(1);
    assert_eq!(h.engine.watermark(), Some(s(16)));
    assert_eq!(shown(&h.take()), vec!["upsert m [0,10) k=a rev0 OnTime events=1 hi=1,lo=1,n=1,s=1"]);
}

#[test]
fn sessions_extend_and_bridge_retracting_superseded_rows() {
    let time = "watermark_delay = \"0s\"\nallowed_lateness = \"100s\"\nidle_timeout = \"1h\"";
    let mut h = Harness::new(&spec(time, &[("sess", r#"{ type = "session", gap = "10s" }"#)], INT_AGGS));
    h.send("a", 0, "x", 1);
    h.send("b", 25, "x", 2);
    assert_eq!(shown(&h.take()), vec!["upsert sess [0,10) k=x rev0 OnTime events=1 hi=1,lo=1,n=1,s=1"]);
    // late: extends the fired session [0,10) to [0,18), which already ended: retract + late row
    h.send("c", 8, "x", 3);
    assert_eq!(
        shown(&h.take()),
        vec!["retract sess [0,10) k=x rev0", "upsert sess [0,18) k=x rev0 Late events=2 hi=3,lo=1,n=2,s=4"]
    );
    // bridges [0,18) and the open [25,35) into [0,35): retract the emitted one, fire when due
    h.send("d", 17, "x", 4);
    assert_eq!(shown(&h.take()), vec!["retract sess [0,18) k=x rev0"]);
    h.send("e", 60, "x", 5);
    assert_eq!(shown(&h.take()), vec!["upsert sess [0,35) k=x rev0 OnTime events=4 hi=4,lo=1,n=4,s=10"]);
    // a late event inside the fired session changes no window: update re-emits it
    h.send("f", 20, "x", -1);
    assert_eq!(shown(&h.take()), vec!["upsert sess [0,35) k=x rev1 Late events=5 hi=4,lo=-1,n=5,s=9"]);
    h.drain();
    assert_eq!(shown(&h.take()), vec!["upsert sess [60,70) k=x rev0 OnTime events=1 hi=5,lo=5,n=1,s=5"]);
    assert_eq!((h.engine.live_rows(), h.engine.remembered_events()), (0, 0));
}

#[test]
fn session_late_event_under_append_is_a_delta_unless_the_window_changes() {
    let time = "watermark_delay = \"0s\"\nallowed_lateness = \"100s\"\nidle_timeout = \"1h\"\nlate_policy = \"append\"";
    let mut h = Harness::new(&spec(time, &[("sess", r#"{ type = "session", gap = "10s" }"#)], INT_AGGS));
    h.send("a", 0, "x", 1);
    h.send("b", 5, "x", 1);
    h.send("c", 40, "x", 1);
    h.take();
    h.send("d", 3, "x", 7);
    assert_eq!(shown(&h.take()), vec!["delta sess [0,15) k=x rev1 Late events=1 hi=7,lo=7,n=1,s=7"]);
    h.send("e", 12, "x", 2);
    assert_eq!(
        shown(&h.take()),
        vec!["retract sess [0,15) k=x rev1", "upsert sess [0,22) k=x rev0 Late events=4 hi=7,lo=1,n=4,s=11"]
    );
}

#[test]
fn early_panes_carry_changed_open_rows_at_the_processing_time_interval() {
    let time = "watermark_delay = \"0s\"\nallowed_lateness = \"0s\"\nidle_timeout = \"1h\"\nearly_firing = \"10s\"";
    let mut h = Harness::new(&spec(time, &[("m", r#"{ type = "tumbling", size = "60s" }"#)], INT_AGGS));
    h.send("a", 1, "x", 1);
    h.send("b", 2, "y", 1);
    h.advance(9);
    assert!(h.take().changes.is_empty());
    h.advance(1);
    assert_eq!(
        shown(&h.take()),
        vec![
            "upsert m [0,60) k=x rev0 Early events=1 hi=1,lo=1,n=1,s=1",
            "upsert m [0,60) k=y rev0 Early events=1 hi=1,lo=1,n=1,s=1"
        ]
    );
    h.send("c", 3, "x", 2);
    h.advance(10);
    assert_eq!(
        shown(&h.take()),
        vec!["upsert m [0,60) k=x rev1 Early events=2 hi=2,lo=1,n=2,s=3"],
        "only changed rows"
    );
    h.send("d", 61, "x", 2);
    assert_eq!(
        shown(&h.take()),
        vec![
            "upsert m [0,60) k=x rev2 OnTime events=2 hi=2,lo=1,n=2,s=3",
            "upsert m [0,60) k=y rev1 OnTime events=1 hi=1,lo=1,n=1,s=1"
        ]
    );
}

#[test]
fn checkpoint_restore_continues_identically_with_float_aggregates() {
    let time = "watermark_delay = \"3s\"\nallowed_lateness = \"20s\"\nidle_timeout = \"15s\"\nearly_firing = \"7s\"";
    let metrics = [
        ("t", r#"{ type = "tumbling", size = "10s" }"#),
        ("h", r#"{ type = "hopping", size = "20s", slide = "5s" }"#),
        ("s", r#"{ type = "session", gap = "4s" }"#),
    ];
    let spec = spec(time, &metrics, ALL_AGGS);
    // a deterministic, disordered stream with duplicates, garbage and two partitions
    let mut inputs = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..400i64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let jitter = i64::try_from(x % 30).unwrap();
        let ts = i / 2 + 10 - jitter;
        let id = if x.is_multiple_of(11) { format!("e{}", i - 3) } else { format!("e{i}") };
        let bytes = if x.is_multiple_of(37) {
            b"{broken".to_vec()
        } else {
            payload(&id, ts, ["a", "b", "c"][(x % 3) as usize], (x % 1000) as i64 - 500)
        };
        inputs.push((i32::from(x.is_multiple_of(5)), bytes, i64::try_from(x % 3).unwrap()));
    }
    let run = |h: &mut Harness, part: &[(i32, Vec<u8>, i64)]| {
        for (p, bytes, step) in part {
            h.advance(*step);
            h.send_raw(*p, bytes.clone());
        }
    };
    let mut whole = Harness::new(&spec);
    run(&mut whole, &inputs);
    whole.drain();

    let mut first = Harness::new(&spec);
    run(&mut first, &inputs[..217]);
    assert!(first.engine.live_rows() > 10 && first.engine.remembered_events() > 10, "a checkpoint with state");
    let blob = first.engine.checkpoint().unwrap();
    let mut second = Harness::new(&spec);
    second.engine = Engine::restore(&spec, &blob).unwrap();
    second.now = first.now;
    second.offsets = first.offsets;
    run(&mut second, &inputs[217..]);
    second.drain();
    let mut joined = first.take();
    let after = second.take();
    joined.changes.extend(after.changes);
    joined.late.extend(after.late);
    joined.dead_letters.extend(after.dead_letters);
    let expected = whole.take();
    assert!(
        expected.changes.len() > 100 && !expected.late.is_empty() && !expected.dead_letters.is_empty(),
        "a meaningful run"
    );
    assert_eq!(joined, expected);
    assert_eq!(second.engine.accounts().values().map(|a| a.consumed).sum::<u64>(), 400);
    assert_eq!(second.engine.accounts(), whole.engine.accounts());
    assert_eq!(second.engine.checkpoint().unwrap(), whole.engine.checkpoint().unwrap(), "identical final state");
}

#[test]
fn a_checkpoint_only_restores_into_the_same_definitions() {
    let spec_a = spec(&policy("update"), &[("m", TUMBLE)], INT_AGGS);
    let spec_b = spec(&policy("append"), &[("m", TUMBLE)], INT_AGGS);
    let mut h = Harness::new(&spec_a);
    h.send("e1", 10, "a", 1);
    let blob = h.engine.checkpoint().unwrap();
    let err = Engine::restore(&spec_b, &blob).unwrap_err();
    assert!(matches!(err, Error::SpecChanged), "{err}");
    assert_eq!(err.actor(), tidemark_core::Actor::User);
    let err = Engine::restore(&spec_a, b"{\"format\":1,").unwrap_err();
    assert!(matches!(err, Error::CheckpointDecode(_)), "{err}");
    let err = Engine::restore(&spec_a, br#"{"format":1}"#).unwrap_err();
    assert!(matches!(err, Error::CheckpointFormat { found: 1, expected: 3 }), "a JSON blob of format 1: {err}");
    let err = Engine::restore(&spec_a, &[99, 1, 2, 3]).unwrap_err();
    assert!(matches!(err, Error::CheckpointFormat { found: 99, expected: 3 }), "{err}");
    let err = Engine::restore(&spec_a, &blob[..blob.len() - 1]).unwrap_err();
    assert!(matches!(err, Error::CheckpointDecode(_)), "a truncated blob: {err}");
    assert_eq!(u32::from(blob[0]), tidemark_stream::CHECKPOINT_FORMAT, "the blob starts with its format");
    let restored = Engine::restore(&spec_a, &blob).unwrap();
    assert_eq!(restored.accounts(), h.engine.accounts());
    assert_eq!(restored.remembered_events(), 1);
}

#[test]
fn append_into_a_key_the_window_never_emitted_upserts_the_full_row() {
    // found by the property test: a delta needs an earlier row of its key
    let mut h = fire_first_window("append");
    h.send("new-key", 45, "c", 9);
    assert_eq!(shown(&h.take()), vec!["upsert m [0,60) k=c rev0 Late events=1 hi=9,lo=9,n=1,s=9"]);
    h.send("again", 46, "c", 1);
    assert_eq!(shown(&h.take()), vec!["delta m [0,60) k=c rev1 Late events=1 hi=1,lo=1,n=1,s=1"]);
}

#[test]
fn session_late_event_under_dead_letter_reaches_the_ledger_with_the_session_it_would_join() {
    let time =
        "watermark_delay = \"0s\"\nallowed_lateness = \"100s\"\nidle_timeout = \"1h\"\nlate_policy = \"dead_letter\"";
    let mut h = Harness::new(&spec(time, &[("sess", r#"{ type = "session", gap = "10s" }"#)], INT_AGGS));
    h.send("a", 0, "x", 1);
    h.send("b", 18, "x", 1);
    assert_eq!(shown(&h.take()), vec!["upsert sess [0,10) k=x rev0 OnTime events=1 hi=1,lo=1,n=1,s=1"]);
    h.send("c", 5, "x", 1);
    let out = h.take();
    assert!(out.changes.is_empty());
    assert_eq!(out.late.len(), 1);
    assert_eq!((secs(&out.late[0].window), out.late[0].reason), ((0, 15), LateReason::LatePolicy));
    // an event bridging the fired session into the open one joins a session that has not ended: on time
    h.send("d", 9, "x", 1);
    assert_eq!(shown(&h.take()), vec!["retract sess [0,10) k=x rev0"]);
    h.drain();
    assert_eq!(shown(&h.take()), vec!["upsert sess [0,28) k=x rev0 OnTime events=3 hi=1,lo=1,n=3,s=3"]);
}

#[test]
fn accounting_is_kept_per_partition() {
    let time = "watermark_delay = \"0s\"\nallowed_lateness = \"0s\"\nidle_timeout = \"1h\"";
    let mut h = Harness::new(&spec(time, &[("m", r#"{ type = "tumbling", size = "10s" }"#)], INT_AGGS));
    h.send_raw(0, payload("a", 5, "x", 1));
    h.send_raw(1, payload("a", 5, "x", 1)); // the same event id on another partition
    h.send_raw(1, b"{}".to_vec());
    h.send_raw(0, payload("b", 25, "x", 1));
    h.send_raw(1, payload("c", 30, "x", 1));
    h.send_raw(1, payload("d", 1, "x", 1)); // [0,10) ended at the watermark (25s): too late
    let accounts = h.engine.accounts();
    assert_eq!(accounts[&0], PartitionAccounts { consumed: 2, aggregated: 2, ..Default::default() });
    assert_eq!(
        accounts[&1],
        PartitionAccounts {
            consumed: 4,
            aggregated: 1,
            late_routed: 1,
            dead_lettered: 1,
            duplicates_suppressed: 1,
            late_ledger_entries: 1
        }
    );
    // revoking the slower partition lets the faster one's watermark through
    assert_eq!(h.engine.watermark(), Some(s(25)));
    h.engine.remove_partition(0, h.now, &mut h.out);
    assert_eq!(h.engine.watermark(), Some(s(30)));
    assert_eq!(
        shown(&h.take()).last().map(String::as_str),
        Some("upsert m [20,30) k=x rev0 OnTime events=1 hi=1,lo=1,n=1,s=1")
    );
}
