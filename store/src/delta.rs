//! The Delta Lake serving store (deltalake MERGE at any object_store URL: `file://`, `s3://`, `memory://`).
//!
//! Layout under the base URL: `serving/` is the serving table (one record per key and kind, partitioned
//! by `metric` and `window_date`, the UTC date of `window_start`, so a MERGE rewrites only the partitions
//! of the windows it writes); `corrections_audit/` is the audit log (a Delta table any reader can query);
//! `checkpoints/` holds operator-state blobs referenced by committed progress; `progress/` holds each
//! progress record (`<pipeline>/<version>.json`), written before the commit that records its version.
//!
//! Progress rides on the serving table's commits: each provisional write is one MERGE commit carrying a
//! Delta app transaction (`appId = tidemark.progress.<pipeline>`, `version = epoch << 32 | sequence`) and
//! the progress itself in the commit metadata (key `tidemark`). deltalake does not refuse a repeated
//! (appId, version), so the writer reads the recorded version inside its retry loop and refuses stale
//! epochs and replays itself; two racing commits of one appId conflict (`ConcurrentTransaction`), and
//! the loser re-plans. A MERGE that changes nothing writes no commit, so then the marker is committed on
//! its own. Correction batches use `appId = tidemark.corrections.<batch id>`. Loading progress reads the
//! recorded version from the snapshot (app transactions survive log checkpoints) and then that version's
//! progress record: two reads, however long the log, and unaffected by expired-log cleanup (tables
//! written before the records existed fall back to the commit metadata in the log's history).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, TimeUnit};
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::prelude::{DataFrame, Expr, SessionContext, col, lit};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{DataType, StructField, Transaction};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, RowChange, RowKey, Window};
use tokio::sync::Mutex;
use url::Url;

use crate::ServingStore;
use crate::error::{Error, Result};
use crate::model::{
    self, ApplyOutcome, AuditEntry, CommitMarker, CorrectionBatch, Emission, Flat, Kind, MetricFilter, SourceProgress,
    StoredAuditEntry, WriteOutcome, WriteStats,
};
use crate::postgres::{backoff, check_progress, offsets_from_json, offsets_to_json};

/// Key columns of the serving table (with the partition columns).
const KEY_COLUMNS: [&str; 7] =
    ["metric", "window_date", "window_start", "window_end", "dims", "kind", "delta_revision"];
/// Columns a winning MERGE replaces.
const VALUE_COLUMNS: [&str; 10] = [
    "agg_values",
    "events",
    "layer",
    "revision",
    "pane",
    "watermark",
    "batch_run_id",
    "batch_epoch",
    "computed_at",
    "deleted",
];

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
        let arm = crate::failpoint_log::Arm::default();
        #[cfg(feature = "failpoints")]
        let rows =
            crate::failpoint_log::wrap(rows, arm.clone()).await.map_err(Error::delta(rows_url.as_str(), "opening"))?;
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

/// Parses a table or base URL (`file://`, `s3://`, `memory://`) so that it ends with `/`.
pub(crate) fn parse_base(url: &str) -> Result<Url> {
    let mut u = Url::parse(url).map_err(|e| Error::invalid("delta url", format!("{url:?}: {e}")))?;
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}

/// Creates the folder of a `file://` table (deltalake does not); other schemes need nothing.
pub(crate) async fn ensure_local_dir(u: &Url) -> Result<()> {
    if u.scheme() != "file" {
        return Ok(());
    }
    let path = u.to_file_path().map_err(|_| Error::invalid("delta url", format!("{u} is not a local path")))?;
    tokio::fs::create_dir_all(&path)
        .await
        .map_err(|e| Error::invalid("delta url", format!("cannot create {}: {e}", path.display())))
}

/// Creates the table `table` stands for unless it exists, and returns it loaded. Safe to race: when
/// another process creates it first, the table as that process created it is returned.
pub(crate) async fn create_table_if_missing(
    table: DeltaTable,
    name: &str,
    columns: Vec<StructField>,
    partitions: Vec<&str>,
) -> Result<DeltaTable> {
    if table.version().is_some() {
        return Ok(table);
    }
    let url = table.table_url().as_str().to_owned();
    let created = table
        .clone()
        .create()
        .with_table_name(name)
        .with_columns(columns)
        .with_partition_columns(partitions)
        .with_save_mode(deltalake::protocol::SaveMode::Ignore)
        .await;
    match created {
        Ok(t) => Ok(t),
        // another process created it first
        Err(e) if is_conflict(&e) => {
            let mut t = table;
            t.update_state().await.map_err(Error::delta(&url, "loading"))?;
            Ok(t)
        }
        Err(e) => Err(Error::delta(&url, "creating")(e)),
    }
}

/// Reads the rows of `table` (a loaded snapshot; none if the table does not exist yet) matching `filter`.
pub(crate) async fn scan_table(table: &DeltaTable, filter: Expr) -> Result<Vec<RecordBatch>> {
    query_table(table, |df| df.filter(filter)).await
}

