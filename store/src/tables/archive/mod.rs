//! The raw event archive: the Delta table (schema in [`tidemark_core::raw_archive`]) the stream service
//! appends every decoded event to, and the batch layer recomputes metrics from.
//!
//! Exactly once per Kafka partition: each [`RawArchive::append`] is one Delta commit carrying, for every
//! `(source, partition)` it writes, an app transaction `appId = tidemark-archive/<source>/<partition>`
//! (the source percent-encoded, see [`archive_app_id`]) whose version is the highest offset written. Rows
//! at or below the recorded version are skipped, so a replay after a crash writes nothing twice.
//! deltalake accepts two commits with the same (appId, version), so the skip check is what makes it
//! exactly once; a racing commit that records one of the same appIds makes ours conflict
//! (`ConcurrentTransaction`), and the loser reloads, skips again and retries.
//!
//! Reads: [`RawArchive::read_range`] (`range.rs`) reads an event-time range, pruned by file statistics and
//! columnar; the batch layer reads the files itself.

mod range;

pub use range::{ArchivedArrival, RangeEvidence, RangeRead, RangeReadStats};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema};
use deltalake::datafusion::functions_aggregate::expr_fn::max;
use deltalake::datafusion::prelude::{Expr, col, lit};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{DataType, StructField, Transaction};
use deltalake::protocol::SaveMode;
use tidemark_core::raw_archive::{EVENT_ID, EVENT_TIME, INGEST_DATE, INGEST_TIME, OFFSET, PARTITION, PAYLOAD, SOURCE};
use tidemark_core::{EventTime, SourceCoordinates};
use tokio::sync::Mutex;
use url::Url;

use crate::delta_io::{
    column, create_table_if_missing, ensure_local_dir, is_conflict, longs, open_table, parse_base, query_table,
    recorded_txn_version, strings, times, ts_type,
};
use crate::error::{Error, Result};
use crate::flat::date_of;
use crate::retry::backoff;

/// Prefix of the archive's app transaction ids.
pub const APP_ID_PREFIX: &str = "tidemark-archive/";

/// What [`RawArchive::event_times_after`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArrivalsSince {
    /// The recorded offset of every `(source, partition)` when read.
    pub offsets: BTreeMap<(String, i32), i64>,
    /// The event times of the rows past the given offsets, in no particular order.
    pub event_times: Vec<EventTime>,
}

/// The app transaction id that records the highest archived offset of `(source, partition)`:
/// `tidemark-archive/<source>/<partition>`, with every byte of `source` outside `[A-Za-z0-9._-]`
/// written as `%XX` (so Kafka topic names stay readable and a `/` in a file path cannot collide).
pub fn archive_app_id(source: &str, partition: i32) -> String {
    let mut id = String::with_capacity(APP_ID_PREFIX.len() + source.len() + 12);
    id.push_str(APP_ID_PREFIX);
    for b in source.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            id.push(char::from(b));
        } else {
            id.push_str(&format!("%{b:02X}"));
        }
    }
    id.push('/');
    id.push_str(&partition.to_string());
    id
}

/// One event as archived: the decoded id and time, where it came from, and its payload as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRow {
    /// The decoded event id.
    pub event_id: String,
    /// The decoded event time.
    pub event_time: EventTime,
    /// When tidemark received the event (Kafka timestamp or read time); its UTC date is the partition.
    pub ingest_time: EventTime,
    /// Topic (or file), partition and offset (or line number).
    pub coords: SourceCoordinates,
    /// The event's JSON text as received.
    pub payload: String,
}

/// What one [`RawArchive::append`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Rows committed by this call.
    pub written: u64,
    /// Rows left out because the archive already held their offset (a replay).
    pub skipped: u64,
}

/// Counters of a [`RawArchive`] handle.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Commits written.
    pub commits: AtomicU64,
    /// Commit attempts that conflicted with a concurrent commit of the same partition and were re-planned.
    pub conflicts: AtomicU64,
    /// Reloads of the table state (first use, after a conflict, after an error of unknown outcome).
    pub reloads: AtomicU64,
}

/// How to open a [`RawArchive`].
#[derive(Debug, Clone)]
pub struct RawArchiveConfig {
    /// The table's URL (`file:///path`, `s3://bucket/prefix`, `memory:///name`) or an absolute path:
    /// the spec's `stores.raw_archive`.
    pub url: String,
    /// object_store options (credentials etc.; AWS env vars are read too).
    pub storage_options: HashMap<String, String>,
    /// Commit attempts before giving up with [`Error::Contention`].
    pub max_attempts: u32,
}

