//! [`BatchRun`]: the library entry point the CLI calls. Reads the raw events around `[from, to)`, decodes,
//! de-duplicates, computes every metric of the spec with the polars plan (in `spawn_blocking`), and replaces
//! the range in the batch view in one Delta commit. The rows stream into that commit as each metric is
//! computed (Arrow batches of at most 128 Ki rows, two in flight), so memory holds the events and one
//! metric's frame, never the run's whole output; a large read is split into key-hashed parts spilled to
//! disk ([`BatchRun::part_events`]), so it holds one part's. The commit happens only after the last row. A
//! run manifest is written beside the table afterwards (`_tidemark_runs/<run_id>.json`; the commit's info
//! names it).
//!
//! Input range: for tumbling and hopping metrics, exactly the extent of the windows overlapping
//! `[from, to)`. Session windows can chain arbitrarily far, so a session metric starts with a lookaround on
//! each side and doubles it (re-reading) until every session overlapping the range is provably complete:
//! its first event is at least `gap` after the read start and its end is at most the read end; past
//! `max_lookaround` the run reports a warning instead.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use deltalake::arrow::array::RecordBatch;
use indicatif::{ProgressBar, ProgressStyle};
use polars::prelude::{DataFrame, IntoLazy};
use serde::{Deserialize, Serialize};
use tidemark_core::{
    CompiledMetric, Duration, EventSchema, EventTime, FixedWindows, MetricRow, Origin, ReasonCode, ValidSpec, Window,
    WindowSpec,
};
use tidemark_store::batch_view::{MANIFEST_DIR, RowsError};

use crate::error::Error;
use crate::input::{self, InputFile, InputSource, UndecodableRow};
use crate::plan;
use crate::spill::{Spill, part_name};
use crate::view;

/// A batch run over `[from, to)`, configured as a builder and executed with [`BatchRun::run`].
#[derive(Debug, Clone)]
pub struct BatchRun<'a> {
    spec: &'a ValidSpec,
    from: EventTime,
    to: EventTime,
    dry_run: bool,
    input: InputSource,
    batch_view: String,
    metrics: Option<Vec<String>>,
    session_lookaround: Duration,
    max_lookaround: Duration,
    run_id: Option<String>,
    progress: bool,
    keep_rows: bool,
    chunk: Option<Duration>,
    part_events: u64,
    spill_dir: Option<std::path::PathBuf>,
}

/// The default of [`BatchRun::part_events`].
pub const DEFAULT_PART_EVENTS: u64 = 2_000_000;

/// The first lookaround on each side of a run's range for session metrics ([`BatchRun::session_lookaround`]).
pub const DEFAULT_SESSION_LOOKAROUND: Duration = Duration::from_secs(3600);

/// One metric's part of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricSummary {
    /// Metric name.
    pub name: String,
    /// `tumbling`, `hopping` or `session`.
    pub window: String,
    /// Rows computed (one per window and dimension values).
    pub rows: u64,
    /// Distinct windows among them.
    pub windows: u64,
    /// In a dry run: windows overlapping the range (fixed windows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned_windows: Option<u64>,
}

