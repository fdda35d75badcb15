//! The stream service: a [`Source`] feeds the [`Engine`]; every flush commits the engine's row changes,
//! the source offsets and the engine checkpoint to the serving store in one atomic
//! [`ServingStore::write_provisional`], after appending the flush's dead letters, late-ledger entries
//! and raw events (all three idempotent by source coordinates).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tidemark_core::{Event, EventTime, RowChange, ValidSpec};
use tidemark_store::{
    ArchiveRow, DeadLetter, DeadLetterStore, LateRecord, RawArchive, ServingStore, SourceProgress, TopicPartition,
    WriteOutcome,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::{ArrivalClock, Clock};
use crate::engine::{Engine, PartitionAccounts};
use crate::error::Error;
use crate::metrics::{FlushStep, Health, Metrics};
use crate::output::{LateEvent, Output, Record};
use crate::source::{Assignment, Offsets, Source};

/// How often the loop publishes the partitions' lag (the Kafka source learns end offsets once a second).
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Tuning of the service loop.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Flush at least this often while anything is pending.
    pub flush_interval: Duration,
    /// Flush early once this many row changes are pending.
    pub flush_rows: usize,
    /// Pause the source while this many bytes of consumed records are not yet committed.
    pub max_in_flight_bytes: usize,
    /// Flushes committing at once (at least 1): with 2, the next flush archives while the previous one
    /// writes its rows.
    pub max_flushes_in_flight: usize,
    /// Records taken from the source per poll.
    pub poll_max: usize,
    /// Longest wait for records in one poll (bounds how late a due flush or a shutdown is noticed).
    pub poll_wait: Duration,
    /// When the source ends (a file), close every window (as if the watermark reached the end of time),
    /// commit, and stop. Without it the service stops at the end without closing windows.
    pub finish_at_end: bool,
    /// Attempts of one flush before the service gives up (with backoff between them).
    pub flush_attempts: u32,
    /// Largest payload kept verbatim in a dead letter (larger ones are replaced by their SHA-256).
    pub max_dead_letter_payload: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            flush_interval: Duration::from_millis(250),
            flush_rows: 20_000,
            max_in_flight_bytes: 64 << 20,
            max_flushes_in_flight: 2,
            poll_max: 2_000,
            poll_wait: Duration::from_millis(20),
            finish_at_end: false,
            flush_attempts: 8,
            max_dead_letter_payload: 64 << 10,
        }
    }
}

/// Where the service's output goes.
#[derive(Clone)]
pub struct Sinks {
    /// The serving store: rows, offsets and checkpoints.
    pub store: Arc<dyn ServingStore>,
    /// Dead letters and the late ledger.
    pub dead_letters: Arc<DeadLetterStore>,
    /// The raw event archive, if events are to be archived.
    pub archive: Option<Arc<RawArchive>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks")
            .field("dead_letters", &self.dead_letters)
            .field("archive", &self.archive)
            .finish_non_exhaustive()
    }
}

/// Why [`Service::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown signal was raised; everything consumed was committed.
    Shutdown,
    /// The source ended; everything consumed was committed.
    EndOfInput,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Why it stopped.
    pub stopped: Stopped,
    /// Flushes committed by this run.
    pub flushes: u64,
    /// The engine's accounts (cumulative since the pipeline's first start).
    pub accounts: BTreeMap<i32, PartitionAccounts>,
    /// Offsets committed last.
    pub offsets: Offsets,
    /// The writer epoch this run held.
    pub writer_epoch: u64,
    /// Far-ahead events held back from the watermark (suspects), per partition, since the partition was
    /// last assigned (or restored).
    pub suspects: BTreeMap<i32, u64>,
}

