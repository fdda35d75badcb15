//! The batch view: a Delta table of batch rows, partitioned by `metric` and `date`.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `metric` | string (partition) | metric name |
//! | `date` | string `YYYY-MM-DD` (partition) | UTC date of `window_start` |
//! | `window_start` | timestamp µs UTC | window start (inclusive) |
//! | `window_end` | timestamp µs UTC | window end (exclusive) |
//! | `dims` | string | canonical dimension key (`tidemark_core::Dimensions::encode`) |
//! | `values` | string | JSON object: aggregate name -> value (integers stay integers; read with [`parse_values`]) |
//! | `events` | int64 | events in the row |
//! | `run_id` | string | the batch run that wrote the row |
//! | `epoch` | int64 | the run's epoch (later runs have larger epochs) |
//! | `computed_at` | timestamp µs UTC | when the run computed the row |
//!
//! [`replace_range`] is atomic: one Delta commit removes every row of the run's metrics whose window
//! overlaps `[from, to)` and adds the run's rows (`replaceWhere`), so a reader sees all of a run or none
//! of it. Re-running a range replaces the same rows with equal values (idempotent up to provenance).

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema as ArrowSchema, TimeUnit as ArrowTimeUnit};
use deltalake::datafusion::prelude::{Expr as DfExpr, col as df_col, lit as df_lit};
use deltalake::datafusion::scalar::ScalarValue;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use object_store::ObjectStoreExt;
use polars::prelude::{DataType, ParquetReader, SerReader};
use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, Origin, RowKey, Window};

use crate::error::BatchError;
use crate::input::parse_location;
use crate::plan::FrameRows;

/// Partition column: metric name.
pub const METRIC: &str = "metric";
/// Partition column: UTC date of the window start.
pub const DATE: &str = "date";

const UTC: &str = "UTC";

/// The Arrow schema of the batch view (partition columns included).
pub fn arrow_schema() -> Arc<ArrowSchema> {
    let ts = ArrowType::Timestamp(ArrowTimeUnit::Microsecond, Some(UTC.into()));
    Arc::new(ArrowSchema::new(vec![
        Field::new(METRIC, ArrowType::Utf8, false),
        Field::new(DATE, ArrowType::Utf8, false),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts.clone(), false),
        Field::new("dims", ArrowType::Utf8, false),
        Field::new("values", ArrowType::Utf8, false),
        Field::new("events", ArrowType::Int64, false),
        Field::new("run_id", ArrowType::Utf8, false),
        Field::new("epoch", ArrowType::Int64, false),
        Field::new("computed_at", ts, false),
    ]))
}

/// UTC date `YYYY-MM-DD` of a time.
pub fn date_of(t: EventTime) -> String {
    chrono::DateTime::from_timestamp_micros(t.as_micros()).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// The rows as one Arrow batch.
pub fn to_record_batch(rows: &[MetricRow]) -> Result<RecordBatch, BatchError> {
    let mut run_ids = Vec::with_capacity(rows.len());
    let mut epochs = Vec::with_capacity(rows.len());
    for r in rows {
        match &r.origin {
            Origin::Batch { run_id, epoch } => {
                run_ids.push(run_id.clone());
                epochs.push(*epoch);
            }
            Origin::Speed { .. } => {
                return Err(BatchError::Internal("a speed-layer row reached the batch view".into()));
            }
        }
    }
    let ts = |v: Vec<i64>| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from(v).with_timezone(UTC)) };
    let values = rows
        .iter()
        .map(|r| serde_json::to_string(&r.values))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BatchError::Internal(format!("cannot serialize values: {e}")))?;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.key.metric.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| date_of(r.key.window.start())))),
        ts(rows.iter().map(|r| r.key.window.start().as_micros()).collect()),
        ts(rows.iter().map(|r| r.key.window.end().as_micros()).collect()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.key.dims.encode()))),
        Arc::new(StringArray::from(values)),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| i64::try_from(r.events).unwrap_or(i64::MAX)))),
        Arc::new(StringArray::from(run_ids)),
        Arc::new(Int64Array::from(epochs)),
        ts(rows.iter().map(|r| r.computed_at.as_micros()).collect()),
    ];
    Ok(RecordBatch::try_new(arrow_schema(), cols)?)
}

