//! The batch view's table definition, public as `tidemark_store::batch_view`: a Delta table of batch rows
//! (the truth the reconciler compares against), partitioned by `metric` and `date`. The batch layer writes
//! it ([`BatchView::replace_range`](crate::BatchView::replace_range)); the reconciler reads it
//! ([`BatchView::read_range`](crate::BatchView::read_range)). This module is the one definition of its
//! schema.
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
//! [`BatchView::replace_range`](crate::BatchView::replace_range) is atomic: one Delta commit removes every
//! row of the run's metrics whose window overlaps `[from, to)` and adds the run's rows (`replaceWhere`), so
//! a reader sees all of a run or none of it. Run manifests are kept beside the table under [`MANIFEST_DIR`].

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema as ArrowSchema, TimeUnit as ArrowTimeUnit};
use deltalake::datafusion::prelude::{Expr, col, lit};
use deltalake::datafusion::scalar::ScalarValue;
use tidemark_core::{AggValue, EventTime, MetricRow, Origin};

use crate::error::{Error, Result};

/// Partition column: metric name.
pub const METRIC: &str = "metric";
/// Partition column: UTC date of the window start.
pub const DATE: &str = "date";
/// Folder under the batch view's root that holds run manifests (`<run_id>.json`).
pub const MANIFEST_DIR: &str = "_tidemark_runs";

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

/// UTC date `YYYY-MM-DD` of a time (the `date` partition value).
pub fn date_of(t: EventTime) -> String {
    chrono::DateTime::from_timestamp_micros(t.as_micros()).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// The rows (batch origin) as one Arrow batch of [`arrow_schema`].
pub fn to_record_batch(rows: &[MetricRow]) -> Result<RecordBatch> {
    let mut run_ids = Vec::with_capacity(rows.len());
    let mut epochs = Vec::with_capacity(rows.len());
    for r in rows {
        match &r.origin {
            Origin::Batch { run_id, epoch } => {
                run_ids.push(run_id.clone());
                epochs.push(*epoch);
            }
            Origin::Speed { .. } => return Err(Error::invalid("batch view row", "a speed-layer row")),
        }
    }
    let ts = |v: Vec<i64>| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from(v).with_timezone(UTC)) };
    let values = rows
        .iter()
        .map(|r| serde_json::to_string(&r.values))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid("aggregate values", e.to_string()))?;
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
    RecordBatch::try_new(arrow_schema(), cols).map_err(|e| Error::Corrupt(format!("building a batch: {e}")))
}

pub(super) fn ts_lit(t: EventTime) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(t.as_micros()), Some(UTC.into())))
}

/// The rows a run over `[from, to)` of `metrics` replaces: those whose window overlaps the range.
pub fn replace_predicate(metrics: &[String], from: EventTime, to: EventTime) -> Expr {
    let names = metrics.iter().map(|m| lit(m.as_str())).collect();
    col(METRIC).in_list(names, false).and(col("window_end").gt(ts_lit(from))).and(col("window_start").lt(ts_lit(to)))
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

/// Why a stream of rows given to [`BatchView::replace_range_stream`](crate::BatchView::replace_range_stream) failed (the producer's own error).
pub type RowsError = Box<dyn std::error::Error + Send + Sync>;

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
