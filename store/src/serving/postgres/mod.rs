//! The Postgres serving store (tokio-postgres).
//!
//! Tables live in one schema (a validated lowercase identifier, always quoted): `serving_rows` (one row
//! per key; tombstones have `deleted = true`), `serving_deltas` (late-policy deltas per key and
//! revision), `progress` (per pipeline: writer epoch, sequence, offsets, checkpoint), `correction_batches`
//! (applied batch ids), `corrections_audit`, and `schema_migrations`. [`PostgresStore::init`] applies the
//! versioned migrations under an advisory lock.
//!
//! A write copies its de-duplicated changes into a temp table (`COPY .. FROM STDIN BINARY`), then runs
//! `MERGE` (present keys updated where precedence allows, absent ones inserted; a key a concurrent writer
//! inserted first is a unique violation, and the `MERGE` is re-run from a savepoint), appends the emission
//! log and updates the progress row, all in one transaction that first locks the pipeline's progress row
//! (`FOR UPDATE`) to check fencing. `MERGE` needs Postgres 15 or newer, which `connect` checks.
//! Only the schema name is ever spliced into SQL; every value is a bound parameter or COPY data.
//!
//! Least-privilege layout (see [`PostgresStore::role_setup_sql`]): a stream role may insert and update
//! only speed rows (a trigger refuses batch rows), a reconciler role may write any row and the audit tables.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, RowChange, RowKey, Window};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};
use crate::flat::{self, Flat, Kind};
use crate::model::{
    self, ApplyOutcome, AuditEntry, CommitMarker, CorrectionBatch, Emission, MetricFilter, SourceProgress,
    StoredAuditEntry, WriteOutcome,
};
use crate::progress::{check_progress, offsets_from_json};
use crate::retry::backoff;
use crate::scan::{Chunks, EmissionChunk, RowChunk};
use crate::serving::ServingStore;

mod codec;
mod migrations;
mod scan;
mod write;

use codec::{pg_clamp, ts, us};

/// `server_version_num` of Postgres 15, the first with `MERGE`.
const MIN_SERVER_VERSION: i32 = 150_000;

/// How often a transaction that hit a deadlock or serialization failure is retried.
const MAX_ATTEMPTS: u32 = 6;

/// Counters of a store instance (for contention tests and metrics).
#[derive(Debug, Default)]
pub struct PgStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Transactions retried after a deadlock or serialization failure.
    pub retries: AtomicU64,
    /// Merges re-run (from a savepoint, within their transaction) because another writer inserted one of
    /// their keys first.
    pub merge_retries: AtomicU64,
    /// Transactions that had to wait for another writer's lock on the pipeline or a key (measured as a
    /// `lock_timeout`-free wait above 1 ms on the progress row).
    pub lock_waits: AtomicU64,
}

/// The Postgres serving store. One connection per instance (use one instance per task for parallelism).
pub struct PostgresStore {
    conninfo: String,
    schema: String,
    client: Mutex<Option<Client>>,
    stats: PgStats,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("schema", &self.schema).field("stats", &self.stats).finish()
    }
}

/// Checks a schema name: a lowercase SQL identifier (`a-z`, `0-9`, `_`, starting with a letter or `_`,
/// at most 63 bytes). It is quoted as well when used.
pub fn check_schema(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "postgres schema",
            format!("{name:?} must be a lowercase identifier (a-z, 0-9, _; at most 63 characters)"),
        ))
    }
}

/// `user@host:port/dbname` of a connection string, for messages: never the password.
fn describe_server(conninfo: &str) -> String {
    let Ok(config) = conninfo.parse::<tokio_postgres::Config>() else { return "(unparsable connection string)".into() };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or("(default user)"),
        if hosts.is_empty() { "localhost:5432".to_owned() } else { hosts.join(",") },
        config.get_dbname().unwrap_or("(default database)")
    )
}

impl PostgresStore {
    /// Connects to `conninfo` (a libpq key/value string or `postgres://` URL) and uses tables in `schema`.
    /// Call [`ServingStore::init`] once to create them.
    pub async fn connect(conninfo: &str, schema: &str) -> Result<Self> {
        check_schema(schema)?;
        let store = PostgresStore {
            conninfo: conninfo.to_owned(),
            schema: format!("\"{schema}\""),
            client: Mutex::new(None),
            stats: PgStats::default(),
        };
        let guard = store.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(Error::pg("reading the server version"))?
            .get(0);
        if version < MIN_SERVER_VERSION {
            return Err(Error::invalid(
                "postgres server",
                format!(
                    "{} runs version {}.{}; tidemark needs Postgres 15 or newer (it writes with MERGE)",
                    describe_server(conninfo),
                    version / 10_000,
                    version % 10_000
                ),
            ));
        }
        drop(guard);
        Ok(store)
    }

