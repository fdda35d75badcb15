//! The dead-letter store: append-only, idempotent by source coordinates, under an object_store URL.
//!
//! Each dead letter is one JSON object at `<base>/dead_letters/<hex(source)>/<partition>/<offset>.json`,
//! written with create-if-absent semantics: writing the same coordinates again keeps the first record
//! (and its first-seen time). Payloads above `max_payload_bytes` are replaced by their SHA-256.

use std::fmt;
use std::sync::Arc;

use futures::TryStreamExt;
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

/// The dead-letter store.
pub struct DeadLetterStore {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
}

impl fmt::Debug for DeadLetterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterStore").field("url", &self.url).finish()
    }
}

impl DeadLetterStore {
    /// Opens the store under `url` (`file://`, `s3://`, `memory://`).
    pub fn open(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| Error::invalid("dead-letter url", format!("{url:?}: {e}")))?;
        let (store, prefix) =
            object_store::parse_url(&parsed).map_err(|source| Error::ObjectStore { url: url.to_owned(), source })?;
        Ok(DeadLetterStore { url: url.to_owned(), store: Arc::from(store), prefix: prefix.join("dead_letters") })
    }

    fn path(&self, c: &SourceCoordinates) -> ObjPath {
        self.prefix
            .clone()
            .join(hex::encode(c.source.as_bytes()).as_str())
            .join(c.partition.to_string().as_str())
            .join(format!("{:020}.json", c.offset).as_str())
    }

    /// Appends `letters`. Returns how many were new (the rest were already stored and left unchanged).
    pub async fn append(&self, letters: &[DeadLetter]) -> Result<usize> {
        let mut new = 0;
        for l in letters {
            let body = serde_json::to_vec(l).map_err(|e| Error::Corrupt(e.to_string()))?;
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            match self.store.put_opts(&self.path(&l.coordinates), PutPayload::from(body), opts).await {
                Ok(_) => new += 1,
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(source) => return Err(Error::ObjectStore { url: self.url.clone(), source }),
            }
        }
        Ok(new)
    }

    /// Every stored dead letter, sorted by coordinates.
    pub async fn list(&self) -> Result<Vec<DeadLetter>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
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
            out.push(
                serde_json::from_slice::<DeadLetter>(&bytes)
                    .map_err(|e| Error::Corrupt(format!("dead letter {}: {e}", m.location)))?,
            );
        }
        out.sort_by(|a, b| a.coordinates.cmp(&b.coordinates));
        Ok(out)
    }
}
