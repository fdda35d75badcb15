//! `tidemark reconcile`: compare the serving store with the batch view for a range, explain and correct.

use std::path::PathBuf;
use std::process::ExitCode;

use tidemark_core::EventTime;
use tidemark_reconcile::{Applied, Reconcile, ReconcileOutcome};

/// Compare the serving store with the batch view over a range, explain every difference and correct it.
///
/// Reads the batch view (truth) and the serving store for windows starting in [FROM, TO), joins them on
/// (metric, window, dimensions) and compares every aggregate within the spec's tolerance. Each difference
/// gets a verdict (missing_in_serving, unexpected_in_serving, value_drift) and a cause when the stores hold
/// evidence (late ledger, duplicate deliveries in the raw archive, a superseded session, a stream restart;
/// otherwise `unexplained`). The corrections are applied as one idempotent, fenced batch with an audit log:
/// a second run finds 0 differences and changes nothing. Windows the stream may still update
/// (`not_yet_final`) are left for a later run. Prints the contract report (accuracy of the first on-time
/// emission, drift, finalization and correction latency, late-event share).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
tidemark reconcile --spec pipeline.toml --from 2026-11-23T00:00:00Z --to 2026-11-24T00:00:00Z\n  \
tidemark reconcile --spec pipeline.toml --from 2026-11-23T00:00:00Z --to 2026-11-24T00:00:00Z --dry-run\n  \
tidemark reconcile --spec pipeline.toml --from ... --to ... --report-dir report/ --fail-on-breach --json\n\n\
Exit codes: 0 ok (also when differences were found and corrected), 2 invalid input, 3 external failure \
(retrying may help), 4 internal error, 5 contract breached (only with --fail-on-breach).")]
pub struct Args {
    /// The pipeline spec (TOML).
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Start of the range (RFC 3339, inclusive; windows starting at or after it).
    #[arg(long, value_name = "TIME")]
    from: EventTime,
    /// End of the range (RFC 3339, exclusive).
    #[arg(long, value_name = "TIME")]
    to: EventTime,
    /// Change nothing: print the differences and the blast radius (rows to insert / update / delete).
    #[arg(long)]
    dry_run: bool,
    /// Write report.json and report.html (charts, opens offline) into this folder.
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
    /// Exit with code 5 when a metric missed its contract's accuracy target.
    #[arg(long)]
    fail_on_breach: bool,
    /// Print the outcome as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let spec = super::load_valid_spec(&args.spec)?;
    if args.from >= args.to {
        return Err(super::user_error(format!("--from ({}) must be before --to ({})", args.from, args.to)));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut job = Reconcile::new(&spec, args.from, args.to).dry_run(args.dry_run);
    if let Some(dir) = &args.report_dir {
        job = job.report_dir(dir.clone());
    }
    let outcome = runtime.block_on(job.run())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print_table(&outcome);
    }
    if args.fail_on_breach && outcome.contract.breached {
        eprintln!("contract breached: see the contract table");
        return Ok(ExitCode::from(crate::exit::CONTRACT_BREACHED));
    }
    Ok(ExitCode::SUCCESS)
}

fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn print_table(o: &ReconcileOutcome) {
    let mode = if o.dry_run { " (dry run)" } else { "" };
    println!("reconcile {}{mode}: [{}, {})", o.pipeline, o.from, o.to);
    println!("batch runs  {} (epoch {})", o.batch_runs.join(", "), o.batch_epoch);
    println!("checked     {} keys, {} differences", o.checked, o.differences);
    for (v, n) in &o.verdicts {
        println!("  {:<24} {n:>10}", name(v));
    }
    if !o.causes.is_empty() {
        println!("causes");
        for (c, n) in &o.causes {
            println!("  {:<24} {n:>10}", name(c));
        }
    }
    if !o.blast_radius.is_empty() {
        println!("{:<28} {:>10} {:>10} {:>10}", "blast radius", "insert", "update", "delete");
        for (m, r) in &o.blast_radius {
            println!("  {m:<26} {:>10} {:>10} {:>10}", r.insert, r.update, r.delete);
        }
    }
    if o.skipped_not_final > 0 {
        println!("skipped     {} keys whose window is not final in the stream yet", o.skipped_not_final);
    }
    let what = match o.applied {
        Applied::Now => format!("applied now ({} of {} took effect)", o.corrections_applied, o.corrections),
        Applied::Already => "already applied by an earlier run (nothing changed)".to_owned(),
        Applied::DryRun => format!("not applied (dry run): {} corrections planned", o.corrections),
        Applied::NothingToDo => "nothing to correct".to_owned(),
    };
    match &o.correction_batch {
        Some(id) => println!("corrections {id}: {what}"),
        None => println!("corrections {what}"),
    }
    let e = &o.evidence;
    let wm = e.stream_watermark.map_or_else(|| "unknown".to_owned(), |w| w.to_string());
    println!(
        "evidence    late events {}, duplicate deliveries {}, restarts {}, stream watermark >= {wm}",
        e.late_events,
        e.duplicate_deliveries,
        e.restarts.len()
    );
    let r = &e.reads;
    if let (Some(a), Some(b)) = (r.event_time_from, r.event_time_to) {
        println!(
            "  read over [{a}, {b}): raw archive {} of {} files, {} rows, {} payloads; late ledger {} records",
            r.archive_files_read,
            r.archive_files,
            r.archive_rows_read,
            r.archive_payload_rows_read,
            r.late_records_read
        );
    }
    for u in &e.unavailable {
        println!("  unavailable: {u}");
    }
    println!(
        "{:<20} {:>8} {:>12} {:>12} {:>8} {:>12} {:>12} {:>10} {:>10}",
        "contract",
        "windows",
        "first-on-time",
        "after-late",
        "target",
        "max drift",
        "final p99",
        "late share",
        "breached"
    );
    for m in &o.contract.metrics {
        println!(
            "{:<20} {:>8} {:>12.4} {:>12.4} {:>8.4} {:>12.4} {:>12} {:>10.4} {:>10}",
            m.metric,
            m.windows_checked,
            m.first_on_time_within,
            m.after_late_within,
            m.accuracy_target,
            m.max_abs_drift,
            m.finalization_latency.p99.to_string(),
            m.late_event_share,
            if m.breached { "yes" } else { "no" }
        );
    }
    if let (Some(j), Some(h)) = (&o.report_json, &o.report_html) {
        println!("report      {} and {}", j.display(), h.display());
    }
}