    /// Counters of this instance.
    pub fn stats(&self) -> &PgStats {
        &self.stats
    }

    /// The quoted schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(self.new_connection().await?);
        }
        Ok(guard)
    }

    /// A new connection (its driver task runs until the client is dropped).
    async fn new_connection(&self) -> Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.conninfo, NoTls)
            .await
            .map_err(|source| Error::Connect { server: describe_server(&self.conninfo), source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }

    fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.schema)
    }

    async fn read(
        &self,
        deltas: bool,
        metrics: &MetricFilter,
        from: EventTime,
        to: EventTime,
    ) -> Result<Vec<MetricRow>> {
        let filter: Option<Vec<String>> = match metrics {
            MetricFilter::All => None,
            MetricFilter::Only(m) => Some(m.clone()),
        };
        let sql = if deltas {
            format!(
                "SELECT metric, {ws}, {we}, dims, revision, agg_values::text, events, 'speed', revision, pane,
                     {wm}, NULL::text, NULL::bigint, {ca}
                 FROM {{s}}.serving_deltas d
                 WHERE window_start >= {from} AND window_start < {to} AND ($3::text[] IS NULL OR metric = ANY($3))
                     AND NOT EXISTS (SELECT 1 FROM {{s}}.serving_rows r
                         WHERE r.metric = d.metric AND r.window_start = d.window_start
                             AND r.window_end = d.window_end AND r.dims = d.dims AND r.layer = 'batch')
                 ORDER BY metric COLLATE \"C\", window_start, window_end, dims COLLATE \"C\", revision",
                ws = us("window_start"),
                we = us("window_end"),
                wm = us("watermark"),
                ca = us("computed_at"),
                from = ts("$1::bigint"),
                to = ts("$2::bigint"),
            )
        } else {
            format!(
                "SELECT metric, {ws}, {we}, dims, -1::bigint, agg_values::text, events, layer, revision, pane,
                     {wm}, batch_run_id, batch_epoch, {ca}
                 FROM {{s}}.serving_rows
                 WHERE NOT deleted AND window_start >= {from} AND window_start < {to}
                     AND ($3::text[] IS NULL OR metric = ANY($3))
                 ORDER BY metric COLLATE \"C\", window_start, window_end, dims COLLATE \"C\"",
                ws = us("window_start"),
                we = us("window_end"),
                wm = us("watermark"),
                ca = us("computed_at"),
                from = ts("$1::bigint"),
                to = ts("$2::bigint"),
            )
        };
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let rows = client
            .query(&self.sql(&sql), &[&pg_clamp(from), &pg_clamp(to), &filter])
            .await
            .map_err(Error::pg("reading rows"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let delta_rev: i64 = r.get(4);
            let kind = if deltas {
                Kind::Delta(u32::try_from(delta_rev).map_err(|_| Error::Corrupt("delta revision".into()))?)
            } else {
                Kind::Row
            };
            let layer: String = r.get(7);
            let pane: Option<String> = r.get(9);
            let flat = Flat {
                metric: r.get(0),
                window_start: r.get(1),
                window_end: r.get(2),
                dims: r.get(3),
                kind,
                values_json: r.get(5),
                events: r.get(6),
                layer: flat::parse_layer(&layer).ok_or_else(|| Error::Corrupt(format!("layer {layer:?}")))?,
                revision: r.get(8),
                pane: pane.as_deref().and_then(flat::parse_pane).map(flat::pane_str),
                watermark: r.get(10),
                batch_run_id: r.get(11),
                batch_epoch: r.get(12),
                computed_at: r.get(13),
                deleted: false,
            };
            out.push(flat.into_row()?);
        }
        Ok(out)
    }
}

#[async_trait]
impl ServingStore for PostgresStore {
    async fn init(&self) -> Result<()> {
        let applied = self.migrate().await?;
        if !applied.is_empty() {
            tracing::info!(schema = %self.schema, ?applied, "applied migrations");
        }
        Ok(())
    }

