//! The Delta Lake serving store (deltalake at any object_store URL: `file://`, `s3://`, `memory://`).
//!
//! Layout under the base URL: `serving/` is the serving table (one record per key and kind, partitioned
//! by `metric`, `window_date` (the UTC date of `window_start`), `window_hour` (its UTC hour) and `kind`, so a
//! write rewrites only the partitions of the windows and kinds it writes (copy-on-write, `rewrite.rs`), and a
//! scan of current rows never reads the emission log; tables created before the hour and kind partitions
//! keep working with deltalake's MERGE, without that pruning); `corrections_audit/` is the audit log (a Delta table any reader can query);
//! `checkpoints/` holds operator-state blobs referenced by committed progress; `progress/` holds each
//! progress record (`<pipeline>/<version>.json`), written before the commit that records its version.
//!
//! Progress rides on the serving table's commits: each provisional write is one commit carrying a
//! Delta app transaction (`appId = tidemark.progress.<pipeline>`, `version = epoch << 32 | sequence`) and
//! the progress itself in the commit metadata (key `tidemark`). deltalake does not refuse a repeated
//! (appId, version), so the writer reads the recorded version inside its retry loop and refuses stale
//! epochs and replays itself; two racing commits of one appId conflict (`ConcurrentTransaction`), and
//! the loser re-plans. A write that changes nothing makes no commit, so then the marker is committed on
//! its own. Correction batches use `appId = tidemark.corrections.<batch id>`. Loading progress reads the
//! recorded version from the snapshot (app transactions survive log checkpoints) and then that version's
//! progress record: two reads, however long the log, and unaffected by expired-log cleanup (tables
//! written before the records existed fall back to the commit metadata in the log's history).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use deltalake::DeltaTable;
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::prelude::{Expr, col, lit};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, RowChange, RowKey, Window};
use tokio::sync::Mutex;
use url::Url;

use crate::delta_io::{
    create_table_if_missing, ensure_local_dir, longs, open_table, parse_base, recorded_txn_version, scan_table,
    stream_table, strings, times,
};
use crate::error::{Error, Result};
use crate::flat::{self, Flat};
use crate::model::{
    self, ApplyOutcome, AuditEntry, CommitMarker, CorrectionBatch, Emission, MetricFilter, SourceProgress,
    StoredAuditEntry, WriteOutcome, WriteStats,
};
use crate::progress::{check_progress, offsets_from_json, offsets_to_json};
use crate::scan::{Chunks, EmissionChunk, RowChunk};
use crate::serving::ServingStore;
use deltalake::arrow::array::RecordBatch;
use futures::{StreamExt as _, TryStreamExt as _};

mod audit;
#[cfg(feature = "failpoints")]
mod failpoint_log;
mod merge;
mod progress;
mod rewrite;
pub(crate) mod schema;
mod vacuum;

use audit::audit_columns;
use merge::{Apply, Committed, Skip};
use progress::{ProgressMeta, corrections_app, progress_app, split_version, txn_version};
use schema::{delta_columns, from_batch, opt_str};
pub use vacuum::VacuumStats;

/// Partition columns of a new serving table. `kind` keeps current rows and the emission log (as many
/// records again) in separate files: a correction MERGE rewrites the row files only.
/// `window_hour` (the UTC hour of the window start) keeps a write's files to the hours it touches: a stream
/// flush rewrites the files of the last hours, not of the day, and a correction of a few hours (an
/// incremental reconcile) rewrites those hours.
const PARTITIONS: [&str; 4] = ["metric", "window_date", schema::WINDOW_HOUR, "kind"];

/// How to open a [`DeltaStore`].
#[derive(Debug, Clone)]
pub struct DeltaStoreConfig {
    /// Base URL (`file:///path`, `s3://bucket/prefix`, `memory:///name`).
    pub url: String,
    /// object_store options (credentials etc.; AWS env vars are read too).
    pub storage_options: HashMap<String, String>,
    /// Commit attempts before giving up with [`Error::Contention`].
    pub max_attempts: u32,
}

