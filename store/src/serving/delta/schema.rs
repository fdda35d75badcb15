//! The serving table's schema: its key and value columns, and the Arrow encoding of flat records
//! (`Flat`) to and from record batches.

use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema};
use deltalake::kernel::{DataType, StructField};

use crate::delta_io::{column, longs, strings, times, ts_type};
use crate::error::{Error, Result};
use crate::flat::{self, Flat, Kind};

/// Key columns of the serving table (with the partition columns).
pub(super) const KEY_COLUMNS: [&str; 7] =
    ["metric", "window_date", "window_start", "window_end", "dims", "kind", "delta_revision"];
/// Columns a winning MERGE replaces.
pub(super) const VALUE_COLUMNS: [&str; 10] = [
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

/// The partition column of the UTC hour of `window_start` (`YYYY-MM-DDTHH`), in tables created since it
/// exists; older tables have neither the column nor the partition.
pub(crate) const WINDOW_HOUR: &str = "window_hour";

/// Whether `table` is partitioned by the hour of the window start.
pub(crate) fn is_hourly(table: &deltalake::DeltaTable) -> bool {
    table.snapshot().is_ok_and(|s| s.metadata().partition_columns().iter().any(|c| c == WINDOW_HOUR))
}

pub(super) fn arrow_schema(hourly: bool) -> Arc<Schema> {
    let mut fields = vec![
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
    ];
    if hourly {
        fields.insert(2, Field::new(WINDOW_HOUR, ArrowType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

pub(super) fn delta_columns() -> Vec<StructField> {
    let s = |n: &str| StructField::new(n, DataType::STRING, true);
    let l = |n: &str| StructField::new(n, DataType::LONG, true);
    let t = |n: &str| StructField::new(n, DataType::TIMESTAMP, true);
    vec![
        s("metric"),
        s("window_date"),
        s(WINDOW_HOUR),
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

pub(super) fn kind_str(k: Kind) -> &'static str {
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
pub(super) fn delta_revision_column(f: &Flat, emission_tag: i64) -> i64 {
    match f.kind {
        Kind::Emission { .. } => emission_tag,
        _ => f.delta_revision(),
    }
}

/// `flats` as a batch of the serving table's columns (`hourly`: with the `window_hour` column).
pub(crate) fn to_batch(flats: &[Flat], emission_tag: i64, hourly: bool) -> Result<RecordBatch> {
    let ts = |v: Vec<Option<i64>>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
    let strs = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let longs = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as ArrayRef;
    let dates: Vec<String> = flats.iter().map(Flat::window_date).collect();
    let mut columns: Vec<ArrayRef> = vec![
        strs(flats.iter().map(|f| Some(f.metric.as_str())).collect()),
        strs(dates.iter().map(|d| Some(d.as_str())).collect()),
        ts(flats.iter().map(|f| Some(f.window_start)).collect()),
        ts(flats.iter().map(|f| Some(f.window_end)).collect()),
        strs(flats.iter().map(|f| Some(f.dims.as_str())).collect()),
        strs(flats.iter().map(|f| Some(kind_str(f.kind))).collect()),
        longs(flats.iter().map(|f| Some(delta_revision_column(f, emission_tag))).collect()),
        strs(flats.iter().map(|f| Some(f.values_json.as_str())).collect()),
        longs(flats.iter().map(|f| Some(f.events)).collect()),
        strs(flats.iter().map(|f| Some(flat::layer_str(f.layer))).collect()),
        longs(flats.iter().map(|f| f.revision).collect()),
        strs(flats.iter().map(|f| f.pane).collect()),
        ts(flats.iter().map(|f| f.watermark).collect()),
        strs(flats.iter().map(|f| f.batch_run_id.as_deref()).collect()),
        longs(flats.iter().map(|f| f.batch_epoch).collect()),
        ts(flats.iter().map(|f| Some(f.computed_at)).collect()),
        Arc::new(BooleanArray::from(flats.iter().map(|f| Some(f.deleted)).collect::<Vec<_>>())) as ArrayRef,
    ];
    if hourly {
        let hours: Vec<String> = flats.iter().map(Flat::window_hour).collect();
        columns.insert(2, strs(hours.iter().map(|h| Some(h.as_str())).collect()));
    }
    RecordBatch::try_new(arrow_schema(hourly), columns).map_err(|e| Error::Corrupt(format!("building a batch: {e}")))
}

pub(super) fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_owned())
}

fn opt_i64(a: &Int64Array, i: usize) -> Option<i64> {
    a.is_valid(i).then(|| a.value(i))
}

fn opt_ts(a: &TimestampMicrosecondArray, i: usize) -> Option<i64> {
    a.is_valid(i).then(|| a.value(i))
}

pub(crate) fn from_batch(b: &RecordBatch) -> Result<Vec<Flat>> {
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
            layer: flat::parse_layer(layer_s).ok_or_else(|| corrupt("layer"))?,
            revision: opt_i64(&revision, i),
            pane: opt_str(&pane, i).as_deref().and_then(flat::parse_pane).map(flat::pane_str),
            watermark: opt_ts(&watermark, i),
            batch_run_id: opt_str(&run, i),
            batch_epoch: opt_i64(&epoch, i),
            computed_at: opt_ts(&computed, i).ok_or_else(|| corrupt("computed_at"))?,
            deleted: deleted.is_valid(i) && deleted.value(i),
        });
    }
    Ok(out)
}
