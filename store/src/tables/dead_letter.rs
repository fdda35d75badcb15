//! The dead-letter store: append-only, idempotent by source coordinates, under an object_store URL.
//!
//! Each dead letter is one JSON object at `<base>/dead_letters/<hex(source)>/<partition>/<offset>.json`,
//! written with create-if-absent semantics: writing the same coordinates again keeps the first record
//! (and its first-seen time). Payloads above `max_payload_bytes` are replaced by their SHA-256.
//!
//! The late ledger lives beside it: events that missed their windows (beyond allowed lateness, or under
//! `late_policy = "dead_letter"`), one record per event holding every window it missed. Records are filed
//! by the event's UTC hour, so a read of an event-time range ([`DeadLetterStore::list_late_range`]) lists
//! only the days and hours it covers: one append writes, per (hour, source, partition), one JSON Lines
//! object `<base>/late_by_hour/<YYYY-MM-DD>/<HH>/<hex(source)>/<partition>/<first>-<last>.jsonl` named by
//! its first and last offset, create-if-absent (a replay of the same append writes nothing). A replay that
//! groups records differently (a flush cut elsewhere) writes some again in another object; every read keeps
//! one record per coordinates. Earlier layouts stay readable: one object per record,
//! `<...>/<HH>/<hex(source)>/<partition>/<offset>.json`, and before the hourly layout
//! `<base>/late/<hex(source)>/<partition>/<offset>.json`, which every read lists whole (an empty listing
//! once no such record exists) and filters by event time.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tidemark_core::{EventTime, ReasonCode, SourceCoordinates};

use crate::error::{Error, Result};

/// The payload of a dead letter as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// The payload bytes as text (lossy UTF-8 is never applied: invalid UTF-8 is kept as hex).
    Text(String),
    /// Invalid UTF-8, hex-encoded.
    Hex(String),
    /// The payload was larger than the limit: its SHA-256 (hex) and length.
    Hash {
        /// Hex SHA-256.
        sha256: String,
        /// Length in bytes.
        len: u64,
    },
}

/// One event that could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it came from.
    pub coordinates: SourceCoordinates,
    /// Why it was refused.
    pub reason: ReasonCode,
    /// Human-readable detail.
    pub detail: String,
    /// The payload (or its hash).
    pub payload: Payload,
    /// When it was first seen.
    pub first_seen: EventTime,
}

impl DeadLetter {
    /// A dead letter for `payload`, hashing it when above `max_payload_bytes`.
    pub fn new(
        coordinates: SourceCoordinates,
        reason: ReasonCode,
        detail: impl Into<String>,
        payload: &[u8],
        max_payload_bytes: usize,
        first_seen: EventTime,
    ) -> Self {
        let payload = if payload.len() > max_payload_bytes {
            Payload::Hash { sha256: hex::encode(Sha256::digest(payload)), len: payload.len() as u64 }
        } else {
            match std::str::from_utf8(payload) {
                Ok(s) => Payload::Text(s.to_owned()),
                Err(_) => Payload::Hex(hex::encode(payload)),
            }
        };
        DeadLetter { coordinates, reason, detail: detail.into(), payload, first_seen }
    }
}

/// One late event in the late ledger: where it came from, its event time (where the record is filed) and
/// what the speed layer recorded about it (a JSON value chosen by the writer: the windows it missed, its
/// payload, the watermark).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LateRecord {
    /// Where it came from (the ledger's key: one record per event).
    pub coordinates: SourceCoordinates,
    /// The event's time: the ledger files the record under its UTC hour, and range reads select on it.
    pub event_time: EventTime,
    /// What the writer recorded.
    pub body: serde_json::Value,
}

/// A late-ledger object as stored: records of the old layout have no `event_time` field and carry the
/// event time (RFC 3339) in their body, as the stream service has always written it.
#[derive(Deserialize)]
struct StoredLate {
    coordinates: SourceCoordinates,
    #[serde(default)]
    event_time: Option<EventTime>,
    body: serde_json::Value,
}

impl StoredLate {
    fn into_record(self, location: &ObjPath) -> Result<LateRecord> {
        let event_time = self
            .event_time
            .or_else(|| self.body.get("event_time").and_then(|t| t.as_str()).and_then(|t| t.parse().ok()))
            .ok_or_else(|| Error::Corrupt(format!("{location}: a late-ledger record without an event time")))?;
        Ok(LateRecord { coordinates: self.coordinates, event_time, body: self.body })
    }
}

