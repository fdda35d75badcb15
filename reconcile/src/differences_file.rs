//! `differences.parquet`: every explained difference of a run, one row per difference, beside the report
//! (report.json keeps a bounded sample). Columns (all nullable unless marked):
//!
//! | column | type | |
//! |---|---|---|
//! | `metric`, `dims` | utf8, not null | the key (dims as canonical text, `Dimensions::encode`) |
//! | `window_start`, `window_end` | timestamp(us, UTC), not null | |
//! | `verdict`, `cause` | utf8, not null | snake_case names as in report.json |
//! | `detail` | utf8, not null | the evidence in words |
//! | `batch_events`, `serving_events` | int64 | events of each side's row |
//! | `serving_layer` | utf8 | `speed` or `batch` |
//! | `serving_revision`, `serving_pane`, `serving_watermark` | int64, utf8, timestamp | a speed row's origin |
//! | `serving_run_id`, `serving_epoch` | utf8, int64 | a batch row's origin |
//! | `aggregates` | `list<struct>` | per aggregate in spec order: `name`, `batch`, `serving` (float64), `batch_int`, `serving_int` (int64, exact when the value is an integer), `abs`, `rel` (float64), `within` (bool) |
//!
//! Any Parquet reader opens it: `SELECT cause, count(*) FROM 'differences.parquet' GROUP BY 1` in DuckDB,
//! `pl.read_parquet` in polars.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tidemark_core::{AggValue, Origin};

use crate::error::Error;
use crate::explain::Explained;

/// Differences per row group (bounds the writer's memory).
const ROWS_PER_GROUP: usize = 65_536;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn aggregate_fields() -> Fields {
    Fields::from(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("batch", DataType::Float64, true),
        Field::new("serving", DataType::Float64, true),
        Field::new("batch_int", DataType::Int64, true),
        Field::new("serving_int", DataType::Int64, true),
        Field::new("abs", DataType::Float64, true),
        Field::new("rel", DataType::Float64, true),
        Field::new("within", DataType::Boolean, false),
    ])
}

/// The file's Arrow schema.
fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("metric", DataType::Utf8, false),
        Field::new("window_start", ts(), false),
        Field::new("window_end", ts(), false),
        Field::new("dims", DataType::Utf8, false),
        Field::new("verdict", DataType::Utf8, false),
        Field::new("cause", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("batch_events", DataType::Int64, true),
        Field::new("serving_events", DataType::Int64, true),
        Field::new("serving_layer", DataType::Utf8, true),
        Field::new("serving_revision", DataType::Int64, true),
        Field::new("serving_pane", DataType::Utf8, true),
        Field::new("serving_watermark", ts(), true),
        Field::new("serving_run_id", DataType::Utf8, true),
        Field::new("serving_epoch", DataType::Int64, true),
        Field::new(
            "aggregates",
            DataType::List(Arc::new(Field::new("item", DataType::Struct(aggregate_fields()), false))),
            false,
        ),
    ]))
}

/// The snake_case name serde gives `v` (as in report.json).
fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn int_of(v: AggValue) -> Option<i64> {
    match v {
        AggValue::Int(i) => Some(i),
        _ => None,
    }
}

fn to_u64_i64(v: Option<u64>) -> Option<i64> {
    v.map(|x| i64::try_from(x).unwrap_or(i64::MAX))
}