impl RawArchiveConfig {
    /// Defaults for `url`: 12 attempts.
    pub fn new(url: impl Into<String>) -> Self {
        RawArchiveConfig { url: url.into(), storage_options: HashMap::new(), max_attempts: 12 }
    }

    /// Opens the table, creating it (partitioned by `ingest_date`) if it does not exist.
    pub async fn build(self) -> Result<RawArchive> {
        let url = if self.url.starts_with('/') {
            Url::from_directory_path(&self.url)
                .map_err(|()| Error::invalid("raw archive url", format!("{:?} is not an absolute path", self.url)))?
        } else {
            parse_base(&self.url)?
        };
        ensure_local_dir(&url).await?;
        let table = open_table(&url, &self.storage_options).await?;
        let table = create_table_if_missing(table, "raw_archive", delta_columns(), vec![INGEST_DATE]).await?;
        Ok(RawArchive {
            url,
            max_attempts: self.max_attempts.max(1),
            state: Mutex::new(State { table, recorded: HashMap::new(), stale: false }),
            stats: ArchiveStats::default(),
        })
    }
}

/// The handle's view of the table: a loaded snapshot and the recorded offsets read from it (plus its own
/// commits). `stale` forces a reload before the next use (after an error whose outcome is unknown).
struct State {
    table: DeltaTable,
    /// `(source, partition)` -> recorded version (`None`: none recorded), as of `table`.
    recorded: HashMap<(String, i32), Option<i64>>,
    stale: bool,
}

/// The raw event archive Delta table.
///
/// Guarantees:
/// - **Atomic visibility per call**: the rows of one [`append`](Self::append) and the offsets it records
///   become visible together in one Delta commit, or not at all. Readers (the batch layer) never see
///   part of a call.
/// - **Idempotent by offset**: per `(source, partition)`, a row whose offset is at or below the highest
///   offset already archived is skipped. Replaying any range after a crash, from this process or another,
///   writes each offset at most once; offsets that were never offered (records that did not decode) are
///   simply absent.
/// - **Concurrent writers**: two handles (processes) may append to one table. Commits touching different
///   partitions both land; if they touch the same partition, one conflicts, reloads, skips what the other
///   wrote and retries (at most `max_attempts` times, then [`Error::Contention`]).
///
/// The recorded offsets are cached per handle after the first read; the Delta conflict check covers every
/// commit made since the cached snapshot, so the cache never lets a row be written twice. Appends through
/// one handle are serialized.
pub struct RawArchive {
    url: Url,
    max_attempts: u32,
    state: Mutex<State>,
    stats: ArchiveStats,
}

impl fmt::Debug for RawArchive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawArchive").field("url", &self.url.as_str()).field("stats", &self.stats).finish()
    }
}

fn arrow_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(EVENT_ID, ArrowType::Utf8, false),
        Field::new(EVENT_TIME, ts_type(), false),
        Field::new(INGEST_TIME, ts_type(), false),
        Field::new(SOURCE, ArrowType::Utf8, false),
        Field::new(PARTITION, ArrowType::Int32, false),
        Field::new(OFFSET, ArrowType::Int64, false),
        Field::new(PAYLOAD, ArrowType::Utf8, false),
        Field::new(INGEST_DATE, ArrowType::Utf8, false),
    ]))
}

fn delta_columns() -> Vec<StructField> {
    vec![
        StructField::new(EVENT_ID, DataType::STRING, false),
        StructField::new(EVENT_TIME, DataType::TIMESTAMP, false),
        StructField::new(INGEST_TIME, DataType::TIMESTAMP, false),
        StructField::new(SOURCE, DataType::STRING, false),
        StructField::new(PARTITION, DataType::INTEGER, false),
        StructField::new(OFFSET, DataType::LONG, false),
        StructField::new(PAYLOAD, DataType::STRING, false),
        StructField::new(INGEST_DATE, DataType::STRING, false),
    ]
}

fn to_batch(rows: &[&ArchiveRow], dates: &[&str]) -> Result<RecordBatch> {
    let ts = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.event_id.as_str()))),
        ts(rows.iter().map(|r| r.event_time.as_micros()).collect()),
        ts(rows.iter().map(|r| r.ingest_time.as_micros()).collect()),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.coords.source.as_str()))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.coords.partition))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.coords.offset))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.payload.as_str()))),
        Arc::new(StringArray::from_iter_values(dates.iter().copied())),
    ];
    RecordBatch::try_new(arrow_schema(), columns).map_err(|e| Error::Corrupt(format!("building an archive batch: {e}")))
}