impl DeltaStoreConfig {
    /// Defaults for `url`: 12 attempts.
    pub fn new(url: impl Into<String>) -> Self {
        DeltaStoreConfig { url: url.into(), storage_options: HashMap::new(), max_attempts: 12 }
    }

    /// Opens the store (call [`ServingStore::init`] to create the tables).
    pub async fn build(self) -> Result<DeltaStore> {
        let base = parse_base(&self.url)?;
        let join = |name: &str| -> Result<Url> {
            base.join(name).map_err(|e| Error::invalid("delta url", format!("{}: {e}", self.url)))
        };
        let rows_url = join("serving/")?;
        let audit_url = join("corrections_audit/")?;
        for u in [&rows_url, &audit_url] {
            ensure_local_dir(u).await?;
        }
        let rows = open_table(&rows_url, &self.storage_options).await?;
        #[cfg(feature = "failpoints")]
        let arm = failpoint_log::Arm::default();
        #[cfg(feature = "failpoints")]
        let rows = failpoint_log::wrap(rows, arm.clone()).await.map_err(Error::delta(rows_url.as_str(), "opening"))?;
        let audit = open_table(&audit_url, &self.storage_options).await?;
        let (objects, prefix) = crate::objects::open(&base, &self.storage_options)?;
        Ok(DeltaStore {
            url: self.url,
            rows_url,
            audit_url,
            rows: Mutex::new(rows),
            audit: Mutex::new(audit),
            objects,
            prefix,
            max_attempts: self.max_attempts.max(1),
            stats: DeltaStats::default(),
            #[cfg(feature = "failpoints")]
            arm,
        })
    }
}

/// Counters of a store instance.
#[derive(Debug, Default)]
pub struct DeltaStats {
    /// Commits written (MERGE or marker).
    pub commits: AtomicU64,
    /// Commit attempts that conflicted with a concurrent commit and were re-planned.
    pub conflicts: AtomicU64,
    /// Marker-only commits (the MERGE changed nothing).
    pub marker_commits: AtomicU64,
}

/// The Delta Lake serving store.
pub struct DeltaStore {
    url: String,
    rows_url: Url,
    audit_url: Url,
    rows: Mutex<DeltaTable>,
    audit: Mutex<DeltaTable>,
    objects: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    max_attempts: u32,
    stats: DeltaStats,
    /// Arms the fail point in the serving table's log store around this store's own commits.
    #[cfg(feature = "failpoints")]
    arm: failpoint_log::Arm,
}

impl fmt::Debug for DeltaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaStore").field("url", &self.url).field("stats", &self.stats).finish()
    }
}

impl DeltaStore {
    /// Counters of this instance.
    pub fn stats(&self) -> &DeltaStats {
        &self.stats
    }

    /// URL of the serving table.
    pub fn serving_table_url(&self) -> &Url {
        &self.rows_url
    }

    /// URL of the audit table.
    pub fn audit_table_url(&self) -> &Url {
        &self.audit_url
    }

    async fn latest(&self, audit: bool) -> Result<DeltaTable> {
        let (lock, url) = if audit { (&self.audit, &self.audit_url) } else { (&self.rows, &self.rows_url) };
        let mut table = lock.lock().await.clone();
        table.update_state().await.map_err(Error::delta(url.as_str(), "loading"))?;
        Ok(table)
    }

    async fn keep(&self, table: DeltaTable, audit: bool) {
        let lock = if audit { &self.audit } else { &self.rows };
        let mut guard = lock.lock().await;
        if table.version() > guard.version() {
            *guard = table;
        }
    }