/// Runs `query` (filters, projections, aggregates) over `table` and collects the result (nothing if the
/// table does not exist yet).
pub(crate) async fn query_table(
    table: &DeltaTable,
    query: impl FnOnce(DataFrame) -> deltalake::datafusion::error::Result<DataFrame>,
) -> Result<Vec<RecordBatch>> {
    let url = table.table_url().as_str().to_owned();
    if table.version().is_none() {
        return Ok(Vec::new());
    }
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).map_err(Error::delta(&url, "registering the store"))?;
    let provider =
        table.table_provider().await.map_err(|e| Error::delta(&url, "scanning")(DeltaTableError::from(e)))?;
    let df = ctx
        .read_table(provider)
        .and_then(query)
        .map_err(|e| Error::delta(&url, "scanning")(DeltaTableError::from(e)))?;
    df.collect().await.map_err(|e| Error::delta(&url, "scanning")(DeltaTableError::from(e)))
}

pub(crate) async fn open_table(url: &Url, opts: &HashMap<String, String>) -> Result<DeltaTable> {
    crate::objects::register_handlers();
    DeltaTable::try_from_url_with_storage_options(url.clone(), opts.clone())
        .await
        .map_err(Error::delta(url.as_str(), "opening"))
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
    arm: crate::failpoint_log::Arm,
}

impl fmt::Debug for DeltaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaStore").field("url", &self.url).field("stats", &self.stats).finish()
    }
}

/// What [`DeltaStore::vacuum`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VacuumStats {
    /// Data files of the serving table no longer in it.
    pub data_files: usize,
    /// Checkpoint blobs and progress records no pipeline's recorded progress names.
    pub state_objects: usize,
}

/// What the commit metadata of a provisional write carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProgressMeta {
    pipeline: String,
    txn_version: i64,
    writer_epoch: u64,
    sequence: u64,
    /// Offsets as written by `offsets_to_json`.
    offsets: Option<String>,
    /// Object path of the checkpoint blob.
    checkpoint: Option<String>,
}

enum Committed {
    Done { applied: u64, retries: u32 },
    Skipped(Skip),
}

enum Skip {
    AlreadyCommitted,
}

fn progress_app(pipeline: &str) -> String {
    format!("tidemark.progress.{pipeline}")
}

fn corrections_app(id: &str) -> String {
    format!("tidemark.corrections.{id}")
}

fn txn_version(epoch: u64, seq: u64) -> i64 {
    ((epoch << 32) | seq) as i64
}

fn split_version(v: i64) -> CommitMarker {
    let v = v as u64;
    CommitMarker { writer_epoch: v >> 32, sequence: v & 0xffff_ffff }
}

pub(crate) fn ts_type() -> ArrowType {
    ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn arrow_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("metric", ArrowType::Utf8, true),
        Field::new("window_date", ArrowType::Utf8, true),
        Field::new("window_start", ts_type(), true),
        Field::new("window_end", ts_type(), true),
        Field::new("dims", ArrowType::Utf8, true),
        Field::new("kind", ArrowType::Utf8, true),
        Field::new("delta_revision", ArrowType::Int64, true),
        Field::new("agg_values", ArrowType::Utf8, true),
        Field::new("events", ArrowType::Int64, true),
        Field::new("layer", ArrowType::Utf8, true),
        Field::new("revision", ArrowType::Int64, true),
        Field::new("pane", ArrowType::Utf8, true),
        Field::new("watermark", ts_type(), true),
        Field::new("batch_run_id", ArrowType::Utf8, true),
        Field::new("batch_epoch", ArrowType::Int64, true),
        Field::new("computed_at", ts_type(), true),
        Field::new("deleted", ArrowType::Boolean, true),
    ]))
}

fn delta_columns() -> Vec<StructField> {
    let s = |n: &str| StructField::new(n, DataType::STRING, true);
    let l = |n: &str| StructField::new(n, DataType::LONG, true);
    let t = |n: &str| StructField::new(n, DataType::TIMESTAMP, true);
    vec![
        s("metric"),
        s("window_date"),
        t("window_start"),
        t("window_end"),
        s("dims"),
        s("kind"),
        l("delta_revision"),
        s("agg_values"),
        l("events"),
        s("layer"),
        l("revision"),
        s("pane"),
        t("watermark"),
        s("batch_run_id"),
        l("batch_epoch"),
        t("computed_at"),
        StructField::new("deleted", DataType::BOOLEAN, true),
    ]
}

fn audit_columns() -> Vec<StructField> {
    let s = |n: &str| StructField::new(n, DataType::STRING, true);
    let t = |n: &str| StructField::new(n, DataType::TIMESTAMP, true);
    vec![
        s("batch_id"),
        StructField::new("seq", DataType::LONG, true),
        s("run_id"),
        s("metric"),
        t("window_start"),
        t("window_end"),
        s("dims"),
        s("aggregate"),
        s("old_value"),
        s("new_value"),
        s("cause"),
        t("applied_at"),
    ]
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Row => "row",
        Kind::Delta(_) => "delta",
        Kind::Emission { delta: false, .. } => "emission",
        Kind::Emission { delta: true, .. } => "emission_delta",
    }
}

