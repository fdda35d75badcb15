//! The comparison of batch and serving rows.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tidemark_core::{
    AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, PipelineSpec, RowKey, ValidSpec, Window,
};
use tidemark_reconcile::{Error, Verdict, diff};

fn spec() -> ValidSpec {
    let text = include_str!("../../examples/pageviews.toml");
    PipelineSpec::parse(text, "pageviews.toml", Some(std::path::Path::new("/x"))).expect("example spec is valid")
}

fn key(metric: &str, minute: i64, page: &str) -> RowKey {
    let start = EventTime::from_secs(minute * 60).unwrap();
    let end = EventTime::from_secs(minute * 60 + 60).unwrap();
    RowKey {
        metric: metric.into(),
        window: Window::new(start, end).unwrap(),
        dims: Dimensions::new([("page".into(), page.into())]),
    }
}

fn row(key: RowKey, views: i64, mean: f64, origin: Origin) -> MetricRow {
    let values = BTreeMap::from([
        ("views".to_owned(), AggValue::Int(views)),
        ("latency_sum".to_owned(), AggValue::Int(views * 10)),
        ("latency_min".to_owned(), AggValue::Int(1)),
        ("latency_max".to_owned(), AggValue::Int(19)),
        ("latency_mean".to_owned(), AggValue::Float(mean)),
        ("users".to_owned(), AggValue::Int(views.min(3))),
    ]);
    MetricRow { key, values, events: views.unsigned_abs(), origin, computed_at: EventTime::from_secs(999).unwrap() }
}

fn speed() -> Origin {
    Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: EventTime::from_secs(120).unwrap() }
}

fn batch() -> Origin {
    Origin::Batch { run_id: "run-1".into(), epoch: 1 }
}

const M: &str = "views_per_page";

#[test]
fn identical_sides_are_clean() {
    let b = vec![row(key(M, 0, "/a"), 5, 10.0, batch()), row(key(M, 1, "/a"), 2, 10.0, batch())];
    let s = vec![row(key(M, 1, "/a"), 2, 10.0, speed()), row(key(M, 0, "/a"), 5, 10.0, speed())];
    let d = diff(&spec(), &b, &s).unwrap();
    assert!(d.is_clean(), "{d:#?}");
    assert_eq!(d.checked(), 2);
    assert_eq!(d.metrics[M].verdicts[&Verdict::Ok], 2);
}

#[test]
fn each_kind_of_difference_is_classified() {
    let b = vec![
        row(key(M, 0, "/ok"), 5, 10.0, batch()),
        row(key(M, 0, "/missing"), 3, 10.0, batch()),
        row(key(M, 0, "/drift"), 7, 10.0, batch()),
        row(key(M, 0, "/float-noise"), 4, 0.1 + 0.2, batch()),
    ];
    let s = vec![
        row(key(M, 0, "/ok"), 5, 10.0, speed()),
        row(key(M, 0, "/phantom"), 1, 10.0, speed()),
        row(key(M, 0, "/drift"), 6, 10.0, speed()),
        row(key(M, 0, "/float-noise"), 4, 0.3, speed()),
    ];
    let d = diff(&spec(), &b, &s).unwrap();
    let verdicts: Vec<(String, Verdict)> =
        d.differences.iter().map(|k| (k.key.dims.get("page").unwrap().to_owned(), k.verdict)).collect();
    assert_eq!(
        verdicts,
        vec![
            ("/drift".to_owned(), Verdict::ValueDrift),
            ("/missing".to_owned(), Verdict::MissingInServing),
            ("/phantom".to_owned(), Verdict::UnexpectedInServing),
        ]
    );
    let drift = &d.differences[0];
    let views = drift.aggregates.iter().find(|a| a.name == "views").unwrap();
    assert_eq!(
        (views.batch, views.serving, views.abs, views.within),
        (AggValue::Int(7), AggValue::Int(6), Some(1.0), false)
    );
    assert!((views.rel.unwrap() - 1.0 / 7.0).abs() < 1e-12);
    let sum = drift.aggregates.iter().find(|a| a.name == "latency_sum").unwrap();
    assert_eq!(sum.abs, Some(10.0));
    assert_eq!((drift.batch_events, drift.serving_events), (Some(7), Some(6)));
    let summary = &d.metrics[M];
    assert_eq!(summary.checked, 5);
    assert_eq!(summary.max_abs_drift, 10.0);
    // views drift 1, latency_sum drift 10, users equal (min(7,3) == min(6,3))
    assert_eq!(summary.mean_abs_drift, 5.5);
    let missing = &d.differences[1];
    assert_eq!(missing.serving_origin, None);
    assert!(missing.aggregates.iter().all(|a| a.serving == AggValue::Null && !a.within));
}

#[test]
fn duplicate_keys_and_unknown_metrics_are_errors() {
    let b = vec![row(key(M, 0, "/a"), 5, 10.0, batch()), row(key(M, 0, "/a"), 6, 10.0, batch())];
    assert!(matches!(diff(&spec(), &b, &[]), Err(Error::DuplicateKey { side: "batch view", .. })));
    let s = vec![row(key("gone_metric", 0, "/a"), 5, 10.0, speed())];
    let err = diff(&spec(), &[], &s).unwrap_err();
    assert!(matches!(&err, Error::UnknownMetric { metric, side: "serving store" } if metric == "gone_metric"), "{err}");
}

proptest! {
    /// Perturbing some serving rows makes exactly those keys differ, with the right verdicts.
    #[test]
    fn finds_exactly_the_perturbed_keys(
        rows in prop::collection::btree_map((0i64..50, 0u8..5), 1i64..100, 1..60),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..10),
    ) {
        let b: Vec<MetricRow> = rows.iter().map(|(&(m, p), &v)| row(key(M, m, &format!("/{p}")), v, 2.5, batch())).collect();
        let mut s: Vec<Option<MetricRow>> = b.iter().map(|r| Some(MetricRow { origin: speed(), ..r.clone() })).collect();
        let mut expected = BTreeMap::new();
        for (ix, kind) in edits {
            let i = ix.index(b.len());
            let k = b[i].key.clone();
            match kind {
                0 => { s[i] = None; expected.insert(k, Verdict::MissingInServing); }
                1 => {
                    if let Some(r) = s[i].as_mut() {
                        r.values.insert("views".into(), AggValue::Int(-1));
                        expected.insert(k, Verdict::ValueDrift);
                    }
                }
                _ => {
                    let phantom = row(key(M, 1000 + s.len() as i64, "/p"), 1, 1.0, speed());
                    expected.insert(phantom.key.clone(), Verdict::UnexpectedInServing);
                    s.push(Some(phantom));
                }
            }
        }
        let s: Vec<MetricRow> = s.into_iter().flatten().collect();
        let d = diff(&spec(), &b, &s).unwrap();
        let got: BTreeMap<RowKey, Verdict> = d.differences.iter().map(|k| (k.key.clone(), k.verdict)).collect();
        prop_assert_eq!(got, expected);
        prop_assert_eq!(d.checked() as usize, b.len() + d.metrics[M].verdicts.get(&Verdict::UnexpectedInServing).copied().unwrap_or(0) as usize);
    }
}
