//! The batch view's handle ([`BatchView`]): replaces a run's range of the table in one commit, reads
//! ranges back, and keeps run manifests beside the table. The table's definition is [`schema`], public as
//! `tidemark_store::batch_view`.

use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::Schema as ArrowSchema;
use deltalake::datafusion::catalog::streaming::StreamingTable;
use deltalake::datafusion::datasource::provider_as_source;
use deltalake::datafusion::error::{DataFusionError, Result as DfResult};
use deltalake::datafusion::execution::{SendableRecordBatchStream, TaskContext};
use deltalake::datafusion::logical_expr::LogicalPlanBuilder;
use deltalake::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use deltalake::datafusion::physical_plan::streaming::PartitionStream;
use deltalake::datafusion::prelude::{col, lit};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tidemark_core::{Dimensions, EventTime, MetricRow, Origin, RowKey, Window};
use url::Url;

use crate::delta_io::{longs, scan_table, stream_table, strings, times};
use crate::error::{Error, Result};
use crate::model::MetricFilter;
use crate::scan::{Chunks, RowChunk};

pub mod schema;

use schema::{DATE, MANIFEST_DIR, METRIC, RowsError, arrow_schema, date_of, parse_values, replace_predicate, ts_lit};

/// Rows per Parquet row group of the view's files: the writer holds a row group per open partition
/// (metric, date) until it is full, so this bounds a run's write buffers.
const ROW_GROUP_ROWS: usize = 131_072;

/// The run's rows as a DataFusion partition that can be read once (the write reads its input once).
struct OnceStream {
    schema: Arc<ArrowSchema>,
    stream: std::sync::Mutex<Option<BoxStream<'static, std::result::Result<RecordBatch, RowsError>>>>,
}

impl std::fmt::Debug for OnceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnceStream")
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &Arc<ArrowSchema> {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        let stream: BoxStream<'static, DfResult<RecordBatch>> = match taken {
            Some(s) => s.map_err(DataFusionError::External).boxed(),
            None => {
                futures::stream::once(async { Err(DataFusionError::Internal("the run's rows were read twice".into())) })
                    .boxed()
            }
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// What a replace committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewCommit {
    /// The table version the commit created.
    pub version: i64,
}

/// A batch run as recorded by its manifest (the fields the reconciler needs; the manifest holds more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// Run id.
    pub run_id: String,
    /// The epoch of its rows.
    pub epoch: i64,
    /// Whether it was a dry run (nothing written).
    #[serde(default)]
    pub dry_run: bool,
    /// Range start.
    pub from: EventTime,
    /// Range end (exclusive).
    pub to: EventTime,
    /// The view version its commit created.
    #[serde(default)]
    pub view_version: Option<i64>,
}

/// The batch view at a URL (`file://`, `s3://`, `memory://`, or an absolute path).
#[derive(Debug, Clone)]
pub struct BatchView {
    url: String,
    table_url: Url,
    /// The snapshot every read uses, when pinned ([`BatchView::pinned`]).
    pinned: Option<Arc<DeltaTable>>,
}

impl BatchView {
    /// The view at `url` (the spec's `stores.batch_view`). Nothing is created until the first write.
    pub fn open(url: &str) -> Result<Self> {
        let table_url = if url.starts_with('/') {
            Url::from_directory_path(url).map_err(|()| Error::invalid("batch view url", format!("{url:?}")))?
        } else {
            crate::delta_io::parse_base(url)?
        };
        Ok(BatchView { url: url.to_owned(), table_url, pinned: None })
    }