/// The `delta_revision` column: the revision of a delta, -1 for a row, and for an emission record the
/// write's txn version (`emission_tag`), so that an emission record never matches an earlier one in the
/// MERGE and is always appended.
fn delta_revision_column(f: &Flat, emission_tag: i64) -> i64 {
    match f.kind {
        Kind::Emission { .. } => emission_tag,
        _ => f.delta_revision(),
    }
}

fn to_batch(flats: &[Flat], emission_tag: i64) -> Result<RecordBatch> {
    let ts = |v: Vec<Option<i64>>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
    let strs = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let longs = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as ArrayRef;
    let dates: Vec<String> = flats.iter().map(Flat::window_date).collect();
    let columns: Vec<ArrayRef> = vec![
        strs(flats.iter().map(|f| Some(f.metric.as_str())).collect()),
        strs(dates.iter().map(|d| Some(d.as_str())).collect()),
        ts(flats.iter().map(|f| Some(f.window_start)).collect()),
        ts(flats.iter().map(|f| Some(f.window_end)).collect()),
        strs(flats.iter().map(|f| Some(f.dims.as_str())).collect()),
        strs(flats.iter().map(|f| Some(kind_str(f.kind))).collect()),
        longs(flats.iter().map(|f| Some(delta_revision_column(f, emission_tag))).collect()),
        strs(flats.iter().map(|f| Some(f.values_json.as_str())).collect()),
        longs(flats.iter().map(|f| Some(f.events)).collect()),
        strs(flats.iter().map(|f| Some(model::layer_str(f.layer))).collect()),
        longs(flats.iter().map(|f| f.revision).collect()),
        strs(flats.iter().map(|f| f.pane).collect()),
        ts(flats.iter().map(|f| f.watermark).collect()),
        strs(flats.iter().map(|f| f.batch_run_id.as_deref()).collect()),
        longs(flats.iter().map(|f| f.batch_epoch).collect()),
        ts(flats.iter().map(|f| Some(f.computed_at)).collect()),
        Arc::new(BooleanArray::from(flats.iter().map(|f| Some(f.deleted)).collect::<Vec<_>>())) as ArrayRef,
    ];
    RecordBatch::try_new(arrow_schema(), columns).map_err(|e| Error::Corrupt(format!("building a batch: {e}")))
}

fn ts_lit(us: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into())))
}

/// The precedence predicate of `Flat::wins_over`, over source `s` and target `t`.
fn precedence() -> Expr {
    let s = |c: &str| col(format!("s.{c}"));
    let t = |c: &str| col(format!("t.{c}"));
    let batch_wins =
        s("layer").eq(lit("batch")).and(t("layer").eq(lit("speed")).or(s("batch_epoch").gt_eq(t("batch_epoch"))));
    let speed_wins = s("layer")
        .eq(lit("speed"))
        .and(t("layer").eq(lit("speed")))
        .and(s("revision").gt(t("revision")).or(s("deleted").eq(lit(true)).and(s("revision").gt_eq(t("revision")))));
    s("kind").eq(lit("row")).and(batch_wins.or(speed_wins))
}

/// Join on the key, plus literal partition filters so that the MERGE only scans touched partitions.
fn join_predicate(flats: &[Flat]) -> Expr {
    let mut pred = KEY_COLUMNS
        .iter()
        .map(|c| col(format!("t.{c}")).eq(col(format!("s.{c}"))))
        .reduce(Expr::and)
        .unwrap_or(lit(true));
    let metrics: BTreeSet<&str> = flats.iter().map(|f| f.metric.as_str()).collect();
    let dates: BTreeSet<String> = flats.iter().map(Flat::window_date).collect();
    pred = pred.and(col("t.metric").in_list(metrics.into_iter().map(lit).collect(), false));
    pred.and(col("t.window_date").in_list(dates.into_iter().map(lit).collect(), false))
}

/// The error for a failed commit that is not a conflict. With the `failpoints` feature, the Delta fail point's
/// `return` is a retryable contention error, like the Postgres store's fail point.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn commit_error(url: &str, what: &'static str, attempt: u32, e: DeltaTableError) -> Error {
    #[cfg(feature = "failpoints")]
    if crate::failpoint_log::is_fail_point(&e) {
        return Error::Contention { attempts: attempt + 1, last: e.to_string() };
    }
    Error::delta(url, what)(e)
}

