//! The contract report from a small, fully known history.

use std::collections::{BTreeMap, HashMap};

use tidemark_core::{
    AggValue, Dimensions, Duration, EventTime, MetricRow, Origin, Pane, PipelineSpec, RowKey, ValidSpec, Window,
};
use tidemark_reconcile::html::{ReportPage, chart_rows, render};
use tidemark_reconcile::lateness::{Arrival, analyse};
use tidemark_reconcile::{ContractInput, Evidence, SpeedFiring, contract_report, diff, explain, tally_rows};

fn spec() -> ValidSpec {
    let text = include_str!("../../examples/pageviews.toml");
    PipelineSpec::parse(text, "pageviews.toml", Some(std::path::Path::new("/x"))).expect("example spec is valid")
}

fn t(s: i64) -> EventTime {
    EventTime::from_secs(s).unwrap()
}

const M: &str = "views_per_page";

fn key(minute: i64) -> RowKey {
    RowKey {
        metric: M.into(),
        window: Window::new(t(minute * 60), t(minute * 60 + 60)).unwrap(),
        dims: Dimensions::new([("page".into(), "/".into())]),
    }
}

fn values(views: i64) -> BTreeMap<String, AggValue> {
    BTreeMap::from([
        ("views".to_owned(), AggValue::Int(views)),
        ("latency_sum".to_owned(), AggValue::Int(views)),
        ("latency_min".to_owned(), AggValue::Int(1)),
        ("latency_max".to_owned(), AggValue::Int(1)),
        ("latency_mean".to_owned(), AggValue::Float(1.0)),
        ("users".to_owned(), AggValue::Int(1)),
    ])
}

fn row(k: RowKey, views: i64, origin: Origin) -> MetricRow {
    MetricRow { key: k, values: values(views), events: views.unsigned_abs(), origin, computed_at: t(0) }
}

fn emission(k: RowKey, views: i64, pane: Pane, revision: u32, at: EventTime) -> SpeedFiring {
    SpeedFiring { key: k, values: values(views), pane, revision, emitted_at: at }
}

#[test]
fn report_of_a_known_history() {
    let spec = spec();
    let (a, b, c) = (key(0), key(1), key(2));
    let batch_origin = Origin::Batch { run_id: "r".into(), epoch: 1 };
    let speed = |rev| Origin::Speed { revision: rev, pane: Pane::OnTime, watermark: t(0) };
    let batch = vec![
        row(a.clone(), 4, batch_origin.clone()),
        row(b.clone(), 5, batch_origin.clone()),
        row(c.clone(), 2, batch_origin),
    ];
    // as found: a right, b fixed by its late firing, c never emitted
    let serving = vec![row(a.clone(), 4, speed(0)), row(b.clone(), 5, speed(1))];
    let d = diff(&spec, &batch, &serving).unwrap();
    let emissions = vec![
        emission(b.clone(), 5, Pane::Late, 1, t(120 + 200)),
        emission(a.clone(), 4, Pane::OnTime, 0, t(60 + 10)),
        emission(b.clone(), 4, Pane::OnTime, 0, t(120 + 90)),
    ];
    let corrections = vec![(c.clone(), t(180 + 400)), (b.clone(), t(120 + 300))];
    let late = HashMap::from([(b.clone(), 1u64)]);
    let (tallies, first_emitted) = tally_rows(&spec, &batch, &emissions, &d);
    let r = contract_report(ContractInput {
        spec: &spec,
        tallies: &tallies,
        diff: &d,
        first_emitted: &first_emitted,
        corrections: &corrections,
        late_events: &late,
    });

    let m = r.metrics.iter().find(|m| m.metric == M).unwrap();
    assert_eq!(m.windows_checked, 3);
    assert!((m.first_on_time_within - 1.0 / 3.0).abs() < 1e-12, "only a was right at its first on-time emission");
    assert!((m.after_late_within - 2.0 / 3.0).abs() < 1e-12, "a and b were right as found; c was missing");
    assert_eq!(m.finalization_latency.n, 2);
    assert_eq!(m.finalization_latency.p50, Duration::from_secs(10));
    assert_eq!(m.finalization_latency.max, Duration::from_secs(90));
    assert!((m.finalized_within_target - 1.0 / 3.0).abs() < 1e-12, "target 1m: only a");
    // b: first emission at +90s, corrected at +300s; c was never emitted, so it has no correction latency
    assert_eq!(m.correction_latency.n, 1);
    assert_eq!(m.correction_latency.max, Duration::from_secs(210));
    assert!((m.late_event_share - 1.0 / 11.0).abs() < 1e-12);
    assert!(m.breached);
    assert!(r.breached);
    // metrics without batch rows are vacuously within contract
    let other = r.metrics.iter().find(|m| m.metric == "user_sessions").unwrap();
    assert_eq!((other.windows_checked, other.first_on_time_within, other.breached), (0, 1.0, false));

    // the HTML page: contract table, causes, and three charts
    let evidence = Evidence { late_events: late, ..Evidence::default() };
    let explained = explain(&spec, d.differences.clone(), batch.iter().map(|r| &r.key), &evidence);
    assert_eq!(explained.len(), 1, "only c differs as found: {explained:#?}");
    let arrivals: Vec<Arrival> = (0..20)
        .map(|i| Arrival {
            partition: 0,
            offset: i,
            event_time: t(i * 10 - if i == 7 { 30 } else { 0 }),
            ingest_time: t(i * 10),
        })
        .collect();
    let lateness = analyse(arrivals, Duration::from_secs(5), Duration::from_secs(300), &[0.99]);
    let page = render(ReportPage {
        spec: &spec,
        title: "pageviews <test>",
        contract: &r,
        explained: &explained,
        chart: &chart_rows(&spec, &batch, &emissions, &explained),
        lateness: Some(&lateness),
    });
    assert!(page.starts_with("<!doctype html>") && page.trim_end().ends_with("</html>"));
    assert!(page.contains("<title>pageviews &lt;test&gt;</title>"), "titles are escaped");
    assert!(page.contains("Contract breached."));
    assert!(page.contains("<td>views_per_page</td><td>3</td><td class=\"bad\">33.33%</td>"), "{page}");
    // c is missing and no evidence is about c
    assert!(page.contains("<tr><td>views_per_page</td><td>unexplained</td><td>1</td></tr>"), "{page}");
    assert!(
        page.contains("views_per_page: views per window (sum over dimensions)"),
        "the first aggregate in spec order"
    );
    assert_eq!(page.matches("<svg").count(), 3, "drift, provisional vs final, lateness");
    // drift: one point per window start (3); provisional and final: 3 points each
    assert_eq!(page.matches("<circle").count(), 9);
    // the lateness histogram has its 7 buckets, one event 40s behind
    assert!(page.contains("<title>≤ 1m: 1</title>"), "{page}");
    assert!(page.contains("<tr><td>user_sessions</td><td>0</td><td colspan=\"8\">no windows in this range</td></tr>"));
}
