//! The Delta serving store's commit loop: one commit of a write's records under the precedence predicate
//! (copy-on-write of the touched partitions, `rewrite.rs`, or deltalake's MERGE), with the write's app
//! transaction, re-planned on conflicts (and a marker-only commit when the write changed nothing).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use deltalake::datafusion::prelude::{Expr, SessionContext, col, lit};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, DeltaTableError};

use super::DeltaStore;
use super::schema::{KEY_COLUMNS, VALUE_COLUMNS, WINDOW_HOUR, is_hourly, kind_str, to_batch};
use crate::delta_io::{is_conflict, recorded_txn_version};
use crate::error::{Error, Result};
use crate::flat::Flat;
use crate::retry::backoff;

pub(super) enum Committed {
    Done { applied: u64, retries: u32 },
    Skipped(Skip),
}

pub(super) enum Skip {
    AlreadyCommitted,
}

/// How a write's records are applied (same result, different cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Apply {
    /// deltalake's MERGE (a DataFusion join): any table layout.
    Merge,
    /// Copy-on-write of the touched partitions (`rewrite.rs`), on tables of the current layout (others use
    /// the MERGE): stream flushes and correction batches.
    CopyOnWrite,
}

/// The precedence predicate of `Flat::wins_over`, over source `s` and target `t`.
fn precedence() -> Expr {
    let s = |c: &str| col(format!("s.{c}"));
    let t = |c: &str| col(format!("t.{c}"));
    let batch_wins =
        s("layer").eq(lit("batch")).and(t("layer").eq(lit("speed")).or(s("batch_epoch").gt_eq(t("batch_epoch"))));
    let speed_wins = s("layer")
        .eq(lit("speed"))
        .and(t("layer").eq(lit("speed")))
        .and(s("revision").gt(t("revision")).or(s("deleted").eq(lit(true)).and(s("revision").gt_eq(t("revision")))));
    s("kind").eq(lit("row")).and(batch_wins.or(speed_wins))
}

/// Join on the key, plus literal partition filters so that the MERGE only scans touched partitions (on a
/// table created before `kind` was a partition column, the kind filter is an ordinary one).
fn join_predicate(flats: &[Flat], hourly: bool) -> Expr {
    let mut pred = KEY_COLUMNS
        .iter()
        .map(|c| col(format!("t.{c}")).eq(col(format!("s.{c}"))))
        .reduce(Expr::and)
        .unwrap_or(lit(true));
    let metrics: BTreeSet<&str> = flats.iter().map(|f| f.metric.as_str()).collect();
    let dates: BTreeSet<String> = flats.iter().map(Flat::window_date).collect();
    let kinds: BTreeSet<&str> = flats.iter().map(|f| kind_str(f.kind)).collect();
    pred = pred.and(col("t.metric").in_list(metrics.into_iter().map(lit).collect(), false));
    pred = pred.and(col("t.window_date").in_list(dates.into_iter().map(lit).collect(), false));
    if hourly {
        let hours: BTreeSet<String> = flats.iter().map(Flat::window_hour).collect();
        pred = pred.and(col(format!("t.{WINDOW_HOUR}")).in_list(hours.into_iter().map(lit).collect(), false));
    }
    pred.and(col("t.kind").in_list(kinds.into_iter().map(lit).collect(), false))
}

/// The error for a failed commit that is not a conflict. With the `failpoints` feature, the Delta fail point's
/// `return` is a retryable contention error, like the Postgres store's fail point.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn commit_error(url: &str, what: &'static str, attempt: u32, e: DeltaTableError) -> Error {
    #[cfg(feature = "failpoints")]
    if super::failpoint_log::is_fail_point(&e) {
        return Error::Contention { attempts: attempt + 1, last: e.to_string() };
    }
    Error::delta(url, what)(e)
}

