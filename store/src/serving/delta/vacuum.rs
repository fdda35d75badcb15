//! Maintenance of the Delta serving store: compacting small files, and vacuuming data files, checkpoint
//! blobs and progress records nothing reachable references any more.

use std::collections::{BTreeSet, HashMap};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use super::DeltaStore;
use crate::error::{Error, Result};
use crate::model;

/// What [`DeltaStore::vacuum`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VacuumStats {
    /// Data files of the serving table no longer in it.
    pub data_files: usize,
    /// Checkpoint blobs and progress records no pipeline's recorded progress names.
    pub state_objects: usize,
}

impl DeltaStore {
    /// Compacts small files of the serving table (frequent micro-batch commits create many). Returns
    /// (files removed, files added).
    pub async fn optimize(&self, target_file_size: Option<u64>) -> Result<(u64, u64)> {
        let url = self.rows_url.as_str();
        let table = self.latest(false).await?;
        let mut builder = table.optimize();
        if let Some(size) = target_file_size.and_then(std::num::NonZeroU64::new) {
            builder = builder.with_target_size(size);
        }
        let (table, metrics) = builder.await.map_err(Error::delta(url, "optimizing"))?;
        self.keep(table, false).await;
        Ok((metrics.num_files_removed, metrics.num_files_added))
    }

    /// Deletes what nothing reachable references any more and is older than `retention` (which must exceed
    /// the longest write: a write's files exist before its commit): the serving table's data files no
    /// longer in the table, and the checkpoint blobs and progress records of every pipeline except those
    /// its recorded progress names.
    pub async fn vacuum(&self, retention: std::time::Duration) -> Result<VacuumStats> {
        let url = self.rows_url.as_str();
        let table = self.latest(false).await?;
        let period =
            chrono::Duration::from_std(retention).map_err(|e| Error::invalid("vacuum retention", e.to_string()))?;
        let (table, metrics) = table
            .vacuum()
            .with_retention_period(period)
            .with_enforce_retention_duration(false)
            .await
            .map_err(Error::delta(url, "vacuuming"))?;
        self.keep(table, false).await;
        let state_objects = self.vacuum_state(period).await?;
        Ok(VacuumStats { data_files: metrics.files_deleted.len(), state_objects })
    }

    /// Deletes checkpoint blobs and progress records older than `retention` that the recorded progress of
    /// their pipeline does not name.
    async fn vacuum_state(&self, retention: chrono::Duration) -> Result<usize> {
        let cutoff = chrono::Utc::now() - retention;
        let store_err = |source| Error::ObjectStore { url: self.url.clone(), source };
        let mut keep: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut deleted = 0;
        for folder in ["checkpoints", "progress"] {
            let root = self.prefix.clone().join(folder);
            let objects: Vec<object_store::ObjectMeta> =
                self.objects.list(Some(&root)).try_collect().await.map_err(store_err)?;
            for meta in objects {
                let Some(parts) = meta.location.prefix_match(&root) else { continue };
                let parts: Vec<String> = parts.map(|p| p.as_ref().to_owned()).collect();
                let [pipeline, _] = parts.as_slice() else { continue };
                if meta.last_modified > cutoff || model::check_id("pipeline", pipeline).is_err() {
                    continue;
                }
                if !keep.contains_key(pipeline) {
                    let mut named = BTreeSet::new();
                    if let Some((version, m)) = self.find_progress(pipeline).await? {
                        named.insert(self.progress_path(pipeline, version).to_string());
                        named.extend(m.checkpoint);
                    }
                    keep.insert(pipeline.clone(), named);
                }
                if keep.get(pipeline).is_some_and(|named| !named.contains(meta.location.as_ref())) {
                    match self.objects.delete(&meta.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                        Err(e) => return Err(store_err(e)),
                    }
                }
            }
        }
        Ok(deleted)
    }

    /// Number of data files of the serving table.
    pub async fn file_count(&self) -> Result<usize> {
        let table = self.latest(false).await?;
        let uris = table.get_file_uris().map_err(Error::delta(self.rows_url.as_str(), "listing files"))?;
        Ok(uris.count())
    }
}
