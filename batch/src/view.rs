//! The batch view as the batch layer writes it. The table (schema, atomic `replaceWhere` commit, reads)
//! is [`tidemark_store::BatchView`]; this module adds the polars-specific part (a computed frame straight
//! to an Arrow batch of that schema), opens the view at a location checked like the batch layer's inputs,
//! and reads the whole view in key order.

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use tidemark_core::{EventTime, MetricRow};
use tidemark_store::batch_view::{arrow_schema, date_of};
use tidemark_store::{BatchView, MetricFilter};

use crate::error::Error;
use crate::input::parse_location;
use crate::plan::FrameRows;

const UTC: &str = "UTC";

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

/// The batch view at `url`; a location the batch layer cannot use is an [`Error::UnsupportedLocation`],
/// as for inputs.
pub(crate) fn open(url: &str) -> Result<BatchView, Error> {
    let parsed = parse_location(url)?;
    Ok(BatchView::open(parsed.as_str())?)
}

/// Reads every row of the batch view (for tests and inspection), sorted by key.
pub async fn read_view(url: &str) -> Result<Vec<MetricRow>, Error> {
    let mut rows = open(url)?.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await?;
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}