    async fn claim_writer(&self, pipeline: &str) -> Result<CommitMarker> {
        model::check_id("pipeline", pipeline)?;
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let row = client
            .query_one(
                &self.sql(
                    "INSERT INTO {s}.progress AS p (pipeline, fence_epoch, writer_epoch, sequence) VALUES ($1, 1, 0, 0)
                     ON CONFLICT (pipeline) DO UPDATE SET fence_epoch = greatest(p.fence_epoch, p.writer_epoch) + 1
                     RETURNING fence_epoch, 0::bigint",
                ),
                &[&pipeline],
            )
            .await
            .map_err(Error::pg("claiming the writer epoch"))?;
        marker(row.get(0), row.get(1))
    }

    async fn write_provisional(&self, changes: &[RowChange], progress: &SourceProgress) -> Result<WriteOutcome> {
        check_progress(progress)?;
        let marked = flat::encode(changes.len(), || flat::mark_changes(changes, crate::now()))?;
        let offered = marked.iter().filter(|m| m.apply).count() as u64;
        let (outcome, retries) = self.retry_transient(|| self.try_write(&marked, progress)).await?;
        Ok(match outcome {
            WriteOutcome::Committed(mut s) => {
                s.offered = offered;
                s.retries += retries;
                WriteOutcome::Committed(s)
            }
            other => other,
        })
    }

    async fn load_progress(&self, pipeline: &str) -> Result<Option<SourceProgress>> {
        model::check_id("pipeline", pipeline)?;
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let row = client
            .query_opt(
                &self.sql(
                    "SELECT writer_epoch, sequence, offsets::text, checkpoint FROM {s}.progress
                     WHERE pipeline = $1 AND offsets IS NOT NULL",
                ),
                &[&pipeline],
            )
            .await
            .map_err(Error::pg("reading progress"))?;
        let Some(row) = row else { return Ok(None) };
        let m = marker(row.get(0), row.get(1))?;
        let offsets: String = row.get(2);
        Ok(Some(SourceProgress {
            pipeline: pipeline.to_owned(),
            writer_epoch: m.writer_epoch,
            sequence: m.sequence,
            offsets: offsets_from_json(&offsets)?,
            checkpoint: row.get(3),
        }))
    }

    async fn committed_marker(&self, pipeline: &str) -> Result<Option<CommitMarker>> {
        model::check_id("pipeline", pipeline)?;
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let row = client
            .query_opt(
                &self.sql(
                    "SELECT CASE WHEN fence_epoch > writer_epoch THEN fence_epoch ELSE writer_epoch END,
                         CASE WHEN fence_epoch > writer_epoch THEN 0 ELSE sequence END
                     FROM {s}.progress WHERE pipeline = $1",
                ),
                &[&pipeline],
            )
            .await
            .map_err(Error::pg("reading the committed marker"))?;
        row.map(|r| marker(r.get(0), r.get(1))).transpose()
    }

