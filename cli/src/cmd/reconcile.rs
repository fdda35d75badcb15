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
    #[arg(long, value_name = "TIME", required_unless_present = "changed", conflicts_with = "changed")]
    from: Option<EventTime>,
    /// End of the range (RFC 3339, exclusive).
    #[arg(long, value_name = "TIME", required_unless_present = "changed", conflicts_with = "changed")]
    to: Option<EventTime>,
    /// Instead of a range: only the windows that can have changed since this pipeline's last `--changed`
    /// run (events archived since then, new, late or replayed, and batch runs made since then). The
    /// minutes of window starts they can touch are recomputed with the batch layer and reconciled; the archive offsets covered are recorded
    /// beside the batch view last, so a run that fails is redone by the next. The first run covers the
    /// whole archive.
    #[arg(long)]
    changed: bool,
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
    // the stream's default filter (tidemark at info, dependencies at warn); with
    // RUST_LOG=tidemark_reconcile=debug also the time of each step
    super::stream::init_logging(super::stream::LogFormat::Text);
    let spec = super::load_valid_spec(&args.spec)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (Some(from), Some(to)) = (args.from, args.to) else {
        return runtime.block_on(changed::run(&spec, args));
    };
    if from >= to {
        return Err(super::user_error(format!("--from ({from}) must be before --to ({to})")));
    }
    let mut job = Reconcile::new(&spec, from, to).dry_run(args.dry_run);
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

mod changed {
    //! `tidemark reconcile --changed`: the incremental mode.

    use std::collections::BTreeMap;
    use std::process::ExitCode;

    use serde::{Deserialize, Serialize};
    use tidemark_batch::{BatchRun, DEFAULT_SESSION_LOOKAROUND};
    use tidemark_core::{EventTime, ValidSpec};
    use tidemark_reconcile::dirty::{dirty_spans, merge_spans};
    use tidemark_reconcile::{Reconcile, ReconcileOutcome};
    use tidemark_store::{BatchView, RawArchive};

    use super::Args;

