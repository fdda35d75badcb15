//! The acceptance test of issue 4: randomized events through tidemark-core's accumulators (the reference,
//! written here with core's window assignment) and through the polars plan give identical rows, for every
//! window kind and aggregate.

use std::collections::{BTreeMap, HashSet};

use tidemark_batch::{frame, plan};
use tidemark_core::window::session::sessions_of;
use tidemark_core::{
    CompiledMetric, Event, EventTime, MetricAccumulator, MetricRow, Num, Origin, RowKey, ValidSpec, ValueType, Window,
    WindowSpec,
};

use crate::common::{ALL_AGGREGATES, MERGEABLE_AGGREGATES, Rng, assert_rows_match, seed, spec};

/// Core's semantics, written plainly: first copy of an id wins; fixed windows by `FixedWindows::assign`;
/// sessions by `sessions_of` per dimension key; values by `MetricAccumulator`.
pub(crate) fn reference(metric: &CompiledMetric, events: &[Event], origin: &Origin, at: EventTime) -> Vec<MetricRow> {
    let mut seen = HashSet::new();
    let events: Vec<&Event> = events.iter().filter(|e| seen.insert(e.id.clone())).collect();
    let mut accs: BTreeMap<RowKey, MetricAccumulator> = BTreeMap::new();
    let mut add = |window: Window, e: &Event| {
        let key = RowKey { metric: metric.name.clone(), window, dims: metric.dimensions_of(e) };
        metric.add(accs.entry(key).or_insert_with(|| metric.new_accumulator()), e);
    };
    match metric.window {
        WindowSpec::Fixed(w) => {
            for e in &events {
                for win in w.assign(e.time) {
                    add(win, e);
                }
            }
        }
        WindowSpec::Session(s) => {
            let mut by_key: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
            for e in &events {
                by_key.entry(metric.dimensions_of(e).encode()).or_default().push(e);
            }
            for evs in by_key.values() {
                let times: Vec<EventTime> = evs.iter().map(|e| e.time).collect();
                let sessions = sessions_of(s, &times);
                for e in evs {
                    let win = sessions.iter().find(|w| w.contains(e.time)).expect("every event is in a session");
                    add(*win, e);
                }
            }
        }
    }
    accs.into_iter()
        .map(|(key, acc)| MetricRow {
            key,
            values: metric.aggregates.iter().map(|a| a.name.clone()).zip(acc.finish()).collect(),
            events: acc.events(),
            origin: origin.clone(),
            computed_at: at,
        })
        .collect()
}

