//! JSON Lines and Parquet files under a prefix (what Kafka Connect or Firehose land), listed recursively
//! and read in path order; a URL naming one file reads that file.
//!
//! - JSON Lines: one payload per line (a final newline ends the last line; other empty lines are events
//!   and dead-letter as `empty`). Coordinates: the file URL, partition 0, 0-based line number.
//! - Parquet with a `payload` column (string or binary), e.g. Kafka Connect's: `ingest_time`, `source`,
//!   `partition` and `offset` are used when present (the archive's layout), otherwise the file's
//!   last-modified time, the file URL, partition 0 and the 0-based row number.
//! - Parquet without one, e.g. Firehose's: the columns are the event's fields; each row is written as the
//!   JSON object it stands for and decoded like any payload, so verdicts and reason codes still match.

use std::io::Cursor;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use polars::prelude::*;
use tidemark_core::raw_archive;
use tidemark_core::{EventSchema, EventTime, SourceCoordinates};

use super::{
    Decoder, InputFile, InputFormat, InputSource, ReadOutcome, SpillFor, estimated_events, finish_into, merge,
    parse_location, row_groups,
};
use crate::error::Error;
use crate::spill::Spill;

fn extension_matches(format: InputFormat, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    match format {
        InputFormat::JsonLines => name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json"),
        InputFormat::Parquet => name.ends_with(".parquet"),
        InputFormat::DeltaArchive => false,
    }
}

fn open(url: &str) -> Result<(Arc<dyn ObjectStore>, Path, url::Url), Error> {
    let parsed = parse_location(url)?;
    let (store, prefix) = tidemark_store::objects::open(&parsed, &Default::default()).map_err(|e| match e {
        tidemark_store::Error::ObjectStore { source, .. } => Error::store(url, source),
        other => Error::View(other),
    })?;
    Ok((store, prefix, parsed))
}

async fn list_in(store: &dyn ObjectStore, prefix: &Path, url: &str) -> Result<Vec<object_store::ObjectMeta>, Error> {
    let mut out = Vec::new();
    let mut pending = vec![prefix.clone()];
    while let Some(dir) = pending.pop() {
        let listing = store.list_with_delimiter(Some(&dir)).await.map_err(|e| Error::store(url, e))?;
        out.extend(listing.objects);
        pending.extend(listing.common_prefixes);
    }
    Ok(out)
}

/// The matching files under the prefix, in path order, with their metadata.
pub(crate) async fn list(source: &InputSource) -> Result<Vec<(InputFile, object_store::ObjectMeta)>, Error> {
    let (store, prefix, _) = open(&source.url)?;
    let mut metas = list_in(store.as_ref(), &prefix, &source.url).await?;
    if metas.is_empty() {
        // the URL may name one file rather than a prefix
        match store.head(&prefix).await {
            Ok(meta) => metas.push(meta),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::store(&source.url, e)),
        }
    }
    metas.retain(|m| m.location.filename().is_some_and(|n| extension_matches(source.format, n) && !n.starts_with('.')));
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(metas
        .into_iter()
        .map(|m| (InputFile { path: format!("file:///{}", m.location), bytes: m.size, rows: None }, m))
        .collect())
}

/// A file chosen for reading, with the rows to decode (Parquet: by row-group statistics).
pub(crate) struct Chosen {
    pub file: InputFile,
    pub meta: object_store::ObjectMeta,
    /// The receive time its rows are decoded with (its last-modified time).
    pub received: EventTime,
    /// Parquet: the row groups to decode (`None`: JSON Lines, read whole).
    pub selection: Option<row_groups::Selection>,
}

/// The matching files that may hold events in `[lo, hi)`: every JSON Lines file (they have no
/// statistics); the Parquet files with a row group that can (see [`row_groups`]; only footers are read).
pub(crate) async fn select(
    source: &InputSource,
    schema: &EventSchema,
    lo: EventTime,
    hi: EventTime,
) -> Result<Vec<Chosen>, Error> {
    let (store, _, _) = open(&source.url)?;
    let mut chosen = Vec::new();
    let mut pruned = 0usize;
    for (mut file, meta) in list(source).await? {
        let received = EventTime::from_micros(meta.last_modified.timestamp_micros()).unwrap_or(EventTime::UNIX_EPOCH);
        let selection = match source.format {
            InputFormat::Parquet => {
                let footer = row_groups::footer(store.as_ref(), &meta, &file.path).await?;
                let selection = row_groups::select(&footer, schema, lo, hi, received);
                if selection.rows() == 0 && selection.total_rows > 0 {
                    pruned += 1;
                    continue;
                }
                file.rows = Some(selection.rows());
                Some(selection)
            }
            _ => None,
        };
        chosen.push(Chosen { file, meta, received, selection });
    }
    if pruned > 0 {
        tracing::debug!(url = %source.url, pruned, "Parquet files skipped by event-time statistics");
    }
    Ok(chosen)
}