impl DeltaStore {
    /// Runs one MERGE of `flats` with app transaction `app_id`, retrying conflicts. `plan` sees the
    /// recorded version of `app_id` and returns the version to commit, or a reason to skip.
    pub(super) async fn commit<P>(
        &self,
        flats: &[Flat],
        emissions: usize,
        app_id: &str,
        plan: P,
        meta: serde_json::Value,
        apply: Apply,
    ) -> Result<Committed>
    where
        P: Fn(Option<i64>) -> Result<std::result::Result<i64, Skip>> + Send + Sync,
    {
        let url = self.rows_url.as_str();
        let mut retries = 0u32;
        let mut last = String::new();
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let table = self.latest(false).await?;
            let recorded = recorded_txn_version(&table, url, app_id).await?;
            let version = match plan(recorded)? {
                Ok(v) => v,
                Err(skip) => return Ok(Committed::Skipped(skip)),
            };
            let props = CommitProperties::default()
                .with_application_transaction(Transaction::new(app_id, version))
                .with_metadata([("tidemark".to_owned(), meta.clone())]);
            let before = table.version();
            let result = if flats.is_empty() {
                self.marker_commit(table, props.clone()).await.map(|t| (t, 0))
            } else if apply == Apply::CopyOnWrite && super::rewrite::supported(&table) {
                super::rewrite::rewrite(table, flats, version, props.clone()).await
            } else {
                self.merge(table, flats, version, props.clone()).await
            };
            let (table, applied) = match result {
                Ok(ok) => ok,
                Err(e) if is_conflict(&e) => {
                    retries += 1;
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    last = e.to_string();
                    continue;
                }
                Err(e) => return Err(commit_error(url, "merging", attempt, e)),
            };
            let table = if table.version() == before {
                // a MERGE that changes nothing writes no commit: record the marker on its own
                self.stats.marker_commits.fetch_add(1, Ordering::Relaxed);
                match self.marker_commit(table, props).await {
                    Ok(t) => t,
                    Err(e) if is_conflict(&e) => {
                        retries += 1;
                        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                        last = e.to_string();
                        continue;
                    }
                    Err(e) => return Err(commit_error(url, "committing the marker", attempt, e)),
                }
            } else {
                table
            };
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.keep(table, false).await;
            // emission records are always inserted (their delta_revision is this write's txn version)
            let applied = applied.saturating_sub(emissions as u64);
            return Ok(Committed::Done { applied, retries });
        }
        Err(Error::Contention { attempts: self.max_attempts, last })
    }

    async fn marker_commit(&self, table: DeltaTable, props: CommitProperties) -> Result<DeltaTable, DeltaTableError> {
        let snapshot = table.snapshot()?;
        let finalized = CommitBuilder::from(props)
            .build(Some(snapshot), table.log_store(), DeltaOperation::Update { predicate: None })
            .await?;
        let mut t = table.clone();
        t.update_state().await?;
        debug_assert!(t.version() >= Some(finalized.version()));
        Ok(t)
    }

    async fn merge(
        &self,
        table: DeltaTable,
        flats: &[Flat],
        emission_tag: i64,
        props: CommitProperties,
    ) -> Result<(DeltaTable, u64), DeltaTableError> {
        let hourly = is_hourly(&table);
        let batch = to_batch(flats, emission_tag, hourly).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        let source = SessionContext::new().read_batch(batch)?;
        let inserted: Vec<&str> =
            KEY_COLUMNS.iter().chain(VALUE_COLUMNS.iter()).copied().chain(hourly.then_some(WINDOW_HOUR)).collect();
        let (table, metrics) = table
            .merge(source, join_predicate(flats, hourly))
            .with_source_alias("s")
            .with_target_alias("t")
            .with_commit_properties(props)
            .when_matched_update(|u| {
                VALUE_COLUMNS.iter().fold(u.predicate(precedence()), |u, c| u.update(*c, col(format!("s.{c}"))))
            })?
            .when_not_matched_insert(|i| inserted.iter().fold(i, |i, c| i.set(*c, col(format!("s.{c}")))))?
            .await?;
        let applied = (metrics.num_target_rows_inserted + metrics.num_target_rows_updated) as u64;
        Ok((table, applied))
    }
}
