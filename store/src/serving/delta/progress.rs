//! Progress of the Delta serving store: app transaction ids and versions (`epoch << 32 | sequence`), the
//! progress record written before the commit that records its version, and checkpoint blob paths.

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::DeltaStore;
use crate::delta_io::recorded_txn_version;
use crate::error::{Error, Result};
use crate::model::CommitMarker;

/// What the commit metadata of a provisional write carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ProgressMeta {
    pub(super) pipeline: String,
    pub(super) txn_version: i64,
    pub(super) writer_epoch: u64,
    pub(super) sequence: u64,
    /// Offsets as written by `offsets_to_json`.
    pub(super) offsets: Option<String>,
    /// Object path of the checkpoint blob.
    pub(super) checkpoint: Option<String>,
}

pub(super) fn progress_app(pipeline: &str) -> String {
    format!("tidemark.progress.{pipeline}")
}

pub(super) fn corrections_app(id: &str) -> String {
    format!("tidemark.corrections.{id}")
}

pub(super) fn txn_version(epoch: u64, seq: u64) -> i64 {
    ((epoch << 32) | seq) as i64
}

pub(super) fn split_version(v: i64) -> CommitMarker {
    let v = v as u64;
    CommitMarker { writer_epoch: v >> 32, sequence: v & 0xffff_ffff }
}

impl DeltaStore {
    pub(super) async fn find_progress(&self, pipeline: &str) -> Result<Option<(i64, ProgressMeta)>> {
        let table = self.latest(false).await?;
        let url = self.rows_url.as_str();
        if table.version().is_none() {
            return Ok(None);
        }
        let app = progress_app(pipeline);
        let recorded = recorded_txn_version(&table, url, &app).await?;
        let Some(version) = recorded else { return Ok(None) };
        let record = self.progress_path(pipeline, version);
        match self.objects.get(&record).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
                let meta: ProgressMeta = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Corrupt(format!("progress record {record}: {e}")))?;
                if meta.pipeline != pipeline || meta.txn_version != version {
                    return Err(Error::Corrupt(format!("progress record {record} names another pipeline or version")));
                }
                return Ok(Some((version, meta)));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(Error::ObjectStore { url: self.url.clone(), source }),
        }
        // a table written before progress records existed: the commit metadata in the log
        let mut history = table.history(None);
        while let Some(info) = history.try_next().await.map_err(Error::delta(url, "reading history"))? {
            let Some(meta) = info.info.get("tidemark") else { continue };
            let Ok(meta) = serde_json::from_value::<ProgressMeta>(meta.clone()) else { continue };
            if meta.pipeline == pipeline && meta.txn_version == version {
                return Ok(Some((version, meta)));
            }
        }
        Err(Error::Corrupt(format!(
            "the serving table records version {version} of {app} but no commit metadata for it (log cleaned up?)"
        )))
    }

    pub(super) fn progress_path(&self, pipeline: &str, version: i64) -> ObjPath {
        self.prefix.clone().join("progress").join(pipeline).join(format!("{version:020}.json").as_str())
    }

    /// Writes the progress record of `meta` (before the commit that records its version: only that commit
    /// makes it reachable; a retry of the same version writes the same record).
    pub(super) async fn put_progress(&self, meta: &ProgressMeta) -> Result<()> {
        let body = serde_json::to_vec(meta).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.objects
            .put(&self.progress_path(&meta.pipeline, meta.txn_version), PutPayload::from(body))
            .await
            .map_err(|source| Error::ObjectStore { url: self.url.clone(), source })?;
        Ok(())
    }

    pub(super) fn checkpoint_path(&self, pipeline: &str, version: i64) -> ObjPath {
        self.prefix.clone().join("checkpoints").join(pipeline).join(format!("{version:020}.bin").as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_versions_order_by_epoch_then_sequence() {
        let v = txn_version(3, 17);
        assert_eq!(split_version(v), CommitMarker { writer_epoch: 3, sequence: 17 });
        assert!(txn_version(2, u64::from(u32::MAX)) < txn_version(3, 0));
    }
}
