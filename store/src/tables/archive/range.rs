//! Range reads of the raw archive ([`RawArchive::read_range`]): what the reconciler and `tidemark lateness`
//! read of it, at a cost that follows the event-time range rather than the archive.
//!
//! 1. **Files**: the data files of the latest version whose `event_time` statistics in the Delta log overlap
//!    the range (timestamps there are truncated to milliseconds: the max gets 1 ms of slack); a file without
//!    statistics is read. The `ingest_date` partition does not bound event time, so it is not used.
//! 2. **Narrow columns**: of those files only `event_id`, `event_time`, `ingest_time`, `source`,
//!    `partition` and `offset` are decoded, batch by batch, as many files at once as there are cores (each
//!    on its own task; results taken in file order). Rows in the range become arrivals (32 bytes
//!    each, when asked for) and, for duplicate detection, 16 bytes each: a 64-bit hash of the event id and
//!    the row's place (file, row). Sorting those finds the hashes seen more than once.
//! 3. **Payloads** only for those candidates: each file holding one is read again with a row selection
//!    of just those rows, payload included (files again as many at once as there are cores); the exact event ids then decide (a hash collision costs a
//!    payload read, never a wrong answer).
//!
//! A duplicate is two rows of one event id with event times in the range; the batch layer de-duplicates
//! within its read range the same way.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, RecordBatch};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions;
use deltalake::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use deltalake::parquet::arrow::async_reader::{
    AsyncFileReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt as _, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tidemark_core::raw_archive::{EVENT_ID, EVENT_TIME, INGEST_TIME, OFFSET, PARTITION, PAYLOAD, SOURCE};
use tidemark_core::{EventTime, SourceCoordinates};

use super::{ArchiveRow, RawArchive, int32s};
use crate::delta_io::{longs, strings, times};
use crate::error::{Error, Result};

/// One archived event's arrival: what the lateness analysis needs (no id, no payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchivedArrival {
    /// The event's source: an index into [`RangeEvidence::sources`].
    pub source: u32,
    /// Source partition.
    pub partition: i32,
    /// Offset (arrival order within the partition).
    pub offset: i64,
    /// Event time.
    pub event_time: EventTime,
    /// Receive time.
    pub ingest_time: EventTime,
}

/// What a [`RangeRead`] cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeReadStats {
    /// Data files in the table's latest version.
    pub files_in_table: u64,
    /// Files whose `event_time` statistics overlap the range, or that have none: their narrow columns were
    /// read. The others were skipped without being opened.
    pub files_read: u64,
    /// Rows decoded from those files (narrow columns).
    pub rows_read: u64,
    /// Of those, rows whose event time is in the range.
    pub rows_in_range: u64,
    /// Files read a second time for the payloads of duplicate candidates.
    pub payload_files_read: u64,
    /// Rows whose payload was decoded: every delivery of an id seen more than once (and of rare hash
    /// collisions, which the exact ids then tell apart).
    pub payload_rows_read: u64,
}

/// What [`RangeRead::run`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeEvidence {
    /// The sources [`ArchivedArrival::source`] indexes, in order of first appearance.
    pub sources: Vec<String>,
    /// Arrivals of the events whose time is in the arrivals range, in file order (empty unless asked for
    /// with [`RangeRead::arrivals`]).
    pub arrivals: Vec<ArchivedArrival>,
    /// Every event id archived more than once with event times in the range: all its deliveries (payload
    /// included), sorted by coordinates; the groups sorted by their first delivery (empty unless asked for
    /// with [`RangeRead::duplicates`]).
    pub duplicates: Vec<Vec<ArchiveRow>>,
    /// What the read cost.
    pub stats: RangeReadStats,
}

/// A read of the archived events whose event time is in `[from, to)`, configured as a builder and run with
/// [`RangeRead::run`]. See the module documentation for what it reads.
#[derive(Debug)]
pub struct RangeRead<'a> {
    archive: &'a RawArchive,
    from: EventTime,
    to: EventTime,
    arrivals: Option<(EventTime, EventTime)>,
    duplicates: bool,
}

/// The narrow columns: everything but the payload (and the `ingest_date` partition, which is not in the
/// files). The event id is read only to find duplicates.
const NARROW: [&str; 6] = [EVENT_ID, EVENT_TIME, INGEST_TIME, SOURCE, PARTITION, OFFSET];

