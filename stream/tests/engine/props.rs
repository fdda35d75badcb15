//! Property tests.
//!
//! 1. For any arrival order in which every event is at most `watermark_delay + allowed_lateness` behind
//!    the largest event time that arrived before it, applying the engine's row changes in order and
//!    draining at the end gives exactly the batch result computed with tidemark-core alone
//!    (`FixedWindows::assign` / `sessions_of` + `MetricAccumulator` over de-duplicated events), for
//!    tumbling, hopping and session windows, under the `update` and `append` policies, with several
//!    partitions, duplicates, idle partitions and early firings.
//! 2. Checkpointing at any point and restoring into a new engine continues exactly like the
//!    uninterrupted engine, for any arrival order (including events beyond allowed lateness).

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use tidemark_core::window::session::sessions_of;
use tidemark_core::{AggValue, Event, Origin, RowChange, RowKey, ValidSpec, WindowSpec};
use tidemark_stream::Engine;

use crate::common::*;

#[derive(Debug, Clone)]
struct Case {
    window: String,
    delay: i64,
    lateness: i64,
    idle: i64,
    policy: &'static str,
    early: Option<i64>,
    /// (event time s, key, value)
    events: Vec<(i64, usize, i64)>,
    /// Per arrival: (event index, jitter µs, partition, processing-time step s).
    arrivals: Vec<(usize, i64, i32, i64)>,
}

impl Case {
    fn spec(&self) -> ValidSpec {
        let mut time = format!(
            "watermark_delay = \"{}s\"\nallowed_lateness = \"{}s\"\nidle_timeout = \"{}s\"\nlate_policy = \"{}\"",
            self.delay, self.lateness, self.idle, self.policy
        );
        if let Some(e) = self.early {
            time.push_str(&format!("\nearly_firing = \"{e}s\""));
        }
        spec(&time, &[("m", &self.window)], INT_AGGS)
    }

    /// Arrival order: by event time plus jitter (ties by arrival index).
    fn ordered(&self) -> Vec<(usize, i32, i64)> {
        let mut a: Vec<(i64, usize, usize, i32, i64)> = self
            .arrivals
            .iter()
            .enumerate()
            .map(|(i, &(e, j, p, step))| (self.events[e].0 * 1_000_000 + j, i, e, p, step))
            .collect();
        a.sort_unstable();
        a.into_iter().map(|(_, _, e, p, step)| (e, p, step)).collect()
    }

    fn payload(&self, e: usize) -> Vec<u8> {
        let (t, k, v) = self.events[e];
        payload(&format!("e{e}"), t, ["a", "b", "c"][k], v)
    }
}

fn window_def() -> impl Strategy<Value = String> {
    prop_oneof![
        (1i64..30).prop_map(|s| format!("{{ type = \"tumbling\", size = \"{s}s\" }}")),
        (1i64..10, 1i64..4, 0i64..100).prop_map(|(sl, m, o)| format!(
            "{{ type = \"hopping\", size = \"{}s\", slide = \"{sl}s\", offset = \"{}s\" }}",
            sl * m,
            o % sl
        )),
        (1i64..20).prop_map(|g| format!("{{ type = \"session\", gap = \"{g}s\" }}")),
    ]
}

/// Cases (with early firing half of the time) whose jitter is at most `jitter_factor * (delay + lateness)` seconds.
fn case(policies: &'static [&'static str], jitter_factor: i64) -> impl Strategy<Value = Case> {
    (
        window_def(),
        0i64..10,
        0i64..30,
        1i64..20,
        prop::sample::select(policies),
        prop::option::weighted(0.5, 1i64..10),
        prop::collection::vec((0i64..600, 0usize..3, -50i64..50), 1..120),
    )
        .prop_flat_map(move |(window, delay, lateness, idle, policy, early, events)| {
            let n = events.len();
            let max_jitter = (delay + lateness) * 1_000_000 * jitter_factor;
            // every event once, some twice (duplicates)
            let arrivals = prop::collection::vec((0..n, 0..=max_jitter, 0i32..3, 0i64..4), n..n + n / 4 + 1).prop_map(
                move |mut extra| {
                    for (i, a) in extra.iter_mut().take(n).enumerate() {
                        a.0 = i;
                    }
                    extra
                },
            );
            (Just((window, delay, lateness, idle, policy, early, events)), arrivals)
        })
        .prop_map(|((window, delay, lateness, idle, policy, early, events), arrivals)| Case {
            window,
            delay,
            lateness,
            idle,
            policy,
            early,
            events,
            arrivals,
        })
}

