//! Renders the HTML report for a synthetic hour of a pageviews pipeline, to see what it looks like:
//! `cargo run -p tidemark-reconcile --example sample_report -- /tmp/report.html`

use std::collections::{BTreeMap, HashMap};

use tidemark_core::{AggValue, Dimensions, Duration, EventTime, MetricRow, Origin, Pane, PipelineSpec, RowKey, Window};
use tidemark_reconcile::html::{ReportPage, chart_rows, render};
use tidemark_reconcile::lateness::{Arrival, analyse};
use tidemark_reconcile::{ContractInput, Evidence, SpeedFiring, contract_report, diff, explain, tally_rows};

fn t(s: i64) -> EventTime {
    EventTime::from_secs(s).expect("in range")
}

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "sample_report.html".into());
    let text = include_str!("../../examples/pageviews.toml");
    let spec = PipelineSpec::parse(text, "pageviews.toml", Some(std::path::Path::new("/tmp"))).expect("valid");
    let (mut batch, mut serving, mut emissions) = (Vec::new(), Vec::new(), Vec::new());
    let mut late = HashMap::new();
    let mut x: u64 = 42;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for minute in 0..60i64 {
        for page in ["/", "/cart", "/search"] {
            let key = RowKey {
                metric: "views_per_page".into(),
                window: Window::new(t(minute * 60), t(minute * 60 + 60)).expect("non-empty"),
                dims: Dimensions::new([("page".into(), page.into())]),
            };
            let views = 100 + (rnd() % 50) as i64;
            let missed = if rnd() % 5 == 0 { (rnd() % 4) as i64 } else { 0 };
            let values = |v: i64| {
                BTreeMap::from([
                    ("views".to_owned(), AggValue::Int(v)),
                    ("latency_sum".to_owned(), AggValue::Int(v * 20)),
                    ("latency_min".to_owned(), AggValue::Int(1)),
                    ("latency_max".to_owned(), AggValue::Int(90)),
                    ("latency_mean".to_owned(), AggValue::Float(20.0)),
                    ("users".to_owned(), AggValue::Int(v / 3)),
                ])
            };
            let origin = Origin::Batch { run_id: "sample".into(), epoch: 1 };
            batch.push(MetricRow {
                key: key.clone(),
                values: values(views),
                events: views as u64,
                origin,
                computed_at: t(4000),
            });
            let speed = Origin::Speed { revision: 0, pane: Pane::OnTime, watermark: t(minute * 60 + 65) };
            let emitted = t(minute * 60 + 62 + (rnd() % 10) as i64);
            serving.push(MetricRow {
                key: key.clone(),
                values: values(views - missed),
                events: (views - missed) as u64,
                origin: speed,
                computed_at: emitted,
            });
            emissions.push(SpeedFiring {
                key: key.clone(),
                values: values(views - missed),
                pane: Pane::OnTime,
                revision: 0,
                emitted_at: emitted,
            });
            if missed > 0 {
                late.insert(key, missed as u64);
            }
        }
    }
    let d = diff(&spec, &batch, &serving).expect("one row per key");
    let evidence = Evidence { late_events: late.clone(), stream_watermark: Some(t(7200)), ..Evidence::default() };
    let explained = explain(&spec, d.differences.clone(), batch.iter().map(|r| &r.key), &evidence);
    let corrections: Vec<(RowKey, EventTime)> = explained.iter().map(|e| (e.diff.key.clone(), t(3900))).collect();
    let (tallies, first_emitted) = tally_rows(&spec, &batch, &emissions, &d);
    let contract = contract_report(ContractInput {
        spec: &spec,
        tallies: &tallies,
        diff: &d,
        first_emitted: &first_emitted,
        corrections: &corrections,
        late_events: &late,
    });
    let arrivals: Vec<Arrival> = (0..20_000i64)
        .map(|i| {
            let r = rnd();
            let behind = match r % 1000 {
                0..=899 => (r / 1000 % 500) as i64 * 1000,
                900..=989 => (r / 1000 % 5_000) as i64 * 1000,
                _ => (r / 1000 % 120) as i64 * 1_000_000,
            };
            let ingest = i * 180_000;
            Arrival {
                partition: (r % 3) as i32,
                offset: i,
                event_time: EventTime::from_micros(ingest - behind).expect("in range"),
                ingest_time: EventTime::from_micros(ingest).expect("in range"),
            }
        })
        .collect();
    let lateness = analyse(arrivals, Duration::from_secs(5), Duration::from_secs(300), &[0.99, 0.999, 0.9999]);
    let html = render(ReportPage {
        spec: &spec,
        title: "pageviews — sample reconcile report",
        contract: &contract,
        explained: &explained,
        chart: &chart_rows(&spec, &batch, &emissions, &explained),
        lateness: Some(&lateness),
    });
    std::fs::write(&out, html).expect("write the report");
    println!("wrote {out}");
}