/// Reads and decodes the events in `[lo, hi)` of every matching file that may hold some ([`select`]).
pub(crate) async fn read(
    source: &InputSource,
    schema: &EventSchema,
    lo: EventTime,
    hi: EventTime,
    spill_for: SpillFor<'_>,
) -> Result<(ReadOutcome, Arc<Spill>), Error> {
    let (store, _, _) = open(&source.url)?;
    let files = select(source, schema, lo, hi).await?;
    let spill = spill_for(estimated_events(files.iter().map(|f| &f.file)))?;
    let mut parts = Vec::with_capacity(files.len());
    for f in &files {
        let bytes = store
            .get(&f.meta.location)
            .await
            .map_err(|e| Error::store(&f.file.path, e))?
            .bytes()
            .await
            .map_err(|e| Error::store(&f.file.path, e))?;
        let schema = schema.clone();
        let received = f.received;
        let location = f.file.path.clone();
        let runs = f.selection.as_ref().filter(|s| !s.is_whole()).map(|s| s.runs.clone());
        let lines = source.format == InputFormat::JsonLines;
        let spill = spill.clone();
        let part = tokio::task::spawn_blocking(move || {
            let mut d = Decoder::new(&schema, lo, hi);
            match (lines, runs) {
                (true, _) => decode_lines(&bytes, &location, received, &mut d),
                (false, None) => decode_archive_frame(&bytes, &location, &mut d, Some(received), None)?,
                (false, Some(runs)) => {
                    for run in runs {
                        decode_archive_frame(&bytes, &location, &mut d, Some(received), Some(run))?;
                    }
                }
            }
            finish_into(d, &spill)
        })
        .await
        .map_err(|e| Error::Internal(format!("decoding task failed: {e}")))??;
        parts.push(part);
    }
    Ok((merge(parts, files.into_iter().map(|f| f.file).collect(), None), spill))
}

fn decode_lines(bytes: &[u8], location: &str, received: EventTime, d: &mut Decoder<'_>) {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() && bytes.is_empty() {
        return;
    }
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        d.row(line, received, || SourceCoordinates { source: location.to_owned(), partition: 0, offset: i as i64 });
    }
}

fn time_column_us(df: &DataFrame, name: &str, location: &str) -> Result<Option<Vec<Option<i64>>>, Error> {
    let Ok(c) = df.column(name) else { return Ok(None) };
    let scale: i64 = match c.dtype() {
        DataType::Datetime(TimeUnit::Nanoseconds, _) => -1_000,
        DataType::Datetime(TimeUnit::Microseconds, _) => 1,
        DataType::Datetime(TimeUnit::Milliseconds, _) => 1_000,
        other => return Err(Error::shape(location, format!("column {name:?} is {other}, expected a timestamp"))),
    };
    let phys = c.cast(&DataType::Int64)?;
    let v = phys
        .as_materialized_series()
        .i64()?
        .iter()
        .map(|x| x.map(|x| if scale < 0 { x.div_euclid(-scale) } else { x * scale }))
        .collect();
    Ok(Some(v))
}

/// Each row of a Parquet file whose columns are the event's fields, as the JSON object the decoder reads:
/// strings, integers, booleans and nulls as themselves, non-finite floats as the bare tokens producers
/// write (the decoder reports `non_finite`), timestamps as the schema's time format for the time field
/// and RFC 3339 elsewhere.
fn flat_rows_as_json(df: &DataFrame, schema: &EventSchema, location: &str) -> Result<Vec<Vec<u8>>, Error> {
    use std::io::Write;
    use tidemark_core::TimeFormat;
    let json_err = |e: std::io::Error| Error::Internal(format!("writing a JSON row: {e}"));
    let mut rows: Vec<Vec<u8>> = vec![b"{".to_vec(); df.height()];
    for (ci, c) in df.columns().iter().enumerate() {
        let name = c.name().as_str();
        let s = c.as_materialized_series();
        let is_time = name == schema.time_field;
        for (i, out) in rows.iter_mut().enumerate() {
            if ci > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, name).map_err(|e| Error::Internal(e.to_string()))?;
            out.push(b':');
            match s.get(i)? {
                AnyValue::Null => out.extend_from_slice(b"null"),
                AnyValue::Boolean(b) => write!(out, "{b}").map_err(json_err)?,
                AnyValue::String(v) => {
                    serde_json::to_writer(&mut *out, v).map_err(|e| Error::Internal(e.to_string()))?;
                }
                AnyValue::StringOwned(v) => {
                    serde_json::to_writer(&mut *out, v.as_str()).map_err(|e| Error::Internal(e.to_string()))?;
                }
                AnyValue::Int8(v) => write!(out, "{v}").map_err(json_err)?,
                AnyValue::Int16(v) => write!(out, "{v}").map_err(json_err)?,
                AnyValue::Int32(v) => write!(out, "{v}").map_err(json_err)?,
                AnyValue::Int64(v) => write!(out, "{v}").map_err(json_err)?,
                AnyValue::UInt8(v) => write!(out, "{v}").map_err(json_err)?,
                AnyValue::UInt16(v) => write!(out, "{v}").map_err(json_err)?,
                AnyValue::UInt32(v) => write!(out, "{v}").map_err(json_err)?,
                AnyValue::UInt64(v) => write!(out, "{v}").map_err(json_err)?,
                AnyValue::Float32(v) => write_float(out, f64::from(v)).map_err(json_err)?,
                AnyValue::Float64(v) => write_float(out, v).map_err(json_err)?,
                AnyValue::Datetime(v, unit, _) => {
                    let us = match unit {
                        TimeUnit::Nanoseconds => v.div_euclid(1_000),
                        TimeUnit::Microseconds => v,
                        TimeUnit::Milliseconds => v.saturating_mul(1_000),
                    };
                    match (is_time, schema.time_format) {
                        (true, TimeFormat::EpochUs) => write!(out, "{us}").map_err(json_err)?,
                        (true, TimeFormat::EpochMs) => write_float(out, us as f64 / 1e3).map_err(json_err)?,
                        (true, TimeFormat::EpochS) => write_float(out, us as f64 / 1e6).map_err(json_err)?,
                        _ => {
                            let text = EventTime::from_micros(us).map(|t| t.to_string()).unwrap_or_default();
                            serde_json::to_writer(&mut *out, &text).map_err(|e| Error::Internal(e.to_string()))?;
                        }
                    }
                }
                other => {
                    return Err(Error::shape(
                        location,
                        format!("column {name:?} has type {}, which an event field cannot have", other.dtype()),
                    ));
                }
            }
        }
    }
    for r in &mut rows {
        r.push(b'}');
    }
    Ok(rows)
}