pub(crate) fn is_conflict(e: &DeltaTableError) -> bool {
    match e {
        DeltaTableError::VersionAlreadyExists(_) => true,
        DeltaTableError::Transaction { source } => {
            matches!(source, TransactionError::CommitConflict(_) | TransactionError::MaxCommitAttempts(_))
        }
        other => {
            let s = other.to_string();
            s.contains("Commit failed") || s.contains("Concurrent transaction")
        }
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
            (delta_columns(), vec!["metric", "window_date"], "serving")
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

    /// Runs one MERGE of `flats` with app transaction `app_id`, retrying conflicts. `plan` sees the
    /// recorded version of `app_id` and returns the version to commit, or a reason to skip.
    async fn commit<P>(
        &self,
        flats: &[Flat],
        emissions: usize,
        app_id: &str,
        plan: P,
        meta: serde_json::Value,
    ) -> Result<Committed>
    where
        P: Fn(Option<i64>) -> Result<std::result::Result<i64, Skip>> + Send + Sync,
    {
        let url = self.rows_url.as_str();
        let mut retries = 0u32;
        let mut last = String::new();
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let table = self.latest(false).await?;
            let recorded = table
                .snapshot()
                .map_err(Error::delta(url, "reading the snapshot"))?
                .transaction_version(table.log_store().as_ref(), app_id)
                .await
                .map_err(Error::delta(url, "reading app transactions"))?;
            let version = match plan(recorded)? {
                Ok(v) => v,
                Err(skip) => return Ok(Committed::Skipped(skip)),
            };
            let props = CommitProperties::default()
                .with_application_transaction(Transaction::new(app_id, version))
                .with_metadata([("tidemark".to_owned(), meta.clone())]);
            let before = table.version();
            let result = if flats.is_empty() {
                self.marker_commit(table, props.clone()).await.map(|t| (t, 0))
            } else {
                self.merge(table, flats, version, props.clone()).await
            };
            let (table, applied) = match result {
                Ok(ok) => ok,
                Err(e) if is_conflict(&e) => {
                    retries += 1;
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    last = e.to_string();
                    continue;
                }
                Err(e) => return Err(commit_error(url, "merging", attempt, e)),
            };
            let table = if table.version() == before {
                // a MERGE that changes nothing writes no commit: record the marker on its own
                self.stats.marker_commits.fetch_add(1, Ordering::Relaxed);
                match self.marker_commit(table, props).await {
                    Ok(t) => t,
                    Err(e) if is_conflict(&e) => {
                        retries += 1;
                        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                        last = e.to_string();
                        continue;
                    }
                    Err(e) => return Err(commit_error(url, "committing the marker", attempt, e)),
                }
            } else {
                table
            };
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.keep(table, false).await;
            // emission records are always inserted (their delta_revision is this write's txn version)
            let applied = applied.saturating_sub(emissions as u64);
            return Ok(Committed::Done { applied, retries });
        }
        Err(Error::Contention { attempts: self.max_attempts, last })
    }

    async fn marker_commit(&self, table: DeltaTable, props: CommitProperties) -> Result<DeltaTable, DeltaTableError> {
        let snapshot = table.snapshot()?;
        let finalized = CommitBuilder::from(props)
            .build(Some(snapshot), table.log_store(), DeltaOperation::Update { predicate: None })
            .await?;
        let mut t = table.clone();
        t.update_state().await?;
        debug_assert!(t.version() >= Some(finalized.version()));
        Ok(t)
    }

    async fn merge(
        &self,
        table: DeltaTable,
        flats: &[Flat],
        emission_tag: i64,
        props: CommitProperties,
    ) -> Result<(DeltaTable, u64), DeltaTableError> {
        let batch = to_batch(flats, emission_tag).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        let source = SessionContext::new().read_batch(batch)?;
        let (table, metrics) = table
            .merge(source, join_predicate(flats))
            .with_source_alias("s")
            .with_target_alias("t")
            .with_commit_properties(props)
            .when_matched_update(|u| {
                VALUE_COLUMNS.iter().fold(u.predicate(precedence()), |u, c| u.update(*c, col(format!("s.{c}"))))
            })?
            .when_not_matched_insert(|i| {
                KEY_COLUMNS.iter().chain(VALUE_COLUMNS.iter()).fold(i, |i, c| i.set(*c, col(format!("s.{c}"))))
            })?
            .await?;
        let applied = (metrics.num_target_rows_inserted + metrics.num_target_rows_updated) as u64;
        Ok((table, applied))
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
        // the truth, late events included, and supersedes every delta of the key (ServingStore::read_deltas)
        let (rows, deltas): (Vec<Flat>, Vec<Flat>) = self
            .scan_flats(&["row", "delta"], false, metrics, from, to)
            .await?
            .into_iter()
            .partition(|f| matches!(f.kind, Kind::Row));
        fn key(f: &Flat) -> (&str, i64, i64, &str) {
            (&f.metric, f.window_start, f.window_end, &f.dims)
        }
        let batch_keys: std::collections::HashSet<_> =
            rows.iter().filter(|f| f.layer == tidemark_core::Layer::Batch).map(key).collect();
        deltas.into_iter().filter(|f| !batch_keys.contains(&key(f))).map(Flat::into_row).collect()
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
        let table = self.latest(false).await?;
        let mut filter = col("kind")
            .in_list(kinds.iter().map(|k| lit(*k)).collect(), false)
            .and(col("window_start").gt_eq(ts_lit(from.as_micros())))
            .and(col("window_start").lt(ts_lit(to.as_micros())));
        if live_only {
            filter = filter.and(col("deleted").eq(lit(false)));
        }
        // partition pruning by date (dates of 4-digit years compare as strings)
        let (d0, d1) = (model::date_of(from.as_micros()), model::date_of(to.as_micros()));
        if d0.len() == 10 && d1.len() == 10 {
            filter = filter.and(col("window_date").gt_eq(lit(d0))).and(col("window_date").lt_eq(lit(d1)));
        }
        if let MetricFilter::Only(m) = metrics {
            filter = filter.and(col("metric").in_list(m.iter().map(|x| lit(x.as_str())).collect(), false));
        }
        let batches = scan_table(&table, filter).await?;
        let mut flats = Vec::new();
        for b in &batches {
            flats.extend(from_batch(b)?.into_iter().filter(|f| metrics.matches(&f.metric)));
        }
        flats.sort_by(model::cmp_keys);
        Ok(flats)
    }

    async fn find_progress(&self, pipeline: &str) -> Result<Option<(i64, ProgressMeta)>> {
        let table = self.latest(false).await?;
        let url = self.rows_url.as_str();
        if table.version().is_none() {
            return Ok(None);
        }
        let app = progress_app(pipeline);
        let recorded = table
            .snapshot()
            .map_err(Error::delta(url, "reading the snapshot"))?
            .transaction_version(table.log_store().as_ref(), &app)
            .await
            .map_err(Error::delta(url, "reading app transactions"))?;
        let Some(version) = recorded else { return Ok(None) };
        let record = self.progress_path(pipeline, version);
        match self.objects.get(&record).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
                let meta: ProgressMeta = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Corrupt(format!("progress record {record}: {e}")))?;
                if meta.pipeline != pipeline || meta.txn_version != version {
                    return Err(Error::Corrupt(format!("progress record {record} names another pipeline or version")));
                }
                return Ok(Some((version, meta)));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(Error::ObjectStore { url: self.url.clone(), source }),
        }
        // a table written before progress records existed: the commit metadata in the log
        let mut history = table.history(None);
        while let Some(info) = history.try_next().await.map_err(Error::delta(url, "reading history"))? {
            let Some(meta) = info.info.get("tidemark") else { continue };
            let Ok(meta) = serde_json::from_value::<ProgressMeta>(meta.clone()) else { continue };
            if meta.pipeline == pipeline && meta.txn_version == version {
                return Ok(Some((version, meta)));
            }
        }
        Err(Error::Corrupt(format!(
            "the serving table records version {version} of {app} but no commit metadata for it (log cleaned up?)"
        )))
    }

    fn progress_path(&self, pipeline: &str, version: i64) -> ObjPath {
        self.prefix.clone().join("progress").join(pipeline).join(format!("{version:020}.json").as_str())
    }

    /// Writes the progress record of `meta` (before the commit that records its version: only that commit
    /// makes it reachable; a retry of the same version writes the same record).
    async fn put_progress(&self, meta: &ProgressMeta) -> Result<()> {
        let body = serde_json::to_vec(meta).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.objects
            .put(&self.progress_path(&meta.pipeline, meta.txn_version), PutPayload::from(body))
            .await
            .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
        Ok(())
    }

    fn checkpoint_path(&self, pipeline: &str, version: i64) -> ObjPath {
        self.prefix.clone().join("checkpoints").join(pipeline).join(format!("{version:020}.bin").as_str())
    }

    /// Writes the audit lines of `batch` unless already written (idempotent per batch id).
    async fn write_audit(&self, batch: &CorrectionBatch, applied_at: i64) -> Result<()> {
        if batch.audit.is_empty() {
            return Ok(());
        }
        let url = self.audit_url.as_str();
        let app = format!("tidemark.audit.{}", batch.id);
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let table = self.latest(true).await?;
            let recorded = table
                .snapshot()
                .map_err(Error::delta(url, "reading the snapshot"))?
                .transaction_version(table.log_store().as_ref(), &app)
                .await
                .map_err(Error::delta(url, "reading app transactions"))?;
            if recorded.is_some() {
                return Ok(());
            }
            let rb = audit_batch(batch, applied_at)?;
            let props = CommitProperties::default().with_application_transaction(Transaction::new(&app, 1));
            match table.write(vec![rb]).with_commit_properties(props).await {
                Ok(t) => {
                    self.keep(t, true).await;
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => return Err(Error::delta(url, "writing the audit log")(e)),
            }
        }
        Err(Error::Contention { attempts: self.max_attempts, last: "audit log commit".into() })
    }

    /// Compacts small files of the serving table (frequent micro-batch commits create many). Returns
    /// (files removed, files added).
    pub async fn optimize(&self, target_file_size: Option<u64>) -> Result<(u64, u64)> {
        let url = self.rows_url.as_str();
        let table = self.latest(false).await?;
        let mut builder = table.optimize();
        if let Some(size) = target_file_size.and_then(std::num::NonZeroU64::new) {
            builder = builder.with_target_size(size);
        }
        let (table, metrics) = builder.await.map_err(Error::delta(url, "optimizing"))?;
        self.keep(table, false).await;
        Ok((metrics.num_files_removed, metrics.num_files_added))
    }

    /// Deletes what nothing reachable references any more and is older than `retention` (which must exceed
    /// the longest write: a write's files exist before its commit): the serving table's data files no
    /// longer in the table, and the checkpoint blobs and progress records of every pipeline except those
    /// its recorded progress names.
    pub async fn vacuum(&self, retention: std::time::Duration) -> Result<VacuumStats> {
        let url = self.rows_url.as_str();
        let table = self.latest(false).await?;
        let period =
            chrono::Duration::from_std(retention).map_err(|e| Error::invalid("vacuum retention", e.to_string()))?;
        let (table, metrics) = table
            .vacuum()
            .with_retention_period(period)
            .with_enforce_retention_duration(false)
            .await
            .map_err(Error::delta(url, "vacuuming"))?;
        self.keep(table, false).await;
        let state_objects = self.vacuum_state(period).await?;
        Ok(VacuumStats { data_files: metrics.files_deleted.len(), state_objects })
    }

    /// Deletes checkpoint blobs and progress records older than `retention` that the recorded progress of
    /// their pipeline does not name.
    async fn vacuum_state(&self, retention: chrono::Duration) -> Result<usize> {
        let cutoff = chrono::Utc::now() - retention;
        let store_err = |source| Error::ObjectStore { url: self.url.clone(), source };
        let mut keep: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut deleted = 0;
        for folder in ["checkpoints", "progress"] {
            let root = self.prefix.clone().join(folder);
            let objects: Vec<object_store::ObjectMeta> =
                self.objects.list(Some(&root)).try_collect().await.map_err(store_err)?;
            for meta in objects {
                let Some(parts) = meta.location.prefix_match(&root) else { continue };
                let parts: Vec<String> = parts.map(|p| p.as_ref().to_owned()).collect();
                let [pipeline, _] = parts.as_slice() else { continue };
                if meta.last_modified > cutoff || model::check_id("pipeline", pipeline).is_err() {
                    continue;
                }
                if !keep.contains_key(pipeline) {
                    let mut named = BTreeSet::new();
                    if let Some((version, m)) = self.find_progress(pipeline).await? {
                        named.insert(self.progress_path(pipeline, version).to_string());
                        named.extend(m.checkpoint);
                    }
                    keep.insert(pipeline.clone(), named);
                }
                if keep.get(pipeline).is_some_and(|named| !named.contains(meta.location.as_ref())) {
                    match self.objects.delete(&meta.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                        Err(e) => return Err(store_err(e)),
                    }
                }
            }
        }
        Ok(deleted)
    }

    /// Number of data files of the serving table.
    pub async fn file_count(&self) -> Result<usize> {
        let table = self.latest(false).await?;
        let uris = table.get_file_uris().map_err(Error::delta(self.rows_url.as_str(), "listing files"))?;
        Ok(uris.count())
    }
}

