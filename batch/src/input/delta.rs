//! The raw archive Delta table. Files are pruned by their `ingest_date` partition (a valid event is never
//! more than `max_future_skew` ahead of its receive time) and by the `event_time` min/max statistics in
//! the Delta log (timestamps in statistics are truncated to milliseconds, so the max gets 1 ms of slack).
//! Files with deletion vectors are refused rather than read wrongly.

use std::sync::Arc;

use deltalake::ObjectStore;
use deltalake::Path;
use object_store::ObjectStoreExt;
use tidemark_core::raw_archive;
use tidemark_core::{EventSchema, EventTime};

use super::files::decode_archive_frame;
use super::{Decoder, InputFile, ReadOutcome, SpillFor, estimated_events, finish_into, merge, parse_location};
use crate::error::Error;
use crate::spill::Spill;

/// A data file of the archive chosen for reading.
#[derive(Debug, Clone)]
pub(crate) struct ArchiveFile {
    pub file: InputFile,
    pub path: Path,
}

fn date_of(t: EventTime) -> String {
    chrono::DateTime::from_timestamp_micros(t.as_micros()).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

fn stat_time(stats: &serde_json::Value, which: &str) -> Option<i64> {
    let s = stats.get(which)?.get(raw_archive::EVENT_TIME)?.as_str()?;
    EventTime::parse_rfc3339(s).map(EventTime::as_micros)
}

/// Opens the table and lists the data files that may hold events with times in `[lo, hi)`.
pub(crate) async fn list(
    url: &str,
    schema: &EventSchema,
    lo: EventTime,
    hi: EventTime,
) -> Result<(Vec<ArchiveFile>, i64), Error> {
    let (table, files) = open_and_list(url, schema, lo, hi, None).await?;
    drop(table);
    Ok(files)
}

async fn open_and_list(
    url: &str,
    schema: &EventSchema,
    lo: EventTime,
    hi: EventTime,
    version: Option<i64>,
) -> Result<(deltalake::DeltaTable, (Vec<ArchiveFile>, i64)), Error> {
    let parsed = parse_location(url)?;
    tidemark_store::objects::register_handlers();
    let table = match version.and_then(|v| u64::try_from(v).ok()) {
        Some(v) => deltalake::open_table_with_version(parsed, v).await,
        None => deltalake::open_table(parsed).await,
    }
    .map_err(|e| Error::delta(url, e))?;
    let version = table.version().and_then(|v| i64::try_from(v).ok()).unwrap_or(-1);
    let min_date = date_of(lo.saturating_sub(schema.max_future_skew));
    let snapshot = table.snapshot().map_err(|e| Error::delta(url, e))?;
    let mut out = Vec::new();
    for f in snapshot.log_data().iter() {
        let path = f.path().to_string();
        if f.deletion_vector_descriptor().is_some() {
            return Err(Error::shape(
                format!("{url}/{path}"),
                "the file has a deletion vector, which the batch layer does not read yet",
            ));
        }
        if let Some(Some(date)) = f.partition_values_map().get(raw_archive::INGEST_DATE)
            && *date < min_date
        {
            continue;
        }
        let stats: Option<serde_json::Value> = f.stats().and_then(|s| serde_json::from_str(&s).ok());
        let rows = stats.as_ref().and_then(|s| s.get("numRecords")).and_then(serde_json::Value::as_u64);
        if let Some(s) = &stats {
            let min = stat_time(s, "minValues");
            let max = stat_time(s, "maxValues");
            if let (Some(min), Some(max)) = (min, max)
                && (max + 1_000 < lo.as_micros() || min >= hi.as_micros())
            {
                continue;
            }
        }
        out.push(ArchiveFile {
            file: InputFile { path, bytes: u64::try_from(f.size()).unwrap_or(0), rows },
            path: f.object_store_path(),
        });
    }
    out.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    Ok((table, (out, version)))
}

/// Reads and decodes the archive's events in `[lo, hi)`, at `version` if given (else the latest).
pub(crate) async fn read(
    url: &str,
    schema: &EventSchema,
    lo: EventTime,
    hi: EventTime,
    version: Option<i64>,
    spill_for: SpillFor<'_>,
) -> Result<(ReadOutcome, Arc<Spill>), Error> {
    let (table, (files, version)) = open_and_list(url, schema, lo, hi, version).await?;
    let spill = spill_for(estimated_events(files.iter().map(|f| &f.file)))?;
    let store: Arc<dyn ObjectStore> = table.object_store();
    let mut parts = Vec::with_capacity(files.len());
    for f in &files {
        let location = format!("{url}/{}", f.file.path);
        let bytes = store
            .get(&f.path)
            .await
            .map_err(|e| Error::store(&location, e))?
            .bytes()
            .await
            .map_err(|e| Error::store(&location, e))?;
        let schema = schema.clone();
        let spill = spill.clone();
        let part = tokio::task::spawn_blocking(move || {
            let mut d = Decoder::new(&schema, lo, hi);
            decode_archive_frame(bytes, &location, &mut d, None, None)?;
            finish_into(d, &spill)
        })
        .await
        .map_err(|e| Error::Internal(format!("decoding task failed: {e}")))??;
        parts.push(part);
    }
    Ok((merge(parts, files.into_iter().map(|f| f.file).collect(), Some(version)), spill))
}