/// Refuses what the archive cannot store faithfully: negative offsets, offsets not increasing within a
/// partition, ingest times whose date is not `YYYY-MM-DD`. Returns the partition column of every row.
fn check_rows(rows: &[ArchiveRow]) -> Result<Vec<String>> {
    let mut last: HashMap<(&str, i32), i64> = HashMap::new();
    let mut dates = Vec::with_capacity(rows.len());
    for r in rows {
        let c = &r.coords;
        if c.offset < 0 {
            return Err(Error::invalid("archive row", format!("{c}: offsets must not be negative")));
        }
        if let Some(prev) = last.insert((c.source.as_str(), c.partition), c.offset)
            && prev >= c.offset
        {
            return Err(Error::invalid(
                "archive rows",
                format!("{c} follows offset {prev}: offsets must increase within a partition in one call"),
            ));
        }
        let date = date_of(r.ingest_time.as_micros());
        if date.len() != 10 {
            return Err(Error::invalid("archive row", format!("{c}: ingest time {} is out of range", r.ingest_time)));
        }
        dates.push(date);
    }
    Ok(dates)
}

impl RawArchive {
    /// Opens the archive at `url` with default settings ([`RawArchiveConfig::new`]), creating the table
    /// if it does not exist.
    pub async fn open(url: impl Into<String>) -> Result<Self> {
        RawArchiveConfig::new(url).build().await
    }

    /// The table's URL.
    pub fn table_url(&self) -> &Url {
        &self.url
    }

    /// Counters of this handle.
    pub fn stats(&self) -> &ArchiveStats {
        &self.stats
    }