/// One metric's computed frame as an Arrow batch of the view's schema, without materializing
/// [`MetricRow`]s (a few dozen bytes a row besides the values text).
pub fn record_batch_from_frame(
    rows: &FrameRows,
    metric: &str,
    run_id: &str,
    epoch: i64,
    computed_at: EventTime,
) -> Result<RecordBatch, BatchError> {
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
            serde_json::to_writer(&mut json, name).map_err(|e| BatchError::Internal(format!("values: {e}")))?;
            json.push(b':');
            serde_json::to_writer(&mut json, &v).map_err(|e| BatchError::Internal(format!("values: {e}")))?;
        }
        json.push(b'}');
        values.append_value(std::str::from_utf8(&json).map_err(|e| BatchError::Internal(format!("values: {e}")))?);
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

fn ts_lit(t: EventTime) -> DfExpr {
    df_lit(ScalarValue::TimestampMicrosecond(Some(t.as_micros()), Some(UTC.into())))
}

/// The rows a run over `[from, to)` of `metrics` replaces: those whose window overlaps the range.
pub fn replace_predicate(metrics: &[String], from: EventTime, to: EventTime) -> DfExpr {
    let names = metrics.iter().map(|m| df_lit(m.as_str())).collect();
    df_col(METRIC)
        .in_list(names, false)
        .and(df_col("window_end").gt(ts_lit(from)))
        .and(df_col("window_start").lt(ts_lit(to)))
}

/// What a replace committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The table version the commit created.
    pub version: i64,
}

async fn open_or_empty(url: &str) -> Result<DeltaTable, BatchError> {
    let parsed = parse_location(url)?;
    if parsed.scheme() == "file"
        && let Ok(path) = parsed.to_file_path()
    {
        std::fs::create_dir_all(&path)
            .map_err(|e| BatchError::Io { context: format!("creating {}", path.display()), source: e })?;
    }
    DeltaTable::try_from_url(parsed).await.map_err(|e| BatchError::delta(url, e))
}

/// Replaces, in one commit, the rows of `metrics` whose window overlaps `[from, to)` with `batches` (of
/// [`arrow_schema`]; every row of those metrics, overlapping the range: Delta refuses the commit
/// otherwise). `commit_metadata` is recorded in the commit info.
pub async fn replace_range(
    url: &str,
    metrics: &[String],
    from: EventTime,
    to: EventTime,
    batches: Vec<RecordBatch>,
    commit_metadata: Vec<(String, serde_json::Value)>,
) -> Result<Committed, BatchError> {
    let table = open_or_empty(url).await?;
    let batches = if batches.is_empty() { vec![RecordBatch::new_empty(arrow_schema())] } else { batches };
    let table = table
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_replace_where(replace_predicate(metrics, from, to))
        .with_partition_columns([METRIC, DATE])
        .with_commit_properties(CommitProperties::default().with_metadata(commit_metadata))
        .await
        .map_err(|e| BatchError::delta(url, e))?;
    let version = table.version().and_then(|v| i64::try_from(v).ok()).unwrap_or(-1);
    Ok(Committed { version })
}

/// Writes `bytes` to `relative` under the table root (e.g. a run manifest), creating folders as needed.
pub async fn put_beside(url: &str, relative: &str, bytes: Vec<u8>) -> Result<(), BatchError> {
    let table = open_or_empty(url).await?;
    let store = table.object_store();
    store
        .put(&deltalake::Path::from(relative), bytes.into())
        .await
        .map_err(|e| BatchError::store(format!("{url}/{relative}"), e))?;
    Ok(())
}

/// Parses the `values` column: a flat JSON object of aggregate names (identifiers) to numbers or null.
/// Numbers are parsed with Rust's correctly rounded `f64` parser, so every float written (shortest
/// round-trip form) reads back bit for bit; serde_json's default float parser can be off by one ulp.
pub fn parse_values(text: &str) -> Option<BTreeMap<String, AggValue>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?.trim();
    let mut out = BTreeMap::new();
    if body.is_empty() {
        return Some(out);
    }
    for pair in body.split(',') {
        let (name, value) = pair.split_once(':')?;
        let name = name.trim().strip_prefix('"')?.strip_suffix('"')?;
        let value = value.trim();
        let v = if value == "null" {
            AggValue::Null
        } else if value.contains(['.', 'e', 'E']) {
            AggValue::Float(value.parse().ok()?)
        } else {
            AggValue::Int(value.parse().ok()?)
        };
        out.insert(name.to_owned(), v);
    }
    Some(out)
}

