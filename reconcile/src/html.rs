//! The self-contained HTML report: the contract table, causes, and charts (drift over time, provisional
//! vs final per window, lateness histogram). No scripts, no external resources: it opens offline.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use tidemark_core::{AggValue, EventTime, MetricRow, RowKey, ValidSpec};

use crate::contract::{ContractReport, SpeedFiring};
use crate::explain::{Cause, Explained};
use crate::lateness::LatenessReport;
use crate::svg::{Series, bar_chart, escape, line_chart};

/// What the page shows.
#[derive(Debug, Clone, Copy)]
pub struct ReportPage<'a> {
    /// The spec (metric and aggregate order).
    pub spec: &'a ValidSpec,
    /// Page title (pipeline name and range).
    pub title: &'a str,
    /// The contract report.
    pub contract: &'a ContractReport,
    /// The explained differences.
    pub explained: &'a [Explained],
    /// Per metric, per window start (microseconds): what the charts plot.
    pub chart: &'a BTreeMap<String, BTreeMap<i64, ChartPoint>>,
    /// Lateness analysis, if computed.
    pub lateness: Option<&'a LatenessReport>,
}

/// The windows of one metric starting at one instant, summed over dimensions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChartPoint {
    /// Batch windows.
    pub windows: u64,
    /// Of those, windows the serving store had wrong (missing or outside tolerance) before corrections.
    pub differing: u64,
    /// The metric's first aggregate (spec order), batch values summed.
    pub batch: f64,
    /// The same over first on-time emissions (0 for a window without one).
    pub provisional: f64,
}

/// The chart points of rows held in memory: the batch rows of the range, its speed firings (any order)
/// and the explained differences.
pub fn chart_rows(
    spec: &ValidSpec,
    batch: &[MetricRow],
    emissions: &[SpeedFiring],
    explained: &[Explained],
) -> BTreeMap<String, BTreeMap<i64, ChartPoint>> {
    let differing: HashMap<&RowKey, ()> = explained.iter().map(|e| (&e.diff.key, ())).collect();
    let first_on_time = crate::contract::first_on_time(emissions);
    let mut out: BTreeMap<String, BTreeMap<i64, ChartPoint>> = BTreeMap::new();
    for r in batch {
        let agg = spec.metric(&r.key.metric).and_then(|m| m.aggregates.first()).map(|a| a.name.as_str());
        let value = |values: &BTreeMap<String, AggValue>| {
            agg.and_then(|a| values.get(a)).and_then(|v: &AggValue| v.as_f64()).unwrap_or(0.0)
        };
        let p = out.entry(r.key.metric.clone()).or_default().entry(r.key.window.start().as_micros()).or_default();
        p.windows += 1;
        p.differing += u64::from(differing.contains_key(&r.key));
        p.batch += value(&r.values);
        p.provisional += first_on_time.get(&r.key).map_or(0.0, |e| value(&e.values));
    }
    out
}

