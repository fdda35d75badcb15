//! Event-time pruning of Parquet files by their row groups' statistics. Only the footer is fetched to
//! decide; a file none of whose row groups can hold an event of the read range is not downloaded, and of
//! the others only the row groups that can are decoded.
//!
//! The time column is the archive's `event_time` when the file has a `payload` column, otherwise the
//! spec's time field; it must be an INT64 timestamp (any unit) or, for the time field, an INT64 in the
//! spec's `epoch_*` format. A row group is skipped only when its statistics prove that every row has a
//! valid event time outside the range: no nulls, every time within `1970 .. received + max_future_skew`
//! (so no row of it would be dead-lettered for its time), and all times before `lo` or all at or after
//! `hi`. A row of a skipped group that is bad for another reason is dead-lettered by the run whose range
//! holds its time. Files without usable statistics are read whole.

use deltalake::parquet::basic::{ConvertedType, LogicalType, TimeUnit, Type as PhysicalType};
use deltalake::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use deltalake::parquet::file::statistics::Statistics;
use deltalake::parquet::schema::types::ColumnDescriptor;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use tidemark_core::{EventSchema, EventTime, MAX_EVENT_TIME_US, TimeFormat, raw_archive};

use crate::error::Error;

/// The rows of one Parquet file to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selection {
    /// Rows in the file.
    pub total_rows: u64,
    /// Row groups in the file.
    pub groups: usize,
    /// Row groups skipped.
    pub pruned_groups: usize,
    /// `(first row, rows)` of each run of consecutive row groups to decode, in file order.
    pub runs: Vec<(usize, usize)>,
}

impl Selection {
    /// Rows to decode.
    pub fn rows(&self) -> u64 {
        self.runs.iter().map(|(_, n)| *n as u64).sum()
    }

    /// Whether every row group is read.
    pub fn is_whole(&self) -> bool {
        self.pruned_groups == 0
    }
}

/// Fetches and parses the footer of the Parquet file `meta` (two range requests).
pub(crate) async fn footer(store: &dyn ObjectStore, meta: &ObjectMeta, url: &str) -> Result<ParquetMetaData, Error> {
    let size = meta.size;
    if size < 12 {
        return Err(Error::shape(url, format!("{size} bytes is too small for a Parquet file")));
    }
    let tail = store.get_range(&meta.location, size - 8..size).await.map_err(|e| Error::store(url, e))?;
    match &tail[4..8] {
        b"PAR1" => {}
        b"PARE" => return Err(Error::shape(url, "encrypted Parquet footers are not supported")),
        _ => return Err(Error::shape(url, "not a Parquet file (no PAR1 magic at its end)")),
    }
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if len + 12 > size {
        return Err(Error::shape(url, format!("Parquet footer of {len} bytes in a file of {size}")));
    }
    let buf = store.get_range(&meta.location, size - 8 - len..size - 8).await.map_err(|e| Error::store(url, e))?;
    ParquetMetaDataReader::decode_metadata(&buf)
        .map_err(|e| Error::shape(url, format!("unreadable Parquet footer: {e}")))
}

/// How a time column's INT64 values become µs: multiply or (flooring) divide.
#[derive(Debug, Clone, Copy)]
enum Scale {
    Times(i64),
    Div(i64),
}

impl Scale {
    fn micros(self, v: i64) -> Option<i64> {
        match self {
            Scale::Times(k) => v.checked_mul(k),
            Scale::Div(k) => Some(v.div_euclid(k)),
        }
    }
}

fn scale_of(c: &ColumnDescriptor, epoch_format: Option<TimeFormat>) -> Option<Scale> {
    if c.physical_type() != PhysicalType::INT64 {
        return None;
    }
    match c.logical_type_ref() {
        Some(LogicalType::Timestamp(t)) => {
            return Some(match t.unit {
                TimeUnit::MILLIS => Scale::Times(1_000),
                TimeUnit::MICROS => Scale::Times(1),
                TimeUnit::NANOS => Scale::Div(1_000),
            });
        }
        Some(LogicalType::Integer(_)) | None => {}
        Some(_) => return None,
    }
    match c.converted_type() {
        ConvertedType::TIMESTAMP_MILLIS => return Some(Scale::Times(1_000)),
        ConvertedType::TIMESTAMP_MICROS => return Some(Scale::Times(1)),
        ConvertedType::NONE | ConvertedType::INT_64 => {}
        _ => return None,
    }
    // a plain integer: only the spec's time field in an epoch format
    match epoch_format? {
        TimeFormat::EpochUs => Some(Scale::Times(1)),
        TimeFormat::EpochMs => Some(Scale::Times(1_000)),
        TimeFormat::EpochS => Some(Scale::Times(1_000_000)),
        TimeFormat::Rfc3339 => None,
    }
}

/// The row groups of `md` to decode for events in `[lo, hi)`; `received` is the receive time the rows
/// are decoded with (the file's last-modified time), bounding a valid event's time.
pub(crate) fn select(
    md: &ParquetMetaData,
    schema: &EventSchema,
    lo: EventTime,
    hi: EventTime,
    received: EventTime,
) -> Selection {
    let groups = md.row_groups();
    let total_rows = groups.iter().map(|g| u64::try_from(g.num_rows()).unwrap_or(0)).sum();
    let fields = md.file_metadata().schema_descr();
    let top = |name: &str| (0..fields.num_columns()).find(|&i| fields.column(i).path().parts() == [name.to_owned()]);
    let time = if top(raw_archive::PAYLOAD).is_some() {
        top(raw_archive::EVENT_TIME).map(|i| (i, None))
    } else {
        top(&schema.time_field).map(|i| (i, Some(schema.time_format)))
    };
    let scale = time.and_then(|(i, format)| Some((i, scale_of(&fields.column(i), format)?)));
    // the latest time a row may have without being dead-lettered for it
    let latest = received.saturating_add(schema.max_future_skew).as_micros();
    let provably_outside = |g: &deltalake::parquet::file::metadata::RowGroupMetaData| -> bool {
        let Some((i, scale)) = scale else { return false };
        let Some(Statistics::Int64(s)) = g.column(i).statistics() else { return false };
        if s.null_count_opt() != Some(0) {
            return false;
        }
        let (Some(min), Some(max)) =
            (s.min_opt().and_then(|v| scale.micros(*v)), s.max_opt().and_then(|v| scale.micros(*v)))
        else {
            return false;
        };
        let valid = min >= 0 && max <= latest.min(MAX_EVENT_TIME_US);
        valid && (max < lo.as_micros() || min >= hi.as_micros())
    };
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut pruned_groups = 0;
    let mut first = 0usize;
    let mut extends = false;
    for g in groups {
        let n = usize::try_from(g.num_rows()).unwrap_or(0);
        if provably_outside(g) {
            pruned_groups += 1;
            extends = false;
        } else if extends && let Some(last) = runs.last_mut() {
            last.1 += n;
        } else {
            runs.push((first, n));
            extends = true;
        }
        first += n;
    }
    Selection { total_rows, groups: groups.len(), pruned_groups, runs }
}
