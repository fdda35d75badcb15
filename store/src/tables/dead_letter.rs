//! The dead-letter store: append-only, idempotent by source coordinates, under an object_store URL.
//!
//! Each dead letter is one JSON object at `<base>/dead_letters/<hex(source)>/<partition>/<offset>.json`,
//! written with create-if-absent semantics: writing the same coordinates again keeps the first record
//! (and its first-seen time). Payloads above `max_payload_bytes` are replaced by their SHA-256.
//!
//! The late ledger lives beside it: events that missed their windows (beyond allowed lateness, or under
//! `late_policy = "dead_letter"`) are kept at `<base>/late/<hex(source)>/<partition>/<offset>.json`, one
//! object per event holding every window it missed, with the same create-if-absent idempotency.

use std::fmt;
use std::sync::Arc;

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

/// One late event in the late ledger: where it came from and what the speed layer recorded about it
/// (a JSON value chosen by the writer: the windows it missed, its payload, the watermark).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateRecord {
    /// Where it came from (the ledger's key: one record per event).
    pub coordinates: SourceCoordinates,
    /// What the writer recorded.
    pub body: serde_json::Value,
}

/// The dead-letter store (and the late ledger beside it).
pub struct DeadLetterStore {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    late_prefix: ObjPath,
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
            late_prefix: prefix.join("late"),
        })
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

    /// Appends `letters`. Returns how many were new (the rest were already stored and left unchanged).
    pub async fn append(&self, letters: &[DeadLetter]) -> Result<usize> {
        let puts = letters.iter().map(|l| Ok((self.path(&l.coordinates), serde_json::to_vec(l)?)));
        self.put_all(puts).await
    }

    /// Appends late events to the late ledger. Returns how many were new (events already in the ledger
    /// are left unchanged, so replays add nothing).
    pub async fn append_late(&self, records: &[LateRecord]) -> Result<usize> {
        let puts =
            records.iter().map(|r| Ok((Self::path_under(&self.late_prefix, &r.coordinates), serde_json::to_vec(r)?)));
        self.put_all(puts).await
    }

    /// Every late-ledger record, sorted by coordinates.
    pub async fn list_late(&self) -> Result<Vec<LateRecord>> {
        let mut out: Vec<LateRecord> = self.read_all(&self.late_prefix).await?;
        out.sort_by(|a, b| a.coordinates.cmp(&b.coordinates));
        Ok(out)
    }

    /// Writes each (path, body) if absent, 16 at a time; counts the new ones.
    async fn put_all(
        &self,
        puts: impl Iterator<Item = std::result::Result<(ObjPath, Vec<u8>), serde_json::Error>>,
    ) -> Result<usize> {
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
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(results.into_iter().filter(|new| *new).count())
    }

    /// Every stored dead letter, sorted by coordinates.
    pub async fn list(&self) -> Result<Vec<DeadLetter>> {
        let mut out: Vec<DeadLetter> = self.read_all(&self.prefix).await?;
        out.sort_by(|a, b| a.coordinates.cmp(&b.coordinates));
        Ok(out)
    }

    async fn read_all<T: serde::de::DeserializeOwned>(&self, prefix: &ObjPath) -> Result<Vec<T>> {
        let metas: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let got = self
                .store
                .get(&m.location)
                .await
                .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
            let bytes = got.bytes().await.map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
            out.push(serde_json::from_slice::<T>(&bytes).map_err(|e| Error::Corrupt(format!("{}: {e}", m.location)))?);
        }
        Ok(out)
    }
}
