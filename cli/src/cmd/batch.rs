//! `tidemark batch`: recompute every metric of a spec exactly for a time range.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use tidemark_batch::{BatchReport, BatchRun, InputSource};
use tidemark_core::{Duration, EventTime, ValidSpec};
use tidemark_store::{DeadLetter, DeadLetterStore};

/// Recompute the spec's metrics exactly from the raw events and replace the range in the batch view.
///
/// Reads the raw archive (the Delta table the stream service writes) or Parquet / JSON Lines files, decodes
/// every event with the same decoder as the stream service, de-duplicates by event id, computes every
/// window that overlaps [FROM, TO) and replaces those windows in the batch view in one commit, with a run
/// manifest. Events that fail decoding are written to the dead-letter store with their reason code and
/// source coordinates.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
tidemark batch --spec pipeline.toml --from 2026-11-23T00:00:00Z --to 2026-11-24T00:00:00Z\n  \
tidemark batch --spec pipeline.toml --from 2026-11-23T00:00:00Z --to 2026-11-24T00:00:00Z --dry-run\n  \
tidemark batch --spec pipeline.toml --from ... --to ... --input-format jsonl --input file:///landing/events/\n\n\
Re-running a range is safe: it replaces the same windows again and writes a new manifest.")]
pub struct Args {
    /// The pipeline spec (TOML).
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Start of the range (RFC 3339, inclusive).
    #[arg(long, value_name = "TIME")]
    from: EventTime,
    /// End of the range (RFC 3339, exclusive).
    #[arg(long, value_name = "TIME")]
    to: EventTime,
    /// Print the plan (files, bytes, estimated rows, windows); read and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Read these files instead of the spec's raw archive (an object-store URL: a Delta table or a prefix).
    #[arg(long, value_name = "URL", requires = "input_format")]
    input: Option<String>,
    /// Format of --input.
    #[arg(long, value_enum)]
    input_format: Option<InputFormatArg>,
    /// Compute the range in chunks of this length (still one commit), e.g. "1h".
    #[arg(long, value_name = "DURATION")]
    chunk: Option<Duration>,
    /// The most events computed at once: a larger read is split by event id and by each metric's key into
    /// parts spilled to --spill-dir and computed one at a time (same result; memory holds about one part).
    #[arg(long, value_name = "N", default_value_t = tidemark_batch::DEFAULT_PART_EVENTS)]
    part_events: u64,
    /// Where parts are spilled (a temporary directory created and removed by the run); default the
    /// system's temporary directory ($TMPDIR).
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Only these metrics (comma-separated names); default all.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    metrics: Vec<String>,
    /// Output format of the report.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum InputFormatArg {
    Delta,
    Jsonl,
    Parquet,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let spec = super::load_valid_spec(&args.spec)?;
    if args.from >= args.to {
        return Err(super::user_error(format!("--from ({}) must be before --to ({})", args.from, args.to)));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (report, stored) = runtime.block_on(execute(&spec, args))?;
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "report": report, "dead_letters_stored": stored }))?
        ),
        Format::Table => print_table(&report, stored, &spec),
    }
    Ok(ExitCode::SUCCESS)
}

async fn execute(spec: &ValidSpec, args: &Args) -> anyhow::Result<(BatchReport, Option<usize>)> {
    let mut run =
        BatchRun::new(spec, args.from, args.to).dry_run(args.dry_run).progress(std::io::stderr().is_terminal());
    if let (Some(url), Some(format)) = (&args.input, args.input_format) {
        run = run.input(match format {
            InputFormatArg::Delta => InputSource::delta(url.clone()),
            InputFormatArg::Jsonl => InputSource::json_lines(url.clone()),
            InputFormatArg::Parquet => InputSource::parquet(url.clone()),
        });
    }
    if let Some(chunk) = args.chunk {
        run = run.chunk(chunk);
    }
    run = run.part_events(args.part_events);
    if let Some(dir) = &args.spill_dir {
        run = run.spill_dir(dir);
    }
    if !args.metrics.is_empty() {
        run = run.metrics(args.metrics.clone());
    }
    let report = run.run().await?;
    let stored = if args.dry_run { None } else { store_dead_letters(spec, &report).await? };
    Ok((report, stored))
}

/// Stores what a run could not decode in the dead-letter store; how many were new (`None`: nothing to store).
pub(crate) async fn store_dead_letters(spec: &ValidSpec, report: &BatchReport) -> anyhow::Result<Option<usize>> {
    if report.dead_letters.is_empty() {
        return Ok(None);
    }
    let store = DeadLetterStore::open(&spec.spec().stores.dead_letter)?;
    let letters: Vec<DeadLetter> = report
        .dead_letters
        .iter()
        .map(|d| {
            let detail = match &d.field {
                Some(f) => format!("field {f:?}: {}", d.detail),
                None => d.detail.clone(),
            };
            DeadLetter::new(
                d.at.clone(),
                d.reason,
                detail,
                d.payload.as_bytes(),
                spec.schema().max_event_bytes,
                d.received_at,
            )
        })
        .collect();
    Ok(Some(store.append(&letters).await?))
}

fn print_table(r: &BatchReport, stored: Option<usize>, spec: &ValidSpec) {
    let title = if r.dry_run { "batch plan (dry run)" } else { "batch run" };
    println!("{title} {} (epoch {})", r.run_id, r.epoch);
    println!("range      [{}, {})   read [{}, {})", r.from, r.to, r.read_from, r.read_to);
    let version = r.input_version.map(|v| format!(", table version {v}")).unwrap_or_default();
    println!("input      {} files, {} bytes{version}", r.files.len(), r.bytes);
    if let Some(est) = r.estimated_rows {
        println!("estimated  {est} rows");
    }
    if !r.dry_run {
        println!(
            "rows read  {} = aggregated {} + duplicates {} + invalid {} + outside range {}",
            r.rows_read, r.aggregated, r.duplicates, r.invalid, r.outside_range
        );
        for (reason, n) in &r.invalid_by_reason {
            println!("  invalid  {reason}: {n}");
        }
    }
    println!("{:<28} {:<10} {:>12} {:>12}", "metric", "window", "rows", "windows");
    for m in &r.metrics {
        let windows = m.planned_windows.map_or_else(|| m.windows.to_string(), |p| format!("~{p}"));
        println!("{:<28} {:<10} {:>12} {:>12}", m.name, m.window, m.rows, windows);
    }
    if !r.dry_run {
        let version = r.view_version.map(|v| format!(" (view version {v})")).unwrap_or_default();
        println!("written    {} rows, {} windows{version} in {} ms", r.rows_written, r.windows_written, r.duration_ms);
        if r.parts > 1 {
            println!("split      {} parts, {} bytes spilled", r.parts, r.spilled_bytes);
        }
    }
    if let Some(n) = stored {
        println!("dead letters: {} ({n} new) in {}", r.dead_letters.len(), spec.spec().stores.dead_letter);
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
}