    async fn create_if_missing(&self, audit: bool) -> Result<()> {
        let (columns, partitions, name) = if audit {
            (audit_columns(), vec!["batch_id"], "corrections_audit")
        } else {
            (delta_columns(), PARTITIONS.to_vec(), "serving")
        };
        let lock = if audit { &self.audit } else { &self.rows };
        let table = lock.lock().await.clone();
        if table.version().is_some() {
            return Ok(());
        }
        let table = create_table_if_missing(table, name, columns, partitions).await?;
        self.keep(table, audit).await;
        Ok(())
    }

    async fn read(
        &self,
        deltas: bool,
        metrics: &MetricFilter,
        from: EventTime,
        to: EventTime,
    ) -> Result<Vec<MetricRow>> {
        if !deltas {
            let flats = self.scan_flats(&["row"], true, metrics, from, to).await?;
            return flats.into_iter().map(Flat::into_row).collect();
        }
        // a delta counts only while its key's row is a speed row: a batch row (or a batch tombstone) holds
        // the truth, late events included, and supersedes every delta of the key (ServingStore::read_deltas).
        // Deltas are few (none unless late_policy = "append"), so they are read first and the batch rows only
        // when there are any: the range's speed rows are never held.
        let deltas = self.scan_flats(&["delta"], false, metrics, from, to).await?;
        if deltas.is_empty() {
            return Ok(Vec::new());
        }
        let batch_rows =
            self.scan_flats_where(&["row"], false, metrics, from, to, col("layer").eq(lit("batch"))).await?;
        fn key(f: &Flat) -> (&str, i64, i64, &str) {
            (&f.metric, f.window_start, f.window_end, &f.dims)
        }
        let batch_keys: std::collections::HashSet<_> = batch_rows.iter().map(key).collect();
        deltas.into_iter().filter(|f| !batch_keys.contains(&key(f))).map(Flat::into_row).collect()
    }

    /// Records of `kinds` of `metric` whose window starts in `[from, to)` (`live_only`: not deleted), as the
    /// filter of a scan pruned by the metric and date partitions.
    fn range_filter(&self, kinds: &[&str], live_only: bool, metric: &str, from: EventTime, to: EventTime) -> Expr {
        let mut filter = col("kind")
            .in_list(kinds.iter().map(|k| lit(*k)).collect(), false)
            .and(col("metric").eq(lit(metric)))
            .and(col("window_start").gt_eq(ts_lit(from.as_micros())))
            .and(col("window_start").lt(ts_lit(to.as_micros())));
        if live_only {
            filter = filter.and(col("deleted").eq(lit(false)));
        }
        let (d0, d1) = (flat::date_of(from.as_micros()), flat::date_of(to.as_micros()));
        if d0.len() == 10 && d1.len() == 10 {
            filter = filter.and(col("window_date").gt_eq(lit(d0))).and(col("window_date").lt_eq(lit(d1)));
        }
        filter
    }

