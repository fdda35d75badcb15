//! Columnar scans for the reconciler: the rows (or emission-log records) of one metric whose window starts in
//! a range, as a stream of chunks (one Arrow record batch each), so a reader holds one chunk at a time
//! instead of the whole range. Values stay as the stored JSON text: equal values are equal text (both layers
//! write them with the same encoder), so a reader can compare hashes and parse only what differs.

use deltalake::arrow::array::{
    Array, Int64Array, RecordBatch, StringViewArray, TimestampMicrosecondArray, UInt32Array,
};
use deltalake::arrow::compute::take_record_batch;
use futures::stream::BoxStream;
use tidemark_core::{EventTime, MetricRow, Pane};

use crate::delta_io::{longs, string_views, times};
use crate::error::{Error, Result};
use crate::flat::{self, Flat};
use crate::model::Emission;

/// A stream of chunks borrowing the store it reads from.
pub type Chunks<'a, T> = BoxStream<'a, Result<T>>;

/// Which table a [`RowChunk`] was read from (their columns differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Serving,
    BatchView,
}

/// Rows of one metric in columns, in no particular order: a serving store's current rows (never tombstones
/// or deltas) or the batch view's rows.
#[derive(Debug, Clone)]
pub struct RowChunk {
    layout: Layout,
    batch: RecordBatch,
    starts: TimestampMicrosecondArray,
    ends: TimestampMicrosecondArray,
    dims: StringViewArray,
    values: StringViewArray,
    events: Int64Array,
    /// Serving rows: the watermark of speed rows (null for batch rows).
    watermark: Option<TimestampMicrosecondArray>,
    /// Batch-view rows: the run and epoch that wrote each.
    runs: Option<(StringViewArray, Int64Array)>,
}

impl RowChunk {
    /// A chunk of the serving table's layout (`store/src/serving/delta/schema.rs`).
    pub(crate) fn serving(batch: RecordBatch) -> Result<Self> {
        Ok(RowChunk {
            layout: Layout::Serving,
            starts: times(&batch, "window_start")?,
            ends: times(&batch, "window_end")?,
            dims: string_views(&batch, "dims")?,
            values: string_views(&batch, "agg_values")?,
            events: longs(&batch, "events")?,
            watermark: Some(times(&batch, "watermark")?),
            runs: None,
            batch,
        })
    }

    /// A chunk of the batch view's layout ([`crate::batch_view::arrow_schema`]).
    pub(crate) fn batch_view(batch: RecordBatch) -> Result<Self> {
        Ok(RowChunk {
            layout: Layout::BatchView,
            starts: times(&batch, "window_start")?,
            ends: times(&batch, "window_end")?,
            dims: string_views(&batch, "dims")?,
            values: string_views(&batch, "values")?,
            events: longs(&batch, "events")?,
            watermark: None,
            runs: Some((string_views(&batch, "run_id")?, longs(&batch, "epoch")?)),
            batch,
        })
    }

    /// Serving rows already read as rows (the default [`crate::ServingStore::scan_rows`]).
    pub fn from_rows(rows: &[MetricRow]) -> Result<Self> {
        let flats = rows.iter().map(|r| Flat::from_row(r, flat::Kind::Row, false)).collect::<Result<Vec<_>>>()?;
        Self::serving(crate::serving::delta::schema::to_batch(&flats, 0, false)?)
    }

    /// Rows in the chunk.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// Whether the chunk has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Window start of row `i`, microseconds since the epoch.
    pub fn window_start(&self, i: usize) -> i64 {
        self.starts.value(i)
    }

    /// Window end of row `i`, microseconds since the epoch.
    pub fn window_end(&self, i: usize) -> i64 {
        self.ends.value(i)
    }

    /// Canonical dimension text of row `i` ([`tidemark_core::Dimensions::encode`]).
    pub fn dims(&self, i: usize) -> &str {
        self.dims.value(i)
    }

    /// The aggregate values of row `i` as stored: a JSON object (aggregate name -> number or null).
    pub fn values_json(&self, i: usize) -> &str {
        self.values.value(i)
    }

    /// Events counted into row `i`.
    pub fn events(&self, i: usize) -> i64 {
        self.events.value(i)
    }

    /// The watermark of row `i` when it is a speed row of a serving store.
    pub fn speed_watermark(&self, i: usize) -> Option<i64> {
        self.watermark.as_ref().and_then(|w| w.is_valid(i).then(|| w.value(i)))
    }

    /// The batch run (id, epoch) that wrote row `i`, for rows of the batch view.
    pub fn batch_run(&self, i: usize) -> Option<(&str, i64)> {
        self.runs.as_ref().map(|(ids, epochs)| (ids.value(i), epochs.value(i)))
    }