    /// This view with its reads ([`BatchView::read_range`], [`BatchView::scan_rows`]) pinned to the table's
    /// current version: a reader that scans the view in several passes or parts sees one version, even when
    /// a batch run commits meanwhile, and loads the table's log once. Writes and the files beside the table
    /// (manifests) are never pinned.
    pub async fn pinned(&self) -> Result<BatchView> {
        let table = self.table().await?;
        Ok(BatchView { pinned: Some(Arc::new(table)), ..self.clone() })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn table(&self) -> Result<DeltaTable> {
        crate::delta_io::ensure_local_dir(&self.table_url).await?;
        crate::delta_io::open_table(&self.table_url, &Default::default()).await
    }

    /// The table reads use: the pinned snapshot, or the latest version.
    async fn read_table(&self) -> Result<DeltaTable> {
        match &self.pinned {
            Some(t) => Ok(DeltaTable::clone(t)),
            None => self.table().await,
        }
    }

    /// Replaces, in one commit, the rows of `metrics` whose window overlaps `[from, to)` with `batches` (of
    /// [`arrow_schema`]; every row must be of those metrics and overlap the range: Delta refuses the commit
    /// otherwise). `commit_metadata` is recorded in the commit info.
    pub async fn replace_range(
        &self,
        metrics: &[String],
        from: EventTime,
        to: EventTime,
        batches: Vec<RecordBatch>,
        commit_metadata: Vec<(String, serde_json::Value)>,
    ) -> Result<ViewCommit> {
        let batches = futures::stream::iter(batches.into_iter().map(Ok)).boxed();
        self.replace_range_stream(metrics, from, to, batches, commit_metadata).await
    }

    /// [`replace_range`](Self::replace_range) for rows that come as a stream: each batch is written to the
    /// table's files as it arrives, so memory holds a few batches, not the run. The stream must yield every
    /// row of the run and then end: an `Err` item fails the write and **nothing is committed** (a producer
    /// that stops early must end with an error, never just stop). The one commit happens after the stream
    /// ends; files written before a failure are never referenced by the log (`vacuum` removes them).
    pub async fn replace_range_stream(
        &self,
        metrics: &[String],
        from: EventTime,
        to: EventTime,
        batches: BoxStream<'static, std::result::Result<RecordBatch, RowsError>>,
        commit_metadata: Vec<(String, serde_json::Value)>,
    ) -> Result<ViewCommit> {
        let table = self.table().await?;
        let schema = arrow_schema();
        let source = OnceStream { schema: schema.clone(), stream: std::sync::Mutex::new(Some(batches)) };
        let provider = StreamingTable::try_new(schema, vec![Arc::new(source)])
            .map_err(|e| Error::delta(&self.url, "streaming the run's rows")(e.into()))?;
        let plan = LogicalPlanBuilder::scan("run_rows", provider_as_source(Arc::new(provider)), None)
            .and_then(LogicalPlanBuilder::build)
            .map_err(|e| Error::delta(&self.url, "planning the run's rows")(e.into()))?;
        let table = table
            .write(Vec::<RecordBatch>::new())
            .with_input_plan(plan)
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where(replace_predicate(metrics, from, to))
            .with_partition_columns([METRIC, DATE])
            .with_writer_properties(
                deltalake::parquet::file::properties::WriterProperties::builder()
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .build(),
            )
            .with_commit_properties(CommitProperties::default().with_metadata(commit_metadata))
            .await
            .map_err(Error::delta(&self.url, "replacing a range"))?;
        let version = table.version().and_then(|v| i64::try_from(v).ok()).unwrap_or(-1);
        Ok(ViewCommit { version })
    }

    /// Writes `bytes` to `relative` under the table root (e.g. a run manifest).
    pub async fn put_beside(&self, relative: &str, bytes: Vec<u8>) -> Result<()> {
        let table = self.table().await?;
        table
            .object_store()
            .put(&deltalake::Path::from(relative), bytes.into())
            .await
            .map_err(|source| Error::ObjectStore { url: format!("{}/{relative}", self.url), source })?;
        Ok(())
    }

    /// Reads `relative` under the table root (`None` when it does not exist).
    pub async fn get_beside(&self, relative: &str) -> Result<Option<Vec<u8>>> {
        let table = self.table().await?;
        let url = || format!("{}/{relative}", self.url);
        match table.object_store().get(&deltalake::Path::from(relative)).await {
            Ok(got) => {
                Ok(Some(got.bytes().await.map_err(|source| Error::ObjectStore { url: url(), source })?.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(Error::ObjectStore { url: url(), source }),
        }
    }

    /// The manifests of every run recorded beside the view (unreadable manifests are skipped), by epoch.
    pub async fn runs(&self) -> Result<Vec<RunManifest>> {
        let table = self.table().await?;
        let store = table.object_store();
        let prefix = deltalake::Path::from(MANIFEST_DIR);
        let metas: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
        let mut out = Vec::new();
        for m in metas {
            let bytes = store
                .get(&m.location)
                .await
                .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?
                .bytes()
                .await
                .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
            if let Ok(run) = serde_json::from_slice::<RunManifest>(&bytes) {
                out.push(run);
            }
        }
        out.sort_by(|a, b| (a.epoch, &a.run_id).cmp(&(b.epoch, &b.run_id)));
        Ok(out)
    }

    /// Rows of `metrics` whose window starts in `[from, to)` (pruned by the metric and date partitions),
    /// sorted like [`crate::ServingStore::read_range`]: metric, window start, window end, canonical
    /// dimension string (bytewise). A view that does not exist yet has no rows.
    pub async fn read_range(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<MetricRow>> {
        let table = self.read_table().await?;
        let batches = scan_table(&table, range_filter(metrics, from, to)).await?;
        let mut rows = Vec::new();
        for b in &batches {
            rows.extend(rows_of(b, &self.url)?.into_iter().filter(|r| metrics.matches(&r.key.metric)));
        }
        rows.sort_by(|a, b| {
            (&a.key.metric, a.key.window.start(), a.key.window.end())
                .cmp(&(&b.key.metric, b.key.window.start(), b.key.window.end()))
                .then_with(|| a.key.dims.encode().cmp(&b.key.dims.encode()))
        });
        Ok(rows)
    }

    /// The rows of `metric` whose window starts in `[from, to)`, as a stream of columnar chunks in no
    /// particular order (pruned by the metric and date partitions and by file statistics): what a reader
    /// that must not hold the whole range uses. A view that does not exist yet has no rows.
    pub fn scan_rows<'a>(&'a self, metric: &str, from: EventTime, to: EventTime) -> Chunks<'a, RowChunk> {
        let filter = range_filter(&MetricFilter::Only(vec![metric.to_owned()]), from, to);
        futures::stream::once(async move {
            let table = self.read_table().await?;
            stream_table(&table, filter, None).await
        })
        .try_flatten()
        .and_then(|b| async move { RowChunk::batch_view(b) })
        .boxed()
    }
}

/// Rows of `metrics` whose window starts in `[from, to)`, with the date partitions that can hold them.
fn range_filter(metrics: &MetricFilter, from: EventTime, to: EventTime) -> deltalake::datafusion::prelude::Expr {
    let mut filter = col("window_start").gt_eq(ts_lit(from)).and(col("window_start").lt(ts_lit(to)));
    let (d0, d1) = (date_of(from), date_of(to));
    if d0.len() == 10 && d1.len() == 10 {
        filter = filter.and(col(DATE).gt_eq(lit(d0))).and(col(DATE).lt_eq(lit(d1)));
    }
    if let MetricFilter::Only(m) = metrics {
        filter = filter.and(col(METRIC).in_list(m.iter().map(|x| lit(x.as_str())).collect(), false));
    }
    filter
}

/// The rows of a record batch of the view's layout ([`arrow_schema`]); `url` names the view in errors.
pub(crate) fn rows_of(b: &RecordBatch, url: &str) -> Result<Vec<MetricRow>> {
    let (metric, dims, values, run_ids) =
        (strings(b, METRIC)?, strings(b, "dims")?, strings(b, "values")?, strings(b, "run_id")?);
    let (starts, ends, computed) = (times(b, "window_start")?, times(b, "window_end")?, times(b, "computed_at")?);
    let (events, epochs) = (longs(b, "events")?, longs(b, "epoch")?);
    let mut rows = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        let bad = |what: &str| Error::Corrupt(format!("batch view {url}: row with a bad {what}"));
        let t = EventTime::from_micros;
        let window = t(starts.value(i))
            .zip(t(ends.value(i)))
            .and_then(|(s, e)| Window::new(s, e))
            .ok_or_else(|| bad("window"))?;
        rows.push(MetricRow {
            key: RowKey {
                metric: metric.value(i).to_owned(),
                window,
                dims: Dimensions::decode(dims.value(i)).map_err(|_| bad("dims"))?,
            },
            values: parse_values(values.value(i)).ok_or_else(|| bad("values"))?,
            events: u64::try_from(events.value(i)).map_err(|_| bad("events"))?,
            origin: Origin::Batch { run_id: run_ids.value(i).to_owned(), epoch: epochs.value(i) },
            computed_at: t(computed.value(i)).ok_or_else(|| bad("computed_at"))?,
        });
    }
    Ok(rows)
}
