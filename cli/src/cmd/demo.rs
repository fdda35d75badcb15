//! `tidemark demo`: the whole loop on local files, no servers: generate a disordered stream, run the speed
//! layer over it in arrival order, recompute the truth with the batch layer, reconcile, reconcile again.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use tidemark_core::{EventTime, MetricRow, ValidSpec};
use tidemark_store::{DeadLetterStore, MetricFilter, RawArchive};
use tidemark_stream::metrics::Metrics;
use tidemark_stream::{Clock as _, FileSource, ManualClock, ReceivedAt, Service, ServiceConfig, Sinks};

use tidemark_reconcile::{Reconcile, ReconcileOutcome};

use crate::arrival::ArrivalClockSource;
use crate::pageviews::{GenConfig, GenStats};

/// The demo's pipeline spec: examples/pageviews.toml with a file source and local Delta stores.
const DEMO_SPEC: &str = include_str!("demo.toml");

/// Marks a folder as the demo's own, so a rerun may clear it.
const MARKER: &str = ".tidemark-demo";

/// Run the whole loop on your machine, no servers needed: generate page views with realistic disorder
/// (out of order, late by minutes, duplicated, malformed), run the speed layer over them in arrival order
/// into a local Delta serving store, recompute the exact truth with the batch layer, reconcile (explain
/// and correct every difference, write an HTML report), then reconcile again to show nothing is left.
///
/// Everything lands in --out: the spec (demo.toml: rerun any single command on it), the events, the
/// Delta tables (serving, raw, dead_letter, batch) and the reports.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
tidemark demo\n  \
tidemark demo --events 1000000 --seed 42 --out /tmp/tidemark-demo\n  \
tidemark demo --json | jq .corrections\n\n\
Afterwards, e.g.:\n  \
tidemark validate --spec tidemark-demo/demo.toml\n  \
tidemark batch --spec tidemark-demo/demo.toml --from <FROM> --to <TO>   (the range is printed)")]
pub struct Args {
    /// Distinct page views to generate.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    events: u64,
    /// Seed of the generator (same seed, same events).
    #[arg(long, value_name = "S", default_value_t = 7)]
    seed: u64,
    /// Folder for the spec, events, tables and reports (cleared first if an earlier demo made it).
    #[arg(long, value_name = "DIR", default_value = "tidemark-demo")]
    out: PathBuf,
    /// Page views per second of event time; default: the events span two hours (so views minutes late
    /// really are late).
    #[arg(long, value_name = "EV/S")]
    rate: Option<f64>,
    /// Event time of the first view (RFC 3339); default: three hours ago, on the hour, so the stream
    /// ends about an hour before the batch and reconcile steps run (as a daily job would see it).
    #[arg(long, value_name = "TIME")]
    start: Option<EventTime>,
    /// Share of views that arrive minutes late.
    #[arg(long, value_name = "SHARE", default_value_t = 0.01)]
    late_share: f64,
    /// Share of views delivered twice.
    #[arg(long, value_name = "SHARE", default_value_t = 0.001)]
    duplicate_share: f64,
    /// Malformed lines, as a share of views.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0005)]
    malformed_share: f64,
    /// Print one machine-readable JSON summary on stdout instead of the narrative.
    #[arg(long)]
    json: bool,
}

/// The speed layer's accounts, summed over partitions.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StreamCounts {
    pub consumed: u64,
    pub aggregated: u64,
    pub late: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub flushes: u64,
    pub serving_rows: u64,
}

/// The batch layer's view of the same events.
#[derive(Debug, Clone, Serialize)]
pub struct BatchCounts {
    pub rows_read: u64,
    pub aggregated: u64,
    pub duplicates: u64,
    pub invalid: u64,
    pub rows_written: u64,
}

/// Serving store vs batch view after reconciling, compared row by row in the demo itself.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub serving_rows: usize,
    pub batch_rows: usize,
    pub equal: bool,
    /// Up to five keys that differ.
    pub examples: Vec<String>,
}

/// Differences by verdict and by cause (snake_case names, as in report.json).
#[derive(Debug, Clone, Serialize)]
pub struct Differences {
    pub total: u64,
    pub by_verdict: BTreeMap<String, u64>,
    pub by_cause: BTreeMap<String, u64>,
}

