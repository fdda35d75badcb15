//! Reading raw events: the Delta archive ([`delta`]), or JSON Lines / Parquet files under a prefix
//! ([`files`]), at object_store URLs. Every payload is decoded with tidemark-core's
//! [`EventSchema::decode`], so verdicts and reason codes match the stream layer.
//!
//! The receive time passed to the decoder (which refuses events too far in its future) is the archive's
//! `ingest_time`, a Parquet file's `ingest_time` column when it has one, and otherwise the file's
//! last-modified time (files are written after their events were received, so this never refuses an event
//! the stream layer accepted).
//!
//! Rows are kept when their decoded event time lies in the requested range; rows outside it (read because
//! a whole file was read) are counted, never dropped silently. Undecodable rows are kept, with
//! their reason, as [`UndecodableRow`]s for the dead-letter store.

mod delta;
mod files;
mod row_groups;

use std::collections::BTreeMap;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tidemark_core::{EventSchema, EventTime, ReasonCode, SourceCoordinates};

use crate::error::Error;
use crate::frame::{EVENT_ID, EventFrameBuilder};
use crate::spill::Spill;

/// Spill name of the decoded events, split by event id (parts `raw/{b}`).
pub(crate) const RAW: &str = "raw";

/// What the raw events look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// The raw archive Delta table the stream service writes (schema in `tidemark_core::raw_archive`).
    DeltaArchive,
    /// `*.jsonl` / `*.ndjson` / `*.json` files under a prefix, one event per line.
    JsonLines,
    /// `*.parquet` files under a prefix with a `payload` column (the archive's columns where present).
    Parquet,
}

/// Where and in which format the raw events are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSource {
    /// Format.
    pub format: InputFormat,
    /// `file://` URL of the table or prefix (plain absolute paths are accepted).
    pub url: String,
}

impl InputSource {
    /// The raw archive Delta table at `url`.
    pub fn delta(url: impl Into<String>) -> Self {
        InputSource { format: InputFormat::DeltaArchive, url: url.into() }
    }

    /// JSON Lines files under `prefix`.
    pub fn json_lines(prefix: impl Into<String>) -> Self {
        InputSource { format: InputFormat::JsonLines, url: prefix.into() }
    }

    /// Parquet files under `prefix`.
    pub fn parquet(prefix: impl Into<String>) -> Self {
        InputSource { format: InputFormat::Parquet, url: prefix.into() }
    }
}

/// One file the run read (or, in a dry run, would read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// URL or table-relative path.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Rows according to file statistics, when known.
    pub rows: Option<u64>,
}

/// A row that could not be decoded, with what the dead-letter store keeps of it (the CLI stores it as a
/// `tidemark_store::DeadLetter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndecodableRow {
    /// Where the row is.
    pub at: SourceCoordinates,
    /// Reason code (the same as the stream layer's).
    pub reason: ReasonCode,
    /// The field to blame, if any.
    pub field: Option<String>,
    /// What exactly is wrong.
    pub detail: String,
    /// The payload as read (invalid UTF-8 replaced).
    pub payload: String,
    /// The receive time used for decoding.
    pub received_at: EventTime,
}

/// Counts of what reading saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadCounts {
    /// Rows scanned in the files read.
    pub rows_scanned: u64,
    /// Rows that decoded and lie in the requested range.
    pub decoded_in_range: u64,
    /// Rows that decoded but lie outside the requested range (read because their file was).
    pub outside_range: u64,
    /// Rows that failed decoding.
    pub invalid: u64,
    /// Failures by reason code.
    pub invalid_by_reason: BTreeMap<ReasonCode, u64>,
}

/// Everything read besides the events (those went into the spill's raw parts): the files, the counts and
/// the dead letters.
#[derive(Debug)]
pub struct ReadOutcome {
    /// Files read.
    pub files: Vec<InputFile>,
    /// Delta table version read, for the archive.
    pub table_version: Option<i64>,
    /// Counts.
    pub counts: ReadCounts,
    /// Undecodable rows.
    pub dead_letters: Vec<UndecodableRow>,
}

/// What a dry run reports about the input without reading rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPlan {
    /// Files that would be read.
    pub files: Vec<InputFile>,
    /// Delta table version, for the archive.
    pub table_version: Option<i64>,
}

impl InputPlan {
    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Estimated rows: the sum of known row counts, `None` if any file's count is unknown.
    pub fn estimated_rows(&self) -> Option<u64> {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// Decodes rows into a frame builder, counting and collecting as it goes. One per file or chunk.
pub(crate) struct Decoder<'a> {
    pub schema: &'a EventSchema,
    pub lo: EventTime,
    pub hi: EventTime,
    pub builder: EventFrameBuilder,
    pub counts: ReadCounts,
    pub dead_letters: Vec<UndecodableRow>,
}

impl<'a> Decoder<'a> {
    pub fn new(schema: &'a EventSchema, lo: EventTime, hi: EventTime) -> Self {
        Decoder {
            schema,
            lo,
            hi,
            builder: EventFrameBuilder::new(schema, true),
            counts: ReadCounts::default(),
            dead_letters: Vec::new(),
        }
    }