impl RawArchive {
    /// A read of the archived events whose event time is in `[from, to)`, pruned by the `event_time`
    /// statistics of the table's files and columnar (see [`RangeRead`]). By itself it only counts; ask for
    /// [`arrivals`](RangeRead::arrivals) and [`duplicates`](RangeRead::duplicates).
    pub fn read_range(&self, from: EventTime, to: EventTime) -> RangeRead<'_> {
        RangeRead { archive: self, from, to, arrivals: None, duplicates: false }
    }

    /// The latest arrival (`ingest_time`) in the archive's latest version, from its files' statistics in
    /// the Delta log (no data file is read; millisecond precision, as the statistics hold it): the speed
    /// layer's clock as of the last record it archived, which is the recorded arrival clock when a backlog
    /// or a file replays history. `None` when the archive is empty or no file has statistics.
    pub async fn latest_arrival(&self) -> Result<Option<EventTime>> {
        let table = {
            let mut state = self.state.lock().await;
            self.reload(&mut state).await?;
            state.table.clone()
        };
        if table.version().is_none() {
            return Ok(None);
        }
        let snapshot = table.snapshot().map_err(Error::delta(self.url.as_str(), "reading the snapshot"))?;
        let mut latest: Option<EventTime> = None;
        for f in snapshot.log_data().iter() {
            let stats: Option<serde_json::Value> = f.stats().and_then(|s| serde_json::from_str(&s).ok());
            let max = stats
                .as_ref()
                .and_then(|s| s.get("maxValues")?.get(INGEST_TIME)?.as_str().and_then(EventTime::parse_rfc3339));
            latest = latest.max(max);
        }
        Ok(latest)
    }
}

impl RangeRead<'_> {
    /// Also return the arrivals of the events whose time is in `[from, to)` (within the read range).
    pub fn arrivals(mut self, from: EventTime, to: EventTime) -> Self {
        self.arrivals = Some((from, to));
        self
    }

    /// Also return the event ids archived more than once in the range, with every delivery.
    pub fn duplicates(mut self, on: bool) -> Self {
        self.duplicates = on;
        self
    }

    /// Runs the read on the table's latest version.
    ///
    /// Errors: [`Error::Delta`] / [`Error::ObjectStore`] for storage failures (retry), [`Error::Corrupt`]
    /// for files this crate did not write that way (deletion vectors, unreadable Parquet).
    pub async fn run(self) -> Result<RangeEvidence> {
        let table = {
            let mut state = self.archive.state.lock().await;
            self.archive.reload(&mut state).await?;
            state.table.clone()
        };
        let url = self.archive.url.as_str();
        let mut out = RangeEvidence::default();
        if self.from >= self.to || table.version().is_none() {
            return Ok(out);
        }
        let started = std::time::Instant::now();
        let Chosen { files, in_table, rows: rows_estimate } = files_overlapping(&table, url, self.from, self.to)?;
        out.stats.files_in_table = in_table;
        out.stats.files_read = files.len() as u64;
        let store = table.object_store();
        // (hash of the event id, file, row): 16 bytes per row in the range, reserved up front from the
        // files' row counts (at least the rows in the range) rather than grown by doubling
        let mut keys: Vec<(u64, u32, u32)> = Vec::new();
        if self.duplicates {
            keys.reserve_exact(usize::try_from(rows_estimate).unwrap_or(0));
        }
        // arrivals likewise (32 bytes per row): growing a day's 10M by doubling held 1.5x that for a moment
        if self.arrivals.is_some() {
            out.arrivals.reserve_exact(usize::try_from(rows_estimate).unwrap_or(0));
        }
        let scan = FileScanSpec {
            url: url.to_owned(),
            range: (self.from.as_micros(), self.to.as_micros()),
            arrivals: self.arrivals.map_or((i64::MAX, i64::MIN), |(a, b)| (a.as_micros(), b.as_micros())),
            duplicates: self.duplicates,
        };
        let reads: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(fi, file)| {
                let (store, file, scan) = (Arc::clone(&store), file.clone(), scan.clone());
                async move {
                    let fi =
                        u32::try_from(fi).map_err(|_| Error::Corrupt(format!("{}: more than 2^32 files", scan.url)))?;
                    scan.file(&store, fi, &file).await
                }
            })
            .collect();
        let mut scans = on_tasks(url, reads);
        while let Some(f) = scans.try_next().await? {
            out.stats.rows_read += f.rows_read;
            out.stats.rows_in_range += f.rows_in_range;
            keys.extend_from_slice(&f.keys);
            let local: Vec<u32> = f.sources.iter().map(|s| source_index(&mut out.sources, s)).collect();
            out.arrivals.extend(f.arrivals.into_iter().map(|mut a| {
                a.source = local.get(a.source as usize).copied().unwrap_or(u32::MAX);
                a
            }));
        }
        tracing::debug!(files = files.len(), ms = started.elapsed().as_millis(), "archive range read: narrow columns");
        if self.duplicates {
            let candidates = candidates(keys);
            tracing::debug!(ms = started.elapsed().as_millis(), "archive range read: candidates");
            out.duplicates = self.read_candidates(&store, url, &files, candidates, &mut out.stats).await?;
            tracing::debug!(ms = started.elapsed().as_millis(), "archive range read: payloads");
        }
        Ok(out)
    }

    /// Reads the candidate rows in full and groups them by exact event id, keeping ids with more than one
    /// delivery in the range.
    async fn read_candidates(
        &self,
        store: &Arc<dyn ObjectStore>,
        url: &str,
        files: &[(ObjPath, u64)],
        candidates: BTreeMap<u32, Vec<u32>>,
        stats: &mut RangeReadStats,
    ) -> Result<Vec<Vec<ArchiveRow>>> {
        let mut by_id: HashMap<String, Vec<ArchiveRow>> = HashMap::new();
        let (from, to) = (self.from, self.to);
        let reads: Vec<_> = candidates
            .into_iter()
            .map(|(fi, rows)| {
                let (store, url, file) = (Arc::clone(store), url.to_owned(), files[fi as usize].clone());
                async move {
                    let all: Vec<&str> = NARROW.iter().copied().chain([PAYLOAD]).collect();
                    let mut stream = open_file(&store, &url, &file, &all, Some(selection(&rows))).await?;
                    let (mut read, mut kept) = (0u64, Vec::new());
                    while let Some(b) = stream.try_next().await.map_err(|e| parquet_error(&url, &file.0, e))? {
                        read += b.num_rows() as u64;
                        // the selected rows are those of the narrow pass: their time is in the range
                        kept.extend(
                            archive_rows(&b)?.into_iter().filter(|r| from <= r.event_time && r.event_time < to),
                        );
                    }
                    Ok((read, kept))
                }
            })
            .collect();
        let mut reads = on_tasks(url, reads);
        while let Some((read, kept)) = reads.try_next().await? {
            stats.payload_files_read += 1;
            stats.payload_rows_read += read;
            for r in kept {
                by_id.entry(r.event_id.clone()).or_default().push(r);
            }
        }
        let mut groups: Vec<Vec<ArchiveRow>> = by_id
            .into_values()
            .filter(|d| d.len() > 1)
            .map(|mut d| {
                d.sort_by(|a, b| a.coords.cmp(&b.coords));
                d
            })
            .collect();
        groups.sort_by(|a, b| a[0].coords.cmp(&b[0].coords));
        Ok(groups)
    }
}

