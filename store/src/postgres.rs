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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::pin_mut;
use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, RowChange, RowKey, Window};
use tokio::sync::Mutex;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Transaction};

use crate::ServingStore;
use crate::error::{Error, Result};
use crate::model::{
    self, ApplyOutcome, AuditEntry, CommitMarker, CorrectionBatch, Emission, Flat, Kind, Marked, MetricFilter,
    SourceProgress, StoredAuditEntry, TopicPartition, WriteOutcome, WriteStats,
};

/// `server_version_num` of Postgres 15, the first with `MERGE`.
const MIN_SERVER_VERSION: i32 = 150_000;

/// Writes of at least this many changes analyse their incoming rows before the `MERGE` is planned.
const ANALYZE_MIN_ROWS: usize = 10_000;

/// How often a transaction that hit a deadlock or serialization failure is retried.
const MAX_ATTEMPTS: u32 = 6;

/// The versioned migrations; `{s}` is the quoted schema.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "serving rows, deltas, progress, corrections",
        r#"
CREATE TABLE {s}.serving_rows (
    metric text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    dims text NOT NULL,
    agg_values jsonb NOT NULL,
    events bigint NOT NULL,
    layer text NOT NULL CHECK (layer IN ('speed', 'batch')),
    revision bigint,
    pane text,
    watermark timestamptz,
    batch_run_id text,
    batch_epoch bigint,
    computed_at timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    PRIMARY KEY (metric, window_start, window_end, dims),
    CHECK ((layer = 'speed') = (revision IS NOT NULL)),
    CHECK ((layer = 'batch') = (batch_epoch IS NOT NULL))
) WITH (fillfactor = 80);
CREATE INDEX serving_rows_window ON {s}.serving_rows (window_start);
CREATE TABLE {s}.serving_deltas (
    metric text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    dims text NOT NULL,
    revision bigint NOT NULL,
    agg_values jsonb NOT NULL,
    events bigint NOT NULL,
    pane text,
    watermark timestamptz,
    computed_at timestamptz NOT NULL,
    PRIMARY KEY (metric, window_start, window_end, dims, revision)
);
CREATE TABLE {s}.progress (
    pipeline text PRIMARY KEY,
    fence_epoch bigint NOT NULL,
    writer_epoch bigint NOT NULL,
    sequence bigint NOT NULL,
    offsets jsonb,
    checkpoint bytea,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.correction_batches (
    batch_id text PRIMARY KEY,
    run_id text NOT NULL,
    epoch bigint NOT NULL,
    changes bigint NOT NULL,
    applied_at timestamptz NOT NULL
);
CREATE TABLE {s}.corrections_audit (
    batch_id text NOT NULL REFERENCES {s}.correction_batches (batch_id),
    seq integer NOT NULL,
    run_id text NOT NULL,
    metric text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    dims text NOT NULL,
    aggregate text NOT NULL,
    old_value jsonb,
    new_value jsonb,
    cause text NOT NULL,
    applied_at timestamptz NOT NULL,
    PRIMARY KEY (batch_id, seq)
);
"#,
    ),
    (
        2,
        "emission log",
        r#"
CREATE TABLE {s}.emissions (
    metric text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    dims text NOT NULL,
    revision bigint NOT NULL,
    delta boolean NOT NULL,
    agg_values jsonb NOT NULL,
    events bigint NOT NULL,
    pane text NOT NULL,
    watermark timestamptz NOT NULL,
    writer_epoch bigint NOT NULL,
    emitted_at timestamptz NOT NULL
);
CREATE INDEX emissions_window ON {s}.emissions (metric, window_start);
"#,
    ),
    (
        3,
        "room for HOT updates of serving rows",
        r#"
ALTER TABLE {s}.serving_rows SET (fillfactor = 70);
"#,
    ),
    (
        4,
        "HOT updates when a flush rewrites whole pages; a BRIN index for the emission log",
        // A flush rewrites the rows of the windows it touched, which were inserted together, so whole pages are
        // rewritten at once: only with half of each page free do all the new versions fit beside the old ones
        // (a HOT update: no index entries; 1M-row updates measured 2x faster). The emission log is appended
        // in window order and read by window range, which a BRIN index serves at a fraction of a b-tree's
        // per-row cost (the old index led with `metric`, which the range read does not constrain).
        r#"
ALTER TABLE {s}.serving_rows SET (fillfactor = 50);
DROP INDEX IF EXISTS {s}.emissions_window;
CREATE INDEX emissions_window_brin ON {s}.emissions USING brin (window_start);
"#,
    ),
    (
        5,
        "a BRIN index for range reads of serving rows",
        // Rows are inserted roughly in window order (the speed layer writes windows as they open; updates are
        // HOT, in place), so a BRIN index serves the range reads; the b-tree cost every new row a second
        // index insertion. Point lookups and single-metric ranges use the primary key.
        r#"
DROP INDEX IF EXISTS {s}.serving_rows_window;
CREATE INDEX serving_rows_window_brin ON {s}.serving_rows USING brin (window_start);
"#,
    ),
];