    /// The serving table's records matching `filter` whose window starts in `[from, to)`, streamed.
    /// Only `columns`, when given.
    fn stream(
        &self,
        filter: Expr,
        from: EventTime,
        to: EventTime,
        columns: Option<&'static [&'static str]>,
    ) -> Chunks<'_, RecordBatch> {
        futures::stream::once(async move {
            let table = self.latest(false).await?;
            let filter = with_hours(&table, filter, from, to);
            stream_table(&table, filter, columns).await
        })
        .try_flatten()
        .boxed()
    }

    /// Records of `kinds` whose window starts in `[from, to)`, pruned by the metric and date partitions,
    /// sorted by key.
    async fn scan_flats(
        &self,
        kinds: &[&str],
        live_only: bool,
        metrics: &MetricFilter,
        from: EventTime,
        to: EventTime,
    ) -> Result<Vec<Flat>> {
        self.scan_flats_where(kinds, live_only, metrics, from, to, lit(true)).await
    }

    /// [`scan_flats`](Self::scan_flats) of the records that also match `extra`.
    async fn scan_flats_where(
        &self,
        kinds: &[&str],
        live_only: bool,
        metrics: &MetricFilter,
        from: EventTime,
        to: EventTime,
        extra: Expr,
    ) -> Result<Vec<Flat>> {
        let table = self.latest(false).await?;
        let mut filter = col("kind")
            .in_list(kinds.iter().map(|k| lit(*k)).collect(), false)
            .and(col("window_start").gt_eq(ts_lit(from.as_micros())))
            .and(col("window_start").lt(ts_lit(to.as_micros())));
        if live_only {
            filter = filter.and(col("deleted").eq(lit(false)));
        }
        // partition pruning by date (dates of 4-digit years compare as strings)
        let (d0, d1) = (flat::date_of(from.as_micros()), flat::date_of(to.as_micros()));
        if d0.len() == 10 && d1.len() == 10 {
            filter = filter.and(col("window_date").gt_eq(lit(d0))).and(col("window_date").lt_eq(lit(d1)));
        }
        if let MetricFilter::Only(m) = metrics {
            filter = filter.and(col("metric").in_list(m.iter().map(|x| lit(x.as_str())).collect(), false));
        }
        let filter = with_hours(&table, filter, from, to);
        let batches = scan_table(&table, filter.and(extra)).await?;
        let mut flats = Vec::new();
        for b in &batches {
            flats.extend(from_batch(b)?.into_iter().filter(|f| metrics.matches(&f.metric)));
        }
        flats.sort_by(flat::cmp_keys);
        Ok(flats)
    }
}

/// `filter` pruned to the hour partitions that can hold window starts in `[from, to)`, on a table that has
/// them (hours of 4-digit years compare as strings; the last is the hour of `to`'s last microsecond, so a
/// range ending on the hour does not read the next one).
fn with_hours(table: &DeltaTable, filter: Expr, from: EventTime, to: EventTime) -> Expr {
    let (h0, h1) = (flat::hour_of(from.as_micros()), flat::hour_of(to.as_micros().saturating_sub(1)));
    if !schema::is_hourly(table) || h0.len() != 13 || h1.len() != 13 {
        return filter;
    }
    filter.and(col(schema::WINDOW_HOUR).gt_eq(lit(h0))).and(col(schema::WINDOW_HOUR).lt_eq(lit(h1)))
}

fn ts_lit(us: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into())))
}

#[async_trait]
impl ServingStore for DeltaStore {
    async fn init(&self) -> Result<()> {
        self.create_if_missing(false).await?;
        self.create_if_missing(true).await
    }