/// The data files a range read opens.
struct Chosen {
    /// Each file's path and size.
    files: Vec<(ObjPath, u64)>,
    /// Files in the table.
    in_table: u64,
    /// Rows of the chosen files, as their statistics count them (0 for a file without).
    rows: u64,
}

/// The data files of `table` whose `event_time` statistics overlap `[lo, hi)` (or that have none).
fn files_overlapping(table: &DeltaTable, url: &str, lo: EventTime, hi: EventTime) -> Result<Chosen> {
    let snapshot = table.snapshot().map_err(Error::delta(url, "reading the snapshot"))?;
    let stat = |stats: &serde_json::Value, which: &str| -> Option<i64> {
        let s = stats.get(which)?.get(EVENT_TIME)?.as_str()?;
        EventTime::parse_rfc3339(s).map(EventTime::as_micros)
    };
    let (mut out, mut total, mut rows) = (Vec::new(), 0, 0);
    for f in snapshot.log_data().iter() {
        total += 1;
        if f.deletion_vector_descriptor().is_some() {
            return Err(Error::Corrupt(format!(
                "raw archive {url}: file {} has a deletion vector, which RawArchive never writes",
                f.path()
            )));
        }
        let stats: Option<serde_json::Value> = f.stats().and_then(|s| serde_json::from_str(&s).ok());
        if let Some(s) = &stats
            && let (Some(min), Some(max)) = (stat(s, "minValues"), stat(s, "maxValues"))
            && (max.saturating_add(1_000) < lo.as_micros() || min >= hi.as_micros())
        {
            continue;
        }
        rows += stats.as_ref().and_then(|s| s.get("numRecords")).and_then(serde_json::Value::as_u64).unwrap_or(0);
        out.push((f.object_store_path(), u64::try_from(f.size()).unwrap_or(0)));
    }
    Ok(Chosen { files: out, in_table: total, rows })
}