/// Postgres' timestamptz covers 4713 BC to 294276 AD; tidemark keeps every stored time within years
/// 1..=9999 and lets the two bounds stand for [`EventTime::MIN`] / [`EventTime::MAX`] (e.g. the watermark
/// of an early pane before any watermark exists), so those round-trip exactly.
const PG_MIN_US: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z
const PG_MAX_US: i64 = 253_402_300_800_000_000; // 10000-01-01T00:00:00Z

/// µs since the epoch (a bigint expression) as timestamptz: exact within the bounds, clamped outside.
const TS: &str = "(timestamptz 'epoch' + LEAST(GREATEST(({}), -62135596800000000), 253402300800000000) \
                  * interval '1 microsecond')";
/// timestamptz as µs since the epoch, exactly (extract returns numeric); the bounds read back as
/// `EventTime::MIN` / `EventTime::MAX`.
const US: &str = "(CASE WHEN ({}) <= timestamptz '0001-01-01 00:00:00+00' THEN -4611686018427387904 \
                  WHEN ({}) >= timestamptz '10000-01-01 00:00:00+00' THEN 4611686018427387904 \
                  ELSE (extract(epoch from {}) * 1000000)::bigint END)";

/// Microseconds clamped to the stored range, so that a range read may pass `EventTime::MIN` /
/// `EventTime::MAX`.
fn pg_clamp(t: EventTime) -> i64 {
    t.as_micros().clamp(PG_MIN_US, PG_MAX_US)
}

fn ts(expr: &str) -> String {
    TS.replace("{}", expr)
}

fn us(expr: &str) -> String {
    US.replace("{}", expr)
}

/// µs since the Unix epoch sent as a binary `timestamptz`, clamped like [`TS`] (same values, no SQL).
#[derive(Debug, Clone, Copy)]
struct PgTime(i64);

/// 2000-01-01T00:00:00Z, Postgres' own epoch, in Unix µs.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl ToSql for PgTime {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i64(self.0.clamp(PG_MIN_US, PG_MAX_US) - PG_EPOCH_US);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