/// A running pipeline: engine state, source and sinks.
///
/// Why a crash loses and duplicates nothing: a restart claims a new writer epoch (fencing any older
/// instance), restores the engine from the checkpoint committed with the last rows and resumes the
/// source at the offsets committed with them. Records after those offsets are consumed again from the
/// same state, so they produce the same rows; what they had already appended to the archive and the
/// dead-letter store before the crash is recognised by its coordinates and not written twice.
///
/// Pipelined flushes: up to [`ServiceConfig::max_flushes_in_flight`] flushes are in flight while the engine
/// keeps consuming. Each runs in two stages, each stage strictly after the same stage of the previous
/// flush: (1) archive, dead letters and late ledger, (2) the atomic rows + offsets + checkpoint write. So
/// flush N+1 archives while flush N writes its rows, the archive sees offsets in order (it skips what it
/// recorded, so an out-of-order append would lose rows), every flush's side outputs are durable before its
/// offsets commit, and offsets commit in order. A failed flush fails the ones after it without writing.
///
/// Backpressure: bytes of records not yet covered by a committed flush are counted; above
/// [`ServiceConfig::max_in_flight_bytes`] the source is paused until the flushes in flight commit.
pub struct Service<S> {
    pipeline: String,
    engine: Engine,
    source: S,
    sinks: Sinks,
    clock: Arc<dyn Clock>,
    config: ServiceConfig,
    metrics: Arc<Metrics>,
    epoch: u64,
    sequence: u64,
    /// Next offset per partition, as consumed.
    positions: Offsets,
    /// Next offset per partition, as committed.
    committed: Offsets,
    /// Processing time from the records' arrival, for sources that carry it ([`Source::arrival_clock`]).
    arrival: Option<ArrivalClock>,
    /// Partitions assigned before processing time was known (no record yet): registered at the first
    /// record's arrival, as a live run would have registered them.
    unregistered: Vec<i32>,
}

impl<S> std::fmt::Debug for Service<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("pipeline", &self.pipeline)
            .field("epoch", &self.epoch)
            .field("sequence", &self.sequence)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

/// One flush, owned by the task that commits it.
struct Flush {
    changes: Vec<RowChange>,
    progress: SourceProgress,
    dead_letters: Vec<DeadLetter>,
    late: Vec<LateRecord>,
    archive: Vec<ArchiveRow>,
    bytes: usize,
    /// When the flush began (before the checkpoint).
    started: Instant,
    /// When it was handed to the commit task.
    prepared: Instant,
    offsets: Offsets,
}

/// What a committed flush reports back.
struct Flushed {
    bytes: usize,
    rows: u64,
    archived: u64,
    offsets: Offsets,
    elapsed: Duration,
}

impl<S: Source> Service<S> {
    /// Claims the pipeline's writer (fencing any older instance), restores the engine and the offsets
    /// committed last, and points the source at them.
    pub async fn start(
        spec: &ValidSpec,
        mut source: S,
        sinks: Sinks,
        clock: Arc<dyn Clock>,
        config: ServiceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        metrics.set_health(Health::Starting);
        let pipeline = spec.spec().name.clone();
        let marker = sinks.store.claim_writer(&pipeline).await?;
        let progress = sinks.store.load_progress(&pipeline).await?;
        let (engine, committed) = match progress {
            Some(p) => {
                let engine = match &p.checkpoint {
                    Some(blob) => Engine::restore(spec, blob)?,
                    None => Engine::new(spec),
                };
                let offsets = p.offsets.into_iter().map(|(tp, o)| ((tp.topic, tp.partition), o)).collect();
                (engine, offsets)
            }
            None => (Engine::new(spec), Offsets::new()),
        };
        source.seek(&committed)?;
        tracing::info!(
            pipeline = %pipeline,
            writer_epoch = marker.writer_epoch,
            partitions = committed.len(),
            live_rows = engine.live_rows(),
            "claimed the writer; resuming from the committed offsets"
        );
        metrics.observe_accounts(engine.accounts());
        Ok(Service {
            pipeline,
            sinks,
            clock,
            config,
            metrics,
            epoch: marker.writer_epoch,
            sequence: marker.sequence,
            positions: committed.clone(),
            committed,
            arrival: source.arrival_clock().then(|| ArrivalClock::new(engine.processing_time())),
            unregistered: Vec::new(),
            source,
            engine,
        })
    }

    /// The writer epoch this instance holds.
    pub fn writer_epoch(&self) -> u64 {
        self.epoch
    }

