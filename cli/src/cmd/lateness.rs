//! `tidemark lateness`: how late events arrive, per source partition, and what watermark delay / allowed
//! lateness would reach a target completeness, from the raw archive.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use tidemark_core::{Duration, EventTime, ValidSpec};
use tidemark_reconcile::lateness::{Arrival, LatenessReport, analyse};
use tidemark_reconcile::svg::bar_chart;
use tidemark_store::RawArchive;

/// Measure lateness from the raw archive and advise watermark delay and allowed lateness.
///
/// Reads the archived events whose event time is in [FROM, TO) (only the archive files whose event-time
/// statistics overlap the range, and only their time and coordinate columns). Per source partition, in arrival (offset)
/// order, an event's disorder is how far its event time lies behind the newest event time seen before it on
/// that partition; its ingest lag is ingest time minus event time. For each target completeness (share of
/// events not behind the watermark) it prints the smallest watermark delay that reaches it on every
/// partition, how many events would still arrive behind the watermark with it (each a late firing: a
/// correction of a row users already saw), and the allowed lateness that would still fold all of them into
/// their windows. It also prints what the spec's current settings cost on the same events.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
tidemark lateness --spec pipeline.toml --from 2026-11-23T00:00:00Z --to 2026-11-24T00:00:00Z\n  \
tidemark lateness --spec pipeline.toml --from ... --to ... --target 0.99,0.999 --json\n  \
tidemark lateness --spec pipeline.toml --from ... --to ... --chart lateness.svg\n\n\
Quantiles are exact (nearest rank). The analysis is per source (topic or file) when the archive holds \
several.")]
pub struct Args {
    /// The pipeline spec (TOML); its `stores.raw_archive` is read.
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Start of the event-time range (RFC 3339, inclusive).
    #[arg(long, value_name = "TIME")]
    from: EventTime,
    /// End of the event-time range (RFC 3339, exclusive).
    #[arg(long, value_name = "TIME")]
    to: EventTime,
    /// Target completeness values, each in (0, 1).
    #[arg(long, value_delimiter = ',', value_name = "SHARES", default_value = "0.99,0.999,0.9999")]
    target: Vec<f64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write the disorder histogram as an SVG chart to this file.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
}

/// The command's result: one analysis per source.
#[derive(Debug, Serialize)]
struct Output {
    pipeline: String,
    from: EventTime,
    to: EventTime,
    sources: Vec<SourceLateness>,
}

#[derive(Debug, Serialize)]
struct SourceLateness {
    source: String,
    #[serde(flatten)]
    report: LatenessReport,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let spec = super::load_valid_spec(&args.spec)?;
    if args.from >= args.to {
        return Err(super::user_error(format!("--from ({}) must be before --to ({})", args.from, args.to)));
    }
    if let Some(bad) = args.target.iter().find(|t| !(**t > 0.0 && **t < 1.0)) {
        return Err(super::user_error(format!("--target {bad}: each target must be a share between 0 and 1")));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let out = runtime.block_on(measure(&spec, args))?;
    if let Some(path) = &args.chart {
        std::fs::write(path, chart(&out)).with_context(|| format!("cannot write chart {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_tables(&out);
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(spec: &ValidSpec, args: &Args) -> anyhow::Result<Output> {
    let url = &spec.spec().stores.raw_archive;
    let archive = RawArchive::open(url.clone()).await.with_context(|| format!("opening the raw archive {url}"))?;
    // only the files whose event times overlap the range, only the narrow columns (no payloads)
    let read = archive.read_range(args.from, args.to).arrivals(args.from, args.to).run().await?;
    let mut by_source: BTreeMap<u32, Vec<Arrival>> = BTreeMap::new();
    for a in read.arrivals {
        by_source.entry(a.source).or_default().push(Arrival::from(a));
    }
    let by_source: BTreeMap<String, Vec<Arrival>> =
        by_source.into_iter().map(|(i, arrivals)| (read.sources[i as usize].clone(), arrivals)).collect();
    let time = &spec.spec().time;
    let sources = by_source
        .into_iter()
        .map(|(source, arrivals)| SourceLateness {
            source,
            report: analyse(arrivals, time.watermark_delay, time.allowed_lateness, &args.target),
        })
        .collect();
    Ok(Output { pipeline: spec.spec().name.clone(), from: args.from, to: args.to, sources })
}

/// The disorder histogram over every source.
fn chart(out: &Output) -> String {
    let mut bars: Vec<(String, f64)> = Vec::new();
    for s in &out.sources {
        for (i, (label, n)) in s.report.histogram.iter().enumerate() {
            match bars.get_mut(i) {
                Some(bar) => bar.1 += *n as f64,
                None => bars.push((label.clone(), *n as f64)),
            }
        }
    }
    let events: u64 = out.sources.iter().map(|s| s.report.events).sum();
    let title = format!("{}: events by disorder, [{}, {}), {events} events", out.pipeline, out.from, out.to);
    bar_chart(&title, &bars, "#c63")
}

fn share(n: u64, of: u64) -> String {
    if of == 0 { "-".to_owned() } else { format!("{:.4}%", n as f64 * 100.0 / of as f64) }
}

fn print_tables(out: &Output) {
    println!("lateness of {} over [{}, {})", out.pipeline, out.from, out.to);
    if out.sources.is_empty() {
        println!("no archived events in the range");
        return;
    }
    for s in &out.sources {
        let r = &s.report;
        println!();
        println!("source {}: {} events", s.source, r.events);
        println!(
            "{:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
            "partition", "events", "dis p50", "p90", "p99", "p99.9", "p99.99", "max", "lag p50", "p99", "max"
        );
        let d = |x: Duration| x.to_string();
        for p in &r.partitions {
            let (q, l) = (&p.disorder, &p.ingest_lag);
            println!(
                "{:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
                p.partition,
                q.n,
                d(q.p50),
                d(q.p90),
                d(q.p99),
                d(q.p999),
                d(q.p9999),
                d(q.max),
                d(l.p50),
                d(l.p99),
                d(l.max)
            );
        }
        let c = &r.current;
        println!(
            "current    watermark_delay {} → {} events behind the watermark ({}); allowed_lateness {} → {} \
             beyond it, to the late ledger ({})",
            c.watermark_delay,
            c.behind_watermark,
            share(c.behind_watermark, r.events),
            c.allowed_lateness,
            c.beyond_allowed_lateness,
            share(c.beyond_allowed_lateness, r.events)
        );
        println!(
            "{:>9} {:>16} {:>22} {:>26}",
            "target", "watermark_delay", "late events (fixes)", "allowed_lateness for all"
        );
        for rec in &r.recommendations {
            println!(
                "{:>9} {:>16} {:>22} {:>26}",
                rec.target,
                rec.watermark_delay.to_string(),
                format!("{} ({})", rec.late_events, share(rec.late_events, r.events)),
                rec.allowed_lateness_for_all.to_string()
            );
        }
        println!("disorder histogram:");
        for (label, n) in &r.histogram {
            println!("  {label:>8}  {n}");
        }
    }
}
