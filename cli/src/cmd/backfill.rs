//! `tidemark backfill`: batch + reconcile a long range chunk by chunk, resumably.
//!
//! Each chunk `[from, to)` runs [`BatchRun`] (replacing the chunk's windows in the batch view) and then
//! [`Reconcile`] (correcting the serving store for windows starting in the chunk; its evidence reads of the
//! raw archive and late ledger cover only the chunk's event times and their lookaround). Only after both finished
//! is the chunk's manifest written beside the batch view, at `<batch_view>/_backfill/<id>/<chunk>.json`,
//! with one object-store `put` (atomic on local files and S3). The backfill id is derived from the pipeline
//! name, the range and the chunk length, so a re-run of the same command finds the manifests and skips the
//! finished chunks. A chunk interrupted anywhere is simply done again: the batch run replaces the same
//! windows with the same values and the reconcile run then finds nothing left to correct (its correction
//! batch applies at most once), so a resumed backfill ends in the same state as an uninterrupted one.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tidemark_batch::BatchRun;
use tidemark_core::{Duration, EventTime, ValidSpec};
use tidemark_reconcile::{BlastRadius, Reconcile};
use tokio::sync::Mutex;

/// Backfill a range: batch recompute and reconcile it chunk by chunk, resumable after a crash.
///
/// Splits [FROM, TO) into chunks; for each, recomputes the batch view exactly from the raw archive and then
/// reconciles the serving store against it (one idempotent correction batch per chunk, with audit log).
/// A manifest is written beside the batch view when a chunk is fully reconciled; running the same command
/// again skips finished chunks, so an interrupted backfill (crash, SIGKILL, Ctrl-C) is resumed by re-running
/// it and ends in the same state as an uninterrupted one.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
tidemark backfill --spec pipeline.toml --from 2026-11-01T00:00:00Z --to 2026-11-24T00:00:00Z\n  \
tidemark backfill --spec pipeline.toml --from 2026-11-01T00:00:00Z --to 2026-11-24T00:00:00Z --chunk 6h --parallel 3\n  \
tidemark backfill --spec pipeline.toml --from ... --to ... --dry-run\n\n\
Manifests live at <batch_view>/_backfill/<id>/; the id is derived from the pipeline name, range and chunk \
length, so change none of them when resuming. Batch runs commit to one Delta table and run one at a time; \
with --parallel N, up to N chunks are in flight (reconciling while the next chunk's batch runs).")]
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
    /// Chunk length, e.g. "1d", "6h".
    #[arg(long, value_name = "DURATION", default_value = "1d")]
    chunk: Duration,
    /// Chunks in flight at once.
    #[arg(long, value_name = "N", default_value_t = 1)]
    parallel: usize,
    /// Print the chunk plan and the blast radius (against the batch view as it is now); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print a JSON summary on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// One chunk of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Chunk {
    index: usize,
    from: EventTime,
    to: EventTime,
}

impl Chunk {
    fn object_name(&self) -> String {
        format!("chunk-{:06}.json", self.index)
    }
}

/// The manifest of a finished chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkManifest {
    backfill_id: String,
    chunk: Chunk,
    batch_run: String,
    batch_rows_written: u64,
    checked: u64,
    differences: u64,
    corrections: u64,
    correction_batch: Option<String>,
    /// What happened to the correction batch (`now`, `already`, `nothing_to_do`).
    applied: String,
    finished_at: EventTime,
}

#[derive(Debug, Serialize)]
struct Summary {
    backfill_id: String,
    manifests: String,
    chunks: usize,
    already_done: usize,
    ran: usize,
    differences: u64,
    corrections: u64,
    dry_run: bool,
}

/// Where the manifests of one backfill live.
struct Manifests {
    store: Arc<dyn ObjectStore>,
    dir: StorePath,
    display: String,
}

impl Manifests {
    fn open(batch_view: &str, id: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(batch_view)
            .or_else(|_| url::Url::from_directory_path(batch_view).map_err(|()| url::ParseError::EmptyHost))
            .with_context(|| format!("the batch view location {batch_view:?} is not a URL or absolute path"))?;
        let (store, root) = tidemark_store::objects::open(&url, &Default::default())
            .with_context(|| format!("opening the object store of {batch_view}"))?;
        let dir = root.clone().join("_backfill").join(id);
        let display = format!("{}/_backfill/{id}/", batch_view.trim_end_matches('/'));
        Ok(Manifests { store, dir, display })
    }

    /// The manifests already written, by chunk index.
    async fn finished(&self) -> anyhow::Result<Vec<ChunkManifest>> {
        let metas: Vec<_> = match self.store.list(Some(&self.dir)).try_collect().await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.display)),
        };
        let mut out = Vec::new();
        for m in metas {
            if !m.location.as_ref().ends_with(".json") {
                continue;
            }
            let bytes = self
                .store
                .get(&m.location)
                .await
                .with_context(|| format!("reading {}", m.location))?
                .bytes()
                .await
                .with_context(|| format!("reading {}", m.location))?;
            let manifest: ChunkManifest = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a backfill chunk manifest", m.location))?;
            out.push(manifest);
        }
        Ok(out)
    }

    async fn write(&self, m: &ChunkManifest) -> anyhow::Result<()> {
        let path = self.dir.clone().join(m.chunk.object_name());
        let bytes = serde_json::to_vec_pretty(m)?;
        self.store.put(&path, bytes.into()).await.with_context(|| format!("writing the manifest {path}"))?;
        Ok(())
    }
}