    /// Decodes one row received at `received` (µs) from `at`.
    pub fn row(&mut self, payload: &[u8], received: EventTime, at: impl FnOnce() -> SourceCoordinates) {
        self.counts.rows_scanned += 1;
        match self.schema.decode(payload, received) {
            Ok(e) => {
                if e.time >= self.lo && e.time < self.hi {
                    self.counts.decoded_in_range += 1;
                    self.builder.push_received(&e, received.as_micros(), &at());
                } else {
                    self.counts.outside_range += 1;
                }
            }
            Err(err) => {
                self.counts.invalid += 1;
                *self.counts.invalid_by_reason.entry(err.reason).or_default() += 1;
                self.dead_letters.push(UndecodableRow {
                    at: at(),
                    reason: err.reason,
                    field: err.field,
                    detail: err.detail,
                    payload: String::from_utf8_lossy(payload).into_owned(),
                    received_at: received,
                });
            }
        }
    }
}

/// Adds up the counts and dead letters of the files read, in file order.
pub(crate) fn merge(
    parts: Vec<(ReadCounts, Vec<UndecodableRow>)>,
    files: Vec<InputFile>,
    table_version: Option<i64>,
) -> ReadOutcome {
    let mut counts = ReadCounts::default();
    let mut dead_letters = Vec::new();
    for (c, d) in parts {
        counts.rows_scanned += c.rows_scanned;
        counts.decoded_in_range += c.decoded_in_range;
        counts.outside_range += c.outside_range;
        counts.invalid += c.invalid;
        for (r, n) in c.invalid_by_reason {
            *counts.invalid_by_reason.entry(r).or_default() += n;
        }
        dead_letters.extend(d);
    }
    ReadOutcome { files, table_version, counts, dead_letters }
}

/// Finishes a file's decoded events and puts them into the spill's raw parts (by event id), on the
/// decoding thread.
pub(crate) fn finish_into(d: Decoder<'_>, spill: &Spill) -> Result<(ReadCounts, Vec<UndecodableRow>), Error> {
    let df = d.builder.finish()?;
    spill.put_by_key(RAW, df, &[EVENT_ID])?;
    Ok((d.counts, d.dead_letters))
}

/// Input bytes per event assumed where the input has no row counts (JSON Lines): a low guess, so the
/// estimate errs towards more parts.
const BYTES_PER_EVENT_GUESS: u64 = 64;

/// The events a read of `files` is expected to decode: their row counts where known (Parquet footers, the
/// Delta log), else bytes / [`BYTES_PER_EVENT_GUESS`].
pub(crate) fn estimated_events<'a>(files: impl IntoIterator<Item = &'a InputFile>) -> u64 {
    files.into_iter().map(|f| f.rows.unwrap_or(f.bytes / BYTES_PER_EVENT_GUESS)).sum()
}

/// Makes the spill a read decodes into, from the read's [`estimated_events`] (known once the input is
/// listed, which the read does once).
pub(crate) type SpillFor<'a> = Box<dyn FnOnce(u64) -> Result<Arc<Spill>, Error> + Send + 'a>;

/// Reads the events of `source` whose event time lies in `[lo, hi)` (a Delta archive at `version` if
/// given, else its latest version) into the raw parts of the spill `spill_for` makes from the listing;
/// returns that spill and everything else read.
pub(crate) async fn read_events(
    source: &InputSource,
    schema: &EventSchema,
    lo: EventTime,
    hi: EventTime,
    version: Option<i64>,
    spill_for: SpillFor<'_>,
) -> Result<(ReadOutcome, Arc<Spill>), Error> {
    match source.format {
        InputFormat::DeltaArchive => delta::read(&source.url, schema, lo, hi, version, spill_for).await,
        InputFormat::JsonLines | InputFormat::Parquet => files::read(source, schema, lo, hi, spill_for).await,
    }
}

/// The files a read of `[lo, hi)` would touch, without reading rows.
pub async fn plan_read(
    source: &InputSource,
    schema: &EventSchema,
    lo: EventTime,
    hi: EventTime,
) -> Result<InputPlan, Error> {
    match source.format {
        InputFormat::DeltaArchive => {
            let (files, version) = delta::list(&source.url, schema, lo, hi).await?;
            Ok(InputPlan { files: files.into_iter().map(|f| f.file).collect(), table_version: Some(version) })
        }
        InputFormat::JsonLines | InputFormat::Parquet => {
            let files = files::select(source, schema, lo, hi).await?;
            Ok(InputPlan { files: files.into_iter().map(|f| f.file).collect(), table_version: None })
        }
    }
}

/// Parses a `file://`, `s3://` or `memory://` URL, or an absolute path, into a URL.
pub(crate) fn parse_location(url: &str) -> Result<url::Url, Error> {
    let unsupported = |reason: &str| Error::UnsupportedLocation { url: url.to_owned(), reason: reason.to_owned() };
    if url.starts_with('/') {
        return url::Url::from_directory_path(url).map_err(|()| unsupported("not an absolute path"));
    }
    let parsed = url::Url::parse(url).map_err(|e| unsupported(&e.to_string()))?;
    match parsed.scheme() {
        "file" | "s3" | "s3a" | "memory" => Ok(parsed),
        other => Err(unsupported(&format!("unknown scheme {other:?}"))),
    }
}