/// Counters of a [`DeadLetterStore`] handle.
#[derive(Debug, Default)]
pub struct DeadLetterStats {
    /// Listing requests made (one per page of a listing on object stores that page).
    pub lists: AtomicU64,
    /// Objects fetched and parsed (dead letters; late-ledger objects, each one record or many).
    pub objects_read: AtomicU64,
}

/// The dead-letter store (and the late ledger beside it).
pub struct DeadLetterStore {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    late_prefix: ObjPath,
    legacy_late_prefix: ObjPath,
    stats: DeadLetterStats,
}

impl fmt::Debug for DeadLetterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterStore").field("url", &self.url).finish()
    }
}

impl DeadLetterStore {
    /// Opens the store under `url` (`file://`, `s3://`, `memory://`; see [`crate::objects`]).
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with_options(url, &Default::default())
    }

    /// Opens the store under `url` with object_store options (for `s3://` they override the AWS
    /// environment variables).
    pub fn open_with_options(url: &str, options: &std::collections::HashMap<String, String>) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| Error::invalid("dead-letter url", format!("{url:?}: {e}")))?;
        let (store, prefix) = crate::objects::open(&parsed, options)?;
        Ok(DeadLetterStore {
            url: url.to_owned(),
            store,
            prefix: prefix.clone().join("dead_letters"),
            late_prefix: prefix.clone().join("late_by_hour"),
            legacy_late_prefix: prefix.join("late"),
            stats: DeadLetterStats::default(),
        })
    }

    /// Counters of this handle.
    pub fn stats(&self) -> &DeadLetterStats {
        &self.stats
    }

    fn path(&self, c: &SourceCoordinates) -> ObjPath {
        Self::path_under(&self.prefix, c)
    }

    fn path_under(prefix: &ObjPath, c: &SourceCoordinates) -> ObjPath {
        prefix
            .clone()
            .join(hex::encode(c.source.as_bytes()).as_str())
            .join(c.partition.to_string().as_str())
            .join(format!("{:020}.json", c.offset).as_str())
    }

    /// Where the late ledger files `records` (of one event hour, source and partition, sorted by offset):
    /// one object under their date and hour, named by the first and last offset.
    fn late_path(&self, records: &[&LateRecord]) -> Option<ObjPath> {
        let (first, last) = (records.first()?, records.last()?);
        let (date, hour) = date_hour(first.event_time.as_micros());
        let c = &first.coordinates;
        Some(
            self.late_prefix
                .clone()
                .join(date.as_str())
                .join(hour.as_str())
                .join(hex::encode(c.source.as_bytes()).as_str())
                .join(c.partition.to_string().as_str())
                .join(format!("{:020}-{:020}.jsonl", c.offset, last.coordinates.offset).as_str()),
        )
    }

    /// Appends `letters`. Returns how many were new (the rest were already stored and left unchanged).
    pub async fn append(&self, letters: &[DeadLetter]) -> Result<usize> {
        let puts = letters.iter().map(|l| Ok((self.path(&l.coordinates), serde_json::to_vec(l)?)));
        self.put_all(puts).await
    }

    /// Appends late events to the late ledger: one object per event hour, source and partition. Returns
    /// how many records went into new objects: a replay of the same records writes nothing and returns 0.
    /// Records already stored in another object (an earlier append that grouped them differently, or an
    /// earlier layout) are stored again and counted; readers keep one record per coordinates.
    pub async fn append_late(&self, records: &[LateRecord]) -> Result<usize> {
        let mut groups: BTreeMap<(i64, &str, i32), BTreeMap<i64, &LateRecord>> = BTreeMap::new();
        for r in records {
            let hour = r.event_time.as_micros().div_euclid(HOUR_US);
            let c = &r.coordinates;
            groups.entry((hour, c.source.as_str(), c.partition)).or_default().entry(c.offset).or_insert(r);
        }
        let mut sizes = Vec::with_capacity(groups.len());
        let mut puts = Vec::with_capacity(groups.len());
        for group in groups.values() {
            let group: Vec<&LateRecord> = group.values().copied().collect();
            let Some(path) = self.late_path(&group) else { continue };
            let mut body = Vec::new();
            for r in &group {
                serde_json::to_writer(&mut body, r).map_err(|e| Error::Corrupt(e.to_string()))?;
                body.push(b'\n');
            }
            sizes.push(group.len());
            puts.push(Ok((path, body)));
        }
        let new = self.put_each(puts.into_iter()).await?;
        Ok(sizes.iter().zip(new).filter(|(_, new)| *new).map(|(n, _)| n).sum())
    }

    /// Every late-ledger record (both layouts, one per coordinates), sorted by coordinates. Reads the
    /// whole ledger: [`list_late_range`](Self::list_late_range) reads what a range needs.
    pub async fn list_late(&self) -> Result<Vec<LateRecord>> {
        self.list_late_range(EventTime::MIN, EventTime::MAX).await
    }

    /// The late-ledger records of events whose time is in `[from, to)`, one per coordinates, sorted by
    /// coordinates. Lists only the ledger's days (a day wholly inside the range) and hours (at its ends)
    /// that the range covers; a range of more than ten years lists the ledger whole. Records of the old
    /// layout (`late/`, written before the hourly one) are listed whole and filtered by event time, so
    /// existing stores keep working; that listing is empty once the old layout holds nothing.
    pub async fn list_late_range(&self, from: EventTime, to: EventTime) -> Result<Vec<LateRecord>> {
        let mut out: BTreeMap<SourceCoordinates, LateRecord> = BTreeMap::new();
        if from >= to {
            return Ok(Vec::new());
        }
        let prefixes: Vec<ObjPath> = match hour_prefixes(from, to) {
            Some(ps) => ps
                .into_iter()
                .map(|(date, hour)| {
                    let day = self.late_prefix.clone().join(date.as_str());
                    hour.map_or(day.clone(), |h| day.join(h.as_str()))
                })
                .collect(),
            None => vec![self.late_prefix.clone()],
        };
        for prefix in prefixes.iter().chain([&self.legacy_late_prefix]) {
            let stored: Vec<(ObjPath, Vec<StoredLate>)> = self.read_prefix_with(prefix, parse_late).await?;
            for (location, records) in stored {
                for s in records {
                    let r = s.into_record(&location)?;
                    if from <= r.event_time && r.event_time < to {
                        out.entry(r.coordinates.clone()).or_insert(r);
                    }
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// Writes each (path, body) if absent, 16 at a time; counts the new ones.
    async fn put_all(
        &self,
        puts: impl Iterator<Item = std::result::Result<(ObjPath, Vec<u8>), serde_json::Error>>,
    ) -> Result<usize> {
        Ok(self.put_each(puts).await?.into_iter().filter(|new| *new).count())
    }

    /// Writes each (path, body) if absent, 16 at a time; per put, whether it was new.
    async fn put_each(
        &self,
        puts: impl Iterator<Item = std::result::Result<(ObjPath, Vec<u8>), serde_json::Error>>,
    ) -> Result<Vec<bool>> {
        let puts: Vec<_> = puts.collect::<std::result::Result<_, _>>().map_err(|e| Error::Corrupt(e.to_string()))?;
        let results: Vec<bool> = futures::stream::iter(puts)
            .map(|(path, body)| async move {
                let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                match self.store.put_opts(&path, PutPayload::from(body), opts).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                    Err(source) => Err(Error::ObjectStore { url: self.url.clone(), source }),
                }
            })
            .buffered(16)
            .try_collect()
            .await?;
        Ok(results)
    }

    /// Every stored dead letter, sorted by coordinates.
    pub async fn list(&self) -> Result<Vec<DeadLetter>> {
        let mut out: Vec<DeadLetter> = self.read_prefix(&self.prefix).await?.into_iter().map(|(_, l)| l).collect();
        out.sort_by(|a, b| a.coordinates.cmp(&b.coordinates));
        Ok(out)
    }

    /// Every object under `prefix`, parsed as one JSON value, with its location; fetched 16 at a time.
    async fn read_prefix<T: serde::de::DeserializeOwned>(&self, prefix: &ObjPath) -> Result<Vec<(ObjPath, T)>> {
        self.read_prefix_with(prefix, |_, bytes| serde_json::from_slice::<T>(bytes)).await
    }

    /// Every object under `prefix`, parsed by `parse` (given its location and bytes), with its location;
    /// fetched 16 at a time.
    async fn read_prefix_with<T>(
        &self,
        prefix: &ObjPath,
        parse: impl Fn(&ObjPath, &[u8]) -> serde_json::Result<T>,
    ) -> Result<Vec<(ObjPath, T)>> {
        let parse = &parse;
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        let metas: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
        futures::stream::iter(metas)
            .map(|m| async move {
                let failed = |source| Error::ObjectStore { url: self.url.clone(), source };
                let got = self.store.get(&m.location).await.map_err(failed)?;
                let bytes = got.bytes().await.map_err(failed)?;
                self.stats.objects_read.fetch_add(1, Ordering::Relaxed);
                let value = parse(&m.location, &bytes).map_err(|e| Error::Corrupt(format!("{}: {e}", m.location)))?;
                Ok((m.location, value))
            })
            .buffered(16)
            .try_collect()
            .await
    }
}

/// A late-ledger object: JSON Lines of records (`.jsonl`) or one record (`.json`, the earlier layouts).
fn parse_late(location: &ObjPath, bytes: &[u8]) -> serde_json::Result<Vec<StoredLate>> {
    if location.extension() == Some("jsonl") {
        serde_json::Deserializer::from_slice(bytes).into_iter::<StoredLate>().collect()
    } else {
        Ok(vec![serde_json::from_slice(bytes)?])
    }
}

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;
/// Ranges longer than this are read by listing the whole hourly ledger (ten years of days).
const MAX_LISTED_DAYS: i64 = 3_653;

/// The UTC date (`YYYY-MM-DD`) and hour (`HH`) of `us` µs since the epoch.
fn date_hour(us: i64) -> (String, String) {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(d) => (d.format("%Y-%m-%d").to_string(), d.format("%H").to_string()),
        None => ("out-of-range".to_owned(), "00".to_owned()),
    }
}

/// The ledger folders that hold every record with an event time in `[from, to)` (`from < to`), in time
/// order: `(date, None)` for a whole day inside the range, `(date, Some(hour))` for an hour at its ends.
/// `None` when the range spans more than [`MAX_LISTED_DAYS`] (list everything instead).
fn hour_prefixes(from: EventTime, to: EventTime) -> Option<Vec<(String, Option<String>)>> {
    let start = from.as_micros().div_euclid(HOUR_US) * HOUR_US;
    let end = (to.as_micros() - 1).div_euclid(HOUR_US) * HOUR_US + HOUR_US;
    if end.saturating_sub(start) / DAY_US > MAX_LISTED_DAYS {
        return None;
    }
    let mut out = Vec::new();
    let mut h = start;
    while h < end {
        let (date, hour) = date_hour(h);
        if h.rem_euclid(DAY_US) == 0 && h + DAY_US <= end {
            out.push((date, None));
            h += DAY_US;
        } else {
            out.push((date, Some(hour)));
            h += HOUR_US;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> EventTime {
        s.parse().unwrap()
    }

    fn listed(from: &str, to: &str) -> Vec<String> {
        hour_prefixes(t(from), t(to))
            .unwrap()
            .into_iter()
            .map(|(d, h)| h.map_or(d.clone(), |h| format!("{d}/{h}")))
            .collect()
    }

    #[test]
    fn a_range_lists_whole_days_and_the_hours_at_its_ends() {
        assert_eq!(listed("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"), vec!["2026-11-23"]);
        assert_eq!(
            listed("2026-11-22T22:30:00Z", "2026-11-24T01:00:00.000001Z"),
            vec!["2026-11-22/22", "2026-11-22/23", "2026-11-23", "2026-11-24/00", "2026-11-24/01"]
        );
        assert_eq!(listed("2026-11-23T05:10:00Z", "2026-11-23T05:20:00Z"), vec!["2026-11-23/05"]);
        // before the epoch too
        assert_eq!(listed("1969-12-31T23:59:00Z", "1970-01-01T00:00:01Z"), vec!["1969-12-31/23", "1970-01-01/00"]);
        assert!(hour_prefixes(EventTime::MIN, EventTime::MAX).is_none());
    }
}