fn audit_batch(batch: &CorrectionBatch, applied_at: i64) -> Result<RecordBatch> {
    let a = &batch.audit;
    let agg = |v: &Option<AggValue>| v.map(|v| serde_json::to_string(&v).unwrap_or_else(|_| "null".into()));
    let ts = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
    let dims: Vec<String> = a.iter().map(|e| e.key.dims.encode()).collect();
    let olds: Vec<Option<String>> = a.iter().map(|e| agg(&e.old)).collect();
    let news: Vec<Option<String>> = a.iter().map(|e| agg(&e.new)).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("batch_id", ArrowType::Utf8, true),
        Field::new("seq", ArrowType::Int64, true),
        Field::new("run_id", ArrowType::Utf8, true),
        Field::new("metric", ArrowType::Utf8, true),
        Field::new("window_start", ts_type(), true),
        Field::new("window_end", ts_type(), true),
        Field::new("dims", ArrowType::Utf8, true),
        Field::new("aggregate", ArrowType::Utf8, true),
        Field::new("old_value", ArrowType::Utf8, true),
        Field::new("new_value", ArrowType::Utf8, true),
        Field::new("cause", ArrowType::Utf8, true),
        Field::new("applied_at", ts_type(), true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![batch.id.as_str(); a.len()])),
        Arc::new(Int64Array::from((0..a.len() as i64).collect::<Vec<_>>())),
        Arc::new(StringArray::from(vec![batch.run_id.as_str(); a.len()])),
        Arc::new(StringArray::from(a.iter().map(|e| e.key.metric.as_str()).collect::<Vec<_>>())),
        ts(a.iter().map(|e| e.key.window.start().as_micros()).collect()),
        ts(a.iter().map(|e| e.key.window.end().as_micros()).collect()),
        Arc::new(StringArray::from(dims.iter().map(String::as_str).collect::<Vec<_>>())),
        Arc::new(StringArray::from(a.iter().map(|e| e.aggregate.as_str()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(olds.iter().map(Option::as_deref).collect::<Vec<_>>())),
        Arc::new(StringArray::from(news.iter().map(Option::as_deref).collect::<Vec<_>>())),
        Arc::new(StringArray::from(a.iter().map(|e| e.cause.as_str()).collect::<Vec<_>>())),
        ts(vec![applied_at; a.len()]),
    ];
    RecordBatch::try_new(schema, cols).map_err(|e| Error::Corrupt(format!("building the audit batch: {e}")))
}