fn time_label(secs: f64) -> String {
    EventTime::from_micros((secs * 1e6) as i64).map(|t| t.to_string()).unwrap_or_default()
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

const COLORS: [&str; 6] = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6"];

/// Renders the page.
pub fn render(page: ReportPage<'_>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;margin:12px 0}}
td,th{{border:1px solid #ddd;padding:4px 8px;text-align:right}} th{{background:#f4f4f4}} td:first-child{{text-align:left}}
.bad{{color:#b00;font-weight:bold}} .ok{{color:#070}} figure{{margin:16px 0}}</style></head><body><h1>{t}</h1>"#,
        t = escape(page.title)
    );
    let verdict = if page.contract.breached {
        r#"<p class="bad">Contract breached.</p>"#
    } else {
        r#"<p class="ok">Contract held.</p>"#
    };
    h.push_str(verdict);
    h.push_str("<h2>Contract per metric</h2><table><tr><th>metric</th><th>windows</th><th>first on-time within tolerance</th><th>target</th><th>after late firings</th><th>max drift</th><th>finalization p99</th><th>finalized within target</th><th>correction latency p99</th><th>late events</th></tr>");
    for m in &page.contract.metrics {
        if m.windows_checked == 0 {
            let _ = write!(
                h,
                r#"<tr><td>{}</td><td>0</td><td colspan="8">no windows in this range</td></tr>"#,
                escape(&m.metric)
            );
            continue;
        }
        let class = if m.breached { "bad" } else { "ok" };
        let _ = write!(
            h,
            r#"<tr><td>{}</td><td>{}</td><td class="{class}">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            escape(&m.metric),
            m.windows_checked,
            pct(m.first_on_time_within),
            pct(m.accuracy_target),
            pct(m.after_late_within),
            m.max_abs_drift,
            m.finalization_latency.p99,
            pct(m.finalized_within_target),
            m.correction_latency.p99,
            pct(m.late_event_share)
        );
    }
    h.push_str("</table>");

    let mut causes: BTreeMap<(String, Cause), u64> = BTreeMap::new();
    for e in page.explained {
        *causes.entry((e.diff.key.metric.clone(), e.cause)).or_default() += 1;
    }
    h.push_str("<h2>Differences by cause</h2><table><tr><th>metric</th><th>cause</th><th>windows</th></tr>");
    for ((metric, cause), n) in &causes {
        let cause = serde_json::to_string(cause).unwrap_or_default();
        let _ =
            write!(h, "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>", escape(metric), escape(cause.trim_matches('"')));
    }
    h.push_str("</table>");

    // drift over time: share of windows outside tolerance per window start, per metric
    let series: Vec<Series> = page
        .chart
        .iter()
        .filter(|(_, by_start)| !by_start.is_empty())
        .enumerate()
        .map(|(i, (metric, by_start))| Series {
            name: metric.clone(),
            color: COLORS[i % COLORS.len()],
            points: by_start
                .iter()
                .filter(|(_, p)| p.windows > 0)
                .map(|(s, p)| (*s as f64 / 1e6, 100.0 * p.differing as f64 / p.windows as f64))
                .collect(),
        })
        .collect();
    let _ = write!(
        h,
        "<h2>Drift over time</h2><figure>{}</figure>",
        line_chart("% of windows outside tolerance, by window start", &series, time_label)
    );

    // provisional vs final: per metric, its first aggregate (spec order) summed over dimensions per window start
    h.push_str("<h2>Provisional vs final</h2>");
    for (metric, by_start) in page.chart.iter().filter(|(_, b)| !b.is_empty()) {
        let Some(agg) = page.spec.metric(metric).and_then(|m| m.aggregates.first()).map(|a| a.name.clone()) else {
            continue;
        };
        let points = |f: fn(&ChartPoint) -> f64| by_start.iter().map(|(s, p)| (*s as f64 / 1e6, f(p))).collect();
        let chart = line_chart(
            &format!("{metric}: {agg} per window (sum over dimensions)"),
            &[
                Series { name: "batch (final)".into(), color: COLORS[0], points: points(|p| p.batch) },
                Series {
                    name: "first on-time (provisional)".into(),
                    color: COLORS[1],
                    points: points(|p| p.provisional),
                },
            ],
            time_label,
        );
        let _ = write!(h, "<figure>{chart}</figure>");
    }

    if let Some(l) = page.lateness {
        let bars: Vec<(String, f64)> = l.histogram.iter().map(|(k, v)| (k.clone(), *v as f64)).collect();
        let _ = write!(
            h,
            "<h2>Lateness</h2><figure>{}</figure><p>{} events; disorder p99 {}, p99.9 {}, max {}.</p>",
            bar_chart("events by disorder (how far behind the partition's newest event)", &bars, COLORS[3]),
            l.events,
            l.overall_disorder.p99,
            l.overall_disorder.p999,
            l.overall_disorder.max
        );
    }
    h.push_str("</body></html>\n");
    h
}