type Table = BTreeMap<RowKey, (BTreeMap<String, AggValue>, u64, u32)>;

fn int(v: &AggValue) -> i64 {
    match v {
        AggValue::Int(i) => *i,
        other => panic!("integer aggregate expected, got {other:?}"),
    }
}

/// Applies row changes in order: upserts replace lower revisions, retractions remove, deltas fold into
/// the row (count and sum add, min and max combine).
fn apply(changes: &[RowChange]) -> Result<Table, String> {
    let mut t = Table::new();
    for c in changes {
        match c {
            RowChange::Upsert(r) => {
                let Origin::Speed { revision, .. } = r.origin else { return Err("batch origin".into()) };
                if t.get(&r.key).is_none_or(|(_, _, rev)| revision > *rev) {
                    t.insert(r.key.clone(), (r.values.clone(), r.events, revision));
                }
            }
            RowChange::Retract { key, revision } => {
                if t.get(key).is_some_and(|(_, _, rev)| rev <= revision) {
                    t.remove(key);
                }
            }
            RowChange::Delta(r) => {
                let Origin::Speed { revision, .. } = r.origin else { return Err("batch origin".into()) };
                let Some((values, events, rev)) = t.get_mut(&r.key) else {
                    return Err(format!("delta without row: {c:?}"));
                };
                for (name, dv) in &r.values {
                    let cur = values.get_mut(name).ok_or("unknown aggregate")?;
                    *cur = match name.as_str() {
                        "n" | "s" => AggValue::Int(int(cur) + int(dv)),
                        "lo" => AggValue::Int(int(cur).min(int(dv))),
                        "hi" => AggValue::Int(int(cur).max(int(dv))),
                        _ => return Err(format!("cannot fold {name}")),
                    };
                }
                *events += r.events;
                *rev = revision;
            }
        }
    }
    Ok(t)
}

/// The batch result with tidemark-core only.
fn reference(spec: &ValidSpec, events: &[Event]) -> BTreeMap<RowKey, (BTreeMap<String, AggValue>, u64)> {
    let mut out = BTreeMap::new();
    for m in spec.metrics() {
        let mut accs = BTreeMap::new();
        match m.window {
            WindowSpec::Fixed(f) => {
                for e in events {
                    for w in f.assign(e.time) {
                        let key = RowKey { metric: m.name.clone(), window: w, dims: m.dimensions_of(e) };
                        m.add(accs.entry(key).or_insert_with(|| m.new_accumulator()), e);
                    }
                }
            }
            WindowSpec::Session(sw) => {
                let mut by_key: BTreeMap<_, Vec<&Event>> = BTreeMap::new();
                for e in events {
                    by_key.entry(m.dimensions_of(e)).or_default().push(e);
                }
                for (dims, evs) in by_key {
                    let times: Vec<_> = evs.iter().map(|e| e.time).collect();
                    let sessions = sessions_of(sw, &times);
                    for e in evs {
                        let w = *sessions.iter().find(|w| w.contains(e.time)).expect("every event is in a session");
                        let key = RowKey { metric: m.name.clone(), window: w, dims: dims.clone() };
                        m.add(accs.entry(key).or_insert_with(|| m.new_accumulator()), e);
                    }
                }
            }
        }
        for (key, acc) in accs {
            let values = m.aggregates.iter().map(|a| a.name.clone()).zip(acc.finish()).collect();
            out.insert(key, (values, acc.events()));
        }
    }
    out
}