/// Column `name` of `b`, cast to `ty`.
pub(crate) fn column(b: &RecordBatch, name: &str, ty: &ArrowType) -> Result<ArrayRef> {
    let c = b.column_by_name(name).ok_or_else(|| Error::Corrupt(format!("column {name} is missing")))?;
    cast(c, ty).map_err(|e| Error::Corrupt(format!("column {name}: {e}")))
}

pub(crate) fn strings(b: &RecordBatch, name: &str) -> Result<StringArray> {
    let c = column(b, name, &ArrowType::Utf8)?;
    c.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| Error::Corrupt(format!("column {name}")))
}

pub(crate) fn longs(b: &RecordBatch, name: &str) -> Result<Int64Array> {
    let c = column(b, name, &ArrowType::Int64)?;
    c.as_any().downcast_ref::<Int64Array>().cloned().ok_or_else(|| Error::Corrupt(format!("column {name}")))
}

pub(crate) fn times(b: &RecordBatch, name: &str) -> Result<TimestampMicrosecondArray> {
    let c = column(b, name, &ts_type())?;
    c.as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| Error::Corrupt(format!("column {name}")))
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_owned())
}

fn opt_i64(a: &Int64Array, i: usize) -> Option<i64> {
    a.is_valid(i).then(|| a.value(i))
}