fn write_float(out: &mut Vec<u8>, x: f64) -> std::io::Result<()> {
    use std::io::Write;
    if x.is_nan() {
        out.write_all(b"NaN")
    } else if x.is_infinite() {
        out.write_all(if x > 0.0 { b"Infinity" } else { b"-Infinity" })
    } else {
        serde_json::to_writer(&mut *out, &x).map_err(std::io::Error::other)
    }
}

/// Decodes a Parquet file with a `payload` column and, when present, the archive's provenance columns.
/// `fallback_received` is used when the file has no `ingest_time` column (required otherwise). `rows`
/// (`(first row, rows)`) decodes only that slice; row numbers in coordinates stay the file's.
pub(crate) fn decode_archive_frame<B: AsRef<[u8]> + Send + Sync>(
    bytes: B,
    location: &str,
    d: &mut Decoder<'_>,
    fallback_received: Option<EventTime>,
    rows: Option<(usize, usize)>,
) -> Result<(), Error> {
    let df = ParquetReader::new(Cursor::new(bytes)).with_slice(rows).finish()?;
    let first_row = rows.map_or(0, |(first, _)| first as i64);
    let flat: Vec<Vec<u8>>;
    let payload: Box<dyn Iterator<Item = Option<&[u8]>> + '_> = match df.column(raw_archive::PAYLOAD) {
        Ok(payload) => match payload.dtype() {
            DataType::String => Box::new(payload.as_materialized_series().str()?.iter().map(|s| s.map(str::as_bytes))),
            DataType::Binary => Box::new(payload.as_materialized_series().binary()?.iter()),
            other => {
                return Err(Error::shape(location, format!("column \"payload\" is {other}, expected a string")));
            }
        },
        // the Delta archive always has payloads; other Parquet files may hold the event's fields as columns
        Err(_) if fallback_received.is_some() => {
            flat = flat_rows_as_json(&df, d.schema, location)?;
            Box::new(flat.iter().map(|p| Some(p.as_slice())))
        }
        Err(_) => return Err(Error::shape(location, format!("no {:?} column", raw_archive::PAYLOAD))),
    };
    let received = time_column_us(&df, raw_archive::INGEST_TIME, location)?;
    if received.is_none() && fallback_received.is_none() {
        return Err(Error::shape(location, format!("no {:?} column", raw_archive::INGEST_TIME)));
    }
    let source = match df.column(raw_archive::SOURCE) {
        Ok(c) => Some(c.as_materialized_series().str()?.clone()),
        Err(_) => None,
    };
    let partition = match df.column(raw_archive::PARTITION) {
        Ok(c) => Some(c.cast(&DataType::Int32)?.as_materialized_series().i32()?.clone()),
        Err(_) => None,
    };
    let offset = match df.column(raw_archive::OFFSET) {
        Ok(c) => Some(c.cast(&DataType::Int64)?.as_materialized_series().i64()?.clone()),
        Err(_) => None,
    };
    for (i, p) in payload.enumerate() {
        let recv = received
            .as_ref()
            .and_then(|r| r[i])
            .and_then(EventTime::from_micros)
            .or(fallback_received)
            .unwrap_or(EventTime::UNIX_EPOCH);
        let at = || SourceCoordinates {
            source: source.as_ref().and_then(|s| s.get(i)).unwrap_or(location).to_owned(),
            partition: partition.as_ref().and_then(|s| s.get(i)).unwrap_or(0),
            offset: offset.as_ref().and_then(|s| s.get(i)).unwrap_or(first_row + i as i64),
        };
        // a null payload decodes as an empty one (reason `empty`)
        d.row(p.unwrap_or(b""), recv, at);
    }
    Ok(())
}