fn run(h: &mut Harness, c: &Case, order: &[(usize, i32, i64)]) -> Result<(), TestCaseError> {
    let mut last_wm = h.engine.watermark();
    for &(e, p, step) in order {
        h.advance(step);
        h.send_raw(p, c.payload(e));
        let wm = h.engine.watermark();
        prop_assert!(wm >= last_wm, "watermark went back from {last_wm:?} to {wm:?}");
        last_wm = wm;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn finalized_output_equals_the_batch_result(c in case(&["update", "append"], 1)) {
        let spec = c.spec();
        let order = c.ordered();
        // the arrival order respects the bound the property is about
        let bound = (c.delay + c.lateness) * 1_000_000;
        let mut max_seen = i64::MIN;
        for &(e, _, _) in &order {
            let t = c.events[e].0 * 1_000_000;
            prop_assert!(max_seen == i64::MIN || max_seen - t <= bound);
            max_seen = max_seen.max(t);
        }
        let mut h = Harness::new(&spec);
        run(&mut h, &c, &order)?;
        h.drain();
        let out = h.take();

        // the emitted rows' watermarks never go back either
        let wms: Vec<_> = out.changes.iter().filter_map(|ch| match ch {
            RowChange::Upsert(r) | RowChange::Delta(r) => match r.origin { Origin::Speed { watermark, .. } => Some(watermark), _ => None },
            RowChange::Retract { .. } => None,
        }).collect();
        prop_assert!(wms.windows(2).all(|w| w[0] <= w[1]));

        let got: BTreeMap<_, _> = apply(&out.changes).map_err(TestCaseError::fail)?
            .into_iter().map(|(k, (v, n, _))| (k, (v, n))).collect();
        let mut seen = HashSet::new();
        let unique: Vec<Event> = order.iter().filter(|(e, _, _)| seen.insert(*e))
            .map(|&(e, _, _)| spec.schema().decode(&c.payload(e), received()).unwrap()).collect();
        let want = reference(&spec, &unique);
        prop_assert_eq!(got, want);

        prop_assert!(out.late.is_empty(), "{:?}", out.late);
        let total = h.engine.accounts().values().fold(tidemark_stream::PartitionAccounts::default(), |mut t, a| {
            t.consumed += a.consumed; t.aggregated += a.aggregated; t.late_routed += a.late_routed;
            t.dead_lettered += a.dead_lettered; t.duplicates_suppressed += a.duplicates_suppressed; t
        });
        prop_assert_eq!(total.consumed, order.len() as u64);
        prop_assert_eq!(total.aggregated, c.events.len() as u64);
        prop_assert_eq!(total.duplicates_suppressed, (order.len() - c.events.len()) as u64);
        prop_assert_eq!(total.late_routed + total.dead_lettered, 0);
        prop_assert_eq!((h.engine.live_rows(), h.engine.remembered_events()), (0, 0));
    }

    #[test]
    fn checkpoint_and_restore_anywhere_continues_identically(
        c in case(&["update", "append", "dead_letter"], 3), cut in any::<prop::sample::Index>(),
    ) {
        let spec = c.spec();
        let order = c.ordered();
        let cut = cut.index(order.len() + 1);
        let mut whole = Harness::new(&spec);
        run(&mut whole, &c, &order)?;
        whole.drain();

        let mut first = Harness::new(&spec);
        run(&mut first, &c, &order[..cut])?;
        let blob = first.engine.checkpoint().unwrap();
        let mut second = Harness::new(&spec);
        second.engine = Engine::restore(&spec, &blob).unwrap();
        second.now = first.now;
        second.offsets = first.offsets;
        run(&mut second, &c, &order[cut..])?;
        second.drain();

        let mut joined = first.take();
        let rest = second.take();
        joined.changes.extend(rest.changes);
        joined.late.extend(rest.late);
        joined.dead_letters.extend(rest.dead_letters);
        prop_assert_eq!(joined, whole.take());
        prop_assert_eq!(second.engine.accounts(), whole.engine.accounts());
        prop_assert_eq!(second.engine.checkpoint().unwrap(), whole.engine.checkpoint().unwrap());
    }
}
