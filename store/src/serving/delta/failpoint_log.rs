//! The fail point `delta.after_data_files_before_log_commit` (only with the `failpoints` feature): a Delta log
//! store that passes every call through to the table's own, and hits the fail point in `write_commit_entry`
//! while the serving store has armed it. A MERGE has written its Parquet files by then and not yet its log
//! entry, so a kill there leaves files no reader sees.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::datafusion::datasource::object_store::ObjectStoreUrl;
use deltalake::kernel::Version;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::{CommitOrBytes, LogStore, LogStoreConfig, LogStoreRef};
use deltalake::{DeltaResult, DeltaTable, DeltaTableError, ObjectStore, Path};
use url::Url;
use uuid::Uuid;

/// The fail point's name.
pub(crate) const NAME: &str = "delta.after_data_files_before_log_commit";

/// Arms the fail point of the log stores built with it while alive (the serving store's write and correction
/// commits; not table creation, which commits through the same log store).
#[derive(Debug, Clone, Default)]
pub(crate) struct Arm(Arc<AtomicBool>);

impl Arm {
    pub(crate) fn hold(&self) -> Armed<'_> {
        self.0.store(true, Ordering::SeqCst);
        Armed(self)
    }
}

/// Disarms on drop.
pub(crate) struct Armed<'a>(&'a Arm);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.0.store(false, Ordering::SeqCst);
    }
}

/// `table` on a log store with the fail point (loaded again if it was loaded).
pub(crate) async fn wrap(table: DeltaTable, arm: Arm) -> DeltaResult<DeltaTable> {
    let mut wrapped = DeltaTable::new(Arc::new(FailLogStore { inner: table.log_store(), arm }));
    if table.version().is_some() {
        wrapped.load().await?;
    }
    Ok(wrapped)
}

struct FailLogStore {
    inner: LogStoreRef,
    arm: Arm,
}

#[async_trait]
impl LogStore for FailLogStore {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(&self, version: Version) -> DeltaResult<Option<Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        if self.arm.0.load(Ordering::SeqCst) {
            fail::fail_point!(NAME, |_| Err(TransactionError::LogStoreError {
                msg: format!("fail point {NAME}"),
                source: format!("fail point {NAME}").into(),
            }));
        }
        self.inner.write_commit_entry(version, commit_or_bytes, operation_id).await
    }

    async fn abort_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        self.inner.abort_commit_entry(version, commit_or_bytes, operation_id).await
    }

    async fn get_latest_version(&self, start_version: Version) -> DeltaResult<Version> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn to_uri(&self, location: &Path) -> String {
        self.inner.to_uri(location)
    }

    fn root_url(&self) -> &Url {
        self.inner.root_url()
    }

    fn log_path(&self) -> &Path {
        self.inner.log_path()
    }

    fn transaction_url(&self, operation_id: Option<Uuid>) -> DeltaResult<Url> {
        self.inner.transaction_url(operation_id)
    }

    async fn is_delta_table_location(&self) -> DeltaResult<bool> {
        self.inner.is_delta_table_location().await
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }

    fn object_store_url(&self) -> ObjectStoreUrl {
        self.inner.object_store_url()
    }
}

/// Whether `e` is this fail point's `return` (so the store can report it as a retryable conflict, as the
/// Postgres store's fail point does).
pub(crate) fn is_fail_point(e: &DeltaTableError) -> bool {
    e.to_string().contains(NAME)
}