/// One data file of known size, read by byte ranges (the footer, then the column chunks of the projected
/// columns).
struct FileReader {
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    size: u64,
}

impl AsyncFileReader for FileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, deltalake::parquet::errors::Result<bytes::Bytes>> {
        async move { Ok(self.store.get_range(&self.path, range).await?) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, deltalake::parquet::errors::Result<Vec<bytes::Bytes>>> {
        async move { Ok(self.store.get_ranges(&self.path, &ranges).await?) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, deltalake::parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

type FileStream = ParquetRecordBatchStream<FileReader>;

/// A stream of `columns` of one data file, of the `rows` selected (all if `None`).
/// Runs `reads` (one per file) as tasks, as many at once as there are cores, and yields their results in
/// the order given. `url` names the archive in the error of a task that failed.
fn on_tasks<T: Send + 'static>(
    url: &str,
    reads: Vec<impl std::future::Future<Output = Result<T>> + Send + 'static>,
) -> impl futures::Stream<Item = Result<T>> + Unpin {
    let lanes = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let url = url.to_owned();
    futures::stream::iter(reads.into_iter().map(move |read| {
        let url = url.clone();
        async move {
            tokio::spawn(read)
                .await
                .map_err(|e| Error::Internal(format!("{url}: the task reading a file failed: {e}")))?
        }
    }))
    .buffered(lanes)
}

/// What each file of a [`RangeRead`] is read for (owned, so a file is read on its own task).
#[derive(Debug, Clone)]
struct FileScanSpec {
    url: String,
    /// Event times kept, µs: `[from, to)`.
    range: (i64, i64),
    /// Event times whose arrivals are kept, µs (empty when `from > to`).
    arrivals: (i64, i64),
    duplicates: bool,
}

/// What one file held of a [`RangeRead`]'s range.
#[derive(Debug, Default)]
struct FileScan {
    rows_read: u64,
    rows_in_range: u64,
    /// (hash of the event id, file, row) of the rows in the range (when reading duplicates).
    keys: Vec<(u64, u32, u32)>,
    /// Arrivals; `source` indexes `sources`.
    arrivals: Vec<ArchivedArrival>,
    sources: Vec<String>,
}

impl FileScanSpec {
    /// Decodes file number `fi`'s narrow columns.
    async fn file(&self, store: &Arc<dyn ObjectStore>, fi: u32, file: &(ObjPath, u64)) -> Result<FileScan> {
        let url = self.url.as_str();
        let hasher = foldhash::fast::FixedState::default();
        let columns = if self.duplicates { &NARROW[..] } else { &NARROW[1..] };
        let mut out = FileScan::default();
        let mut stream = open_file(store, url, file, columns, None).await?;
        let mut row: u32 = 0;
        let ((from, to), (a_from, a_to)) = (self.range, self.arrivals);
        while let Some(b) = stream.try_next().await.map_err(|e| parquet_error(url, &file.0, e))? {
            out.rows_read += b.num_rows() as u64;
            let id = if self.duplicates { Some(strings(&b, EVENT_ID)?) } else { None };
            let (et, it, source, partition, offset) = (
                times(&b, EVENT_TIME)?,
                times(&b, INGEST_TIME)?,
                strings(&b, SOURCE)?,
                int32s(&b, PARTITION)?,
                longs(&b, OFFSET)?,
            );
            for i in 0..b.num_rows() {
                let here = row;
                row = row.checked_add(1).ok_or_else(|| Error::Corrupt(format!("{url}: a file of 2^32 rows")))?;
                let t = et.value(i);
                if t < from || t >= to {
                    continue;
                }
                out.rows_in_range += 1;
                if let Some(id) = &id {
                    out.keys.push((hasher.hash_one(id.value(i)), fi, here));
                }
                if a_from <= t && t < a_to {
                    let corrupt = |w: &str| Error::Corrupt(format!("raw archive column {w} is out of range"));
                    out.arrivals.push(ArchivedArrival {
                        source: source_index(&mut out.sources, source.value(i)),
                        partition: partition.value(i),
                        offset: offset.value(i),
                        event_time: EventTime::from_micros(t).ok_or_else(|| corrupt(EVENT_TIME))?,
                        ingest_time: EventTime::from_micros(it.value(i)).ok_or_else(|| corrupt(INGEST_TIME))?,
                    });
                }
            }
        }
        Ok(out)
    }
}

async fn open_file(
    store: &Arc<dyn ObjectStore>,
    url: &str,
    (path, size): &(ObjPath, u64),
    columns: &[&str],
    rows: Option<RowSelection>,
) -> Result<FileStream> {
    let reader = FileReader { store: Arc::clone(store), path: path.clone(), size: *size };
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(|e| parquet_error(url, path, e))?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let mut builder = builder.with_projection(mask).with_batch_size(64 * 1024);
    if let Some(rows) = rows {
        builder = builder.with_row_selection(rows);
    }
    builder.build().map_err(|e| parquet_error(url, path, e))
}

/// Storage failures stay storage failures (retryable); anything else is a file this crate cannot read.
fn parquet_error(url: &str, path: &ObjPath, e: ParquetError) -> Error {
    match e {
        ParquetError::External(inner) => match inner.downcast::<object_store::Error>() {
            Ok(source) => Error::ObjectStore { url: format!("{url}{path}"), source: *source },
            Err(other) => Error::Corrupt(format!("raw archive {url}{path}: {other}")),
        },
        other => Error::Corrupt(format!("raw archive {url}{path}: {other}")),
    }
}

/// The index of `source` in `sources`, appended if new (sources are few: the last one is checked first).
fn source_index(sources: &mut Vec<String>, source: &str) -> u32 {
    let i = match sources.iter().rposition(|s| s == source) {
        Some(i) => i,
        None => {
            sources.push(source.to_owned());
            sources.len() - 1
        }
    };
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// The rows whose id hash occurs more than once, per file, ascending.
fn candidates(mut keys: Vec<(u64, u32, u32)>) -> BTreeMap<u32, Vec<u32>> {
    keys.sort_unstable();
    let mut out: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for run in keys.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
        for &(_, file, row) in run {
            out.entry(file).or_default().push(row);
        }
    }
    for rows in out.values_mut() {
        rows.sort_unstable();
        rows.dedup();
    }
    out
}

/// A row selection of exactly `rows` (ascending) of a file.
fn selection(rows: &[u32]) -> RowSelection {
    let mut selectors = Vec::new();
    let mut next = 0usize;
    for &r in rows {
        let r = r as usize;
        if r > next {
            selectors.push(RowSelector::skip(r - next));
        }
        selectors.push(RowSelector::select(1));
        next = r + 1;
    }
    RowSelection::from(selectors)
}

/// The rows of a batch holding every archive column but the partition.
pub(super) fn archive_rows(b: &RecordBatch) -> Result<Vec<ArchiveRow>> {
    let corrupt = |w: &str| Error::Corrupt(format!("raw archive column {w} is out of range"));
    let (id, et, it) = (strings(b, EVENT_ID)?, times(b, EVENT_TIME)?, times(b, INGEST_TIME)?);
    let (source, partition, offset, payload) =
        (strings(b, SOURCE)?, int32s(b, PARTITION)?, longs(b, OFFSET)?, strings(b, PAYLOAD)?);
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        if id.is_null(i) || payload.is_null(i) {
            return Err(Error::Corrupt("raw archive: a null event id or payload".into()));
        }
        out.push(ArchiveRow {
            event_id: id.value(i).to_owned(),
            event_time: EventTime::from_micros(et.value(i)).ok_or_else(|| corrupt(EVENT_TIME))?,
            ingest_time: EventTime::from_micros(it.value(i)).ok_or_else(|| corrupt(INGEST_TIME))?,
            coords: SourceCoordinates {
                source: source.value(i).to_owned(),
                partition: partition.value(i),
                offset: offset.value(i),
            },
            payload: payload.value(i).to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_rows_of_hashes_seen_twice_per_file() {
        let keys = vec![(7, 0, 3), (1, 0, 0), (7, 1, 9), (2, 0, 1), (7, 0, 1), (2, 1, 0), (5, 1, 2)];
        let c = candidates(keys);
        assert_eq!(c, BTreeMap::from([(0, vec![1, 3]), (1, vec![0, 9])]));
    }

    #[test]
    fn a_selection_selects_exactly_the_rows() {
        let s = selection(&[0, 3, 4, 9]);
        let selected: Vec<usize> = s
            .iter()
            .scan(0usize, |at, sel| {
                let start = *at;
                *at += sel.row_count;
                Some((!sel.skip).then_some(start..*at))
            })
            .flatten()
            .flatten()
            .collect();
        assert_eq!(selected, vec![0, 3, 4, 9]);
    }

    #[test]
    fn sources_are_interned_in_order() {
        let mut sources = Vec::new();
        assert_eq!(source_index(&mut sources, "a"), 0);
        assert_eq!(source_index(&mut sources, "b"), 1);
        assert_eq!(source_index(&mut sources, "a"), 0);
        assert_eq!(sources, vec!["a".to_owned(), "b".to_owned()]);
    }
}