/// What a run did: the manifest (serialized) plus the rows and dead letters (not serialized).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchReport {
    /// Run id.
    pub run_id: String,
    /// Epoch of the rows written (µs since the epoch at the run's start; orders runs).
    pub epoch: i64,
    /// Whether nothing was read or written (plan only).
    pub dry_run: bool,
    /// Requested range start.
    pub from: EventTime,
    /// Requested range end (exclusive).
    pub to: EventTime,
    /// Event-time range read.
    pub read_from: EventTime,
    /// Event-time range read, end (exclusive).
    pub read_to: EventTime,
    /// The input.
    pub input: InputSource,
    /// The Delta version of the archive read.
    pub input_version: Option<i64>,
    /// Files read (or, in a dry run, to read).
    pub files: Vec<InputFile>,
    /// Total bytes of those files.
    pub bytes: u64,
    /// Estimated rows (dry run, from statistics).
    pub estimated_rows: Option<u64>,
    /// Rows scanned in the files read.
    pub rows_read: u64,
    /// Rows that failed decoding (dead letters).
    pub invalid: u64,
    /// Invalid rows by reason code.
    pub invalid_by_reason: BTreeMap<ReasonCode, u64>,
    /// Decoded rows outside the read range (their file overlapped it).
    pub outside_range: u64,
    /// Copies of an event id already seen.
    pub duplicates: u64,
    /// Distinct events aggregated. `rows_read = invalid + outside_range + duplicates + aggregated`.
    pub aggregated: u64,
    /// Per metric.
    pub metrics: Vec<MetricSummary>,
    /// Rows written to the batch view.
    pub rows_written: u64,
    /// Distinct (metric, window) pairs written.
    pub windows_written: u64,
    /// Parts the events were split into (the largest over chunks and read attempts; 1: all in memory).
    #[serde(default)]
    pub parts: u64,
    /// Bytes spilled to the temporary directory by every read of the run, those a session widening
    /// abandoned included (0 with one part).
    #[serde(default)]
    pub spilled_bytes: u64,
    /// The batch view's version after the run's commit.
    pub view_version: Option<i64>,
    /// Wall-clock duration in milliseconds.
    pub duration_ms: u64,
    /// Things the operator should know (e.g. a session that may continue beyond the lookaround).
    pub warnings: Vec<String>,
    /// The computed rows, sorted by key (metric, window, dimensions), if asked for with
    /// [`BatchRun::keep_rows`].
    #[serde(skip)]
    pub rows: Vec<MetricRow>,
    /// The undecodable rows, for the dead-letter store.
    #[serde(skip)]
    pub dead_letters: Vec<UndecodableRow>,
}

struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(enabled: bool) -> Self {
        if enabled && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            Progress(Some(bar))
        } else {
            Progress(None)
        }
    }

    fn phase(&self, msg: String) {
        match &self.0 {
            Some(bar) => bar.set_message(msg),
            None => tracing::info!("{msg}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn now() -> EventTime {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    EventTime::from_micros(us).unwrap_or(EventTime::UNIX_EPOCH)
}

/// `[first window start, last window end)` of the fixed windows overlapping `[from, to)`.
fn fixed_extent(w: &FixedWindows, from: EventTime, to: EventTime) -> (EventTime, EventTime) {
    let slide = w.slide().as_micros();
    let n = w.windows_per_event() as i64;
    let first = w.last_start(from).as_micros() - (n - 1) * slide;
    let last_start = w.last_start(EventTime::from_micros(to.as_micros() - 1).unwrap_or(to)).as_micros();
    let t = |us: i64| EventTime::from_micros(us).unwrap_or(EventTime::MIN);
    (t(first), t(last_start).saturating_add(w.size()))
}

fn fixed_window_count(w: &FixedWindows, from: EventTime, to: EventTime) -> u64 {
    let (first, _) = fixed_extent(w, from, to);
    let last = w.last_start(EventTime::from_micros(to.as_micros() - 1).unwrap_or(to));
    u64::try_from((last.as_micros() - first.as_micros()) / w.slide().as_micros() + 1).unwrap_or(0)
}

fn twice(d: Duration) -> Duration {
    Duration::from_micros(d.as_micros().saturating_mul(2)).unwrap_or(Duration::MAX)
}

impl<'a> BatchRun<'a> {
    /// A run of every metric of `spec` over `[from, to)`, reading the spec's raw archive and writing its
    /// batch view.
    pub fn new(spec: &'a ValidSpec, from: EventTime, to: EventTime) -> Self {
        let stores = &spec.spec().stores;
        BatchRun {
            spec,
            from,
            to,
            dry_run: false,
            input: InputSource::delta(stores.raw_archive.clone()),
            batch_view: stores.batch_view.clone(),
            metrics: None,
            session_lookaround: DEFAULT_SESSION_LOOKAROUND,
            max_lookaround: Duration::from_secs(7 * 86_400),
            run_id: None,
            progress: true,
            keep_rows: false,
            chunk: None,
            part_events: DEFAULT_PART_EVENTS,
            spill_dir: None,
        }
    }

    /// Plan only: list the input and report files, bytes, estimated rows and windows; read and write
    /// nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Read this input instead of the spec's raw archive.
    pub fn input(mut self, input: InputSource) -> Self {
        self.input = input;
        self
    }

    /// Write this batch view instead of the spec's.
    pub fn batch_view(mut self, url: impl Into<String>) -> Self {
        self.batch_view = url.into();
        self
    }

    /// Compute only these metrics (by name).
    pub fn metrics(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.metrics = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// The first lookaround on each side for session metrics (default 1h; doubled as needed).
    pub fn session_lookaround(mut self, d: Duration) -> Self {
        self.session_lookaround = d;
        self
    }

    /// The largest lookaround tried before reporting possibly incomplete sessions (default 7 days).
    pub fn max_lookaround(mut self, d: Duration) -> Self {
        self.max_lookaround = d;
        self
    }

    /// Use this run id (default: derived from the start time).
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        self.run_id = Some(id.into());
        self
    }

    /// Also return the computed rows as core `MetricRow`s in [`BatchReport::rows`] (default off: that
    /// costs about half a KiB a row; the batch view is written from the plan's frames directly).
    pub fn keep_rows(mut self, keep: bool) -> Self {
        self.keep_rows = keep;
        self
    }

    /// Compute the range in consecutive chunks of this length (bounding the events held in memory); the
    /// view is still replaced in one commit. Each window belongs to the chunk holding its start (the
    /// first chunk also takes windows starting before `from`), and each chunk reads the whole extent of
    /// its windows, so the result equals an unchunked run. Neighbouring chunks' read ranges overlap, so
    /// `rows_read` counts those rows once per chunk.
    pub fn chunk(mut self, length: Duration) -> Self {
        self.chunk = (!length.is_zero()).then_some(length);
        self
    }

    /// The most events a run computes at once (default [`DEFAULT_PART_EVENTS`]). A read range estimated
    /// to hold more (from the input's row counts, or its bytes where it has none) is split into parts: by
    /// event id for de-duplication, then per metric by its dimension values, spilled to a temporary
    /// directory as compressed Parquet and computed one part at a time. Every copy of an id and every event
    /// of a key land in one part, so the result equals an unsplit run; memory holds about one part.
    pub fn part_events(mut self, events: u64) -> Self {
        self.part_events = events.max(1);
        self
    }

    /// Where parts are spilled (default: the system's temporary directory); removed when the run ends.
    pub fn spill_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.spill_dir = Some(dir.into());
        self
    }

    /// Show a spinner on a terminal (default on; plain log lines otherwise).
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    fn selected(&self) -> Result<Vec<CompiledMetric>, Error> {
        match &self.metrics {
            None => Ok(self.spec.metrics().to_vec()),
            Some(names) => names
                .iter()
                .map(|n| {
                    self.spec
                        .metric(n)
                        .cloned()
                        .ok_or_else(|| Error::InvalidRequest(format!("the spec has no metric {n:?}")))
                })
                .collect(),
        }
    }

    /// `(chunk from, chunk to, owned window starts)`: consecutive chunks covering `[from, to)`; a window
    /// belongs to the chunk whose range holds its start (the first chunk owns every earlier start, the last
    /// every later one).
    fn chunks(&self) -> Vec<(EventTime, EventTime, (EventTime, EventTime))> {
        let mut bounds = vec![self.from];
        if let Some(len) = self.chunk {
            let mut t = self.from.saturating_add(len);
            while t < self.to {
                bounds.push(t);
                t = t.saturating_add(len);
            }
        }
        bounds.push(self.to);
        let last = bounds.len() - 2;
        (0..=last)
            .map(|i| {
                let own_lo = if i == 0 { EventTime::MIN } else { bounds[i] };
                let own_hi = if i == last { EventTime::MAX } else { bounds[i + 1] };
                (bounds[i], bounds[i + 1], (own_lo, own_hi))
            })
            .collect()
    }

    /// The spill of a read estimated to decode `events` events: ⌈events / [`BatchRun::part_events`]⌉ parts.
    fn spill_for(&self, events: u64) -> Result<Arc<Spill>, Error> {
        let parts = usize::try_from(events.div_ceil(self.part_events)).unwrap_or(usize::MAX).max(1);
        Ok(Arc::new(Spill::new(parts, self.spill_dir.as_deref())?))
    }

    /// The event-time range to read for the windows of `[from, to)`.
    fn read_range(
        metrics: &[CompiledMetric],
        from: EventTime,
        to: EventTime,
        lookaround: Duration,
    ) -> (EventTime, EventTime) {
        let (mut lo, mut hi) = (from, to);
        for m in metrics {
            let (a, b) = match m.window {
                WindowSpec::Fixed(w) => fixed_extent(&w, from, to),
                WindowSpec::Session(_) => (from.saturating_sub(lookaround), to.saturating_add(lookaround)),
            };
            lo = lo.min(a);
            hi = hi.max(b);
        }
        (lo, hi)
    }

    /// Executes the run.
    pub async fn run(self) -> Result<BatchReport, Error> {
        let started = Instant::now();
        if self.from >= self.to {
            return Err(Error::InvalidRequest(format!("--from {} must be before --to {}", self.from, self.to)));
        }
        let metrics = self.selected()?;
        let epoch = now().as_micros();
        let run_id = self.run_id.clone().unwrap_or_else(|| format!("batch-{epoch}"));
        let progress = Progress::new(self.progress);
        let schema = self.spec.schema().clone();
        let lookaround = self.session_lookaround;

        let mut report = BatchReport {
            run_id: run_id.clone(),
            epoch,
            dry_run: self.dry_run,
            from: self.from,
            to: self.to,
            read_from: self.from,
            read_to: self.to,
            input: self.input.clone(),
            input_version: None,
            files: Vec::new(),
            bytes: 0,
            estimated_rows: None,
            rows_read: 0,
            invalid: 0,
            invalid_by_reason: BTreeMap::new(),
            outside_range: 0,
            duplicates: 0,
            aggregated: 0,
            metrics: Vec::new(),
            rows_written: 0,
            windows_written: 0,
            parts: 0,
            spilled_bytes: 0,
            view_version: None,
            duration_ms: 0,
            warnings: Vec::new(),
            rows: Vec::new(),
            dead_letters: Vec::new(),
        };

        if self.dry_run {
            let (lo, hi) = Self::read_range(&metrics, self.from, self.to, lookaround);
            progress.phase(format!("planning the read of {} over [{lo}, {hi})", self.input.url));
            let plan = input::plan_read(&self.input, &schema, lo, hi).await?;
            report.read_from = lo;
            report.read_to = hi;
            report.bytes = plan.bytes();
            report.estimated_rows = plan.estimated_rows();
            report.input_version = plan.table_version;
            report.files = plan.files;
            report.metrics = metrics
                .iter()
                .map(|m| MetricSummary {
                    name: m.name.clone(),
                    window: m.window.kind_name().to_owned(),
                    rows: 0,
                    windows: 0,
                    planned_windows: match m.window {
                        WindowSpec::Fixed(w) => Some(fixed_window_count(&w, self.from, self.to)),
                        WindowSpec::Session(_) => None,
                    },
                })
                .collect();
            report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            progress.done();
            return Ok(report);
        }

        let computed_at = now();
        let names: Vec<String> = metrics.iter().map(|m| m.name.clone()).collect();
        // The rows stream into the view's one commit while they are computed, so memory holds one metric's
        // frame and a few Arrow batches, not the run's output. The commit info carries what is known up
        // front; the manifest (written after the commit) has the counts.
        let info = serde_json::json!({
            "run_id": run_id,
            "epoch": epoch,
            "from": self.from,
            "to": self.to,
            "input": self.input.url,
            "manifest": format!("{MANIFEST_DIR}/{run_id}.json"),
        });
        let (sender, receiver) = tokio::sync::mpsc::channel(IN_FLIGHT_BATCHES);
        let (view_url, from, to, batches) = (self.batch_view.clone(), self.from, self.to, rows_stream(receiver));
        let writer = tokio::spawn(async move {
            let metadata = vec![("tidemark.batch_run".to_owned(), info)];
            Ok::<_, Error>(view::open(&view_url)?.replace_range_stream(&names, from, to, batches, metadata).await?)
        });
        let produced =
            self.produce(&metrics, &mut report, &progress, sender.clone(), (&run_id, epoch), computed_at).await;
        let produced = match produced {
            Ok(rows) => sender.send(Msg::End).await.map(|()| rows).map_err(|_| Stop::WriterGone),
            Err(e) => Err(e),
        };
        // without `End` the stream fails and the writer commits nothing
        drop(sender);
        let written = writer.await.map_err(|e| Error::Internal(format!("view writer task failed: {e}")))?;
        let (rows, committed) = match (produced, written) {
            (Ok(rows), Ok(committed)) => (rows, committed),
            // the producer's own error explains a failed write best; one that could not send stopped
            // because the writer failed
            (Err(Stop::Failed(e)), _) => return Err(*e),
            (_, Err(e)) => return Err(e),
            (Err(Stop::WriterGone), Ok(_)) => {
                return Err(Error::Internal("the view writer stopped reading rows".into()));
            }
        };
        report.view_version = Some(committed.version);
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Internal(format!("manifest: {e}")))?;
        view::open(&self.batch_view)?.put_beside(&format!("{MANIFEST_DIR}/{run_id}.json"), json).await?;
        report.rows = rows;
        progress.done();
        tracing::info!(
            run_id = %report.run_id,
            rows_read = report.rows_read,
            invalid = report.invalid,
            duplicates = report.duplicates,
            rows_written = report.rows_written,
            "batch run finished in {} ms",
            report.duration_ms
        );
        Ok(report)
    }
}