/// JSON text sent as a binary `jsonb` (version byte 1, then the text): parsed once, by the COPY.
#[derive(Debug, Clone, Copy)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

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
            let (client, conn) = tokio_postgres::connect(&self.conninfo, NoTls)
                .await
                .map_err(|source| Error::Connect { server: describe_server(&self.conninfo), source })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "postgres connection ended");
                }
            });
            *guard = Some(client);
        }
        Ok(guard)
    }

    fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.schema)
    }

    /// SQL that creates a least-privilege role layout for this schema: `tidemark_stream` may insert and
    /// update speed rows, deltas and progress (and append to the emission log) but never create or change a batch row (a trigger refuses it,
    /// even for hand-written SQL) and may delete nothing; `tidemark_reconciler` may write any row and the
    /// correction tables; `tidemark_reader` may only read. Run it as the schema owner, then grant the roles
    /// to login users. Idempotent.
    pub fn role_setup_sql(&self) -> String {
        self.sql(
            r#"
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tidemark_reader') THEN CREATE ROLE tidemark_reader; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tidemark_stream') THEN CREATE ROLE tidemark_stream; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tidemark_reconciler') THEN CREATE ROLE tidemark_reconciler; END IF;
END $$;
GRANT USAGE ON SCHEMA {s} TO tidemark_reader, tidemark_stream, tidemark_reconciler;
GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO tidemark_reader, tidemark_stream, tidemark_reconciler;
GRANT INSERT, UPDATE ON {s}.serving_rows, {s}.serving_deltas, {s}.progress TO tidemark_stream;
GRANT INSERT ON {s}.emissions TO tidemark_stream;
GRANT INSERT, UPDATE ON {s}.serving_rows, {s}.correction_batches, {s}.corrections_audit TO tidemark_reconciler;
CREATE OR REPLACE FUNCTION {s}.tidemark_guard_batch_rows() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF (NEW.layer = 'batch' OR (TG_OP = 'UPDATE' AND OLD.layer = 'batch'))
     AND pg_has_role(current_user, 'tidemark_stream', 'MEMBER')
     AND NOT pg_has_role(current_user, 'tidemark_reconciler', 'MEMBER') THEN
    RAISE EXCEPTION 'role % may not create or change batch-layer rows', current_user USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $f$;
DROP TRIGGER IF EXISTS guard_batch_rows ON {s}.serving_rows;
CREATE TRIGGER guard_batch_rows BEFORE INSERT OR UPDATE ON {s}.serving_rows
  FOR EACH ROW EXECUTE FUNCTION {s}.tidemark_guard_batch_rows();
"#,
        )
    }

    async fn migrate(&self) -> Result<Vec<i32>> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let tx = client.transaction().await.map_err(Error::pg("beginning migration"))?;
        let lock_key = format!("tidemark-store:{}", self.schema);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key])
            .await
            .map_err(Error::pg("taking the migration lock"))?;
        tx.batch_execute(&self.sql(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
                 version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());",
        ))
        .await
        .map_err(Error::pg("creating the migrations table"))?;
        let done: Vec<i32> = tx
            .query(&self.sql("SELECT version FROM {s}.schema_migrations"), &[])
            .await
            .map_err(Error::pg("reading applied migrations"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(&self.sql(sql)).await.map_err(Error::pg("applying a migration"))?;
            tx.execute(
                &self.sql("INSERT INTO {s}.schema_migrations (version, name) VALUES ($1, $2)"),
                &[version, name],
            )
            .await
            .map_err(Error::pg("recording a migration"))?;
            applied.push(*version);
        }
        tx.commit().await.map_err(Error::pg("committing migrations"))?;
        Ok(applied)
    }

    /// Applied migration versions, ascending.
    pub async fn migrations(&self) -> Result<Vec<i32>> {
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let rows = client
            .query(&self.sql("SELECT version FROM {s}.schema_migrations ORDER BY version"), &[])
            .await
            .map_err(Error::pg("reading migrations"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Copies the marked changes into the session's temp table (each change once), merges those to
    /// `apply` under precedence and appends those to `emit` to the emission log with `writer_epoch`.
    /// Returns the number of changes that took effect and how often the `MERGE` was re-run.
    async fn upsert(&self, tx: &Transaction<'_>, changes: &[Marked], writer_epoch: Option<i64>) -> Result<(u64, u32)> {
        if changes.is_empty() {
            return Ok((0, 0));
        }
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS tidemark_incoming_v2 (
                metric text, ws timestamptz, we timestamptz, dims text, delta_revision bigint, agg_values jsonb,
                events bigint, layer text, revision bigint, pane text, watermark timestamptz, batch_run_id text,
                batch_epoch bigint, computed_at timestamptz, deleted boolean, apply boolean, emit boolean)
                ON COMMIT DELETE ROWS;
             TRUNCATE tidemark_incoming_v2;
             SET LOCAL work_mem = '256MB';",
        )
        .await
        .map_err(Error::pg("creating the temp table"))?;
        let sink = tx
            .copy_in(
                "COPY tidemark_incoming_v2 (metric, ws, we, dims, delta_revision, agg_values, events, layer, revision,
                 pane, watermark, batch_run_id, batch_epoch, computed_at, deleted, apply, emit) FROM STDIN BINARY",
            )
            .await
            .map_err(Error::pg("starting COPY"))?;
        let types = [
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::INT8,
            Type::JSONB,
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::INT8,
            Type::TIMESTAMPTZ,
            Type::BOOL,
            Type::BOOL,
            Type::BOOL,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for t in changes {
            let f = &t.flat;
            let layer = model::layer_str(f.layer);
            // -1: a row (or an emission of one); >= 0: a delta (or an emission of one) of that revision
            let delta_revision = f.delta_revision();
            let (ws, we, wm, ca) =
                (PgTime(f.window_start), PgTime(f.window_end), f.watermark.map(PgTime), PgTime(f.computed_at));
            let values = Jsonb(&f.values_json);
            let row: [&(dyn ToSql + Sync); 17] = [
                &f.metric,
                &ws,
                &we,
                &f.dims,
                &delta_revision,
                &values,
                &f.events,
                &layer,
                &f.revision,
                &f.pane,
                &wm,
                &f.batch_run_id,
                &f.batch_epoch,
                &ca,
                &f.deleted,
                &t.apply,
                &t.emit,
            ];
            writer.as_mut().write(&row).await.map_err(Error::pg("copying rows"))?;
        }
        writer.finish().await.map_err(Error::pg("finishing COPY"))?;

        // Statistics of the incoming rows let the planner pick hash joins for a large write (an unanalysed
        // temp table is guessed at well under 1% of its rows, which picks index probes: right for a small
        // write, slow for 1M rows). ANALYZE takes ~1 ms for 1k rows and ~25 ms for 20k. JIT compilation
        // would cost more than these statements run.
        let analyze = if changes.len() >= ANALYZE_MIN_ROWS { "ANALYZE tidemark_incoming_v2;" } else { "" };
        tx.batch_execute(&format!("{analyze} SET LOCAL jit = off; SAVEPOINT tidemark_merge;"))
            .await
            .map_err(Error::pg("analysing the incoming rows"))?;
        // `MERGE` (Postgres 15): one join of the incoming rows with the table; a present key is updated
        // where precedence allows (a row a committed writer changed since the snapshot is re-checked
        // against its newest version), an absent key is inserted. A key another writer inserted after the
        // snapshot makes the insert fail with a unique violation on the primary key once that writer
        // commits; the statement is then re-run from a savepoint with a new snapshot, which finds the key:
        // nothing is ever skipped. Measured against `INSERT .. ON CONFLICT DO UPDATE`, 1M keys: new 2.3 s
        // instead of 3.7 s, updated 2.3 s instead of 3.8 s, refused 1.4 s instead of 2.8 s.
        let rows = self.sql(
            "MERGE INTO {s}.serving_rows AS t
             USING (SELECT * FROM tidemark_incoming_v2 WHERE apply AND delta_revision = -1) AS i
             ON t.metric = i.metric AND t.window_start = i.ws AND t.window_end = i.we AND t.dims = i.dims
             WHEN MATCHED AND ((i.layer = 'batch' AND (t.layer = 'speed' OR i.batch_epoch >= t.batch_epoch))
                 OR (i.layer = 'speed' AND t.layer = 'speed'
                     AND (i.revision > t.revision OR (i.deleted AND i.revision >= t.revision)))) THEN
                 UPDATE SET agg_values = i.agg_values, events = i.events, layer = i.layer, revision = i.revision,
                     pane = i.pane, watermark = i.watermark, batch_run_id = i.batch_run_id,
                     batch_epoch = i.batch_epoch, computed_at = i.computed_at, deleted = i.deleted
             WHEN NOT MATCHED THEN
                 INSERT (metric, window_start, window_end, dims, agg_values, events, layer, revision, pane,
                     watermark, batch_run_id, batch_epoch, computed_at, deleted)
                 VALUES (i.metric, i.ws, i.we, i.dims, i.agg_values, i.events, i.layer, i.revision, i.pane,
                     i.watermark, i.batch_run_id, i.batch_epoch, i.computed_at, i.deleted)",
        );
        let mut attempts = 1;
        let a = loop {
            match tx.execute(&rows, &[]).await {
                Ok(merged) => break merged,
                Err(e) if crate::error::concurrent_insert(&e) && attempts < MAX_ATTEMPTS => {
                    attempts += 1;
                    self.stats.merge_retries.fetch_add(1, Ordering::Relaxed);
                    tx.batch_execute("ROLLBACK TO SAVEPOINT tidemark_merge")
                        .await
                        .map_err(Error::pg("rolling back to the merge savepoint"))?;
                }
                Err(e) => return Err(Error::pg("merging rows")(e)),
            }
        };
        let mut b = 0;
        if changes.iter().any(|c| c.apply && matches!(c.flat.kind, Kind::Delta(_))) {
            let deltas = self.sql(
                "INSERT INTO {s}.serving_deltas (metric, window_start, window_end, dims, revision, agg_values, events,
                     pane, watermark, computed_at)
                 SELECT metric, ws, we, dims, delta_revision, agg_values, events, pane, watermark, computed_at
                 FROM tidemark_incoming_v2 WHERE apply AND delta_revision >= 0
                 ORDER BY metric, ws, we, dims, delta_revision
                 ON CONFLICT DO NOTHING",
            );
            b = tx.execute(&deltas, &[]).await.map_err(Error::pg("recording deltas"))?;
        }
        if changes.iter().any(|c| c.emit) {
            // the emission log: a plain append (a replayed write never gets here: the marker refuses it)
            let epoch = writer_epoch.ok_or_else(|| Error::Corrupt("emissions without a writer epoch".into()))?;
            let log = self.sql(
                "INSERT INTO {s}.emissions (metric, window_start, window_end, dims, revision, delta, agg_values,
                     events, pane, watermark, writer_epoch, emitted_at)
                 SELECT metric, ws, we, dims, revision, delta_revision >= 0, agg_values, events, pane, watermark,
                     $1, computed_at
                 FROM tidemark_incoming_v2 WHERE emit",
            );
            tx.execute(&log, &[&epoch]).await.map_err(Error::pg("recording emissions"))?;
        }
        Ok((a + b, attempts - 1))
    }

    async fn try_write(&self, changes: &[Marked], progress: &SourceProgress) -> Result<WriteOutcome> {
        let epoch = to_i64("writer epoch", progress.writer_epoch)?;
        let seq = to_i64("sequence", progress.sequence)?;
        let offsets = offsets_to_json(&progress.offsets);
        let mut guard = self.client().await?;
        let client = guard.as_mut().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let tx = client.transaction().await.map_err(Error::pg("beginning a write"))?;
        tx.execute(
            &self.sql(
                "INSERT INTO {s}.progress (pipeline, fence_epoch, writer_epoch, sequence) VALUES ($1, 0, 0, 0)
                 ON CONFLICT (pipeline) DO NOTHING",
            ),
            &[&progress.pipeline],
        )
        .await
        .map_err(Error::pg("creating the progress row"))?;
        let started = std::time::Instant::now();
        let row = tx
            .query_one(
                &self
                    .sql("SELECT fence_epoch, writer_epoch, sequence FROM {s}.progress WHERE pipeline = $1 FOR UPDATE"),
                &[&progress.pipeline],
            )
            .await
            .map_err(Error::pg("locking the progress row"))?;
        if started.elapsed() > std::time::Duration::from_millis(1) {
            self.stats.lock_waits.fetch_add(1, Ordering::Relaxed);
        }
        let (fence, cur_epoch, cur_seq): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if epoch < fence.max(cur_epoch) {
            return Err(Error::Fenced {
                pipeline: progress.pipeline.clone(),
                epoch: progress.writer_epoch,
                current: fence.max(cur_epoch).unsigned_abs(),
            });
        }
        if (epoch, seq) <= (cur_epoch, cur_seq) {
            return Ok(WriteOutcome::AlreadyCommitted);
        }
        let (applied, reruns) = self.upsert(&tx, changes, Some(epoch)).await?;
        tx.execute(
            &self.sql(
                "UPDATE {s}.progress SET fence_epoch = $2, writer_epoch = $2, sequence = $3, offsets = $4::text::jsonb,
                     checkpoint = $5, committed_at = now()
                 WHERE pipeline = $1",
            ),
            &[&progress.pipeline, &epoch, &seq, &offsets, &progress.checkpoint],
        )
        .await
        .map_err(Error::pg("updating progress"))?;
        fail::fail_point!("postgres.before_commit", |_| Err(Error::Contention {
            attempts: 1,
            last: "fail point postgres.before_commit".into()
        }));
        tx.commit().await.map_err(Error::pg("committing a write"))?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(WriteOutcome::Committed(WriteStats { offered: 0, applied, retries: reruns }))
    }

    async fn try_apply(&self, flats: &[Flat], batch: &CorrectionBatch) -> Result<ApplyOutcome> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let tx = client.transaction().await.map_err(Error::pg("beginning corrections"))?;
        let changes = flats.len() as i64;
        let fresh = tx
            .execute(
                &self.sql(
                    "INSERT INTO {s}.correction_batches (batch_id, run_id, epoch, changes, applied_at)
                     VALUES ($1, $2, $3, $4, now()) ON CONFLICT (batch_id) DO NOTHING",
                ),
                &[&batch.id, &batch.run_id, &batch.epoch, &changes],
            )
            .await
            .map_err(Error::pg("recording the correction batch"))?;
        if fresh == 0 {
            tx.rollback().await.map_err(Error::pg("rolling back"))?;
            return Ok(ApplyOutcome::AlreadyApplied);
        }
        let marked: Vec<Marked> = flats.iter().map(|f| Marked { flat: f.clone(), apply: true, emit: false }).collect();
        let (applied, reruns) = self.upsert(&tx, &marked, None).await?;
        let insert = tx
            .prepare(&self.sql(&format!(
                "INSERT INTO {{s}}.corrections_audit (batch_id, seq, run_id, metric, window_start, window_end, dims,
                     aggregate, old_value, new_value, cause, applied_at)
                 VALUES ($1, $2, $3, $4, {ws}, {we}, $7, $8, $9::text::jsonb, $10::text::jsonb, $11, now())",
                ws = ts("$5::bigint"),
                we = ts("$6::bigint"),
            )))
            .await
            .map_err(Error::pg("preparing the audit insert"))?;
        for (i, a) in batch.audit.iter().enumerate() {
            let seq = i32::try_from(i).map_err(|_| Error::invalid("audit", "more than 2^31 entries"))?;
            let (ws, we) = (a.key.window.start().as_micros(), a.key.window.end().as_micros());
            let dims = a.key.dims.encode();
            let old = a.old.map(|v| agg_json(&v));
            let new = a.new.map(|v| agg_json(&v));
            tx.execute(
                &insert,
                &[&batch.id, &seq, &batch.run_id, &a.key.metric, &ws, &we, &dims, &a.aggregate, &old, &new, &a.cause],
            )
            .await
            .map_err(Error::pg("writing the audit log"))?;
        }
        fail::fail_point!("postgres.before_commit", |_| Err(Error::Contention {
            attempts: 1,
            last: "fail point postgres.before_commit".into()
        }));
        tx.commit().await.map_err(Error::pg("committing corrections"))?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        Ok(ApplyOutcome::Applied(WriteStats { offered: flats.len() as u64, applied, retries: reruns }))
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
                layer: model::parse_layer(&layer).ok_or_else(|| Error::Corrupt(format!("layer {layer:?}")))?,
                revision: r.get(8),
                pane: pane.as_deref().and_then(model::parse_pane).map(model::pane_str),
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
        let marked = model::encode(changes.len(), || model::mark_changes(changes, crate::now()))?;
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
                pane: model::parse_pane(&pane).map(model::pane_str),
                watermark: r.get(9),
                batch_run_id: None,
                batch_epoch: Some(epoch),
                computed_at: r.get(11),
                deleted: false,
            };
            out.push(flat.into_emission()?);
        }
        Ok(model::first_emissions(out.into_iter()))
    }

    async fn apply_corrections(&self, batch: &CorrectionBatch) -> Result<ApplyOutcome> {
        let flats = model::encode(batch.changes.len(), || model::flatten_corrections(batch, crate::now()))?;
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

pub(crate) fn backoff(attempt: u32) -> std::time::Duration {
    let base = 10u64 << attempt.min(6);
    // spread retries of racing writers apart
    let jitter = u64::from(std::process::id() ^ (crate::now().as_micros() as u32)) % base;
    std::time::Duration::from_millis(base + jitter)
}

fn marker(epoch: i64, seq: i64) -> Result<CommitMarker> {
    Ok(CommitMarker {
        writer_epoch: u64::try_from(epoch).map_err(|_| Error::Corrupt("negative writer epoch".into()))?,
        sequence: u64::try_from(seq).map_err(|_| Error::Corrupt("negative sequence".into()))?,
    })
}

fn to_i64(what: &'static str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(what, format!("{v} is above i64::MAX")))
}

pub(crate) fn check_progress(p: &SourceProgress) -> Result<()> {
    model::check_id("pipeline", &p.pipeline)?;
    if p.writer_epoch == 0 || p.writer_epoch > u64::from(u32::MAX >> 1) {
        return Err(Error::invalid("writer epoch", "must be from claim_writer (1 ..= 2^31 - 1)"));
    }
    if p.sequence == 0 || p.sequence > u64::from(u32::MAX) {
        return Err(Error::invalid("sequence", "must be 1 ..= 2^32 - 1"));
    }
    for tp in p.offsets.keys() {
        model::check_text("topic", &tp.topic)?;
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OffsetJson {
    topic: String,
    partition: i32,
    offset: i64,
}

pub(crate) fn offsets_to_json(offsets: &BTreeMap<TopicPartition, i64>) -> String {
    let list: Vec<OffsetJson> = offsets
        .iter()
        .map(|(tp, o)| OffsetJson { topic: tp.topic.clone(), partition: tp.partition, offset: *o })
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn offsets_from_json(s: &str) -> Result<BTreeMap<TopicPartition, i64>> {
    let list: Vec<OffsetJson> = serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("offsets: {e}")))?;
    Ok(list.into_iter().map(|o| (TopicPartition::new(o.topic, o.partition), o.offset)).collect())
}

fn agg_json(v: &AggValue) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

fn parse_agg(s: &str) -> Result<AggValue> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("audit value {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
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
        let marked = model::mark_changes(&changes, EventTime::UNIX_EPOCH).expect("marked");
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
        let flats: Vec<String> = model::flatten_changes(&changes, EventTime::UNIX_EPOCH)
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
        let mut emissions: Vec<(String, Option<i64>, String)> = model::emission_flats(&changes, 1)
            .expect("emissions")
            .into_iter()
            .map(|f| (f.dims, f.revision, f.values_json))
            .collect();
        fired.sort();
        emissions.sort();
        assert_eq!(fired, emissions);
    }
}