    /// Rows `indices` decoded in full (one conversion for all of them).
    pub fn rows(&self, indices: &[usize]) -> Result<Vec<MetricRow>> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let idx = UInt32Array::from_iter_values(indices.iter().map(|i| u32::try_from(*i).unwrap_or(u32::MAX)));
        let picked = take_record_batch(&self.batch, &idx).map_err(|e| Error::Corrupt(format!("picking rows: {e}")))?;
        match self.layout {
            Layout::Serving => {
                crate::serving::delta::schema::from_batch(&picked)?.into_iter().map(Flat::into_row).collect()
            }
            Layout::BatchView => crate::tables::batch_view::rows_of(&picked, "batch view"),
        }
    }

    /// Row `i` decoded in full.
    pub fn row(&self, i: usize) -> Result<MetricRow> {
        let one = self.batch.slice(i, 1);
        match self.layout {
            Layout::Serving => crate::serving::delta::schema::from_batch(&one)?
                .pop()
                .ok_or_else(|| Error::Corrupt("an empty slice of a serving chunk".into()))?
                .into_row(),
            Layout::BatchView => crate::tables::batch_view::rows_of(&one, "batch view")?
                .pop()
                .ok_or_else(|| Error::Corrupt("an empty slice of a batch-view chunk".into())),
        }
    }
}

/// Emission-log records of one metric in columns (any order, replays included: a record may repeat).
#[derive(Debug, Clone)]
pub struct EmissionChunk {
    starts: TimestampMicrosecondArray,
    ends: TimestampMicrosecondArray,
    dims: StringViewArray,
    values: StringViewArray,
    kind: StringViewArray,
    pane: StringViewArray,
    revision: Int64Array,
    watermark: TimestampMicrosecondArray,
    epoch: Int64Array,
    emitted: TimestampMicrosecondArray,
    len: usize,
}

impl EmissionChunk {
    /// The serving table's columns [`EmissionChunk::serving`] reads (a scan reads no others).
    pub(crate) const SERVING_COLUMNS: &'static [&'static str] = &[
        "window_start",
        "window_end",
        "dims",
        "agg_values",
        "kind",
        "pane",
        "revision",
        "watermark",
        "batch_epoch",
        "computed_at",
    ];

    /// A chunk of the serving table's layout holding only emission records (at least the
    /// [`SERVING_COLUMNS`](Self::SERVING_COLUMNS)).
    pub(crate) fn serving(batch: &RecordBatch) -> Result<Self> {
        Ok(EmissionChunk {
            starts: times(batch, "window_start")?,
            ends: times(batch, "window_end")?,
            dims: string_views(batch, "dims")?,
            values: string_views(batch, "agg_values")?,
            kind: string_views(batch, "kind")?,
            pane: string_views(batch, "pane")?,
            revision: longs(batch, "revision")?,
            watermark: times(batch, "watermark")?,
            epoch: longs(batch, "batch_epoch")?,
            emitted: times(batch, "computed_at")?,
            len: batch.num_rows(),
        })
    }

    /// Emissions already read as such (the default [`crate::ServingStore::scan_emissions`]).
    pub fn from_emissions(emissions: &[Emission]) -> Result<Self> {
        let flats = emissions.iter().map(Flat::from_emission).collect::<Result<Vec<_>>>()?;
        Self::serving(&crate::serving::delta::schema::to_batch(&flats, 0, false)?)
    }

    /// Records in the chunk.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the chunk has no records.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Window start of record `i`, microseconds since the epoch.
    pub fn window_start(&self, i: usize) -> i64 {
        self.starts.value(i)
    }

    /// Window end of record `i`, microseconds since the epoch.
    pub fn window_end(&self, i: usize) -> i64 {
        self.ends.value(i)
    }

    /// Canonical dimension text of record `i`.
    pub fn dims(&self, i: usize) -> &str {
        self.dims.value(i)
    }

    /// The values emitted, as stored JSON text.
    pub fn values_json(&self, i: usize) -> &str {
        self.values.value(i)
    }

    /// Whether record `i` is a late-policy delta rather than a full row.
    pub fn delta(&self, i: usize) -> bool {
        self.kind.value(i) == "emission_delta"
    }

    /// Which firing record `i` was (`None`: unreadable).
    pub fn pane(&self, i: usize) -> Option<Pane> {
        self.pane.is_valid(i).then(|| flat::parse_pane(self.pane.value(i))).flatten()
    }

    /// The row revision of record `i`.
    pub fn revision(&self, i: usize) -> u32 {
        u32::try_from(self.revision.value(i)).unwrap_or(u32::MAX)
    }

    /// The operator watermark when record `i` fired.
    pub fn watermark(&self, i: usize) -> EventTime {
        EventTime::from_micros(self.watermark.value(i)).unwrap_or(EventTime::MIN)
    }

    /// The writer epoch that committed record `i`.
    pub fn writer_epoch(&self, i: usize) -> u64 {
        u64::try_from(self.epoch.value(i)).unwrap_or(0)
    }

    /// When record `i` was emitted, microseconds since the epoch.
    pub fn emitted_at(&self, i: usize) -> i64 {
        self.emitted.value(i)
    }
}

/// `[from, to)` cut into slices of at most `step` (for stores read slice by slice).
pub(crate) fn slices(from: EventTime, to: EventTime, step: tidemark_core::Duration) -> Vec<(EventTime, EventTime)> {
    let mut out = Vec::new();
    let mut a = from;
    while a < to {
        let b = a.saturating_add(step).min(to);
        out.push((a, b));
        if b <= a {
            break;
        }
        a = b;
    }
    out
}
