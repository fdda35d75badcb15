//! Planning corrections from explained differences.

use std::collections::BTreeMap;

use tidemark_core::{
    AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, PipelineSpec, RowKey, ValidSpec, Window,
};
use tidemark_reconcile::{BlastRadius, Evidence, diff, explain, plan_corrections};
use tidemark_store::Correction;

fn spec() -> ValidSpec {
    let text = include_str!("../../examples/pageviews.toml");
    PipelineSpec::parse(text, "pageviews.toml", Some(std::path::Path::new("/x"))).expect("example spec is valid")
}

fn t(s: i64) -> EventTime {
    EventTime::from_secs(s).unwrap()
}

const M: &str = "views_per_page";

fn key(minute: i64, page: &str) -> RowKey {
    RowKey {
        metric: M.into(),
        window: Window::new(t(minute * 60), t(minute * 60 + 60)).unwrap(),
        dims: Dimensions::new([("page".into(), page.into())]),
    }
}

fn row(k: RowKey, views: i64, origin: Origin) -> MetricRow {
    let values = BTreeMap::from([
        ("views".to_owned(), AggValue::Int(views)),
        ("latency_sum".to_owned(), AggValue::Int(10)),
        ("latency_min".to_owned(), AggValue::Int(1)),
        ("latency_max".to_owned(), AggValue::Int(9)),
        ("latency_mean".to_owned(), AggValue::Float(2.0)),
        ("users".to_owned(), AggValue::Int(1)),
    ]);
    MetricRow { key: k, values, events: views.unsigned_abs(), origin, computed_at: t(0) }
}

#[test]
fn plan_corrects_final_windows_only_and_audits_every_value() {
    let spec = spec();
    let batch_origin = Origin::Batch { run_id: "b-7".into(), epoch: 7 };
    let speed = Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: t(0) };
    let (missing, drift, phantom, open) = (key(0, "/m"), key(0, "/d"), key(1, "/p"), key(100, "/o"));
    let batch = vec![
        row(missing.clone(), 3, batch_origin.clone()),
        row(drift.clone(), 5, batch_origin.clone()),
        row(open.clone(), 2, batch_origin),
    ];
    let serving =
        vec![row(drift.clone(), 4, speed.clone()), row(phantom.clone(), 1, speed.clone()), row(open.clone(), 1, speed)];
    let d = diff(&spec, &batch, &serving).unwrap();
    // the stream's watermark is at minute 50: windows up to minute 44 are final (allowed lateness 5m)
    let evidence = Evidence { stream_watermark: Some(t(50 * 60)), ..Evidence::default() };
    let explained = explain(&spec, d.differences.clone(), batch.iter().map(|r| &r.key), &evidence);
    let range = (t(0), t(7200));
    let plan = plan_corrections(&spec, range, &explained, batch.clone(), "b-7", 7);

    assert_eq!(plan.skipped_not_final, vec![open.clone()]);
    assert_eq!(plan.blast_radius[M], BlastRadius { insert: 1, update: 1, delete: 1 });
    let mut kinds: Vec<(String, &str)> = plan
        .batch
        .changes
        .iter()
        .map(|c| match c {
            Correction::Upsert(r) => {
                assert_eq!(r.origin, Origin::Batch { run_id: "b-7".into(), epoch: 7 });
                (r.key.dims.encode(), "upsert")
            }
            Correction::Delete(k) => (k.dims.encode(), "delete"),
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec![("page=/d".into(), "upsert"), ("page=/m".into(), "upsert"), ("page=/p".into(), "delete")]);
    // audit: the drift changes one aggregate (views 4 -> 5); the missing row inserts all 6; the phantom deletes all 6
    let drift_audit: Vec<_> = plan.batch.audit.iter().filter(|a| a.key == drift).collect();
    assert_eq!(drift_audit.len(), 1);
    assert_eq!(
        (drift_audit[0].aggregate.as_str(), drift_audit[0].old, drift_audit[0].new),
        ("views", Some(AggValue::Int(4)), Some(AggValue::Int(5)))
    );
    assert_eq!(drift_audit[0].cause, "unexplained");
    assert_eq!(plan.batch.audit.iter().filter(|a| a.key == missing && a.old.is_none()).count(), 6);
    assert_eq!(plan.batch.audit.iter().filter(|a| a.key == phantom && a.new.is_none()).count(), 6);
    assert_eq!((plan.batch.run_id.as_str(), plan.batch.epoch), ("b-7", 7));

    // the id is a function of the plan: the same plan gets the same id, a different one another
    let again = plan_corrections(&spec, range, &explained, batch.clone(), "b-7", 7);
    assert_eq!(again.batch.id, plan.batch.id);
    assert!(plan.batch.id.starts_with("pageviews-"));
    let other_run = plan_corrections(&spec, range, &explained, batch.clone(), "b-8", 8);
    assert_ne!(other_run.batch.id, plan.batch.id);
    let fewer = plan_corrections(&spec, range, &explained[..1], batch.clone(), "b-7", 7);
    assert_ne!(fewer.batch.id, plan.batch.id);
}