    async fn reload(&self, state: &mut State) -> Result<()> {
        state.table.update_state().await.map_err(Error::delta(self.url.as_str(), "loading"))?;
        state.recorded.clear();
        state.stale = false;
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The recorded version of each key not yet known, read from `state.table`'s snapshot.
    async fn learn(&self, state: &mut State, keys: &[(&str, i32)]) -> Result<()> {
        let url = self.url.as_str();
        for &(source, partition) in keys {
            let key = (source.to_owned(), partition);
            if state.recorded.contains_key(&key) {
                continue;
            }
            let version = recorded_txn_version(&state.table, url, &archive_app_id(source, partition)).await?;
            state.recorded.insert(key, version);
        }
        Ok(())
    }

    /// Appends `rows` in one Delta commit, skipping every row whose offset the archive already holds.
    ///
    /// `rows` may span several `(source, partition)`; within each, offsets must increase (gaps are fine:
    /// records that did not decode are not archived). The commit records, per partition written, the
    /// highest offset written as the version of app transaction [`archive_app_id`]. Nothing is committed
    /// when `rows` is empty or every row is skipped.
    ///
    /// Errors: [`Error::InvalidInput`] (the caller's rows are malformed: fix them, no retry);
    /// [`Error::Contention`] after `max_attempts` conflicting commits and [`Error::Delta`] /
    /// [`Error::ObjectStore`] for storage failures (retry the same call: whatever landed is skipped).
    pub async fn append(&self, rows: &[ArchiveRow]) -> Result<AppendOutcome> {
        let dates = check_rows(rows)?;
        if rows.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let keys: BTreeSet<(&str, i32)> = rows.iter().map(|r| (r.coords.source.as_str(), r.coords.partition)).collect();
        let keys: Vec<(&str, i32)> = keys.into_iter().collect();
        let url = self.url.as_str();
        let mut state = self.state.lock().await;
        let mut last = String::new();
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            if state.stale || attempt > 0 {
                self.reload(&mut state).await?;
            }
            self.learn(&mut state, &keys).await?;

            // skip what is archived; note the highest offset written per partition
            let mut chosen: Vec<&ArchiveRow> = Vec::with_capacity(rows.len());
            let mut chosen_dates: Vec<&str> = Vec::with_capacity(rows.len());
            let mut high: BTreeMap<(&str, i32), i64> = BTreeMap::new();
            for (r, d) in rows.iter().zip(&dates) {
                let key = (r.coords.source.as_str(), r.coords.partition);
                let recorded = state.recorded.get(&(key.0.to_owned(), key.1)).copied().flatten();
                if recorded.is_some_and(|v| r.coords.offset <= v) {
                    continue;
                }
                chosen.push(r);
                chosen_dates.push(d.as_str());
                high.insert(key, r.coords.offset);
            }
            let skipped = (rows.len() - chosen.len()) as u64;
            if chosen.is_empty() {
                return Ok(AppendOutcome { written: 0, skipped });
            }

            let batch = to_batch(&chosen, &chosen_dates)?;
            let txns: Vec<Transaction> =
                high.iter().map(|((s, p), v)| Transaction::new(archive_app_id(s, *p), *v)).collect();
            let meta = serde_json::json!({
                "partitions": high.iter().map(|((s, p), v)| serde_json::json!({"source": s, "partition": p, "offset": v}))
                    .collect::<Vec<_>>(),
                "rows": chosen.len(),
            });
            let props = CommitProperties::default()
                .with_application_transactions(txns)
                .with_metadata([("tidemark_archive".to_owned(), meta)]);
            let before = state.table.version();
            let result = state
                .table
                .clone()
                .write(vec![batch])
                .with_save_mode(SaveMode::Append)
                .with_partition_columns([INGEST_DATE])
                .with_commit_properties(props)
                .await;
            match result {
                Ok(table) => {
                    // Commits of other writers that landed in between (deltalake resolved them as not
                    // conflicting: none records a partition written here) may have recorded partitions
                    // cached here: forget those, keep what this commit recorded.
                    if table.version() != before.map(|v| v + 1) {
                        state.recorded.clear();
                    }
                    for ((s, p), v) in &high {
                        state.recorded.insert(((*s).to_owned(), *p), Some(*v));
                    }
                    state.table = table;
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    return Ok(AppendOutcome { written: chosen.len() as u64, skipped });
                }
                Err(e) if is_conflict(&e) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(table = url, attempt, "archive commit conflicted: {e}");
                    last = e.to_string();
                }
                Err(e) => {
                    // the commit may or may not have landed: read the table again before the next call
                    state.stale = true;
                    return Err(Error::delta(url, "appending")(e));
                }
            }
        }
        state.stale = true;
        Err(Error::Contention { attempts: self.max_attempts, last })
    }

    /// The highest archived offset per `(source, partition)`, as recorded in the table's latest version.
    ///
    /// Reloads the table and reads its `source` and `partition` columns to find the partitions (Delta
    /// keeps no list of app ids), then reads each one's recorded offset. Fails with [`Error::Corrupt`] if
    /// the table holds rows the app transactions do not account for (written by another writer).
    pub async fn recorded_offsets(&self) -> Result<BTreeMap<(String, i32), i64>> {
        let mut state = self.state.lock().await;
        self.reload(&mut state).await?;
        let batches = query_table(&state.table, |df| {
            df.aggregate(vec![col(SOURCE), col(PARTITION)], vec![max(col(OFFSET)).alias(OFFSET)])
        })
        .await?;
        let mut seen: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for b in &batches {
            let source = strings(b, SOURCE)?;
            let partition = int32s(b, PARTITION)?;
            let offset = longs(b, OFFSET)?;
            for i in 0..b.num_rows() {
                seen.insert((source.value(i).to_owned(), partition.value(i)), offset.value(i));
            }
        }
        let keys: Vec<(&str, i32)> = seen.keys().map(|(s, p)| (s.as_str(), *p)).collect();
        self.learn(&mut state, &keys).await?;
        let mut out = BTreeMap::new();
        for ((source, partition), max) in seen {
            let recorded = state.recorded.get(&(source.clone(), partition)).copied().flatten();
            match recorded {
                Some(v) if v >= max => {
                    out.insert((source, partition), v);
                }
                _ => {
                    return Err(Error::Corrupt(format!(
                        "raw archive {}: {source}[{partition}] holds offset {max} but records {recorded:?} \
                         (rows written by another writer than RawArchive)",
                        self.url
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The highest archived offset of `(source, partition)` as this handle knows it: every commit made
    /// through it, and the table as of its last load. Cheap after the first call for a partition.
    pub async fn recorded_offset(&self, source: &str, partition: i32) -> Result<Option<i64>> {
        let mut state = self.state.lock().await;
        if state.stale {
            self.reload(&mut state).await?;
        }
        self.learn(&mut state, &[(source, partition)]).await?;
        Ok(state.recorded.get(&(source.to_owned(), partition)).copied().flatten())
    }

    /// What was archived past `after` (per `(source, partition)`, the highest offset a reader has handled;
    /// partitions it does not list count from the start): the event time of every such row, and the
    /// recorded offsets at the time of reading, which the reader covers once it has handled them. Reads
    /// the `event_time` column of those rows only (file statistics on `offset` skip older files).
    pub async fn event_times_after(&self, after: &BTreeMap<(String, i32), i64>) -> Result<ArrivalsSince> {
        let offsets = self.recorded_offsets().await?;
        let mut filter: Option<Expr> = None;
        for ((source, partition), upto) in &offsets {
            let from = after.get(&(source.clone(), *partition)).copied();
            if from.is_some_and(|f| f >= *upto) {
                continue;
            }
            let mut f = col(SOURCE)
                .eq(lit(source.as_str()))
                .and(col(PARTITION).eq(lit(*partition)))
                .and(col(OFFSET).lt_eq(lit(*upto)));
            if let Some(from) = from {
                f = f.and(col(OFFSET).gt(lit(from)));
            }
            filter = Some(match filter {
                Some(x) => x.or(f),
                None => f,
            });
        }
        let Some(filter) = filter else { return Ok(ArrivalsSince { offsets, event_times: Vec::new() }) };
        let table = self.state.lock().await.table.clone();
        let batches = query_table(&table, |df| df.filter(filter)?.select_columns(&[EVENT_TIME])).await?;
        let mut event_times = Vec::new();
        for b in &batches {
            let et = times(b, EVENT_TIME)?;
            for i in 0..b.num_rows() {
                event_times.push(
                    EventTime::from_micros(et.value(i))
                        .ok_or_else(|| Error::Corrupt(format!("raw archive column {EVENT_TIME} is out of range")))?,
                );
            }
        }
        Ok(ArrivalsSince { offsets, event_times })
    }

    /// Every archived row of the latest version, sorted by source coordinates. Reads the whole table,
    /// payloads included, so it exists for tests only (feature `testing`): production reads go through
    /// [`read_range`](Self::read_range).
    #[cfg(any(test, feature = "testing"))]
    pub async fn read_all(&self) -> Result<Vec<ArchiveRow>> {
        let table = {
            let mut state = self.state.lock().await;
            self.reload(&mut state).await?;
            state.table.clone()
        };
        let all = deltalake::datafusion::prelude::lit(true);
        let mut out = Vec::new();
        for b in &crate::delta_io::scan_table(&table, all).await? {
            out.extend(range::archive_rows(b)?);
        }
        out.sort_by(|a, b| a.coords.cmp(&b.coords));
        Ok(out)
    }
}

fn int32s(b: &RecordBatch, name: &str) -> Result<Int32Array> {
    let c = column(b, name, &ArrowType::Int32)?;
    c.as_any().downcast_ref::<Int32Array>().cloned().ok_or_else(|| Error::Corrupt(format!("column {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_escape_the_source() {
        assert_eq!(archive_app_id("page-views.v1_x", 3), "tidemark-archive/page-views.v1_x/3");
        assert_eq!(archive_app_id("/data/a b.jsonl", 0), "tidemark-archive/%2Fdata%2Fa%20b.jsonl/0");
        assert_eq!(archive_app_id("é%", -1), "tidemark-archive/%C3%A9%25/-1");
        assert_ne!(archive_app_id("a/1", 2), archive_app_id("a", 12));
    }

    #[test]
    fn rows_out_of_order_within_a_partition_are_refused() {
        let row = |p: i32, o: i64| ArchiveRow {
            event_id: "e".into(),
            event_time: EventTime::UNIX_EPOCH,
            ingest_time: EventTime::UNIX_EPOCH,
            coords: SourceCoordinates { source: "t".into(), partition: p, offset: o },
            payload: "{}".into(),
        };
        assert!(check_rows(&[row(0, 1), row(1, 0), row(0, 2)]).is_ok());
        assert!(matches!(check_rows(&[row(0, 2), row(0, 2)]), Err(Error::InvalidInput { .. })));
        assert!(matches!(check_rows(&[row(0, 3), row(1, 0), row(0, 1)]), Err(Error::InvalidInput { .. })));
        assert!(matches!(check_rows(&[row(0, -1)]), Err(Error::InvalidInput { .. })));
        assert_eq!(check_rows(&[row(0, 0)]).unwrap(), vec!["1970-01-01".to_owned()]);
    }
}