/// What the demo prints with --json.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub out: String,
    pub spec: String,
    pub from: EventTime,
    pub to: EventTime,
    pub generated: GenStats,
    pub stream: StreamCounts,
    pub batch: BatchCounts,
    /// Differences the first reconcile found.
    pub differences: Differences,
    /// Corrections the first reconcile applied.
    pub corrections: u64,
    /// Corrections the second reconcile applied (0: nothing was left).
    pub second_corrections: u64,
    pub reconcile: ReconcileOutcome,
    pub second_reconcile: ReconcileOutcome,
    pub serving_vs_batch: Comparison,
    /// A few differences, one per cause: provisional (serving) vs truth (batch).
    pub examples: Vec<serde_json::Value>,
    pub report_html: String,
    pub seconds: BTreeMap<&'static str, f64>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let config = GenConfig {
        seed: args.seed,
        events: args.events,
        late_share: args.late_share,
        duplicate_share: args.duplicate_share,
        malformed_share: args.malformed_share,
        #[allow(clippy::cast_precision_loss)]
        rate: args.rate.unwrap_or((args.events as f64 / 7200.0).max(1.0)),
        start: args.start.unwrap_or_else(three_hours_ago),
        ..GenConfig::default()
    };
    config.check().map_err(super::user_error)?;
    if args.events == 0 {
        return Err(super::user_error("--events must be at least 1".into()));
    }
    let dir = prepare_dir(&args.out)?;
    let spec_path = dir.join("demo.toml");
    std::fs::write(&spec_path, DEMO_SPEC).with_context(|| format!("cannot write {}", spec_path.display()))?;
    let spec = super::load_valid_spec(&spec_path)?;
    let tty = !args.json && std::io::stderr().is_terminal();
    let say = |s: String| {
        if !args.json {
            println!("{s}");
        }
    };

    let mut seconds = BTreeMap::new();
    let t = Instant::now();
    let generation = config.generate()?;
    let generated = generation.stats();
    let events_path = dir.join("events.jsonl");
    let bar = super::generate::progress_bar(generation.len() as u64, tty);
    super::generate::write_file(&generation, &events_path, &bar)?;
    bar.finish_and_clear();
    drop(generation);
    seconds.insert("generate", t.elapsed().as_secs_f64());
    let (first, last) = (generated.first_ts.expect("events >= 1"), generated.last_ts.expect("events >= 1"));
    // The batch / reconcile range: whole hours with an hour to spare on both sides, so every window holding
    // an event starts inside it (hopping windows start before their first event, sessions last).
    let hour = 3_600_000_000i64;
    let from = EventTime::from_micros((first.as_micros().div_euclid(hour) - 1) * hour).unwrap_or(first);
    let to = EventTime::from_micros((last.as_micros().div_euclid(hour) + 2) * hour).unwrap_or(last);
    say(format!(
        "1. generated {} page views ({} .. {}) as {} lines in {}:\n   {} arrive out of order (within {}), {} late by minutes, {} delivered twice, {} malformed",
        generated.views,
        first,
        last,
        generated.lines,
        events_path.display(),
        generated.out_of_order,
        config.disorder,
        generated.late,
        generated.duplicates,
        generated.malformed
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = runtime.block_on(async {
        let t = Instant::now();
        let stream = run_stream(&spec, &events_path, first, generated.lines, config.rate, tty).await?;
        seconds.insert("stream", t.elapsed().as_secs_f64());
        say(format!(
            "2. speed layer (arrival order, simulated arrival clock): consumed {} = aggregated {} + late {} + \
             dead-lettered {} + duplicates {}; {} provisional rows in {} commits ({:.1} s)",
            stream.consumed,
            stream.aggregated,
            stream.late,
            stream.dead_lettered,
            stream.duplicates,
            stream.serving_rows,
            stream.flushes,
            seconds["stream"]
        ));

        let t = Instant::now();
        let report = tidemark_batch::BatchRun::new(&spec, from, to).progress(tty).run().await?;
        seconds.insert("batch", t.elapsed().as_secs_f64());
        let batch = BatchCounts {
            rows_read: report.rows_read,
            aggregated: report.aggregated,
            duplicates: report.duplicates,
            invalid: report.invalid,
            rows_written: report.rows_written,
        };
        say(format!(
            "3. batch layer over the raw archive [{from}, {to}): read {} = aggregated {} + duplicates {} + invalid \
             {} (+ {} outside the range); {} exact rows ({:.1} s)",
            report.rows_read,
            report.aggregated,
            report.duplicates,
            report.invalid,
            report.outside_range,
            report.rows_written,
            seconds["batch"]
        ));

        let t = Instant::now();
        let report_dir = dir.join("report");
        let first_run = Reconcile::new(&spec, from, to).report_dir(&report_dir).run().await?;
        seconds.insert("reconcile", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let second = Reconcile::new(&spec, from, to).report_dir(dir.join("report-recheck")).run().await?;
        seconds.insert("reconcile_again", t.elapsed().as_secs_f64());
        let comparison = compare(&spec).await?;
        let report_html = first_run.report_html.clone().unwrap_or_else(|| report_dir.join("report.html"));
        let examples = examples(&report_dir.join("report.json"));
        let differences = Differences {
            total: first_run.differences,
            by_verdict: first_run.verdicts.iter().map(|(v, n)| (snake(v), *n)).collect(),
            by_cause: first_run.causes.iter().map(|(c, n)| (snake(c), *n)).collect(),
        };
        Ok::<_, anyhow::Error>(Summary {
            out: dir.display().to_string(),
            spec: spec_path.display().to_string(),
            from,
            to,
            generated,
            stream,
            batch,
            differences,
            corrections: first_run.corrections_applied,
            second_corrections: second.corrections_applied,
            reconcile: first_run,
            second_reconcile: second,
            serving_vs_batch: comparison,
            examples,
            report_html: report_html.display().to_string(),
            seconds: seconds.clone(),
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_story(&summary);
    }
    Ok(ExitCode::SUCCESS)
}

/// The start of the hour three hours ago.
fn three_hours_ago() -> EventTime {
    let hour = 3_600_000_000i64;
    let now = tidemark_stream::SystemClock.now().as_micros();
    EventTime::from_micros((now.div_euclid(hour) - 3) * hour).unwrap_or(EventTime::UNIX_EPOCH)
}

/// Creates `out`, or clears it if an earlier demo made it; refuses any other non-empty folder.
fn prepare_dir(out: &Path) -> anyhow::Result<PathBuf> {
    if out.exists() {
        let empty =
            std::fs::read_dir(out).with_context(|| format!("cannot read --out {}", out.display()))?.next().is_none();
        if !empty {
            if !out.join(MARKER).exists() {
                return Err(super::user_error(format!(
                    "--out {} is not empty and was not made by `tidemark demo`; choose another folder",
                    out.display()
                )));
            }
            for name in ["serving", "raw", "dead_letter", "batch", "report", "report-recheck", "events.jsonl"] {
                let p = out.join(name);
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).with_context(|| format!("cannot clear {}", p.display()))?;
                } else if p.exists() {
                    std::fs::remove_file(&p).with_context(|| format!("cannot clear {}", p.display()))?;
                }
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create --out {}", out.display()))?;
    std::fs::write(out.join(MARKER), "made by `tidemark demo`; a rerun clears this folder's tables\n")?;
    std::fs::canonicalize(out).with_context(|| format!("cannot resolve {}", out.display()))
}

/// Runs the stream service over the events file to its end (`--finish`), on the simulated arrival clock.
async fn run_stream(
    spec: &ValidSpec,
    events: &Path,
    start: EventTime,
    lines: u64,
    rate: f64,
    tty: bool,
) -> anyhow::Result<StreamCounts> {
    let stores = &spec.spec().stores;
    let store = tidemark_store::open(&spec.serving_store()).await?;
    store.init().await?;
    let store: Arc<dyn tidemark_store::ServingStore> = Arc::from(store);
    let sinks = Sinks {
        store: store.clone(),
        dead_letters: Arc::new(DeadLetterStore::open(&stores.dead_letter)?),
        archive: Some(Arc::new(RawArchive::open(stores.raw_archive.clone()).await?)),
    };
    let clock = ManualClock::new(start);
    let bar = super::generate::progress_bar(lines, tty);
    bar.set_message("speed layer");
    let received_at = ReceivedAt::Field { name: "received_at".into(), fallback: Arc::new(clock.clone()) };
    let source = ArrivalClockSource::new(FileSource::new(events, received_at), clock.clone(), Some(bar.clone()));
    // Polls of about one simulated second, so the clock advances in small steps and panes fire (and are
    // timestamped) about when they would live.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let poll_max = (rate.round() as usize).clamp(8, 2_000);
    let config = ServiceConfig { finish_at_end: true, poll_max, flush_rows: 50_000, ..ServiceConfig::default() };
    let service = Service::start(spec, source, sinks, Arc::new(clock), config, Arc::new(Metrics::new())).await?;
    let summary = service.run(Arc::new(AtomicBool::new(false))).await?;
    bar.finish_and_clear();
    let mut c = StreamCounts { flushes: summary.flushes, ..StreamCounts::default() };
    for a in summary.accounts.values() {
        c.consumed += a.consumed;
        c.aggregated += a.aggregated;
        c.late += a.late_routed;
        c.dead_lettered += a.dead_lettered;
        c.duplicates += a.duplicates_suppressed;
    }
    c.serving_rows = store.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await?.len() as u64;
    Ok(c)
}

/// The serde (snake_case) name of an enum value.
fn snake(v: &impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// One explained difference per cause from report.json (empty if it cannot be read).
fn examples(report_json: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(report_json) else { return Vec::new() };
    let Ok(report) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    let mut seen = std::collections::BTreeSet::new();
    report["explained"]
        .as_array()
        .map(|all| all.iter().filter(|e| seen.insert(e["cause"].to_string())).cloned().collect())
        .unwrap_or_default()
}

fn row_text(r: &MetricRow) -> (String, String) {
    (
        format!("{} {} {}", r.key.metric, r.key.window, r.key.dims.encode()),
        format!("{:?} events={}", r.values, r.events),
    )
}

/// Reads the serving store and the batch view and compares them row by row, values exactly.
async fn compare(spec: &ValidSpec) -> anyhow::Result<Comparison> {
    let store = tidemark_store::open(&spec.serving_store()).await?;
    let serving: BTreeMap<_, _> =
        store.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await?.iter().map(row_text).collect();
    let batch: BTreeMap<_, _> =
        tidemark_batch::view::read_view(&spec.spec().stores.batch_view).await?.iter().map(row_text).collect();
    let mut examples = Vec::new();
    for (k, v) in &batch {
        match serving.get(k) {
            Some(s) if s == v => {}
            Some(s) => examples.push(format!("{k}: serving {s}, batch {v}")),
            None => examples.push(format!("{k}: missing in serving (batch {v})")),
        }
    }
    for (k, s) in &serving {
        if !batch.contains_key(k) {
            examples.push(format!("{k}: only in serving ({s})"));
        }
    }
    let equal = examples.is_empty();
    examples.truncate(5);
    Ok(Comparison { serving_rows: serving.len(), batch_rows: batch.len(), equal, examples })
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| format!("{f}")),
        other => other.to_string(),
    }
}

/// `metric [start, end) dims` from a serialized row key.
fn key_text(k: &serde_json::Value) -> String {
    let window = &k["window"];
    let dims = match &k["dims"] {
        serde_json::Value::Object(m) => {
            m.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect::<Vec<_>>().join(",")
        }
        serde_json::Value::Array(a) => a.iter().map(value_text).collect::<Vec<_>>().join(","),
        other => value_text(other),
    };
    let window = if window.is_object() {
        format!("[{}, {})", window["start"].as_str().unwrap_or("?"), window["end"].as_str().unwrap_or("?"))
    } else {
        value_text(window)
    };
    format!("{} {window} {dims}", k["metric"].as_str().unwrap_or("?"))
}

fn print_story(s: &Summary) {
    let r = &s.reconcile;
    println!(
        "4. reconcile [{}, {}): compared {} keys; {} differ ({}); {} left alone as not final",
        s.from,
        s.to,
        r.checked,
        s.differences.total,
        s.differences
            .by_verdict
            .iter()
            .filter(|(v, _)| *v != "ok")
            .map(|(v, n)| format!("{v} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.skipped_not_final
    );
    println!(
        "   by cause: {}",
        s.differences.by_cause.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")
    );
    if !s.examples.is_empty() {
        println!("   provisional (serving) vs truth (batch), one example per cause:");
    }
    for e in &s.examples {
        let changes: Vec<String> = e["aggregates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|d| d["batch"] != d["serving"])
                    .map(|d| {
                        format!(
                            "{} {} -> {}",
                            d["name"].as_str().unwrap_or("?"),
                            value_text(&d["serving"]),
                            value_text(&d["batch"])
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "     [{}] {}: {}",
            e["cause"].as_str().unwrap_or("?"),
            key_text(&e["key"]),
            if changes.is_empty() { e["verdict"].as_str().unwrap_or("?").to_owned() } else { changes.join(", ") }
        );
        if let Some(d) = e["detail"].as_str() {
            println!("       {d}");
        }
    }
    println!(
        "   corrections: {} applied in batch {} ({})",
        s.corrections,
        r.correction_batch.as_deref().unwrap_or("-"),
        r.blast_radius
            .iter()
            .map(|(m, b)| format!("{m}: +{} ~{} -{}", b.insert, b.update, b.delete))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!("   contract (first on-time result within tolerance; finalization latency vs target):");
    println!(
        "     {:<22} {:>8} {:>10} {:>8} {:>10} {:>10} {:>9} {:>8}  verdict",
        "metric", "windows", "on-time ok", "target", "final p50", "final p99", "in time", "late"
    );
    for m in &r.contract.metrics {
        println!(
            "     {:<22} {:>8} {:>9.2}% {:>7.1}% {:>10} {:>10} {:>8.1}% {:>7.2}%  {}",
            m.metric,
            m.windows_checked,
            m.first_on_time_within * 100.0,
            m.accuracy_target * 100.0,
            m.finalization_latency.p50.to_string(),
            m.finalization_latency.p99.to_string(),
            m.finalized_within_target * 100.0,
            m.late_event_share * 100.0,
            if m.breached { "BREACHED" } else { "met" }
        );
    }
    let r2 = &s.second_reconcile;
    println!(
        "5. reconcile again: {} differences, {} corrections ({})",
        r2.differences,
        s.second_corrections,
        snake(&r2.applied)
    );
    let c = &s.serving_vs_batch;
    if c.equal {
        println!("   serving store == batch view: all {} rows equal", c.batch_rows);
    } else {
        println!("   serving store != batch view ({} vs {} rows), e.g.:", c.serving_rows, c.batch_rows);
        for e in &c.examples {
            println!("     {e}");
        }
    }
    println!("\nreport: {}", s.report_html);
    println!(
        "spec:   {} (rerun single steps on it: tidemark batch --spec ... --from {} --to {})",
        s.spec, s.from, s.to
    );
    let total: f64 = s.seconds.values().sum();
    println!(
        "time:   {:.1} s ({})",
        total,
        s.seconds.iter().map(|(k, v)| format!("{k} {v:.1} s")).collect::<Vec<_>>().join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_dir_is_cleared_only_if_an_earlier_demo_made_it() {
        let tmp = tempfile::tempdir().unwrap();
        let foreign = tmp.path().join("mine");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), "keep me").unwrap();
        let err = prepare_dir(&foreign).unwrap_err();
        assert!(err.to_string().contains("not made by `tidemark demo`"), "{err}");
        assert!(foreign.join("notes.txt").exists());

        let demo = tmp.path().join("demo");
        let dir = prepare_dir(&demo).unwrap();
        std::fs::create_dir_all(dir.join("serving/_delta_log")).unwrap();
        std::fs::write(dir.join("events.jsonl"), "{}\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "keep me").unwrap();
        prepare_dir(&demo).unwrap();
        assert!(!dir.join("serving").exists() && !dir.join("events.jsonl").exists());
        assert!(dir.join("notes.txt").exists(), "only the demo's own files are removed");
    }
}