const DIM_SETS: [&str; 4] = ["[]", r#"["user"]"#, r#"["page", "k"]"#, r#"["k", "user", "page"]"#];
const PAGES: [&str; 6] = ["/", "/a&b", "/x=y", "/100%", "/é", "/a%26b"];

struct Case {
    spec: ValidSpec,
    events: Vec<Event>,
    span: (i64, i64),
}

fn gen_case(rng: &mut Rng) -> Case {
    let unit_ms = *rng.pick(&[1i64, 250, 1000]);
    let unit = unit_ms * 1000;
    let ms = |units: i64| format!("{}ms", units * unit_ms);
    let tumble = rng.range(1, 8);
    let slide = rng.range(1, 6);
    let per = rng.range(1, 5);
    // offsets on the grid (edges tie with event times) or anywhere below the slide
    let off = |rng: &mut Rng, limit_units: i64| {
        if rng.chance(0.7) {
            ms(rng.range(0, limit_units))
        } else {
            format!("{}ms", rng.range(0, limit_units * unit_ms))
        }
    };
    let t_off = off(rng, tumble);
    let h_off = off(rng, slide);
    let gap = rng.range(1, 8);
    let metrics = format!(
        r#"
[[metrics]]
name = "tumbling"
dimensions = {}
window = {{ type = "tumbling", size = "{}", offset = "{t_off}" }}
{ALL_AGGREGATES}
[[metrics]]
name = "hopping"
dimensions = {}
window = {{ type = "hopping", size = "{}", slide = "{}", offset = "{h_off}" }}
{ALL_AGGREGATES}
[[metrics]]
name = "session"
dimensions = {}
window = {{ type = "session", gap = "{}" }}
{ALL_AGGREGATES}
[[metrics]]
name = "hopping_panes"
dimensions = {}
window = {{ type = "hopping", size = "{}", slide = "{}", offset = "{h_off}" }}
{MERGEABLE_AGGREGATES}
"#,
        rng.pick(&DIM_SETS),
        ms(tumble),
        rng.pick(&DIM_SETS),
        ms(slide * per),
        ms(slide),
        rng.pick(&DIM_SETS),
        ms(gap),
        rng.pick(&DIM_SETS),
        ms(slide * per),
        ms(slide),
    );
    let spec = spec(&metrics, "/tmp/unused");
    let schema = spec.schema().clone();
    let users = rng.range(1, 40);
    let span_units = rng.range(3, 80);
    let base = rng.range(-60, 60);
    let n = rng.range(0, 250);
    let mut events: Vec<Event> = Vec::new();
    for j in 0..n {
        if !events.is_empty() && rng.chance(0.15) {
            // a duplicate id: an exact copy, or a conflicting one (the first copy must win)
            let mut copy = rng.pick(&events).clone();
            if rng.chance(0.5) {
                copy.time = EventTime::from_micros(copy.time.as_micros() + unit).expect("in range");
                copy.dims[0] = "intruder".into();
            }
            events.push(copy);
            continue;
        }
        let mut t = (base + rng.range(0, span_units)) * unit;
        if rng.chance(0.2) {
            t += rng.range(0, unit);
        }
        let user = format!("u{}", rng.range(0, users));
        let page = rng.pick(&PAGES).to_string();
        let k = rng.pick(&["true", "1", "z"]).to_string();
        let mut values = Vec::new();
        for (_, ty) in &schema.values {
            values.push(match ty {
                ValueType::Int => Num::Int(if rng.chance(0.05) {
                    // near the i64 limits: sums overflow i64 and must finish as floats like core
                    if rng.chance(0.5) { i64::MAX - rng.range(0, 1000) } else { i64::MIN + rng.range(0, 1000) }
                } else {
                    rng.range(-1000, 1000)
                }),
                ValueType::Float => Num::Float(match rng.range(0, 10) {
                    0 => 0.0,
                    1 => -0.0,
                    2 => -rng.unit(),
                    3 => *rng.pick(&[1000.5, 2000.25]),
                    _ => 1e3 + rng.unit() * 1e6,
                }),
            });
        }
        events.push(Event {
            id: format!("e{j}").into(),
            time: EventTime::from_micros(t).expect("in range"),
            dims: vec![user.into(), page.into(), k.into()],
            values,
        });
    }
    Case { spec, events, span: (base * unit, (base + span_units) * unit) }
}

#[test]
fn polars_plan_equals_core_accumulators() {
    let seed = seed("polars_plan_equals_core_accumulators");
    let cases: usize = std::env::var("TIDEMARK_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut rng = Rng::new(seed);
    let origin = Origin::Batch { run_id: "test".into(), epoch: 1 };
    let at = EventTime::from_secs(1).expect("valid");
    let (mut rows_compared, mut with_dups, mut kinds) = (0usize, 0usize, std::collections::BTreeSet::new());
    for case in 0..cases {
        let c = gen_case(&mut rng);
        let schema = c.spec.schema();
        let df = frame::events_frame(schema, &c.events).expect("frame");
        let (deduped, dropped) = plan::dedupe_by_id(df).expect("dedupe");
        let distinct = c.events.iter().map(|e| &e.id).collect::<HashSet<_>>().len();
        assert_eq!(deduped.height(), distinct, "case {case}");
        assert_eq!(dropped as usize, c.events.len() - distinct, "case {case}");
        with_dups += usize::from(dropped > 0);
        // a random query range inside (or around) the events' span
        let (a, b) = c.span;
        let from = a + (rng.unit() * (b - a) as f64) as i64 - 1;
        let to = from + 1 + (rng.unit() * (b - a) as f64) as i64;
        let range = (EventTime::from_micros(from).expect("t"), EventTime::from_micros(to).expect("t"));
        let range_window = Window::new(range.0, range.1).expect("from < to");
        for m in c.spec.metrics() {
            kinds.insert(m.window.kind_name());
            let context = format!("seed {seed} case {case} metric {} ({:?})", m.name, m.window);
            let expected = reference(m, &c.events, &origin, at);
            let got = plan::metric_rows(&deduped, schema, m, None, &origin, at).expect("plan");
            assert_rows_match(&c.spec, &expected, &got, &context);
            rows_compared += got.len();
            let expected_in_range: Vec<MetricRow> =
                expected.into_iter().filter(|r| r.key.window.overlaps(&range_window)).collect();
            let got_in_range = plan::metric_rows(&deduped, schema, m, Some(range), &origin, at).expect("plan");
            assert_rows_match(&c.spec, &expected_in_range, &got_in_range, &format!("{context} range [{from}, {to})"));
        }
    }
    println!("{cases} cases, {rows_compared} rows compared, {with_dups} cases with duplicates, kinds {kinds:?}");
    assert!(rows_compared > cases, "the generator produced almost no rows");
    assert!(with_dups > cases / 4, "the generator produced too few duplicates");
    assert_eq!(kinds.len(), 3, "every window kind is exercised");
}

#[test]
fn edges_and_overflow_by_hand() {
    // tumbling 10s with offset 3s: an event at -1µs is in [-7s, 3s); one exactly on 3s is in [3s, 13s)
    let spec = spec(
        &format!(
            r#"
[[metrics]]
name = "m"
dimensions = ["user"]
window = {{ type = "tumbling", size = "10s", offset = "3s" }}
{ALL_AGGREGATES}
[[metrics]]
name = "s"
dimensions = []
window = {{ type = "session", gap = "5s" }}
{ALL_AGGREGATES}
"#
        ),
        "/tmp/unused",
    );
    let ev = |id: &str, t: i64, i: i64, f: f64| Event {
        id: id.into(),
        time: EventTime::from_micros(t).expect("t"),
        dims: vec!["a".into(), "/".into(), "z".into()],
        values: vec![Num::Float(f), Num::Int(i)],
    };
    let events = vec![
        ev("1", -1, i64::MAX, 1.5),
        ev("2", 3_000_000, 1, 2.5),
        ev("3", 3_000_001, i64::MAX, -0.0),
        ev("2", 4_000_000, 100, 9.0), // duplicate of "2": dropped
        ev("4", 8_000_001, 2, 0.0),   // exactly 5s after "3": a new session
    ];
    let schema = spec.schema();
    let (df, dropped) = plan::dedupe_by_id(frame::events_frame(schema, &events).expect("frame")).expect("dedupe");
    assert_eq!(dropped, 1);
    let origin = Origin::Batch { run_id: "r".into(), epoch: 1 };
    let at = EventTime::UNIX_EPOCH;
    let rows = plan::metric_rows(&df, schema, spec.metric("m").expect("m"), None, &origin, at).expect("plan");
    let starts: Vec<i64> = rows.iter().map(|r| r.key.window.start().as_micros()).collect();
    assert_eq!(starts, vec![-7_000_000, 3_000_000]);
    assert_eq!(rows[0].key.dims.encode(), "user=a");
    let second = &rows[1].values;
    assert_eq!(second["n"], tidemark_core::AggValue::Int(3));
    // 1 + i64::MAX + 2 overflows i64: finishes as the nearest float, like core
    assert_eq!(second["sum_i"], tidemark_core::AggValue::Float(i64::MAX as f64 + 3.0));
    assert_eq!(second["distinct_f"], tidemark_core::AggValue::Int(2), "-0.0 and 0.0 are one value");
    assert_eq!(second["max_i"], tidemark_core::AggValue::Int(i64::MAX));
    let sessions = plan::metric_rows(&df, schema, spec.metric("s").expect("s"), None, &origin, at).expect("plan");
    let windows: Vec<(i64, i64)> =
        sessions.iter().map(|r| (r.key.window.start().as_micros(), r.key.window.end().as_micros())).collect();
    assert_eq!(windows, vec![(-1, 8_000_001), (8_000_001, 13_000_001)]);
    for m in spec.metrics() {
        let expected = reference(m, &events, &origin, at);
        let got = plan::metric_rows(&df, schema, m, None, &origin, at).expect("plan");
        assert_rows_match(&spec, &expected, &got, &m.name);
    }
}

/// polars' streaming engine splits frames into morsels (about 100k rows): session boundaries, panes and
/// duplicates must not depend on where those splits fall.
#[test]
fn frames_larger_than_a_streaming_morsel_give_the_same_rows() {
    let seed = seed("frames_larger_than_a_streaming_morsel_give_the_same_rows");
    let mut rng = Rng::new(seed);
    let spec = spec(
        &format!(
            r#"
[[metrics]]
name = "tumbling"
dimensions = ["user"]
window = {{ type = "tumbling", size = "1m" }}
{ALL_AGGREGATES}
[[metrics]]
name = "hopping"
dimensions = ["user"]
window = {{ type = "hopping", size = "5m", slide = "1m" }}
{MERGEABLE_AGGREGATES}
[[metrics]]
name = "session"
dimensions = ["user"]
window = {{ type = "session", gap = "30s" }}
{MERGEABLE_AGGREGATES}
"#
        ),
        "/tmp/unused",
    );
    let schema = spec.schema();
    let n = 300_000;
    let mut events: Vec<Event> = Vec::with_capacity(n);
    for j in 0..n {
        if j > 0 && rng.chance(0.02) {
            let copy = events[rng.range(0, events.len() as i64) as usize].clone();
            events.push(copy);
            continue;
        }
        events.push(Event {
            id: format!("e{j}").into(),
            // three hours, roughly in order
            time: EventTime::from_micros(j as i64 * 36_000 + rng.range(0, 20_000_000)).expect("t"),
            dims: vec![format!("u{}", rng.range(0, 300)).into(), "/".into(), "z".into()],
            values: vec![Num::Float(rng.unit() * 1e4), Num::Int(rng.range(-100, 10_000))],
        });
    }
    let (df, _) = plan::dedupe_by_id(frame::events_frame(schema, &events).expect("frame")).expect("dedupe");
    let origin = Origin::Batch { run_id: "big".into(), epoch: 1 };
    for m in spec.metrics() {
        let expected = reference(m, &events, &origin, EventTime::UNIX_EPOCH);
        let got = plan::metric_rows(&df, schema, m, None, &origin, EventTime::UNIX_EPOCH).expect("plan");
        assert!(got.len() > 10_000, "{}: {} rows", m.name, got.len());
        assert_rows_match(&spec, &expected, &got, &format!("seed {seed} {}", m.name));
    }
}
