//! The batch view as the batch layer writes it. The table (schema, atomic `replaceWhere` commit, reads)
//! is defined once in [`tidemark_store::batch_view`]; this module adds the polars-specific part (a computed
//! frame straight to an Arrow batch of that schema) and keeps thin wrappers taking the view's URL.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use deltalake::datafusion::prelude::Expr as DfExpr;
use tidemark_core::{AggValue, EventTime, MetricRow};
use tidemark_store::{BatchView, MetricFilter};

use crate::error::Error;
use crate::input::parse_location;
use crate::plan::FrameRows;

pub use tidemark_store::batch_view::{DATE, METRIC, arrow_schema, date_of};

const UTC: &str = "UTC";

/// The rows as one Arrow batch.
pub fn to_record_batch(rows: &[MetricRow]) -> Result<RecordBatch, Error> {
    Ok(tidemark_store::batch_view::to_record_batch(rows)?)
}

/// One metric's computed frame as an Arrow batch of the view's schema, without materializing
/// [`MetricRow`]s (a few dozen bytes a row besides the values text).
pub fn record_batch_from_frame(
    rows: &FrameRows,
    metric: &str,
    run_id: &str,
    epoch: i64,
    computed_at: EventTime,
) -> Result<RecordBatch, Error> {
    let n = rows.len();
    let mut dims = StringBuilder::with_capacity(n, n * 16);
    let mut values = StringBuilder::with_capacity(n, n * 96);
    let mut dates = StringBuilder::with_capacity(n, n * 10);
    let (mut starts, mut ends, mut events) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut key, mut json) = (String::new(), Vec::<u8>::new());
    for r in 0..n {
        let w = rows.window(r)?;
        starts.push(w.start().as_micros());
        ends.push(w.end().as_micros());
        dates.append_value(date_of(w.start()));
        events.push(rows.events(r)?);
        key.clear();
        rows.encode_dimensions(r, &mut key);
        dims.append_value(&key);
        json.clear();
        json.push(b'{');
        for (i, (name, v)) in rows.values(r)?.into_iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            serde_json::to_writer(&mut json, name).map_err(|e| Error::Internal(format!("values: {e}")))?;
            json.push(b':');
            serde_json::to_writer(&mut json, &v).map_err(|e| Error::Internal(format!("values: {e}")))?;
        }
        json.push(b'}');
        values.append_value(std::str::from_utf8(&json).map_err(|e| Error::Internal(format!("values: {e}")))?);
    }
    let ts = |v: Vec<i64>| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from(v).with_timezone(UTC)) };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(metric, n))),
        Arc::new(dates.finish()),
        ts(starts),
        ts(ends),
        Arc::new(dims.finish()),
        Arc::new(values.finish()),
        Arc::new(Int64Array::from(events)),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(run_id, n))),
        Arc::new(Int64Array::from(vec![epoch; n])),
        ts(vec![computed_at.as_micros(); n]),
    ];
    Ok(RecordBatch::try_new(arrow_schema(), cols)?)
}

/// The rows a run over `[from, to)` of `metrics` replaces: those whose window overlaps the range.
pub fn replace_predicate(metrics: &[String], from: EventTime, to: EventTime) -> DfExpr {
    tidemark_store::batch_view::replace_predicate(metrics, from, to)
}

/// What a replace committed.
pub type Committed = tidemark_store::ViewCommit;

fn view(url: &str) -> Result<BatchView, Error> {
    let parsed = parse_location(url)?;
    Ok(BatchView::open(parsed.as_str())?)
}

/// Replaces, in one commit, the rows of `metrics` whose window overlaps `[from, to)` with `batches`
/// ([`BatchView::replace_range`]).
pub async fn replace_range(
    url: &str,
    metrics: &[String],
    from: EventTime,
    to: EventTime,
    batches: Vec<RecordBatch>,
    commit_metadata: Vec<(String, serde_json::Value)>,
) -> Result<Committed, Error> {
    Ok(view(url)?.replace_range(metrics, from, to, batches, commit_metadata).await?)
}

/// Why a stream of rows failed ([`tidemark_store::batch_view::RowsError`]).
pub type RowsError = tidemark_store::batch_view::RowsError;

/// Replaces, in one commit, the rows of `metrics` whose window overlaps `[from, to)` with the rows the
/// stream yields, written while they are produced ([`BatchView::replace_range_stream`]: an `Err` item
/// fails the write and nothing is committed).
pub async fn replace_range_stream(
    url: String,
    metrics: Vec<String>,
    from: EventTime,
    to: EventTime,
    batches: futures::stream::BoxStream<'static, Result<RecordBatch, RowsError>>,
    commit_metadata: Vec<(String, serde_json::Value)>,
) -> Result<Committed, Error> {
    Ok(view(&url)?.replace_range_stream(&metrics, from, to, batches, commit_metadata).await?)
}

/// Writes `bytes` to `relative` under the table root (e.g. a run manifest), creating folders as needed.
pub async fn put_beside(url: &str, relative: &str, bytes: Vec<u8>) -> Result<(), Error> {
    Ok(view(url)?.put_beside(relative, bytes).await?)
}

/// Parses the `values` column ([`tidemark_store::batch_view::parse_values`]).
pub fn parse_values(text: &str) -> Option<BTreeMap<String, AggValue>> {
    tidemark_store::batch_view::parse_values(text)
}

/// Reads every row of the batch view (for tests, the reconciler and inspection), sorted by key.
pub async fn read_view(url: &str) -> Result<Vec<MetricRow>, Error> {
    let mut rows = view(url)?.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await?;
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}