/// Arrow batches in flight between the computation and the view writer.
const IN_FLIGHT_BATCHES: usize = 2;
/// Rows per Arrow batch sent to the view writer.
const BATCH_ROWS: usize = 131_072;

/// What the computation sends the view writer: batches, then `End` once every row was sent.
enum Msg {
    Batch(RecordBatch),
    End,
}

/// Why production stopped.
enum Stop {
    Failed(Box<Error>),
    /// The view writer stopped reading (its own error says why).
    WriterGone,
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(Box::new(e))
    }
}

/// The view writer's input: the batches until `End`; a channel closed before `End` (the computation
/// failed or was dropped) is an error, so the writer never commits part of a run.
fn rows_stream(
    receiver: tokio::sync::mpsc::Receiver<Msg>,
) -> futures::stream::BoxStream<'static, Result<RecordBatch, RowsError>> {
    use futures::StreamExt;
    futures::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Some(Msg::Batch(b)) => Some((Ok(b), Some(receiver))),
            Some(Msg::End) => None,
            None => Some((Err("the batch run stopped before all of its rows were computed".into()), None)),
        }
    })
    .boxed()
}

impl BatchRun<'_> {
    /// Reads and computes every chunk, sending the rows to the view writer; fills the report's counts.
    /// Returns the rows when [`BatchRun::keep_rows`] asked for them.
    async fn produce(
        &self,
        metrics: &[CompiledMetric],
        report: &mut BatchReport,
        progress: &Progress,
        sender: tokio::sync::mpsc::Sender<Msg>,
        (run_id, epoch): (&str, i64),
        computed_at: EventTime,
    ) -> Result<Vec<MetricRow>, Stop> {
        let schema = self.spec.schema().clone();
        let has_sessions = metrics.iter().any(|m| matches!(m.window, WindowSpec::Session(_)));
        let chunks = self.chunks();
        let mut pinned_version = None;
        let mut files: BTreeMap<String, InputFile> = BTreeMap::new();
        let mut dead_letters: BTreeMap<(String, i32, i64), UndecodableRow> = BTreeMap::new();
        let mut summaries: Vec<MetricSummary> = Vec::new();
        let mut rows = Vec::new();
        report.read_from = EventTime::MAX;
        report.read_to = EventTime::MIN;
        for (ci, &(c_from, c_to, owned)) in chunks.iter().enumerate() {
            let mut lookaround = self.session_lookaround;
            let (prepared, outcome, lo, hi) = loop {
                let (lo, hi) = Self::read_range(metrics, c_from, c_to, lookaround);
                progress.phase(format!(
                    "chunk {}/{}: reading {} over [{lo}, {hi})",
                    ci + 1,
                    chunks.len(),
                    self.input.url
                ));
                let spill_for = Box::new(|events| self.spill_for(events));
                let (outcome, spill) =
                    input::read_events(&self.input, &schema, lo, hi, pinned_version, spill_for).await?;
                let parts = spill.parts();
                progress.phase(format!(
                    "chunk {}/{}: computing {} metrics over {} events from {} files in {parts} part(s)",
                    ci + 1,
                    chunks.len(),
                    metrics.len(),
                    outcome.counts.decoded_in_range,
                    outcome.files.len()
                ));
                let scope = Scope { range: (self.from, self.to), owned, read: (lo, hi) };
                let prepared = prepare(spill, schema.clone(), metrics.to_vec(), scope).await?;
                report.parts = report.parts.max(parts as u64);
                if prepared.incomplete.is_empty() || !has_sessions {
                    break (prepared, outcome, lo, hi);
                }
                if lookaround >= self.max_lookaround {
                    report.warnings.push(format!(
                        "{} sessions may continue beyond the maximum lookaround of {}, e.g. {}",
                        prepared.incomplete.len(),
                        self.max_lookaround,
                        prepared
                            .incomplete
                            .iter()
                            .take(5)
                            .map(|(m, w)| format!("{m} {w}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                    break (prepared, outcome, lo, hi);
                }
                lookaround = twice(lookaround).min(self.max_lookaround);
                // this attempt's spill is dropped; what it wrote still counts
                report.spilled_bytes += prepared.spill.bytes_written();
                tracing::info!(
                    "{} sessions touch the edge of the read range; widening the lookaround to {lookaround}",
                    prepared.incomplete.len()
                );
            };
            pinned_version = pinned_version.or(outcome.table_version);
            report.read_from = report.read_from.min(lo);
            report.read_to = report.read_to.max(hi);
            report.input_version = outcome.table_version;
            for f in outcome.files {
                files.insert(f.path.clone(), f);
            }
            report.rows_read += outcome.counts.rows_scanned - outcome.counts.invalid;
            report.outside_range += outcome.counts.outside_range;
            report.duplicates += prepared.duplicates;
            report.aggregated += outcome.counts.decoded_in_range - prepared.duplicates;
            for d in outcome.dead_letters {
                dead_letters.entry((d.at.source.clone(), d.at.partition, d.at.offset)).or_insert(d);
            }
            progress.phase(format!("chunk {}/{}: computing and writing to {}", ci + 1, chunks.len(), self.batch_view));
            let out = Output { run_id: run_id.to_owned(), epoch, computed_at, keep_rows: self.keep_rows };
            let emitted = emit(prepared, schema.clone(), out, sender.clone()).await?;
            report.spilled_bytes += emitted.spilled_bytes;
            for s in emitted.summaries {
                match summaries.iter_mut().find(|m| m.name == s.name) {
                    Some(m) => {
                        m.rows += s.rows;
                        m.windows += s.windows;
                    }
                    None => summaries.push(s),
                }
            }
            rows.extend(emitted.rows);
        }
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        report.files = files.into_values().collect();
        report.bytes = report.files.iter().map(|f| f.bytes).sum();
        report.dead_letters = dead_letters.into_values().collect();
        // a chunked run may read a bad row twice; it is one dead letter
        report.invalid = report.dead_letters.len() as u64;
        report.rows_read += report.invalid;
        for d in &report.dead_letters {
            *report.invalid_by_reason.entry(d.reason).or_default() += 1;
        }
        // keep the spec's order
        summaries.sort_by_key(|s| metrics.iter().position(|m| m.name == s.name));
        report.metrics = summaries;
        report.rows_written = report.metrics.iter().map(|m| m.rows).sum();
        report.windows_written = report.metrics.iter().map(|m| m.windows).sum();
        progress.phase(format!("committing {} rows to {}", report.rows_written, self.batch_view));
        Ok(rows)
    }
}

/// Which windows a chunk computes: those overlapping `range` whose start is in `owned`, from events read
/// over `read`.
#[derive(Debug, Clone, Copy)]
struct Scope {
    range: (EventTime, EventTime),
    owned: (EventTime, EventTime),
    read: (EventTime, EventTime),
}

/// A chunk's de-duplicated events, split per metric by key in the spill, with its session metrics computed
/// (they decide whether the read range must widen, so nothing of the chunk is sent before they are known
/// to be complete).
struct Prepared {
    spill: Arc<Spill>,
    duplicates: u64,
    metrics: Vec<CompiledMetric>,
    incomplete: Vec<(String, Window)>,
    scope: Scope,
}

/// Spill name of metric `i`'s events (parts by key).
fn metric_events(i: usize) -> String {
    format!("events{i}")
}

/// Spill name of session metric `i`'s computed rows (parts by key).
fn metric_rows(i: usize) -> String {
    format!("rows{i}")
}

/// A metric's rows from (a part of) its events: the windows overlapping the run's range whose start the
/// chunk owns.
fn metric_rows_in_scope(
    events: &DataFrame,
    schema: &EventSchema,
    metric: &CompiledMetric,
    scope: &Scope,
) -> Result<DataFrame, Error> {
    owned_only(plan::metric_frame(events, schema, metric, Some(scope.range))?, scope.owned)
}

/// Keeps the windows whose start is in `owned`.
fn owned_only(frame: DataFrame, owned: (EventTime, EventTime)) -> Result<DataFrame, Error> {
    if owned == (EventTime::MIN, EventTime::MAX) {
        return Ok(frame);
    }
    let start = polars::prelude::col(plan::WINDOW_START);
    Ok(frame
        .lazy()
        .filter(
            start
                .clone()
                .gt_eq(polars::prelude::lit(owned.0.as_micros()))
                .and(start.lt(polars::prelude::lit(owned.1.as_micros()))),
        )
        .collect()?)
}

/// On a blocking thread: de-duplicates each raw part, splits every metric's columns of the result by the
/// metric's key, and computes the session metrics part by part (noting which of their windows may be
/// incomplete given the read range).
async fn prepare(
    spill: Arc<Spill>,
    schema: EventSchema,
    metrics: Vec<CompiledMetric>,
    scope: Scope,
) -> Result<Prepared, Error> {
    tokio::task::spawn_blocking(move || {
        let mut duplicates = 0;
        let columns: Vec<(Vec<String>, Vec<String>)> = metrics.iter().map(plan::metric_columns).collect();
        for b in 0..spill.parts() {
            let Some(raw) = spill.take(&part_name(input::RAW, b))? else { continue };
            let (events, dropped) = plan::dedupe_by_id(raw)?;
            duplicates += dropped;
            for (i, (dims, columns)) in columns.iter().enumerate() {
                let dims: Vec<&str> = dims.iter().map(String::as_str).collect();
                spill.put_by_key(&metric_events(i), events.select(columns.iter().cloned())?, &dims)?;
            }
        }
        let mut incomplete = Vec::new();
        // decoded events are never before 1970, so a read starting there misses nothing earlier
        let lo_open = scope.read.0 > EventTime::UNIX_EPOCH;
        for (i, m) in metrics.iter().enumerate() {
            let WindowSpec::Session(s) = m.window else { continue };
            for j in 0..spill.parts() {
                let Some(events) = spill.take(&part_name(&metric_events(i), j))? else { continue };
                let frame = metric_rows_in_scope(&events, &schema, m, &scope)?;
                drop(events);
                let rows = plan::FrameRows::new(&frame, &schema, m)?;
                for r in 0..rows.len() {
                    let w = rows.window(r)?;
                    let early = lo_open && w.start() < scope.read.0.saturating_add(s.gap());
                    if early || w.end() > scope.read.1 {
                        incomplete.push((m.name.clone(), w));
                    }
                }
                spill.put(&part_name(&metric_rows(i), j), frame)?;
            }
        }
        Ok(Prepared { spill, duplicates, metrics, incomplete, scope })
    })
    .await
    .map_err(|e| Error::Internal(format!("plan task failed: {e}")))?
}

/// How the rows are stamped.
struct Output {
    run_id: String,
    epoch: i64,
    computed_at: EventTime,
    keep_rows: bool,
}

struct Emitted {
    summaries: Vec<MetricSummary>,
    rows: Vec<MetricRow>,
    spilled_bytes: u64,
}

/// On a blocking thread: sends the session rows, then computes each fixed-window metric part by part and
/// sends it, one part's frame at a time, as the view's Arrow batches of at most [`BATCH_ROWS`] rows.
async fn emit(
    prepared: Prepared,
    schema: EventSchema,
    out: Output,
    sender: tokio::sync::mpsc::Sender<Msg>,
) -> Result<Emitted, Stop> {
    tokio::task::spawn_blocking(move || {
        let Prepared { spill, metrics, scope, .. } = prepared;
        let origin = Origin::Batch { run_id: out.run_id.clone(), epoch: out.epoch };
        let mut emitted = Emitted { summaries: Vec::new(), rows: Vec::new(), spilled_bytes: 0 };
        let (sessions, fixed): (Vec<_>, Vec<_>) =
            metrics.iter().enumerate().partition(|(_, m)| matches!(m.window, WindowSpec::Session(_)));
        for (i, m) in sessions.into_iter().chain(fixed) {
            let mut windows = HashSet::new();
            let mut rows = 0;
            for j in 0..spill.parts() {
                let frame = match m.window {
                    WindowSpec::Session(_) => spill.take(&part_name(&metric_rows(i), j))?,
                    WindowSpec::Fixed(_) => spill
                        .take(&part_name(&metric_events(i), j))?
                        .map(|events| metric_rows_in_scope(&events, &schema, m, &scope))
                        .transpose()?,
                };
                let Some(frame) = frame else { continue };
                // one pass over the rows: each slice counts its windows and goes to the writer
                for offset in (0..frame.height()).step_by(BATCH_ROWS) {
                    let part = frame.slice(offset as i64, BATCH_ROWS);
                    let part = plan::FrameRows::new(&part, &schema, m)?;
                    for r in 0..part.len() {
                        windows.insert(part.window(r)?);
                    }
                    let batch = view::record_batch_from_frame(&part, &m.name, &out.run_id, out.epoch, out.computed_at)?;
                    sender.blocking_send(Msg::Batch(batch)).map_err(|_| Stop::WriterGone)?;
                }
                rows += frame.height() as u64;
                if out.keep_rows {
                    emitted.rows.extend(plan::rows_from_frame(&frame, &schema, m, &origin, out.computed_at)?);
                }
            }
            emitted.summaries.push(MetricSummary {
                name: m.name.clone(),
                window: m.window.kind_name().to_owned(),
                rows,
                windows: windows.len() as u64,
                planned_windows: None,
            });
        }
        emitted.spilled_bytes = spill.bytes_written();
        Ok(emitted)
    })
    .await
    .map_err(|e| Stop::from(Error::Internal(format!("plan task failed: {e}"))))?
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn batch() -> RecordBatch {
        RecordBatch::new_empty(tidemark_store::batch_view::arrow_schema())
    }

    #[tokio::test]
    async fn the_rows_stream_ends_only_at_end_and_fails_when_the_producer_stops_early() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Msg::Batch(batch())).await.unwrap();
        tx.send(Msg::End).await.unwrap();
        let items: Vec<_> = rows_stream(rx).collect().await;
        assert_eq!(items.len(), 1);
        assert!(items[0].is_ok());

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Msg::Batch(batch())).await.unwrap();
        drop(tx);
        let items: Vec<_> = rows_stream(rx).collect().await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        let err = items[1].as_ref().map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("stopped before all of its rows"), "{err}");
    }
}