    async fn claim_writer(&self, pipeline: &str) -> Result<CommitMarker> {
        model::check_id("pipeline", pipeline)?;
        let claimed = std::sync::Mutex::new(CommitMarker { writer_epoch: 0, sequence: 0 });
        let app = progress_app(pipeline);
        // The claim commit repeats the last committed progress so that load_progress finds it at the
        // recorded version; its own txn version carries the new epoch with sequence 0. If anything of
        // this pipeline commits meanwhile, the claim is re-planned from the new state.
        for _ in 0..self.max_attempts {
            let previous = self.find_progress(pipeline).await?;
            let recorded = previous.as_ref().map(|(v, _)| *v);
            let prev_meta = previous.map(|(_, m)| m);
            let epoch = recorded.map(|v| split_version(v).writer_epoch).unwrap_or(0) + 1;
            let version = txn_version(epoch, 0);
            let meta = ProgressMeta {
                pipeline: pipeline.to_owned(),
                txn_version: version,
                writer_epoch: prev_meta.as_ref().map_or(epoch, |m| m.writer_epoch),
                sequence: prev_meta.as_ref().map_or(0, |m| m.sequence),
                offsets: prev_meta.as_ref().and_then(|m| m.offsets.clone()),
                checkpoint: prev_meta.as_ref().and_then(|m| m.checkpoint.clone()),
            };
            // the same version always carries the same record: it repeats the progress found above
            self.put_progress(&meta).await?;
            let meta = serde_json::to_value(&meta).map_err(|e| Error::Corrupt(e.to_string()))?;
            let plan = |cur: Option<i64>| {
                if cur != recorded {
                    // someone committed meanwhile: re-plan
                    return Err(Error::Contention { attempts: 1, last: "claim raced".into() });
                }
                *claimed.lock().map_err(|_| Error::Corrupt("poisoned".into()))? =
                    CommitMarker { writer_epoch: epoch, sequence: 0 };
                Ok(Ok(version))
            };
            match self.commit(&[], 0, &app, plan, meta, Apply::Merge).await {
                Ok(_) => return claimed.into_inner().map_err(|_| Error::Corrupt("poisoned".into())),
                Err(Error::Contention { .. }) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Contention { attempts: self.max_attempts, last: "claiming the writer epoch".into() })
    }

    async fn write_provisional(&self, changes: &[RowChange], progress: &SourceProgress) -> Result<WriteOutcome> {
        check_progress(progress)?;
        let (mut flats, emissions) = flat::encode(changes.len(), || {
            Ok::<_, Error>((
                flat::flatten_changes(changes, crate::now())?,
                flat::emission_flats(changes, progress.writer_epoch)?,
            ))
        })?;
        let offered = flats.len() as u64;
        let n_emissions = emissions.len();
        flats.extend(emissions);
        let version = txn_version(progress.writer_epoch, progress.sequence);
        // the blob and the progress record are written first under names unique to this write; only the
        // commit makes them reachable
        let checkpoint_path = self.checkpoint_path(&progress.pipeline, version);
        let meta = ProgressMeta {
            pipeline: progress.pipeline.clone(),
            txn_version: version,
            writer_epoch: progress.writer_epoch,
            sequence: progress.sequence,
            offsets: Some(offsets_to_json(&progress.offsets)),
            checkpoint: progress.checkpoint.as_ref().map(|_| checkpoint_path.to_string()),
        };
        let blob = async {
            if let Some(blob) = &progress.checkpoint {
                self.objects
                    .put(&checkpoint_path, PutPayload::from(blob.clone()))
                    .await
                    .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
            }
            Ok::<(), Error>(())
        };
        let (blob, record) = tokio::join!(blob, self.put_progress(&meta));
        blob?;
        record?;
        let meta = serde_json::to_value(&meta).map_err(|e| Error::Corrupt(e.to_string()))?;
        let pipeline = progress.pipeline.clone();
        let plan = |cur: Option<i64>| -> Result<std::result::Result<i64, Skip>> {
            let cur = cur.map(split_version).unwrap_or(CommitMarker { writer_epoch: 0, sequence: 0 });
            if progress.writer_epoch < cur.writer_epoch {
                return Err(Error::Fenced {
                    pipeline: pipeline.clone(),
                    epoch: progress.writer_epoch,
                    current: cur.writer_epoch,
                });
            }
            if cur.covers(progress) {
                return Ok(Err(Skip::AlreadyCommitted));
            }
            Ok(Ok(version))
        };
        #[cfg(feature = "failpoints")]
        let _armed = self.arm.hold();
        match self
            .commit(&flats, n_emissions, &progress_app(&progress.pipeline), plan, meta, Apply::CopyOnWrite)
            .await?
        {
            Committed::Done { applied, retries } => {
                Ok(WriteOutcome::Committed(WriteStats { offered, applied, retries }))
            }
            Committed::Skipped(Skip::AlreadyCommitted) => Ok(WriteOutcome::AlreadyCommitted),
        }
    }

    async fn load_progress(&self, pipeline: &str) -> Result<Option<SourceProgress>> {
        model::check_id("pipeline", pipeline)?;
        let Some((_, meta)) = self.find_progress(pipeline).await? else { return Ok(None) };
        let Some(offsets) = meta.offsets else { return Ok(None) };
        let checkpoint = match meta.checkpoint {
            Some(p) => {
                let path = ObjPath::from(p.as_str());
                let got = self
                    .objects
                    .get(&path)
                    .await
                    .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
                let bytes = got.bytes().await.map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
                Some(bytes.to_vec())
            }
            None => None,
        };
        Ok(Some(SourceProgress {
            pipeline: pipeline.to_owned(),
            writer_epoch: meta.writer_epoch,
            sequence: meta.sequence,
            offsets: offsets_from_json(&offsets)?,
            checkpoint,
        }))
    }

    async fn committed_marker(&self, pipeline: &str) -> Result<Option<CommitMarker>> {
        model::check_id("pipeline", pipeline)?;
        let table = self.latest(false).await?;
        if table.version().is_none() {
            return Ok(None);
        }
        let v = recorded_txn_version(&table, self.rows_url.as_str(), &progress_app(pipeline)).await?;
        Ok(v.map(split_version))
    }

    async fn read_range(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<MetricRow>> {
        self.read(false, metrics, from, to).await
    }

    async fn read_deltas(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<MetricRow>> {
        self.read(true, metrics, from, to).await
    }

    fn scan_rows<'a>(&'a self, metric: &str, from: EventTime, to: EventTime) -> Chunks<'a, RowChunk> {
        let filter = self.range_filter(&["row"], true, metric, from, to);
        // every column: a chunk decodes the rows a reader picks in full
        self.stream(filter, from, to, None).and_then(|b| async move { RowChunk::serving(b) }).boxed()
    }

    fn scan_emissions<'a>(&'a self, metric: &str, from: EventTime, to: EventTime) -> Chunks<'a, EmissionChunk> {
        let filter = self.range_filter(&["emission", "emission_delta"], false, metric, from, to);
        let columns = Some(EmissionChunk::SERVING_COLUMNS);
        self.stream(filter, from, to, columns).and_then(|b| async move { EmissionChunk::serving(&b) }).boxed()
    }

    async fn read_emissions(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<Emission>> {
        let flats = self.scan_flats(&["emission", "emission_delta"], false, metrics, from, to).await?;
        let mut out = flats.into_iter().map(Flat::into_emission).collect::<Result<Vec<_>>>()?;
        Ok(flat::first_emissions(out.drain(..)))
    }

    async fn apply_corrections(&self, batch: &CorrectionBatch) -> Result<ApplyOutcome> {
        let flats = flat::encode(batch.changes.len(), || flat::flatten_corrections(batch, crate::now()))?;
        let applied_at = crate::now().as_micros();
        let meta =
            serde_json::json!({ "correction_batch": batch.id, "run_id": batch.run_id, "applied_at": applied_at });
        let plan = |cur: Option<i64>| -> Result<std::result::Result<i64, Skip>> {
            Ok(if cur.is_some() { Err(Skip::AlreadyCommitted) } else { Ok(1) })
        };
        // Two tables cannot commit together, so the audit lines go first (idempotent per batch id) and
        // `audit_log` hides them until the batch's data commit below has landed: a crash in between leaves
        // no visible audit of an unapplied batch, and a retry of the same batch finds its lines written.
        let started = std::time::Instant::now();
        self.write_audit(batch, applied_at).await?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, lines = batch.changes.len(), "audit lines written");
        #[cfg(feature = "failpoints")]
        let _armed = self.arm.hold();
        let started = std::time::Instant::now();
        let outcome = self.commit(&flats, 0, &corrections_app(&batch.id), plan, meta, Apply::CopyOnWrite).await?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, records = flats.len(), "correction batch committed");
        Ok(match outcome {
            Committed::Done { applied, retries } => {
                ApplyOutcome::Applied(WriteStats { offered: flats.len() as u64, applied, retries })
            }
            Committed::Skipped(_) => ApplyOutcome::AlreadyApplied,
        })
    }

    async fn corrections_applied(&self, id: &str) -> Result<bool> {
        model::check_id("correction batch id", id)?;
        let table = self.latest(false).await?;
        if table.version().is_none() {
            return Ok(false);
        }
        let v = recorded_txn_version(&table, self.rows_url.as_str(), &corrections_app(id)).await?;
        Ok(v.is_some())
    }

    async fn corrections_applied_at(&self, id: &str) -> Result<Option<EventTime>> {
        if !self.corrections_applied(id).await? {
            return Ok(None);
        }
        let table = self.latest(true).await?;
        let batches = crate::delta_io::query_table(&table, |df| {
            df.filter(col("batch_id").eq(lit(id)))?.select(vec![col("applied_at")])?.limit(0, Some(1))
        })
        .await?;
        match batches.iter().find(|b| b.num_rows() > 0) {
            Some(b) => Ok(EventTime::from_micros(times(b, "applied_at")?.value(0))),
            None => Ok(None),
        }
    }

    async fn audit_log(&self, id: Option<&str>) -> Result<Vec<StoredAuditEntry>> {
        let table = self.latest(true).await?;
        let filter = match id {
            Some(id) => col("batch_id").eq(lit(id)),
            None => lit(true),
        };
        let batches = scan_table(&table, filter).await?;
        let mut out: Vec<(String, i64, StoredAuditEntry)> = Vec::new();
        for b in &batches {
            let batch_id = strings(b, "batch_id")?;
            let seq = longs(b, "seq")?;
            let run = strings(b, "run_id")?;
            let metric = strings(b, "metric")?;
            let ws = times(b, "window_start")?;
            let we = times(b, "window_end")?;
            let dims = strings(b, "dims")?;
            let agg = strings(b, "aggregate")?;
            let old = strings(b, "old_value")?;
            let new = strings(b, "new_value")?;
            let cause = strings(b, "cause")?;
            let at = times(b, "applied_at")?;
            let corrupt = |w: &str| Error::Corrupt(format!("audit column {w}"));
            let parse = |s: Option<String>| -> Result<Option<AggValue>> {
                s.map(|s| serde_json::from_str(&s).map_err(|e| Error::Corrupt(format!("audit value: {e}")))).transpose()
            };
            for i in 0..b.num_rows() {
                let start = EventTime::from_micros(ws.value(i)).ok_or_else(|| corrupt("window_start"))?;
                let end = EventTime::from_micros(we.value(i)).ok_or_else(|| corrupt("window_end"))?;
                let entry = StoredAuditEntry {
                    batch_id: batch_id.value(i).to_owned(),
                    run_id: run.value(i).to_owned(),
                    entry: AuditEntry {
                        key: RowKey {
                            metric: metric.value(i).to_owned(),
                            window: Window::new(start, end).ok_or_else(|| corrupt("window"))?,
                            dims: Dimensions::decode(dims.value(i)).map_err(|e| Error::Corrupt(e.to_string()))?,
                        },
                        aggregate: agg.value(i).to_owned(),
                        old: parse(opt_str(&old, i))?,
                        new: parse(opt_str(&new, i))?,
                        cause: cause.value(i).to_owned(),
                    },
                    applied_at: EventTime::from_micros(at.value(i)).ok_or_else(|| corrupt("applied_at"))?,
                };
                out.push((entry.batch_id.clone(), seq.value(i), entry));
            }
        }
        // audit lines of a batch whose data commit has not landed (see `apply_corrections`) are hidden
        let mut applied: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        for (id, _, _) in &out {
            if !applied.contains_key(id) {
                applied.insert(id.clone(), self.corrections_applied(id).await?);
            }
        }
        out.retain(|(id, _, _)| applied[id]);
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        Ok(out.into_iter().map(|(_, _, e)| e).collect())
    }
}