fn opt_ts(a: &TimestampMicrosecondArray, i: usize) -> Option<i64> {
    a.is_valid(i).then(|| a.value(i))
}

fn from_batch(b: &RecordBatch) -> Result<Vec<Flat>> {
    let metric = strings(b, "metric")?;
    let ws = times(b, "window_start")?;
    let we = times(b, "window_end")?;
    let dims = strings(b, "dims")?;
    let kind = strings(b, "kind")?;
    let drev = longs(b, "delta_revision")?;
    let values = strings(b, "agg_values")?;
    let events = longs(b, "events")?;
    let layer = strings(b, "layer")?;
    let revision = longs(b, "revision")?;
    let pane = strings(b, "pane")?;
    let watermark = times(b, "watermark")?;
    let run = strings(b, "batch_run_id")?;
    let epoch = longs(b, "batch_epoch")?;
    let computed = times(b, "computed_at")?;
    let deleted = column(b, "deleted", &ArrowType::Boolean)?;
    let deleted = deleted
        .as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| Error::Corrupt("column deleted".into()))?;
    let corrupt = |w: &str| Error::Corrupt(format!("serving table column {w}"));
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        let k = match kind.value(i) {
            "row" => Kind::Row,
            "delta" => Kind::Delta(u32::try_from(drev.value(i)).map_err(|_| corrupt("delta_revision"))?),
            "emission" | "emission_delta" => Kind::Emission {
                revision: opt_i64(&revision, i)
                    .and_then(|r| u32::try_from(r).ok())
                    .ok_or_else(|| corrupt("revision"))?,
                delta: kind.value(i) == "emission_delta",
            },
            _ => return Err(corrupt("kind")),
        };
        let layer_s = layer.value(i);
        out.push(Flat {
            metric: metric.value(i).to_owned(),
            window_start: opt_ts(&ws, i).ok_or_else(|| corrupt("window_start"))?,
            window_end: opt_ts(&we, i).ok_or_else(|| corrupt("window_end"))?,
            dims: dims.value(i).to_owned(),
            kind: k,
            values_json: values.value(i).to_owned(),
            events: opt_i64(&events, i).ok_or_else(|| corrupt("events"))?,
            layer: model::parse_layer(layer_s).ok_or_else(|| corrupt("layer"))?,
            revision: opt_i64(&revision, i),
            pane: opt_str(&pane, i).as_deref().and_then(model::parse_pane).map(model::pane_str),
            watermark: opt_ts(&watermark, i),
            batch_run_id: opt_str(&run, i),
            batch_epoch: opt_i64(&epoch, i),
            computed_at: opt_ts(&computed, i).ok_or_else(|| corrupt("computed_at"))?,
            deleted: deleted.is_valid(i) && deleted.value(i),
        });
    }
    Ok(out)
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
            match self.commit(&[], 0, &app, plan, meta).await {
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
        let (mut flats, emissions) = model::encode(changes.len(), || {
            Ok::<_, Error>((
                model::flatten_changes(changes, crate::now())?,
                model::emission_flats(changes, progress.writer_epoch)?,
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
        match self.commit(&flats, n_emissions, &progress_app(&progress.pipeline), plan, meta).await? {
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
        let v = table
            .snapshot()
            .map_err(Error::delta(self.rows_url.as_str(), "reading the snapshot"))?
            .transaction_version(table.log_store().as_ref(), progress_app(pipeline))
            .await
            .map_err(Error::delta(self.rows_url.as_str(), "reading app transactions"))?;
        Ok(v.map(split_version))
    }

    async fn read_range(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<MetricRow>> {
        self.read(false, metrics, from, to).await
    }

    async fn read_deltas(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<MetricRow>> {
        self.read(true, metrics, from, to).await
    }

    async fn read_emissions(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<Emission>> {
        let flats = self.scan_flats(&["emission", "emission_delta"], false, metrics, from, to).await?;
        let mut out = flats.into_iter().map(Flat::into_emission).collect::<Result<Vec<_>>>()?;
        Ok(model::first_emissions(out.drain(..)))
    }

    async fn apply_corrections(&self, batch: &CorrectionBatch) -> Result<ApplyOutcome> {
        let flats = model::encode(batch.changes.len(), || model::flatten_corrections(batch, crate::now()))?;
        let applied_at = crate::now().as_micros();
        let meta =
            serde_json::json!({ "correction_batch": batch.id, "run_id": batch.run_id, "applied_at": applied_at });
        let plan = |cur: Option<i64>| -> Result<std::result::Result<i64, Skip>> {
            Ok(if cur.is_some() { Err(Skip::AlreadyCommitted) } else { Ok(1) })
        };
        // Two tables cannot commit together, so the audit lines go first (idempotent per batch id) and
        // `audit_log` hides them until the batch's data commit below has landed: a crash in between leaves
        // no visible audit of an unapplied batch, and a retry of the same batch finds its lines written.
        self.write_audit(batch, applied_at).await?;
        #[cfg(feature = "failpoints")]
        let _armed = self.arm.hold();
        let outcome = self.commit(&flats, 0, &corrections_app(&batch.id), plan, meta).await?;
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
        let v = table
            .snapshot()
            .map_err(Error::delta(self.rows_url.as_str(), "reading the snapshot"))?
            .transaction_version(table.log_store().as_ref(), corrections_app(id))
            .await
            .map_err(Error::delta(self.rows_url.as_str(), "reading app transactions"))?;
        Ok(v.is_some())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash after the audit commit and before the data commit (found by the backfill kill test): the
    /// audit lines stay hidden, and the retried batch applies once with its lines shown once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_lines_of_an_unapplied_batch_are_hidden_until_it_applies() {
        use crate::model::Correction;
        use tidemark_core::{Dimensions, MetricRow, Origin};
        let dir = tempfile::tempdir().unwrap();
        let store = DeltaStoreConfig::new(format!("file://{}", dir.path().display())).build().await.unwrap();
        crate::ServingStore::init(&store).await.unwrap();
        let t = |s: i64| EventTime::from_secs(s).unwrap();
        let key = RowKey {
            metric: "views".into(),
            window: Window::new(t(0), t(60)).unwrap(),
            dims: Dimensions::new([("page".to_owned(), "/a".to_owned())]),
        };
        let row = MetricRow {
            key: key.clone(),
            values: std::collections::BTreeMap::from([("n".to_owned(), AggValue::Int(3))]),
            events: 3,
            origin: Origin::Batch { run_id: "run-1".into(), epoch: 1 },
            computed_at: t(1),
        };
        let batch = CorrectionBatch {
            id: "batch-1".into(),
            run_id: "run-1".into(),
            epoch: 1,
            changes: vec![Correction::Upsert(row)],
            audit: vec![AuditEntry {
                key,
                aggregate: "n".into(),
                old: None,
                new: Some(AggValue::Int(3)),
                cause: "late_events".into(),
            }],
        };
        // the crash: only the audit commit landed
        store.write_audit(&batch, t(2).as_micros()).await.unwrap();
        assert!(crate::ServingStore::audit_log(&store, None).await.unwrap().is_empty());
        assert!(!crate::ServingStore::corrections_applied(&store, "batch-1").await.unwrap());
        // the retry
        let out = crate::ServingStore::apply_corrections(&store, &batch).await.unwrap();
        assert!(matches!(out, ApplyOutcome::Applied(_)), "{out:?}");
        let audit = crate::ServingStore::audit_log(&store, None).await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].entry.cause, "late_events");
        assert_eq!(crate::ServingStore::apply_corrections(&store, &batch).await.unwrap(), ApplyOutcome::AlreadyApplied);
        assert_eq!(crate::ServingStore::audit_log(&store, Some("batch-1")).await.unwrap().len(), 1);
    }

    #[test]
    fn txn_versions_order_by_epoch_then_sequence() {
        let v = txn_version(3, 17);
        assert_eq!(split_version(v), CommitMarker { writer_epoch: 3, sequence: 17 });
        assert!(txn_version(2, u64::from(u32::MAX)) < txn_version(3, 0));
    }
}