    async fn read_range(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<MetricRow>> {
        self.read(false, metrics, from, to).await
    }

    async fn read_deltas(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<MetricRow>> {
        self.read(true, metrics, from, to).await
    }

    async fn read_emissions(&self, metrics: &MetricFilter, from: EventTime, to: EventTime) -> Result<Vec<Emission>> {
        let filter: Option<Vec<String>> = match metrics {
            MetricFilter::All => None,
            MetricFilter::Only(m) => Some(m.clone()),
        };
        let sql = format!(
            "SELECT metric, {ws}, {we}, dims, revision, delta, agg_values::text, events, pane, {wm}, writer_epoch,
                 {ea}
             FROM {{s}}.emissions
             WHERE window_start >= {from} AND window_start < {to} AND ($3::text[] IS NULL OR metric = ANY($3))",
            ws = us("window_start"),
            we = us("window_end"),
            wm = us("watermark"),
            ea = us("emitted_at"),
            from = ts("$1::bigint"),
            to = ts("$2::bigint"),
        );
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let rows = client
            .query(&self.sql(&sql), &[&pg_clamp(from), &pg_clamp(to), &filter])
            .await
            .map_err(Error::pg("reading emissions"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let revision: i64 = r.get(4);
            let pane: String = r.get(8);
            let epoch: i64 = r.get(10);
            let flat = Flat {
                metric: r.get(0),
                window_start: r.get(1),
                window_end: r.get(2),
                dims: r.get(3),
                kind: Kind::Emission {
                    revision: u32::try_from(revision).map_err(|_| Error::Corrupt("emission revision".into()))?,
                    delta: r.get(5),
                },
                values_json: r.get(6),
                events: r.get(7),
                layer: tidemark_core::Layer::Speed,
                revision: Some(revision),
                pane: flat::parse_pane(&pane).map(flat::pane_str),
                watermark: r.get(9),
                batch_run_id: None,
                batch_epoch: Some(epoch),
                computed_at: r.get(11),
                deleted: false,
            };
            out.push(flat.into_emission()?);
        }
        Ok(flat::first_emissions(out.into_iter()))
    }

    fn scan_rows<'a>(&'a self, metric: &str, from: EventTime, to: EventTime) -> Chunks<'a, RowChunk> {
        self.sliced(metric, from, to, move |client, metric, a, b| async move {
            self.rows_chunk(&client, &metric, a, b).await
        })
    }

    fn scan_emissions<'a>(&'a self, metric: &str, from: EventTime, to: EventTime) -> Chunks<'a, EmissionChunk> {
        self.sliced(metric, from, to, move |client, metric, a, b| async move {
            self.emissions_chunk(&client, &metric, a, b).await
        })
    }

    async fn apply_corrections(&self, batch: &CorrectionBatch) -> Result<ApplyOutcome> {
        let flats = flat::encode(batch.changes.len(), || flat::flatten_corrections(batch, crate::now()))?;
        let (outcome, retries) = self.retry_transient(|| self.try_apply(&flats, batch)).await?;
        Ok(match outcome {
            ApplyOutcome::Applied(mut s) => {
                s.retries += retries;
                ApplyOutcome::Applied(s)
            }
            other => other,
        })
    }

    async fn corrections_applied(&self, id: &str) -> Result<bool> {
        model::check_id("correction batch id", id)?;
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let row = client
            .query_opt(&self.sql("SELECT 1 FROM {s}.correction_batches WHERE batch_id = $1"), &[&id])
            .await
            .map_err(Error::pg("reading applied corrections"))?;
        Ok(row.is_some())
    }

    async fn corrections_applied_at(&self, id: &str) -> Result<Option<EventTime>> {
        model::check_id("correction batch id", id)?;
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        // the batch's audit lines carry the same time: one transaction's now()
        let sql = format!("SELECT {} FROM {{s}}.correction_batches WHERE batch_id = $1", us("applied_at"));
        let row = client
            .query_opt(&self.sql(&sql), &[&id])
            .await
            .map_err(Error::pg("reading when corrections were applied"))?;
        row.map(|r| {
            EventTime::from_micros(r.get(0)).ok_or_else(|| Error::Corrupt("correction batch applied_at".into()))
        })
        .transpose()
    }

    async fn audit_log(&self, id: Option<&str>) -> Result<Vec<StoredAuditEntry>> {
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let sql = format!(
            "SELECT batch_id, run_id, metric, {ws}, {we}, dims, aggregate, old_value::text, new_value::text, cause,
                 {at}
             FROM {{s}}.corrections_audit WHERE ($1::text IS NULL OR batch_id = $1) ORDER BY batch_id, seq",
            ws = us("window_start"),
            we = us("window_end"),
            at = us("applied_at"),
        );
        let rows = client.query(&self.sql(&sql), &[&id]).await.map_err(Error::pg("reading the audit log"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let corrupt = |w: &str| Error::Corrupt(format!("audit {w}"));
            let start = EventTime::from_micros(r.get(3)).ok_or_else(|| corrupt("window_start"))?;
            let end = EventTime::from_micros(r.get(4)).ok_or_else(|| corrupt("window_end"))?;
            let dims: String = r.get(5);
            let old: Option<String> = r.get(7);
            let new: Option<String> = r.get(8);
            out.push(StoredAuditEntry {
                batch_id: r.get(0),
                run_id: r.get(1),
                entry: AuditEntry {
                    key: RowKey {
                        metric: r.get(2),
                        window: Window::new(start, end).ok_or_else(|| corrupt("window"))?,
                        dims: Dimensions::decode(&dims).map_err(|e| Error::Corrupt(e.to_string()))?,
                    },
                    aggregate: r.get(6),
                    old: old.map(|s| parse_agg(&s)).transpose()?,
                    new: new.map(|s| parse_agg(&s)).transpose()?,
                    cause: r.get(9),
                },
                applied_at: EventTime::from_micros(r.get(10)).ok_or_else(|| corrupt("applied_at"))?,
            });
        }
        Ok(out)
    }
}