/// One record batch of `rows`.
fn batch_of(rows: &[Explained]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let keys = rows.iter().map(|e| &e.diff.key);
    let speed = |e: &Explained| match &e.diff.serving_origin {
        Some(Origin::Speed { revision, pane, watermark }) => Some((*revision, *pane, *watermark)),
        _ => None,
    };
    let batch = |e: &Explained| match &e.diff.serving_origin {
        Some(Origin::Batch { run_id, epoch }) => Some((run_id.clone(), *epoch)),
        _ => None,
    };
    let aggs = rows.iter().flat_map(|e| e.diff.aggregates.iter());
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|e| e.diff.aggregates.len()));
    let agg_struct = StructArray::try_new(
        aggregate_fields(),
        vec![
            // (a flattened iterator has no exact length, which `from_iter_values` needs)
            Arc::new(StringArray::from_iter(aggs.clone().map(|a| Some(a.name.as_str())))) as ArrayRef,
            Arc::new(Float64Array::from_iter(aggs.clone().map(|a| a.batch.as_f64()))),
            Arc::new(Float64Array::from_iter(aggs.clone().map(|a| a.serving.as_f64()))),
            Arc::new(Int64Array::from_iter(aggs.clone().map(|a| int_of(a.batch)))),
            Arc::new(Int64Array::from_iter(aggs.clone().map(|a| int_of(a.serving)))),
            Arc::new(Float64Array::from_iter(aggs.clone().map(|a| a.abs))),
            Arc::new(Float64Array::from_iter(aggs.clone().map(|a| a.rel))),
            Arc::new(BooleanArray::from_iter(aggs.map(|a| Some(a.within)))),
        ],
        None,
    )?;
    let item = Arc::new(Field::new("item", DataType::Struct(aggregate_fields()), false));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(keys.clone().map(|k| k.metric.as_str()))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(keys.clone().map(|k| k.window.start().as_micros()))
                .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(keys.clone().map(|k| k.window.end().as_micros()))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(keys.map(|k| k.dims.encode()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| name_of(&e.diff.verdict)))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| name_of(&e.cause)))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|e| e.detail.as_str()))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|e| to_u64_i64(e.diff.batch_events)))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|e| to_u64_i64(e.diff.serving_events)))),
        Arc::new(StringArray::from_iter(rows.iter().map(|e| match &e.diff.serving_origin {
            Some(Origin::Speed { .. }) => Some("speed"),
            Some(Origin::Batch { .. }) => Some("batch"),
            None => None,
        }))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|e| speed(e).map(|(r, _, _)| i64::from(r))))),
        Arc::new(StringArray::from_iter(rows.iter().map(|e| speed(e).map(|(_, p, _)| name_of(&p))))),
        Arc::new(
            TimestampMicrosecondArray::from_iter(rows.iter().map(|e| speed(e).map(|(_, _, w)| w.as_micros())))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter(rows.iter().map(|e| batch(e).map(|(r, _)| r)))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|e| batch(e).map(|(_, x)| x)))),
        Arc::new(ListArray::try_new(item, offsets, Arc::new(agg_struct), None)?),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// Writes `explained` to `path` (replacing it): written to a temporary file beside it and renamed, so a
/// reader never sees half a file.
pub(crate) fn write(path: &Path, explained: &[Explained]) -> Result<(), Error> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let fail = |e: &dyn std::fmt::Display| Error::Internal(format!("writing {}: {e}", path.display()));
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props)).map_err(|e| fail(&e))?;
    for chunk in explained.chunks(ROWS_PER_GROUP) {
        let b = batch_of(chunk).map_err(|e| fail(&e))?;
        writer.write(&b).map_err(|e| fail(&e))?;
    }
    writer.close().map_err(|e| fail(&e))?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// One row of a differences file, as [`read_differences`] returns it (the key, verdict, cause and evidence; the
/// aggregates stay in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DifferenceRecord {
    /// Metric name.
    pub metric: String,
    /// Window start, microseconds since the epoch.
    pub window_start: i64,
    /// Window end, microseconds since the epoch.
    pub window_end: i64,
    /// Canonical dimension text.
    pub dims: String,
    /// The verdict's snake_case name.
    pub verdict: String,
    /// The cause's snake_case name.
    pub cause: String,
    /// The evidence in words.
    pub detail: String,
}

/// Reads the differences file at `path` (what [`crate::ReconcileOutcome::differences_file`] names).
pub fn read_differences(path: &Path) -> Result<Vec<DifferenceRecord>, Error> {
    read(path)
}