/// `<pipeline>-<16 hex digits>` from the pipeline name, the range and the chunk length.
fn backfill_id(spec: &ValidSpec, from: EventTime, to: EventTime, chunk: Duration) -> String {
    let name = &spec.spec().name;
    let digest = Sha256::digest(format!("{name}|{from}|{to}|{}", chunk.as_micros()).as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{name}-{hex}")
}

fn plan(from: EventTime, to: EventTime, len: Duration) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut start = from;
    while start < to {
        let end = start.saturating_add(len).min(to);
        out.push(Chunk { index: out.len(), from: start, to: end });
        start = end;
    }
    out
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let spec = super::load_valid_spec(&args.spec)?;
    if args.from >= args.to {
        return Err(super::user_error(format!("--from ({}) must be before --to ({})", args.from, args.to)));
    }
    if args.chunk.is_zero() {
        return Err(super::user_error("--chunk must be longer than 0s".into()));
    }
    if args.parallel == 0 {
        return Err(super::user_error("--parallel must be at least 1".into()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = runtime.block_on(execute(Arc::new(spec), args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "backfill {}: {} chunks, {} already done, {} run now; {} differences, {} corrections{}",
            summary.backfill_id,
            summary.chunks,
            summary.already_done,
            summary.ran,
            summary.differences,
            summary.corrections,
            if summary.dry_run { " (dry run: nothing changed)" } else { "" }
        );
        println!("manifests: {}", summary.manifests);
    }
    Ok(ExitCode::SUCCESS)
}

async fn execute(spec: Arc<ValidSpec>, args: &Args) -> anyhow::Result<Summary> {
    let id = backfill_id(&spec, args.from, args.to, args.chunk);
    let manifests = Arc::new(Manifests::open(&spec.spec().stores.batch_view, &id)?);
    let chunks = plan(args.from, args.to, args.chunk);
    let done = manifests.finished().await?;
    let done_ix: std::collections::BTreeSet<usize> = done
        .iter()
        .filter(|m| m.backfill_id == id && chunks.get(m.chunk.index) == Some(&m.chunk))
        .map(|m| m.chunk.index)
        .collect();
    let todo: Vec<Chunk> = chunks.iter().filter(|c| !done_ix.contains(&c.index)).copied().collect();
    let mut summary = Summary {
        backfill_id: id.clone(),
        manifests: manifests.display.clone(),
        chunks: chunks.len(),
        already_done: done_ix.len(),
        ran: 0,
        differences: 0,
        corrections: 0,
        dry_run: args.dry_run,
    };
    if args.dry_run {
        dry_run(&spec, &chunks, &done_ix, &mut summary).await?;
        return Ok(summary);
    }
    if todo.is_empty() {
        eprintln!("backfill {id}: all {} chunks already done ({})", chunks.len(), manifests.display);
        return Ok(summary);
    }
    // Create the serving store's tables once, before chunks reconcile concurrently.
    tidemark_store::open(&spec.serving_store()).await?.init().await?;

    let progress = Progress::new(todo.len() as u64, &id, done_ix.len(), chunks.len());
    let batch_lock = Arc::new(Mutex::new(()));
    let mut pending = todo.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < args.parallel {
            let Some(chunk) = pending.next() else { break };
            let (spec, manifests, lock, id) = (spec.clone(), manifests.clone(), batch_lock.clone(), id.clone());
            tasks.spawn(async move { run_chunk(&spec, &id, chunk, &manifests, &lock).await });
        }
        let Some(joined) = tasks.join_next().await else { break };
        let manifest = joined.context("a chunk task panicked")??;
        summary.ran += 1;
        summary.differences += manifest.differences;
        summary.corrections += manifest.corrections;
        progress.chunk_done(&manifest);
    }
    progress.finish();
    Ok(summary)
}

async fn run_chunk(
    spec: &ValidSpec,
    id: &str,
    chunk: Chunk,
    manifests: &Manifests,
    batch_lock: &Mutex<()>,
) -> anyhow::Result<ChunkManifest> {
    let batch_run = format!("backfill-{id}-{:06}", chunk.index);
    let report = {
        // Batch runs replace ranges of one Delta table; one at a time keeps their commits from conflicting.
        let _one_at_a_time = batch_lock.lock().await;
        BatchRun::new(spec, chunk.from, chunk.to)
            .run_id(batch_run.clone())
            .progress(false)
            .run()
            .await
            .with_context(|| format!("batch run of chunk {} [{}, {})", chunk.index, chunk.from, chunk.to))?
    };
    fail::fail_point!("backfill.mid_chunk", |_| Err(anyhow::anyhow!("fail point backfill.mid_chunk")));
    let outcome = Reconcile::new(spec, chunk.from, chunk.to)
        .run()
        .await
        .with_context(|| format!("reconciling chunk {} [{}, {})", chunk.index, chunk.from, chunk.to))?;
    let manifest = ChunkManifest {
        backfill_id: id.to_owned(),
        chunk,
        batch_run,
        batch_rows_written: report.rows_written,
        checked: outcome.checked,
        differences: outcome.differences,
        corrections: outcome.corrections,
        correction_batch: outcome.correction_batch,
        applied: serde_json::to_value(outcome.applied)?.as_str().unwrap_or_default().to_owned(),
        finished_at: now(),
    };
    manifests.write(&manifest).await?;
    Ok(manifest)
}

fn now() -> EventTime {
    let us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    EventTime::from_micros(i64::try_from(us).unwrap_or(i64::MAX)).unwrap_or(EventTime::MAX)
}

async fn dry_run(
    spec: &ValidSpec,
    chunks: &[Chunk],
    done: &std::collections::BTreeSet<usize>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    println!("backfill {} plan: {} chunks ({} already done)", summary.backfill_id, chunks.len(), done.len());
    println!(
        "{:>5} {:<22} {:<22} {:<8} {:>8} {:>12} {:>12} {:>8} {:>8} {:>8}",
        "chunk", "from", "to", "state", "files", "bytes", "est. rows", "insert", "update", "delete"
    );
    let mut total: std::collections::BTreeMap<String, BlastRadius> = std::collections::BTreeMap::new();
    for c in chunks {
        if done.contains(&c.index) {
            println!("{:>5} {:<22} {:<22} {:<8}", c.index, c.from.to_string(), c.to.to_string(), "done");
            continue;
        }
        let plan = BatchRun::new(spec, c.from, c.to).dry_run(true).progress(false).run().await?;
        let radius = match Reconcile::new(spec, c.from, c.to).dry_run(true).run().await {
            Ok(outcome) => {
                let (mut ins, mut upd, mut del) = (0, 0, 0);
                for (metric, r) in &outcome.blast_radius {
                    let t = total.entry(metric.clone()).or_default();
                    t.insert += r.insert;
                    t.update += r.update;
                    t.delete += r.delete;
                    (ins, upd, del) = (ins + r.insert, upd + r.update, del + r.delete);
                }
                summary.differences += outcome.differences;
                summary.corrections += outcome.corrections;
                format!("{ins:>8} {upd:>8} {del:>8}")
            }
            // Nothing to compare with yet: the chunk's batch run will create the view.
            Err(tidemark_reconcile::Error::NoBatchRun { .. }) => format!("{:>26}", "(no batch view yet)"),
            Err(e) => return Err(e.into()),
        };
        println!(
            "{:>5} {:<22} {:<22} {:<8} {:>8} {:>12} {:>12} {radius}",
            c.index,
            c.from.to_string(),
            c.to.to_string(),
            "to do",
            plan.files.len(),
            plan.bytes,
            plan.estimated_rows.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        );
    }
    println!("blast radius against the batch view as it is now (a chunk's batch run may change it):");
    println!("{:<28} {:>10} {:>10} {:>10}", "metric", "insert", "update", "delete");
    for (metric, r) in &total {
        println!("{:<28} {:>10} {:>10} {:>10}", metric, r.insert, r.update, r.delete);
    }
    Ok(())
}

/// A progress bar with ETA on a terminal; plain log lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    total: u64,
    done: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new(todo: u64, id: &str, already: usize, chunks: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(todo);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} chunks, ETA {eta_precise}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("backfill {id}"));
            bar
        });
        if bar.is_none() {
            eprintln!("backfill {id}: {chunks} chunks, {already} already done, {todo} to run");
        }
        Progress { bar, started: Instant::now(), total: todo, done: 0.into() }
    }

    fn chunk_done(&self, m: &ChunkManifest) {
        let n = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None => {
                let elapsed = self.started.elapsed().as_secs_f64();
                let eta = elapsed / n as f64 * (self.total - n) as f64;
                eprintln!(
                    "chunk {} [{}, {}) done: {} keys checked, {} differences, {} corrections ({n}/{}, ETA {eta:.0}s)",
                    m.chunk.index, m.chunk.from, m.chunk.to, m.checked, m.differences, m.corrections, self.total
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> EventTime {
        EventTime::from_secs(s).unwrap()
    }

    #[test]
    fn the_plan_covers_the_range_with_a_short_last_chunk() {
        let p = plan(t(0), t(250), Duration::from_secs(100));
        assert_eq!(
            p,
            vec![
                Chunk { index: 0, from: t(0), to: t(100) },
                Chunk { index: 1, from: t(100), to: t(200) },
                Chunk { index: 2, from: t(200), to: t(250) }
            ]
        );
    }
}
