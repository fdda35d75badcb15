//! Delta Lake plumbing shared by every Delta table of the crate (the serving store's tables, the raw
//! archive, the batch view): parsing table URLs, opening, creating and scanning tables, recognising commit
//! conflicts, and reading typed columns out of Arrow batches.

use std::collections::HashMap;

use deltalake::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, StringViewArray, TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType as ArrowType, TimeUnit};
use deltalake::datafusion::prelude::{DataFrame, Expr, SessionContext};
use deltalake::kernel::StructField;
use deltalake::kernel::transaction::TransactionError;
use deltalake::{DeltaTable, DeltaTableError};
use url::Url;

use crate::error::{Error, Result};

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

/// Runs `filter` over `table` as a stream of record batches (nothing if the table does not exist yet):
/// memory holds the batches in flight, not the result. With `columns`, the batches hold only those (the
/// Parquet reader then decodes no other column but what the filter reads).
pub(crate) async fn stream_table(
    table: &DeltaTable,
    filter: Expr,
    columns: Option<&[&str]>,
) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
    use futures::{StreamExt as _, TryStreamExt as _};
    let url = table.table_url().as_str().to_owned();
    if table.version().is_none() {
        return Ok(futures::stream::empty().boxed());
    }
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).map_err(Error::delta(&url, "registering the store"))?;
    let provider =
        table.table_provider().await.map_err(|e| Error::delta(&url, "scanning")(DeltaTableError::from(e)))?;
    let df = ctx
        .read_table(provider)
        .and_then(|df| df.filter(filter))
        .and_then(|df| match columns {
            Some(columns) => df.select_columns(columns),
            None => Ok(df),
        })
        .map_err(|e| Error::delta(&url, "scanning")(DeltaTableError::from(e)))?;
    let stream = df.execute_stream().await.map_err(|e| Error::delta(&url, "scanning")(DeltaTableError::from(e)))?;
    Ok(stream.map_err(move |e| Error::delta(&url, "scanning")(DeltaTableError::from(e))).boxed())
}

pub(crate) async fn open_table(url: &Url, opts: &HashMap<String, String>) -> Result<DeltaTable> {
    crate::objects::register_handlers();
    DeltaTable::try_from_url_with_storage_options(url.clone(), opts.clone())
        .await
        .map_err(Error::delta(url.as_str(), "opening"))
}

/// The version that the application transaction `app` recorded in the table's current snapshot, if any
/// (the idempotency check of every Delta writer here: `Transaction { app_id, version }`).
pub(crate) async fn recorded_txn_version(table: &DeltaTable, url: &str, app: &str) -> Result<Option<i64>> {
    table
        .snapshot()
        .map_err(Error::delta(url, "reading the snapshot"))?
        .transaction_version(table.log_store().as_ref(), app)
        .await
        .map_err(Error::delta(url, "reading app transactions"))
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

pub(crate) fn ts_type() -> ArrowType {
    ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
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

/// A text column as string views: DataFusion reads text as views, and a view column is taken as it is
/// (casting it to `Utf8` would copy every string); a `Utf8` or dictionary column is cast (views into its
/// buffers).
pub(crate) fn string_views(b: &RecordBatch, name: &str) -> Result<StringViewArray> {
    let c = column(b, name, &ArrowType::Utf8View)?;
    c.as_any().downcast_ref::<StringViewArray>().cloned().ok_or_else(|| Error::Corrupt(format!("column {name}")))
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