fn read(path: &Path) -> Result<Vec<DifferenceRecord>, Error> {
    use arrow::array::AsArray as _;
    use arrow::datatypes::TimestampMicrosecondType;
    let fail = |e: &dyn std::fmt::Display| Error::Internal(format!("reading {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::build)
        .map_err(|e| fail(&e))?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| fail(&e))?;
        let col = |name: &str| b.column_by_name(name).cloned().ok_or_else(|| fail(&format!("no column {name}")));
        let (metric, dims, verdict, cause, detail) =
            (col("metric")?, col("dims")?, col("verdict")?, col("cause")?, col("detail")?);
        let (start, end) = (col("window_start")?, col("window_end")?);
        let text = |a: &ArrayRef, i: usize| a.as_string::<i32>().value(i).to_owned();
        for i in 0..b.num_rows() {
            out.push(DifferenceRecord {
                metric: text(&metric, i),
                window_start: start.as_primitive::<TimestampMicrosecondType>().value(i),
                window_end: end.as_primitive::<TimestampMicrosecondType>().value(i),
                dims: text(&dims, i),
                verdict: text(&verdict, i),
                cause: text(&cause, i),
                detail: text(&detail, i),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow::array::Array as _;
    use tidemark_core::{Dimensions, EventTime, Pane, RowKey, Window};

    use super::*;
    use crate::diff::{AggregateDiff, KeyDiff, Verdict};
    use crate::explain::Cause;

    fn explained(i: i64, origin: Option<Origin>, aggs: usize) -> Explained {
        let t = |s: i64| EventTime::from_secs(s).unwrap();
        Explained {
            diff: KeyDiff {
                key: RowKey {
                    metric: "views".into(),
                    window: Window::new(t(60 * i), t(60 * i + 60)).unwrap(),
                    dims: Dimensions::new([("user".to_owned(), format!("u{i}"))]),
                },
                verdict: if origin.is_some() { Verdict::ValueDrift } else { Verdict::MissingInServing },
                aggregates: (0..aggs)
                    .map(|a| AggregateDiff {
                        name: format!("a{a}"),
                        batch: AggValue::Int(i64::MAX - i),
                        serving: if origin.is_some() { AggValue::Float(0.5) } else { AggValue::Null },
                        abs: origin.as_ref().map(|_| 1.5),
                        rel: None,
                        within: false,
                    })
                    .collect(),
                serving_origin: origin,
                batch_events: Some(3),
                serving_events: None,
            },
            cause: Cause::LateEvents,
            detail: format!("detail {i}"),
        }
    }

    #[test]
    fn writes_every_difference_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("differences.parquet");
        let speed = Origin::Speed { revision: 2, pane: Pane::OnTime, watermark: EventTime::from_secs(100).unwrap() };
        let batch = Origin::Batch { run_id: "r1".into(), epoch: 4 };
        // more than one row group; rows without aggregates and without a serving row
        let rows: Vec<Explained> = (0..(ROWS_PER_GROUP as i64 + 5))
            .map(|i| match i % 3 {
                0 => explained(i, Some(speed.clone()), 2),
                1 => explained(i, Some(batch.clone()), 1),
                _ => explained(i, None, 0),
            })
            .collect();
        write(&path, &rows).unwrap();
        assert!(!path.with_extension("parquet.tmp").exists());
        let back = read(&path).unwrap();
        assert_eq!(back.len(), rows.len());
        for (got, want) in back.iter().zip(&rows) {
            let (verdict, cause) = (name_of(&want.diff.verdict), name_of(&want.cause));
            assert_eq!(got.metric, want.diff.key.metric);
            assert_eq!(got.window_start, want.diff.key.window.start().as_micros());
            assert_eq!(got.window_end, want.diff.key.window.end().as_micros());
            assert_eq!(got.dims, want.diff.key.dims.encode());
            assert_eq!((&got.verdict, &got.cause), (&verdict, &cause));
            assert_eq!(got.detail, want.detail);
        }
        assert_eq!(
            (name_of(&Verdict::ValueDrift), name_of(&Cause::LateEvents)),
            ("value_drift".into(), "late_events".into())
        );
        // the nested aggregates keep integers exact
        let file = std::fs::File::open(&path).unwrap();
        let mut reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        let b = reader.next().unwrap().unwrap();
        let aggs = b.column_by_name("aggregates").unwrap();
        let list = aggs.as_any().downcast_ref::<ListArray>().unwrap();
        let first = list.value(0);
        let first = first.as_any().downcast_ref::<StructArray>().unwrap();
        let ints = first.column_by_name("batch_int").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ints.values().to_vec(), vec![i64::MAX, i64::MAX]);
        assert_eq!(list.value_length(2), 0);
        let layer = b.column_by_name("serving_layer").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((layer.value(0), layer.value(1), layer.is_null(2)), ("speed", "batch", true));
    }
}