    /// What the last `--changed` run of a pipeline covered, kept beside the batch view.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Covered {
        /// Per source partition, the highest archived offset whose event's windows were reconciled.
        archive_offsets: Vec<(String, i32, i64)>,
        /// The newest batch run (epoch) whose range was reconciled.
        batch_epoch: i64,
        /// When the run finished.
        at: Option<EventTime>,
    }

    /// One span's runs, for the summary.
    #[derive(Debug, Serialize)]
    struct Span {
        from: EventTime,
        to: EventTime,
        recomputed: bool,
        outcome: ReconcileOutcome,
    }

    #[derive(Debug, Serialize)]
    struct Summary {
        pipeline: String,
        dry_run: bool,
        first_run: bool,
        new_arrivals: u64,
        spans: Vec<Span>,
        differences: u64,
        corrections_applied: u64,
    }

    fn state_path(spec: &ValidSpec) -> String {
        format!("_tidemark/reconcile/{}.json", spec.spec().name)
    }

    pub(super) async fn run(spec: &ValidSpec, args: &Args) -> anyhow::Result<ExitCode> {
        let stores = &spec.spec().stores;
        let view = BatchView::open(&stores.batch_view)?;
        let covered: Option<Covered> = match view.get_beside(&state_path(spec)).await? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                super::super::user_error(format!(
                    "{}/{} is not a reconcile state tidemark wrote: {e}",
                    stores.batch_view,
                    state_path(spec)
                ))
            })?),
            None => None,
        };
        let first_run = covered.is_none();
        let covered = covered.unwrap_or_default();
        let after: BTreeMap<(String, i32), i64> =
            covered.archive_offsets.iter().map(|(s, p, o)| ((s.clone(), *p), *o)).collect();
        // 1. what arrived since: the event times of archived rows past the covered offsets
        let archive = RawArchive::open(stores.raw_archive.clone()).await?;
        let arrivals = archive.event_times_after(&after).await?;
        let recompute = dirty_spans(spec, arrivals.event_times.iter().copied(), DEFAULT_SESSION_LOOKAROUND);
        // 2. batch runs made since (their truth may differ from what the serving store was corrected to)
        let runs = view.runs().await?;
        let newer: Vec<(EventTime, EventTime)> = runs
            .iter()
            .filter(|r| !r.dry_run && r.epoch > covered.batch_epoch && r.view_version.is_some())
            .map(|r| (r.from, r.to))
            .collect();
        let recompute = merge_spans(recompute);
        let all = merge_spans(recompute.iter().copied().chain(newer).collect());
        // 3. recompute the dirty spans with the batch layer, then reconcile every span
        let mut spans = Vec::new();
        for (from, to) in all {
            let dirty = recompute.iter().any(|(a, b)| *a < to && from < *b);
            if dirty {
                for (a, b) in recompute.iter().filter(|(a, b)| *a < to && from < *b) {
                    let report = BatchRun::new(spec, *a, *b).dry_run(args.dry_run).progress(false).run().await?;
                    if !args.dry_run {
                        crate::cmd::batch::store_dead_letters(spec, &report).await?;
                    }
                }
            }
            let outcome = Reconcile::new(spec, from, to).dry_run(args.dry_run).run().await?;
            spans.push(Span { from, to, recomputed: dirty, outcome });
        }
        // 4. record what is covered, last: a run that fails before this is redone by the next
        if !args.dry_run {
            let epoch = view.runs().await?.iter().filter(|r| !r.dry_run).map(|r| r.epoch).max().unwrap_or(0);
            let state = Covered {
                archive_offsets: arrivals.offsets.iter().map(|((s, p), o)| (s.clone(), *p, *o)).collect(),
                batch_epoch: epoch.max(covered.batch_epoch),
                at: Some(tidemark_stream::Clock::now(&tidemark_stream::SystemClock)),
            };
            view.put_beside(&state_path(spec), serde_json::to_vec_pretty(&state)?).await?;
        }
        let summary = Summary {
            pipeline: spec.spec().name.clone(),
            dry_run: args.dry_run,
            first_run,
            new_arrivals: arrivals.event_times.len() as u64,
            differences: spans.iter().map(|s| s.outcome.differences).sum(),
            corrections_applied: spans.iter().map(|s| s.outcome.corrections_applied).sum(),
            spans,
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            let mode = if summary.dry_run { " (dry run)" } else { "" };
            let first = if first_run { ", first run: the whole archive" } else { "" };
            println!("reconcile --changed {}{mode}: {} new arrivals{first}", summary.pipeline, summary.new_arrivals);
            for s in &summary.spans {
                let how = if s.recomputed { "batch + reconcile" } else { "reconcile (new batch run)" };
                println!(
                    "  [{}, {})  {how}: {} keys, {} differences, {} corrections applied",
                    s.from, s.to, s.outcome.checked, s.outcome.differences, s.outcome.corrections_applied
                );
            }
            if summary.spans.is_empty() {
                println!("  nothing changed since the last run");
            }
            println!(
                "total       {} differences, {} corrections applied",
                summary.differences, summary.corrections_applied
            );
        }
        let breached = summary.spans.iter().any(|s| s.outcome.contract.breached);
        if args.fail_on_breach && breached {
            eprintln!("contract breached: see the contract of each span (--json)");
            return Ok(ExitCode::from(crate::exit::CONTRACT_BREACHED));
        }
        Ok(ExitCode::SUCCESS)
    }
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
    // a bounded input drained to its end (`tidemark stream --finish`) advances the watermark to the end of time
    let wm = match e.stream_watermark {
        None => "unknown".to_owned(),
        Some(w) if w == tidemark_core::EventTime::MAX => "end of input".to_owned(),
        Some(w) => format!(">= {w}"),
    };
    let clock = e.stream_clock.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
    println!(
        "evidence    late events {}, duplicate deliveries {}, restarts {}, stream watermark {wm}, stream clock {clock}",
        e.late_events,
        e.duplicate_deliveries,
        e.restarts.len()
    );
    let r = &e.reads;
    if let (Some(a), Some(b)) = (r.event_time_from, r.event_time_to) {
        println!(
            "  read over [{a}, {b}): raw archive {} of {} files, {} rows, {} payloads; late ledger {} objects",
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
    if let Some(d) = &o.differences_file {
        println!("differences {} (every difference, Parquet)", d.display());
    }
}