    /// Runs until `stop` is set (then flushes, commits and returns) or the source ends. Errors are
    /// returned after the failing flush exhausted its attempts; nothing uncommitted is lost, a restart
    /// resumes from the last commit.
    pub async fn run(mut self, stop: Arc<AtomicBool>) -> Result<RunSummary, Error> {
        self.metrics.set_health(Health::Running);
        let mut out = Output::default();
        let mut archive_rows: Vec<ArchiveRow> = Vec::new();
        let mut buf: Vec<Record> = Vec::with_capacity(self.config.poll_max);
        let mut pending_bytes = 0usize; // consumed since the last flush started
        let mut in_flight_bytes = 0usize; // consumed and not yet committed
        let mut pending_records = 0usize;
        let mut in_flight: VecDeque<JoinHandle<Result<Flushed, Error>>> = VecDeque::new();
        let mut chain = Chain::default(); // the signals of the flush started last
        let max_flushes = self.config.max_flushes_in_flight.max(1);
        let mut last_flush = Instant::now();
        let mut last_lag = Instant::now();
        let mut paused = false;
        let mut ended = false;
        let mut flushes = 0u64;

        let stopped = loop {
            let stopping = stop.load(Ordering::Relaxed);
            // 1. Collect finished flushes, oldest first (they commit in order).
            while in_flight.front().is_some_and(JoinHandle::is_finished) {
                let done = in_flight.pop_front().expect("checked").await.map_err(|e| Error::Internal(e.to_string()))?;
                let done = match done {
                    Ok(d) => d,
                    Err(e) => {
                        self.metrics.set_health(Health::Failed(e.to_string()));
                        return Err(e);
                    }
                };
                in_flight_bytes -= done.bytes;
                flushes += 1;
                self.after_commit(&done)?;
                if paused && in_flight_bytes <= self.config.max_in_flight_bytes {
                    self.source.resume()?;
                    paused = false;
                    self.metrics.paused.set(0);
                }
            }
            if let Some(now) = self.processing_now() {
                self.engine.advance(now, &mut out);
            }

            // 2. Stop when everything consumed is committed.
            let nothing_pending = pending_records == 0 && out.is_empty() && archive_rows.is_empty();
            if (stopping || ended) && in_flight.is_empty() && nothing_pending {
                break if stopping { Stopped::Shutdown } else { Stopped::EndOfInput };
            }

            // 3. Start a flush when one is due and fewer than the maximum are in flight.
            let due = last_flush.elapsed() >= self.config.flush_interval
                || out.changes.len() >= self.config.flush_rows
                || stopping
                || ended;
            if due && in_flight.len() < max_flushes && !nothing_pending {
                let flush = self.prepare_flush(&mut out, &mut archive_rows, pending_bytes)?;
                pending_bytes = 0;
                pending_records = 0;
                last_flush = Instant::now();
                let (after, next) = chain.link();
                in_flight.push_back(tokio::spawn(commit(
                    flush,
                    self.sinks.clone(),
                    self.config.clone(),
                    self.metrics.clone(),
                    after,
                    next,
                )));
            }

            // 4. Backpressure, and the lag gauge.
            self.metrics.in_flight_bytes.set(i64::try_from(in_flight_bytes).unwrap_or(i64::MAX));
            if last_lag.elapsed() >= LAG_EVERY {
                self.observe_lag();
                last_lag = Instant::now();
            }
            if !paused && in_flight_bytes > self.config.max_in_flight_bytes {
                self.source.pause()?;
                paused = true;
                self.metrics.paused.set(1);
                tracing::debug!(in_flight_bytes, "sink behind: source paused");
            }

            // 5. Consume.
            if stopping || ended {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            buf.clear();
            let asked = self.clock.now();
            let polled = self.source.poll(&mut buf, self.config.poll_max, self.config.poll_wait).await?;
            let wall = self.clock.now();
            if buf.is_empty()
                && let Some(clock) = &mut self.arrival
            {
                clock.silent(wall.since(asked).unwrap_or(tidemark_core::Duration::ZERO), wall);
            }
            for a in &polled.assignments {
                self.on_assignment(a, &mut out)?;
            }
            let bytes = self.advance_positions(&buf);
            pending_bytes += bytes;
            in_flight_bytes += bytes;
            pending_records += buf.len();
            let archiving = self.sinks.archive.is_some();
            for r in buf.drain(..) {
                let now = match &mut self.arrival {
                    Some(clock) => clock.record(r.received_at, wall),
                    None => wall,
                };
                for p in self.unregistered.drain(..) {
                    self.engine.register_partition(p, now);
                }
                // One decode serves the engine and the archive row; the record's payload and coordinates
                // move into the row.
                let decoded = self.engine.process(&r, now, &mut out);
                if archiving
                    && let Some(event) = decoded
                    && let Some(row) = archive_row(event, r)
                {
                    archive_rows.push(row);
                }
            }
            if polled.end {
                ended = true;
                if self.config.finish_at_end {
                    let now = self.processing_now().unwrap_or(wall);
                    self.engine.drain(now, &mut out);
                }
            }
        };
        self.metrics.observe_accounts(self.engine.accounts());
        self.metrics.set_health(Health::Stopping);
        tracing::info!(pipeline = %self.pipeline, ?stopped, flushes, "stream service stopped; everything consumed is committed");
        Ok(RunSummary {
            stopped,
            flushes,
            accounts: self.engine.accounts().clone(),
            offsets: self.committed.clone(),
            writer_epoch: self.epoch,
            suspects: self.engine.suspicion().into_iter().map(|(p, s)| (p, s.seen)).collect(),
        })
    }

    /// Processing time now: the wall clock, or the arrival clock (`None` before its first record).
    fn processing_now(&self) -> Option<EventTime> {
        match &self.arrival {
            Some(clock) => clock.now(),
            None => Some(self.clock.now()),
        }
    }

    fn on_assignment(&mut self, a: &Assignment, out: &mut Output) -> Result<(), Error> {
        let now = self.processing_now();
        match a {
            Assignment::Assigned(parts) => {
                tracing::info!(?parts, "partitions assigned");
                for (_, p) in parts {
                    match now {
                        Some(now) => self.engine.register_partition(*p, now),
                        None => self.unregistered.push(*p),
                    }
                }
                // Resume where this instance's engine state is, not where the group or the last commit
                // is: records consumed but not yet committed are already in the state.
                self.source.seek(&self.positions)?;
            }
            Assignment::Revoked(parts) => {
                tracing::info!(?parts, "partitions revoked");
                for (_, p) in parts {
                    self.unregistered.retain(|q| q != p);
                    // Before any record there is no processing time: nothing can fire yet anyway.
                    self.engine.remove_partition(*p, now.unwrap_or(EventTime::MIN), out);
                }
            }
        }
        Ok(())
    }

    /// Moves each partition's consumed position past the last of `records` from it (one lookup per
    /// partition run, no allocation unless a partition is new); returns the records' payload bytes.
    fn advance_positions(&mut self, records: &[Record]) -> usize {
        let mut bytes = 0;
        let mut i = 0;
        while i < records.len() {
            let c = &records[i].coords;
            // The run of consecutive records from the same partition (a fetch delivers them together).
            let mut last = i;
            bytes += records[i].payload.len();
            while last + 1 < records.len()
                && records[last + 1].coords.partition == c.partition
                && records[last + 1].coords.source == c.source
            {
                last += 1;
                bytes += records[last].payload.len();
            }
            let next = records[last].coords.offset + 1;
            match self.positions.iter_mut().find(|((t, p), _)| *p == c.partition && *t == c.source) {
                Some((_, o)) => *o = next,
                None => {
                    self.positions.insert((c.source.clone(), c.partition), next);
                }
            }
            i = last + 1;
        }
        bytes
    }

    /// Takes everything pending into a [`Flush`], with a checkpoint of the engine as it is now (so the
    /// checkpoint, the offsets and the rows describe the same point of the input).
    fn prepare_flush(
        &mut self,
        out: &mut Output,
        archive_rows: &mut Vec<ArchiveRow>,
        bytes: usize,
    ) -> Result<Flush, Error> {
        let started = Instant::now();
        let checkpoint = self.engine.checkpoint()?;
        self.metrics.observe_step(FlushStep::Checkpoint, started.elapsed());
        let prepare = Instant::now();
        self.metrics.checkpoint_bytes.set(i64::try_from(checkpoint.len()).unwrap_or(i64::MAX));
        self.metrics.live_rows.set(i64::try_from(self.engine.live_rows()).unwrap_or(i64::MAX));
        self.metrics.remembered_events.set(i64::try_from(self.engine.remembered_events()).unwrap_or(i64::MAX));
        self.sequence += 1;
        let progress = SourceProgress {
            pipeline: self.pipeline.clone(),
            writer_epoch: self.epoch,
            sequence: self.sequence,
            offsets: self.positions.iter().map(|((t, p), o)| (TopicPartition::new(t.clone(), *p), *o)).collect(),
            checkpoint: Some(checkpoint),
        };
        let dead_letters = out
            .dead_letters
            .drain(..)
            .map(|d| {
                let detail = match &d.field {
                    Some(f) => format!("{f}: {}", d.detail),
                    None => d.detail.clone(),
                };
                DeadLetter::new(
                    d.coords,
                    d.reason,
                    detail,
                    &d.payload,
                    self.config.max_dead_letter_payload,
                    d.received_at,
                )
            })
            .collect();
        let flush = Flush {
            changes: std::mem::take(&mut out.changes),
            progress,
            dead_letters,
            late: late_records(out.late.drain(..)),
            archive: std::mem::take(archive_rows),
            bytes,
            started,
            prepared: Instant::now(),
            offsets: self.positions.clone(),
        };
        self.metrics.observe_step(FlushStep::Prepare, prepare.elapsed());
        Ok(flush)
    }

    fn after_commit(&mut self, done: &Flushed) -> Result<(), Error> {
        self.committed.clone_from(&done.offsets);
        self.source.committed(&self.committed)?;
        let now = self.clock.now();
        self.metrics.flush_seconds.observe(done.elapsed.as_secs_f64());
        self.metrics.flushes.inc();
        self.metrics.rows_written.inc_by(done.rows);
        self.metrics.archived.inc_by(done.archived);
        self.metrics.committed(now);
        self.metrics.observe_accounts(self.engine.accounts());
        let processing = self.processing_now().unwrap_or(now);
        self.metrics.observe_watermarks(self.engine.watermark(), &self.engine.partition_watermarks(processing));
        self.metrics.observe_suspects(&self.engine.suspicion());
        Ok(())
    }

    /// Publishes each partition's lag (its end offset, as the source last learnt it, minus the position
    /// consumed). Called on a timer of the loop, not per commit: a consumer that is idle, paused or whose
    /// commits stall must still show its lag growing (the lag alert's whole point).
    fn observe_lag(&mut self) {
        for ((_, p), end) in self.source.end_offsets() {
            let pos = self.positions.iter().find(|((_, q), _)| *q == p).map_or(0, |(_, o)| *o);
            self.metrics.observe_lag(p, end - pos);
        }
    }
}

/// The archive row of a record that decoded to `event` (records that do not decode are dead letters, not
/// archived). Takes the record's payload and coordinates instead of copying them.
fn archive_row(event: Event, r: Record) -> Option<ArchiveRow> {
    Some(ArchiveRow {
        event_id: event.id.into_string(),
        event_time: event.time,
        ingest_time: r.received_at,
        coords: r.coords,
        // It decoded, so it is UTF-8; the check cannot fail and does not copy.
        payload: String::from_utf8(r.payload).ok()?,
    })
}

/// Groups late-ledger entries by event (one ledger record per event, listing every window it missed).
fn late_records(entries: impl Iterator<Item = LateEvent>) -> Vec<LateRecord> {
    let mut by_event: BTreeMap<tidemark_core::SourceCoordinates, Vec<LateEvent>> = BTreeMap::new();
    for e in entries {
        by_event.entry(e.coords.clone()).or_default().push(e);
    }
    by_event
        .into_iter()
        .map(|(coordinates, events)| {
            let first = &events[0];
            let body = serde_json::json!({
                "event_id": first.event_id,
                "event_time": first.event_time.to_string(),
                "payload": first.payload,
                "missed": events.iter().map(|e| serde_json::json!({
                    "metric": e.metric,
                    "window_start": e.window.start().to_string(),
                    "window_end": e.window.end().to_string(),
                    "dimensions": e.dims.encode(),
                    "reason": e.reason,
                    "watermark": e.watermark.to_string(),
                })).collect::<Vec<_>>(),
            });
            LateRecord { coordinates, event_time: first.event_time, body }
        })
        .collect()
}

/// The receiving ends of a flush's two signals: its side outputs are durable, its rows are committed.
/// The flush after it waits on them before each stage. A signal whose sender is dropped unsent means that
/// flush failed.
#[derive(Default)]
struct Chain {
    side_outputs: Option<oneshot::Receiver<()>>,
    committed: Option<oneshot::Receiver<()>>,
}

/// The sending ends, held by the flush's commit task.
struct Signals {
    side_outputs: oneshot::Sender<()>,
    committed: oneshot::Sender<()>,
}

impl Chain {
    /// What a new flush waits on (the previous flush's signals) and what it sends; `self` becomes the
    /// new flush's receivers.
    fn link(&mut self) -> (Chain, Signals) {
        let (side_tx, side_rx) = oneshot::channel();
        let (commit_tx, commit_rx) = oneshot::channel();
        let after = std::mem::replace(self, Chain { side_outputs: Some(side_rx), committed: Some(commit_rx) });
        (after, Signals { side_outputs: side_tx, committed: commit_tx })
    }
}

async fn after_previous(signal: Option<oneshot::Receiver<()>>) -> Result<(), Error> {
    match signal {
        Some(rx) => rx.await.map_err(|_| Error::Internal("the flush before this one failed".into())),
        None => Ok(()),
    }
}

/// Commits one flush: archive, dead letters and late ledger first (idempotent by coordinates), then the
/// rows with the offsets and checkpoint in one atomic write; each stage after the same stage of the
/// previous flush (`after`). Retries each stage with backoff; a fenced writer stops.
async fn commit(
    flush: Flush,
    sinks: Sinks,
    config: ServiceConfig,
    metrics: Arc<Metrics>,
    after: Chain,
    signals: Signals,
) -> Result<Flushed, Error> {
    metrics.observe_step(FlushStep::Spawn, flush.prepared.elapsed());
    after_previous(after.side_outputs).await?;
    let archived = retry(&config, &metrics, || side_outputs(&flush, &sinks, &metrics)).await?;
    // The next flush may archive now (a dropped receiver just means no flush follows yet).
    let _ = signals.side_outputs.send(());
    after_previous(after.committed).await?;
    let rows = retry(&config, &metrics, || write_rows(&flush, &sinks, &metrics)).await?;
    fail::fail_point!("stream.after_commit_before_ack", |_| Err(Error::Internal(
        "fail point stream.after_commit_before_ack".into()
    )));
    let _ = signals.committed.send(());
    Ok(Flushed { bytes: flush.bytes, rows, archived, offsets: flush.offsets, elapsed: flush.started.elapsed() })
}

/// Runs `step` until it succeeds, a non-retryable error, or `flush_attempts` attempts (backoff between).
async fn retry<T, F, Fut>(config: &ServiceConfig, metrics: &Metrics, mut step: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match step().await {
            Ok(v) => {
                if attempt > 1 {
                    metrics.set_health(Health::Running);
                }
                return Ok(v);
            }
            Err(e) if e.retryable() && attempt < config.flush_attempts => {
                let backoff = Duration::from_millis(100u64 << attempt.min(6));
                tracing::warn!(error = %e, attempt, ?backoff, "flush failed; retrying");
                metrics.set_health(Health::Degraded(e.to_string()));
                tokio::time::sleep(backoff).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Stage 1: the raw archive, then dead letters and the late ledger (all idempotent by coordinates).
/// Returns the rows archived.
async fn side_outputs(flush: &Flush, sinks: &Sinks, metrics: &Metrics) -> Result<u64, Error> {
    let mut archived = 0;
    if let Some(archive) = &sinks.archive
        && !flush.archive.is_empty()
    {
        let t = Instant::now();
        archived = archive.append(&flush.archive).await?.written as u64;
        metrics.observe_step(FlushStep::Archive, t.elapsed());
    }
    if !flush.dead_letters.is_empty() || !flush.late.is_empty() {
        let t = Instant::now();
        if !flush.dead_letters.is_empty() {
            sinks.dead_letters.append(&flush.dead_letters).await?;
        }
        if !flush.late.is_empty() {
            sinks.dead_letters.append_late(&flush.late).await?;
        }
        metrics.observe_step(FlushStep::DeadLetters, t.elapsed());
    }
    Ok(archived)
}

/// Stage 2: rows, offsets and checkpoint in one atomic write. Returns the rows applied.
async fn write_rows(flush: &Flush, sinks: &Sinks, metrics: &Metrics) -> Result<u64, Error> {
    let t = Instant::now();
    let rows = match sinks.store.write_provisional(&flush.changes, &flush.progress).await? {
        WriteOutcome::Committed(stats) => {
            metrics.store_retries.inc_by(u64::from(stats.retries));
            stats.applied
        }
        WriteOutcome::AlreadyCommitted => 0,
    };
    metrics.observe_step(FlushStep::Rows, t.elapsed());
    Ok(rows)
}