/// Reads every row of the batch view (for tests, the reconciler and inspection), sorted by key.
pub async fn read_view(url: &str) -> Result<Vec<MetricRow>, BatchError> {
    let parsed = parse_location(url)?;
    let table = deltalake::open_table(parsed).await.map_err(|e| BatchError::delta(url, e))?;
    let store = table.object_store();
    let snapshot = table.snapshot().map_err(|e| BatchError::delta(url, e))?;
    let files: Vec<(deltalake::Path, HashMap<String, Option<String>>)> =
        snapshot.log_data().iter().map(|f| (f.object_store_path(), f.partition_values_map())).collect();
    let mut rows = Vec::new();
    for (path, partitions) in files {
        let location = format!("{url}/{path}");
        let bytes = store
            .get(&path)
            .await
            .map_err(|e| BatchError::store(&location, e))?
            .bytes()
            .await
            .map_err(|e| BatchError::store(&location, e))?;
        let metric = partitions.get(METRIC).cloned().flatten().unwrap_or_default();
        let df = ParquetReader::new(Cursor::new(bytes)).finish()?;
        let micros = |name: &str| -> Result<Vec<Option<i64>>, BatchError> {
            let c = df.column(name)?.cast(&DataType::Int64)?;
            Ok(c.as_materialized_series().i64()?.iter().collect())
        };
        let strs = |name: &str| -> Result<Vec<Option<String>>, BatchError> {
            Ok(df.column(name)?.as_materialized_series().str()?.iter().map(|s| s.map(str::to_owned)).collect())
        };
        let (starts, ends, computed) = (micros("window_start")?, micros("window_end")?, micros("computed_at")?);
        let (dims, values, run_ids) = (strs("dims")?, strs("values")?, strs("run_id")?);
        let events = df.column("events")?.as_materialized_series().i64()?.clone();
        let epochs = df.column("epoch")?.as_materialized_series().i64()?.clone();
        for i in 0..df.height() {
            let bad = |what: &str| BatchError::shape(&location, format!("row {i}: bad {what}"));
            let t = |v: Option<i64>| v.and_then(EventTime::from_micros);
            let window =
                t(starts[i]).zip(t(ends[i])).and_then(|(s, e)| Window::new(s, e)).ok_or_else(|| bad("window"))?;
            let dims = Dimensions::decode(dims[i].as_deref().unwrap_or("")).map_err(|_| bad("dims"))?;
            let values = parse_values(values[i].as_deref().unwrap_or("")).ok_or_else(|| bad("values"))?;
            rows.push(MetricRow {
                key: RowKey { metric: metric.clone(), window, dims },
                values,
                events: events.get(i).and_then(|e| u64::try_from(e).ok()).ok_or_else(|| bad("events"))?,
                origin: Origin::Batch {
                    run_id: run_ids[i].clone().unwrap_or_default(),
                    epoch: epochs.get(i).ok_or_else(|| bad("epoch"))?,
                },
                computed_at: t(computed[i]).ok_or_else(|| bad("computed_at"))?,
            });
        }
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_bit_for_bit() {
        let values = BTreeMap::from([
            ("a".to_owned(), AggValue::Int(i64::MAX)),
            ("b".to_owned(), AggValue::Int(i64::MIN)),
            ("c".to_owned(), AggValue::Float(0.1 + 0.2)),
            ("d".to_owned(), AggValue::Float(-0.0)),
            ("e".to_owned(), AggValue::Float(1e300)),
            ("f".to_owned(), AggValue::Float(3.0)),
            ("g".to_owned(), AggValue::Float(2006.7297297297296)),
            ("h".to_owned(), AggValue::Null),
        ]);
        let text = serde_json::to_string(&values).expect("json");
        let back = parse_values(&text).expect("parses");
        assert_eq!(back, values);
        for (k, v) in &back {
            if let (AggValue::Float(x), AggValue::Float(y)) = (v, values[k]) {
                assert_eq!(x.to_bits(), y.to_bits(), "{k}");
            }
        }
        assert_eq!(parse_values("{}"), Some(BTreeMap::new()));
        assert_eq!(parse_values("[1]"), None);
    }
}