fn is_transient_conflict(e: &Error) -> bool {
    match e {
        Error::Postgres { source, .. } => crate::error::postgres_conflict(source),
        _ => false,
    }
}

impl PostgresStore {
    /// Runs `attempt` until it succeeds or fails with something other than a transient conflict
    /// (serialization failure, deadlock, a serving row inserted concurrently), at most `MAX_ATTEMPTS`
    /// times with backoff. Returns the value and how many retries it took.
    async fn retry_transient<T, F, Fut>(&self, mut attempt: F) -> Result<(T, u32)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut retries = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok((v, retries)),
                Err(e @ Error::Postgres { .. }) if is_transient_conflict(&e) && retries + 1 < MAX_ATTEMPTS => {
                    retries += 1;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(retries)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn marker(epoch: i64, seq: i64) -> Result<CommitMarker> {
    Ok(CommitMarker {
        writer_epoch: u64::try_from(epoch).map_err(|_| Error::Corrupt("negative writer epoch".into()))?,
        sequence: u64::try_from(seq).map_err(|_| Error::Corrupt("negative sequence".into()))?,
    })
}

fn parse_agg(s: &str) -> Result<AggValue> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("audit value {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use tidemark_core::{Origin, Pane};

    fn row(page: &str, revision: u32, n: i64) -> MetricRow {
        let start = EventTime::from_secs(60).expect("t");
        let end = EventTime::from_secs(120).expect("t");
        MetricRow {
            key: RowKey {
                metric: "views".into(),
                window: Window::new(start, end).expect("window"),
                dims: Dimensions::new([("page".into(), page.into())]),
            },
            values: BTreeMap::from([("n".into(), AggValue::Int(n))]),
            events: 1,
            origin: Origin::Speed { revision, pane: Pane::OnTime, watermark: end },
            computed_at: end,
        }
    }

    #[test]
    fn each_change_is_copied_once_marked_as_the_winner_and_or_a_firing() {
        let changes = [
            RowChange::Upsert(row("/a", 0, 5)),
            RowChange::Upsert(row("/a", 1, 8)),
            RowChange::Upsert(row("/a", 1, 9)),
            RowChange::Upsert(row("/b", 0, 7)),
            RowChange::Delta(row("/b", 2, 1)),
            RowChange::Retract { key: row("/c", 0, 0).key, revision: 0 },
        ];
        let marked = flat::mark_changes(&changes, EventTime::UNIX_EPOCH).expect("marked");
        let summary: Vec<(&str, Option<i64>, &str, bool, bool)> = marked
            .iter()
            .map(|m| (m.flat.dims.as_str(), m.flat.revision, m.flat.values_json.as_str(), m.apply, m.emit))
            .collect();
        let dims = |p: &str| Dimensions::new([("page".into(), p.into())]).encode();
        let (a, b, c) = (dims("/a"), dims("/b"), dims("/c"));
        assert_eq!(
            summary,
            vec![
                (a.as_str(), Some(0), r#"{"n":5}"#, false, true),
                (a.as_str(), Some(1), r#"{"n":8}"#, true, true),
                (a.as_str(), Some(1), r#"{"n":9}"#, false, false),
                (b.as_str(), Some(0), r#"{"n":7}"#, true, true),
                (b.as_str(), Some(2), r#"{"n":1}"#, true, true),
                (c.as_str(), Some(0), r#"{}"#, true, false),
            ]
        );
        // the same records the two-pass functions keep
        let winners: Vec<String> = marked.iter().filter(|m| m.apply).map(|m| format!("{:?}", m.flat)).collect();
        let flats: Vec<String> = flat::flatten_changes(&changes, EventTime::UNIX_EPOCH)
            .expect("flats")
            .iter()
            .map(|f| format!("{f:?}"))
            .collect();
        assert_eq!(winners, flats);
        let mut fired: Vec<(String, Option<i64>, String)> = marked
            .iter()
            .filter(|m| m.emit)
            .map(|m| (m.flat.dims.clone(), m.flat.revision, m.flat.values_json.clone()))
            .collect();
        let mut emissions: Vec<(String, Option<i64>, String)> = flat::emission_flats(&changes, 1)
            .expect("emissions")
            .into_iter()
            .map(|f| (f.dims, f.revision, f.values_json))
            .collect();
        fired.sort();
        emissions.sort();
        assert_eq!(fired, emissions);
    }
}
